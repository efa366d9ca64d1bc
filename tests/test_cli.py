"""The `noiseprobe inject|shuffle|analyze` contracts: outputs, and every bad-input path.

Bad input must give one line on stderr naming the file or argument and the value,
exit status 2, and leave no output file behind.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
from audio_fixtures import write_audio, write_empty_wav, write_garbage, write_nan_wav

from lightning_noiseprobe.cli import main


def _run(argv, capsys):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(
    ("name", "sr", "channels", "subtype"),
    [
        ("mono32k.wav", 32000, 1, "PCM_16"),
        ("stereo48k.wav", 48000, 2, "FLOAT"),
        ("stereo44k.flac", 44100, 2, None),
        ("mono48k.mp3", 48000, 1, None),
    ],
)
def test_inject_writes_same_rate_channels_and_exact_window(
    tmp_path, capsys, name, sr, channels, subtype
):
    src = write_audio(tmp_path / name, sr, channels, seconds=8.0, subtype=subtype)
    dst = tmp_path / ("out_" + name)
    code, out, err = _run(
        ["inject", src, dst, "--onset", 250, "--length", 100, "--level-dbfs", -24, "--seed", 3],
        capsys,
    )
    assert code == 0, err
    x, sr_in = sf.read(src, always_2d=True)
    y, sr_out = sf.read(dst, always_2d=True)
    assert sr_out == sr_in == sr and y.shape[1] == channels
    start, end = round(5.0 * sr), round(7.0 * sr)
    if name.endswith((".wav", ".flac")):  # lossless: untouched samples are bit-identical
        assert np.array_equal(x[:start], y[:start]) and np.array_equal(x[end:], y[end:])
        changed = np.flatnonzero(np.any(x != y, axis=1))
        assert changed[0] >= start and changed[-1] < end
        rms = np.sqrt(np.mean(y[start:end] ** 2, axis=0))
        np.testing.assert_allclose(20 * np.log10(rms), -24.0, atol=0.05)
    assert "white noise" in out


def test_inject_relative_level_and_add_mode(tmp_path, capsys):
    src = write_audio(tmp_path / "a.wav", 32000, 1, seconds=8.0, subtype="FLOAT")
    code, _, err = _run(
        [
            "inject",
            src,
            tmp_path / "b.wav",
            "--level-db-rel",
            "-6",
            "--mode",
            "add",
            "--noise",
            "pink",
        ],
        capsys,
    )
    assert code == 0, err
    x, _ = sf.read(src)
    y, _ = sf.read(tmp_path / "b.wav")
    noise = y[160000:224000] - x[160000:224000]
    rel = 20 * np.log10(np.sqrt(np.mean(noise**2)) / np.sqrt(np.mean(x**2)))
    assert rel == pytest.approx(-6.0, abs=0.05)


def test_shuffle_and_analyze(tmp_path, capsys):
    src = write_audio(tmp_path / "a.wav", 32000, 2, seconds=9.0, subtype="FLOAT")
    code, out, err = _run(
        ["shuffle", src, tmp_path / "s.wav", "--length", 200, "--segment", 50], capsys
    )
    assert code == 0, err and "4 segments" in out
    x, _ = sf.read(src)
    y, _ = sf.read(tmp_path / "s.wav")
    assert np.array_equal(x[:160000], y[:160000]) and not np.array_equal(x, y)

    T = 400
    clean = 3 + 0.3 * np.sin(np.arange(T))
    pert = clean.copy()
    pert[250:255] += 2.0
    pert[255:350] -= 1.0
    np.savetxt(
        tmp_path / "clean.csv",
        np.c_[np.arange(T), clean],
        delimiter=",",
        header="token,loss",
        comments="",
    )
    np.savetxt(
        tmp_path / "pert.csv",
        np.c_[np.arange(T), pert],
        delimiter=",",
        header="token_position,avg_loss_value",  # the paper authors' format
        comments="",
    )
    code, out, err = _run(
        [
            "analyze",
            "--clean",
            tmp_path / "clean.csv",
            "--perturbed",
            tmp_path / "pert.csv",
            "--onset",
            250,
            "--length",
            100,
            "--json",
            tmp_path / "r.json",
        ],
        capsys,
    )
    assert code == 0, err
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc == json.loads(out)
    assert set(doc) >= {
        "onset",
        "length",
        "regions",
        "delta_loss",
        "clean_loss",
        "peak_mean",
        "assimilation_mean",
        "recovery_mean",
        "recovery_std",
        "peak_height",
        "peak_width",
        "peak_area",
        "peak_sharpness",
    }
    assert doc["regions"]["peak"][0] == 250 and 255 <= doc["regions"]["peak"][1] <= 258
    assert doc["peak_mean"] > 1 and doc["assimilation_mean"] < -0.5


def _bad_cases(tmp):
    good = write_audio(tmp / "good.wav", 32000, 1, seconds=8.0)
    silent = tmp / "silent.wav"
    sf.write(silent, np.zeros(32000 * 8), 32000)
    short = tmp / "clean_short.csv"
    short.write_text("loss\n" + "\n".join("1.0" for _ in range(300)))
    long = tmp / "clean_long.csv"
    long.write_text("loss\n" + "\n".join("1.0" for _ in range(400)))
    nan_csv = tmp / "nan.csv"
    nan_csv.write_text("loss\n" + "\n".join(["1.0"] * 399 + ["nan"]))
    return {
        "missing file": (["inject", tmp / "nope.wav", tmp / "o.wav"], "nope.wav"),
        "corrupt file": (["inject", write_garbage(tmp / "bad.wav"), tmp / "o.wav"], "bad.wav"),
        "empty audio": (["inject", write_empty_wav(tmp / "empty.wav"), tmp / "o.wav"], "empty.wav"),
        "nan audio": (["inject", write_nan_wav(tmp / "nan.wav"), tmp / "o.wav"], "nan.wav"),
        "window past end": (
            ["inject", good, tmp / "o.wav", "--onset", 300, "--length", 200],
            "onset",
        ),
        "zero length": (["inject", good, tmp / "o.wav", "--length", 0], "length"),
        "negative length": (["inject", good, tmp / "o.wav", "--length", -5], "length"),
        "unknown noise": (["inject", good, tmp / "o.wav", "--noise", "red"], "red"),
        "relative level on silence": (
            ["inject", silent, tmp / "o.wav", "--level-db-rel", -6],
            "silent",
        ),
        "unknown format": (["inject", good, tmp / "o.xyz"], "xyz"),
        "csv lengths differ": (
            [
                "analyze",
                "--clean",
                short,
                "--perturbed",
                long,
                "--onset",
                100,
                "--length",
                50,
                "--json",
                tmp / "o.json",
            ],
            "300",
        ),
        "csv with nan": (
            [
                "analyze",
                "--clean",
                long,
                "--perturbed",
                nan_csv,
                "--onset",
                100,
                "--length",
                50,
                "--json",
                tmp / "o.json",
            ],
            "nan.csv",
        ),
        "window past csv end": (
            [
                "analyze",
                "--clean",
                long,
                "--perturbed",
                long,
                "--onset",
                380,
                "--length",
                50,
                "--json",
                tmp / "o.json",
            ],
            "380",
        ),
        "shuffle past end": (
            ["shuffle", good, tmp / "o.wav", "--onset", 350, "--length", 200],
            "onset",
        ),
    }


BAD_CASES = [
    "missing file",
    "corrupt file",
    "empty audio",
    "nan audio",
    "window past end",
    "zero length",
    "negative length",
    "unknown noise",
    "relative level on silence",
    "unknown format",
    "csv lengths differ",
    "csv with nan",
    "window past csv end",
    "shuffle past end",
]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_one_line_exit_2_no_output(tmp_path, capsys, case):
    argv, needle = _bad_cases(tmp_path)[case]
    before = {p.name for p in tmp_path.iterdir()}
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse's own checks (choices, types)
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("noiseprobe"), err
    assert "error:" in lines[0] and needle in lines[0], err
    after = {p.name for p in tmp_path.iterdir()}
    assert after == before, after - before  # no output, no temp file


# ----------------------------------------------------------------------------- probe-set flags
def test_every_probe_spec_field_has_one_flag_with_help(capsys, monkeypatch):
    """The probe-set flags are made from ProbeSpec's fields: each field has exactly one
    flag, with help, in `noiseprobe probe --help`, its default is the field's, and the
    table holds no entry that is not a field (adding a spec field is one table entry)."""
    import dataclasses

    from lightning_noiseprobe.cli import build_parser
    from lightning_noiseprobe.cli.spec_flags import SPEC_FLAGS, spec_flag, spec_kwargs
    from lightning_noiseprobe.functional.curves import REGION_RULES
    from lightning_noiseprobe.probe import ProbeSpec

    fields = [f.name for f in dataclasses.fields(ProbeSpec)]
    assert sorted(SPEC_FLAGS) == sorted(fields)
    assert all(SPEC_FLAGS[name].help.strip() for name in fields)
    assert SPEC_FLAGS["regions"].choices == REGION_RULES
    flags = [spec_flag(name) for name in fields]
    assert len(set(flags)) == len(flags)
    assert spec_flag("shuffle_length") == "--shuffle-length"  # kebab case unless named

    monkeypatch.setenv("COLUMNS", "1000")  # help lines unwrapped: no hyphen split
    parser = build_parser()
    args = parser.parse_args(["probe", "--audio", "a", "--out", "o"])
    assert ProbeSpec(**spec_kwargs(args)) == ProbeSpec()  # defaults are the field defaults
    with pytest.raises(SystemExit):
        parser.parse_args(["probe", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name in fields:
        assert spec_flag(name) in text, name
        assert " ".join(SPEC_FLAGS[name].help.split()) in text, name

    argv = ["probe", "--audio", "a", "--out", "o", "--smoothing", "3", "--margin", "9"]
    argv += ["--shuffle-length", "120", "--shuffle", "10", "--independent-noise"]
    argv += ["--band", "100-900", "--level-db-rel", "-12", "--regions", "authors"]
    spec = ProbeSpec(**spec_kwargs(parser.parse_args(argv)))
    assert (spec.smoothing, spec.margin, spec.shuffle_length) == (3, 9, 120)
    assert spec.shuffle_segments == (10,) and spec.nested_noise is False
    assert spec.bandstop_band == (100.0, 900.0) and spec.level_db_rel == -12.0
    assert spec.regions == "authors"


def test_a_spec_field_without_a_flag_is_refused(monkeypatch):
    """A new ProbeSpec field without a table entry fails when the parser is built."""
    from lightning_noiseprobe.cli import build_parser, spec_flags

    table = dict(spec_flags.SPEC_FLAGS)
    del table["margin"]
    monkeypatch.setattr(spec_flags, "SPEC_FLAGS", table)
    with pytest.raises(TypeError, match=r"\['margin'\] have none"):
        build_parser()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--smoothing", "4"],
            "Expected --smoothing to be a positive odd number of tokens but got 4.",
        ),
        (["--margin", "-1"], "Expected --margin to be a number of tokens >= 0 but got -1."),
        (["--shuffle", "150"], "Expected --shuffle to hold positive integers of at most half"),
    ],
)
def test_probe_spec_flags_errors_name_the_flag(tmp_path, capsys, argv, message):
    clip = write_audio(tmp_path / "c.wav", 32000, 1, seconds=1.0)
    code, _out, err = _run(["probe", "--audio", clip, "--out", tmp_path / "o", *argv], capsys)
    assert code == 2 and message in err, err
    assert not (tmp_path / "o").exists()
