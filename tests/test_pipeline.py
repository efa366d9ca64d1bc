"""The probe pipeline as the paper ran it (inject at the source, nested noise, conditioning)
and the authors' other perturbations (token deletion, random reordering, band-stop):
the functions, ProbeSpec in build_probe_set, the CLI as a subprocess, a callback in Trainer.fit."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
from audio_fixtures import synth_music, write_audio
from lightning_helpers import ProtocolModule, cpu_trainer

from lightning_noiseprobe import NoiseProbeCallback
from lightning_noiseprobe._errors import NoiseProbeError
from lightning_noiseprobe.audio import rms_dbfs
from lightning_noiseprobe.cli import main
from lightning_noiseprobe.functional.align import align_deleted
from lightning_noiseprobe.perturbations import (
    bandstop_window,
    delete_window,
    reorder_segments,
    token_window_to_samples,
)
from lightning_noiseprobe.probe import ProbeSpec, build_probe_set, score_probe_set
from lightning_noiseprobe.probe.probeset import clear_memory_cache, perturb_clip, prepare_clip

# 4 s clips (200 tokens at 50 Hz), perturbations from token 60: fast on the tiny model.
ONSET = 60
SHORT = {"onset": ONSET, "clip_seconds": 4.0}


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("pipeline_audio")
    write_audio(d / "mono32k.wav", 32000, 1, seconds=4.0, subtype="FLOAT")
    write_audio(d / "stereo48k.wav", 48000, 2, seconds=4.0, subtype="FLOAT")
    (d / "stereo48k.json").write_text(json.dumps({"description": "bright piano arpeggio"}))
    return d


def _music(sr: int, channels: int, seconds: float) -> torch.Tensor:
    return torch.from_numpy(synth_music(sr, channels, seconds))


# ----------------------------------------------------------------------------- nested noise
def test_nested_noise_shorter_window_is_start_of_longer_at_source():
    """The 100-token window's noise is the start of the 200-token window's, in the file's
    own samples (48 kHz stereo), up to one gain per channel that sets each window's level."""
    wav = _music(48000, 2, 8.0)
    spec = ProbeSpec(onset=ONSET, lengths=(100, 200), clip_seconds=8.0)
    clip = prepare_clip(wav, 48000, spec, sample_rate=32000, channels=1, frame_rate=50.0)
    assert clip.base.shape == (2, 384000) and clip.base_rate == 48000  # perturbed at the source
    short, long = (
        perturb_clip(clip.base, 48000, 50.0, spec, p, clip.audio_hash) for p in spec.perturbations()
    )
    start, end = token_window_to_samples(ONSET, 100, 50.0, 48000)
    assert (start, end) == (57600, 153600)  # 960 samples per token: the same 1.2 s .. 3.2 s
    w100, w200 = short[:, start:end].double(), long[:, start:end].double()
    gain = w100.square().mean(-1).sqrt() / w200.square().mean(-1).sqrt()
    torch.testing.assert_close(w100, w200 * gain[:, None], rtol=1e-5, atol=1e-7)
    assert ((gain - 1).abs() < 0.01).all(), gain  # white noise: the gain is 1 +- 1/sqrt(2n)
    for out, n in ((short, 100), (long, 200)):  # each window at exactly -30 dBFS per channel
        s, e = token_window_to_samples(ONSET, n, 50.0, 48000)
        torch.testing.assert_close(
            rms_dbfs(out[:, s:e], dim=-1), torch.full((2,), -30.0, dtype=torch.float64)
        )
    independent = ProbeSpec(onset=ONSET, lengths=(100, 200), clip_seconds=8.0, nested_noise=False)
    a, b = (
        perturb_clip(clip.base, 48000, 50.0, independent, p, clip.audio_hash)[0, start:end]
        for p in independent.perturbations()
    )
    assert abs(float(torch.corrcoef(torch.stack([a, b]))[0, 1])) < 0.02


@pytest.mark.parametrize(
    ("sr", "inject_at", "expected_db", "tol"),
    [
        (32000, "source", -30.0 - 10 * math.log10(2), 0.05),  # two channels averaged: -3.01 dB
        (48000, "source", -35.1, 0.3),  # and the resampler's low-pass above 16 kHz
        (48000, "model", -30.0, 0.01),  # converted first: the model hears the nominal level
    ],
)
def test_noise_level_as_the_model_hears_it(sr, inject_at, expected_db, tol):
    spec = ProbeSpec(onset=ONSET, lengths=(100,), clip_seconds=4.0, inject_at=inject_at)
    clip = prepare_clip(_music(sr, 2, 4.0), sr, spec, sample_rate=32000, channels=1, frame_rate=50)
    out = clip.perturbed(spec.perturbations()[0])
    assert out.shape == clip.clean.shape == (1, 128000)
    start, end = token_window_to_samples(ONSET, 100, 50.0, 32000)
    assert float(rms_dbfs(out[:, start + 50 : end - 50])) == pytest.approx(expected_db, abs=tol)
    changed = (out != clip.clean).any(0).nonzero()[:, 0]
    assert start - 10 <= int(changed.min()) and int(changed.max()) < end + 10  # same time window


# ----------------------------------------------------------------------------- deletion
@pytest.mark.parametrize("sr", [48000, 44100, 11025])  # 960, 882 and 220.5 samples per token
def test_delete_window_removes_exactly_the_tokens_samples(sr):
    wav = _music(sr, 2, 3.0)
    out = delete_window(wav, sr, onset=50, length=25)
    start, end = token_window_to_samples(50, 25, 50.0, sr)
    assert abs((end - start) - 0.5 * sr) <= 0.5  # 25 tokens = 0.5 s, rounded half up
    assert out.shape == (2, wav.shape[-1] - (end - start))
    assert torch.equal(out[:, :start], wav[:, :start]) and torch.equal(out[:, start:], wav[:, end:])


def test_deletion_copy_aligns_with_clean_codes_shifted(tiny_backend, clip_dir):
    """After the cut, the copy's codes are the clean clip's N tokens later (up to codec
    near-ties): the alignment in functional/align.py pairs the same music."""
    spec = ProbeSpec(lengths=(), delete_lengths=(20,), inject_at="model", **SHORT)
    ps = build_probe_set(tiny_backend, clip_dir / "mono32k.wav", spec)
    assert ps.perturbed_tokens.tolist() == [[180]] and ps.num_tokens.tolist() == [200]
    pert, clean = ps.perturbed_codes[0, 0], ps.clean_codes[0]
    aligned, ok = align_deleted(clean, ONSET, 20)
    assert ok[:, :180].all() and not ok[:, 180:].any()
    t = slice(ONSET + 5, 175)  # past the codec's receptive field around the cut
    same_aligned = (pert[:, t] == aligned[:, t]).float().mean()
    same_unaligned = (pert[:, t] == clean[:, t]).float().mean()
    assert same_aligned > 0.9 and same_unaligned < 0.2, (same_aligned, same_unaligned)
    result = score_probe_set(tiny_backend, ps)
    assert torch.equal(result.pair_clean[0, 0, ONSET:180], result.clean[0, ONSET + 20 : 200])
    assert int(result.pair_valid[0, 0].sum()) == 180  # compared over the copy's own length
    assert result.analysis.regions[0, 0].tolist()[2][1] == 180  # Recovery ends at the copy's end


# ----------------------------------------------------------------------------- reorder / band-stop
def test_reorder_segments_exact_deterministic_and_never_identity():
    x = torch.arange(100.0).repeat_interleave(882)[None].repeat(2, 1)  # 100 tokens at 44.1 kHz
    y, sizes, perm = reorder_segments(x, 44100, onset=20, length=60, min_segment=5, max_segment=12)
    assert sum(sizes) == 60 and all(s <= 12 for s in sizes) and all(s >= 5 for s in sizes[:-1])
    assert perm.tolist() != list(range(len(sizes))) and sorted(perm.tolist()) == list(
        range(len(sizes))
    )
    a, b = 20 * 882, 80 * 882
    assert torch.equal(y[:, :a], x[:, :a]) and torch.equal(y[:, b:], x[:, b:])
    tokens = y[0, a:b:882]  # whole tokens moved: each output token is one input token
    assert sorted(tokens.tolist()) == list(range(20, 80))
    edges = np.cumsum([0, *sizes])
    expected = torch.cat([torch.arange(20 + edges[i], 20 + edges[i + 1]) for i in perm.tolist()])
    assert torch.equal(tokens, expected.float())
    again = reorder_segments(x, 44100, onset=20, length=60, min_segment=5, max_segment=12)
    other = reorder_segments(x, 44100, onset=20, length=60, min_segment=5, max_segment=12, seed=1)
    assert torch.equal(again[0], y) and not torch.equal(other[0], y)
    small = torch.arange(10.0).repeat_interleave(640)[None]  # 3 segments of 1 token: never identity
    for seed in range(20):
        _, _, p = reorder_segments(
            small, 32000, onset=2, length=3, min_segment=1, max_segment=1, seed=seed
        )
        assert p.tolist() != [0, 1, 2]


def test_bandstop_window_deletes_the_band_in_the_window_only():
    sr = 32000
    t = torch.arange(2 * sr, dtype=torch.float64) / sr
    x = (0.3 * torch.sin(2 * math.pi * 300 * t) + 0.3 * torch.sin(2 * math.pi * 4000 * t)).float()
    x = x[None].repeat(2, 1)
    y = bandstop_window(x, sr, onset=25, length=50, low_hz=2000, high_hz=20000)
    start, end = token_window_to_samples(25, 50, 50.0, sr)
    assert torch.equal(y[:, :start], x[:, :start]) and torch.equal(y[:, end:], x[:, end:])
    spec_in, spec_out = (torch.fft.rfft(z[0, start:end].double()).abs() for z in (x, y))
    # 1 s window: 1 Hz bins; the 300 Hz partial stays, the 4 kHz one is gone
    assert spec_out[300] == pytest.approx(float(spec_in[300]), rel=1e-5)
    assert float(spec_out[2000:].max()) < 1e-3 * float(spec_in[4000])
    assert torch.equal(y, bandstop_window(x, sr, onset=25, length=50, low_hz=2000, high_hz=20000))


@pytest.mark.parametrize(
    ("fn", "kwargs", "pattern"),
    [
        (reorder_segments, {"min_segment": 9, "max_segment": 3}, "min_segment"),
        (reorder_segments, {"length": 40, "max_segment": 50}, "max_segment"),
        (reorder_segments, {"length": 2.5}, "length"),
        (reorder_segments, {"onset": 90, "length": 60}, "end within the clip"),
        (bandstop_window, {"low_hz": 16000.0}, "Nyquist"),
        (bandstop_window, {"low_hz": 500.0, "high_hz": 400.0}, "high_hz"),
        (bandstop_window, {"low_hz": -1.0}, "low_hz"),
        (delete_window, {"length": 0}, "length"),
        (delete_window, {"onset": 95, "length": 10}, "end within the clip"),
    ],
)
def test_new_perturbations_bad_input(fn, kwargs, pattern):
    wav = _music(32000, 1, 2.0)  # 100 tokens
    args = {"onset": 10, "length": 60 if fn is reorder_segments else 20, **kwargs}
    with pytest.raises(NoiseProbeError, match=pattern):
        fn(wav, 32000, **args)
    bad = wav.clone()
    bad[0, 5] = float("nan")
    with pytest.raises(NoiseProbeError, match="NaN"):
        fn(bad, 32000, onset=10, length=60 if fn is reorder_segments else 20)


# ----------------------------------------------------------------------------- ProbeSpec
def test_spec_fields_change_the_token_cache_key_and_analysis_fields_do_not():
    base = ProbeSpec(**SHORT)
    assert base.inject_at == "source" and base.nested_noise  # the paper's protocol by default
    changed = [
        {"inject_at": "model"},
        {"nested_noise": False},
        {"delete_lengths": (20,)},
        {"reorder_lengths": (60,)},
        {"reorder_lengths": (60,), "reorder_segment": (5, 10)},
        {"bandstop_lengths": (20,)},
        {"bandstop_lengths": (20,), "bandstop_band": (500.0, 900.0)},
    ]
    keys = [base.tokenization_key()] + [
        ProbeSpec(**SHORT, **kw).tokenization_key() for kw in changed
    ]
    assert len({json.dumps(k, sort_keys=True) for k in keys}) == len(keys)
    for analysis_only in ({"smoothing": 7}, {"margin": 9}, {"regions": "authors", "onset": 60}):
        assert ProbeSpec(**{**SHORT, **analysis_only}).tokenization_key() == base.tokenization_key()
    assert ProbeSpec.from_dict(base.to_dict()) == base
    old = {k: v for k, v in base.to_dict().items() if k not in ("inject_at", "nested_noise")}
    legacy = ProbeSpec.from_dict(old)  # written before the fields existed: the old protocol
    assert legacy.inject_at == "model" and not legacy.nested_noise


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"inject_at": "file"}, "`inject_at`"),
        ({"nested_noise": "yes"}, "`nested_noise`"),
        ({"delete_lengths": (0,)}, "`delete_lengths`"),
        ({"reorder_lengths": (30,)}, "`reorder_lengths`"),
        ({"reorder_segment": (10, 5)}, "`reorder_segment`"),
        ({"bandstop_band": (900.0, 500.0)}, "`bandstop_band`"),
        ({"bandstop_band": (100.0, float("inf"))}, "`bandstop_band`"),
        ({"lengths": ()}, "at least one perturbation"),
    ],
)
def test_spec_validation_of_new_fields(kwargs, match):
    with pytest.raises(NoiseProbeError, match=match):
        ProbeSpec(**kwargs)


def test_probe_set_with_every_new_kind_at_the_source(tiny_backend, clip_dir, tmp_path):
    spec = ProbeSpec(
        lengths=(20,),
        delete_lengths=(20,),
        reorder_lengths=(30,),
        reorder_segment=(5, 10),
        bandstop_lengths=(20,),
        bandstop_band=(1000.0, 20000.0),
        **SHORT,
    )
    clear_memory_cache()
    ps = build_probe_set(tiny_backend, clip_dir, spec, cache_dir=tmp_path)
    assert [p.kind for p in ps.perturbations] == ["noise", "delete", "reorder", "bandstop"]
    assert ps.perturbed_tokens.tolist() == [[200, 180, 200, 200]] * 2
    result = score_probe_set(tiny_backend, ps, batch_size=5)
    assert set(result.by_length) == {"white", "delete", "reorder5-10", "bandstop1000-20000"}
    a = result.analysis
    assert torch.isfinite(a.delta_loss).all() and torch.isfinite(a.clean_loss).all()
    assert (a.regions[:, :, 2, 1] == ps.perturbed_tokens).all()  # Recovery ends at each copy's end
    doc = result.to_json()
    json.dumps(doc, allow_nan=False)
    assert doc["spec"]["inject_at"] == "source" and doc["spec"]["nested_noise"] is True
    assert [c["kind"] for c in doc["clips"][:4]] == ["noise", "delete", "reorder", "bandstop"]
    assert doc["clips"][3]["band_hz"] == [1000.0, 20000.0]
    # the same clips converted first are different audio: a different cache entry
    model_first = build_probe_set(
        tiny_backend,
        clip_dir,
        ProbeSpec(**{**spec.to_dict(), "inject_at": "model"}),
        cache_dir=tmp_path,
    )
    assert model_first.encoded_clips == 2 and len(list(tmp_path.glob("*.pt"))) == 4
    again = build_probe_set(tiny_backend, clip_dir, spec, cache_dir=tmp_path)
    assert again.encoded_clips == 0 and torch.equal(again.perturbed_tokens, ps.perturbed_tokens)


def test_conditioning_is_chosen_recorded_and_reaches_the_model(tiny_backend, clip_dir):
    spec = ProbeSpec(lengths=(20,), **SHORT)
    sidecar = build_probe_set(tiny_backend, clip_dir, spec)
    assert [(c.conditioning, c.description) for c in sidecar.clips] == [
        ("unconditional", None),  # mono32k.wav has no sidecar
        ("sidecar", "bright piano arpeggio"),
    ]
    plain = build_probe_set(tiny_backend, clip_dir, spec, unconditional=True)
    assert [(c.conditioning, c.description) for c in plain.clips] == [("unconditional", None)] * 2
    given = build_probe_set(tiny_backend, clip_dir, spec, descriptions="jazz")
    assert {c.conditioning for c in given.clips} == {"given"}
    a, b = score_probe_set(tiny_backend, sidecar), score_probe_set(tiny_backend, plain)
    assert float(a.analysis.clean_loss[0, 0]) == float(b.analysis.clean_loss[0, 0])
    assert float(a.analysis.clean_loss[1, 0]) != float(b.analysis.clean_loss[1, 0])
    assert b.to_json()["conditioning"] == {"unconditional": 2}
    with pytest.raises(NoiseProbeError, match="unconditional"):
        build_probe_set(tiny_backend, clip_dir, spec, descriptions="jazz", unconditional=True)


# ----------------------------------------------------------------------------- CLI
def _cli(*args: object) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "lightning_noiseprobe.cli", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


@pytest.mark.latest
def test_cli_probe_paper_pipeline_and_new_perturbations(clip_dir, tmp_path):
    out = tmp_path / "out"
    proc = _cli(
        "probe", "--audio", clip_dir / "stereo48k.wav", "--out", out, "--onset", ONSET,
        "--lengths", 20, "--delete", 20, "--reorder", 30, "--reorder-segment", "5-10",
        "--bandstop", 20, "--band", "1000-20000", "--clip-seconds", 4, "--unconditional",
        "--cache-dir", "none", "--quiet",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((out / "metrics.json").read_text())
    spec = doc["spec"]
    assert spec["inject_at"] == "source" and spec["nested_noise"] is True
    assert spec["delete_lengths"] == [20] and spec["reorder_segment"] == [5, 10]
    assert doc["conditioning"] == {"unconditional": 1}  # its sidecar ignored on request
    assert [(c["conditioning"], c["description"]) for c in doc["clips"]] == [
        ("unconditional", None)
    ] * 4
    assert [c["kind"] for c in doc["clips"]] == ["noise", "delete", "reorder", "bandstop"]
    assert set(doc["by_length"]) == {"white", "delete", "reorder5-10", "bandstop1000-20000"}
    assert doc["clips"][1]["regions"]["recovery"][1] == 180  # the deletion copy's own end
    curves = np.load(out / "curves.npz")
    assert curves["pair_clean"].shape == (1, 4, 200)
    assert curves["pair_valid"].sum(-1).tolist() == [[200, 180, 200, 200]]
    np.testing.assert_array_equal(  # after the cut: the clean curve 20 tokens later
        curves["pair_clean"][0, 1, ONSET:180], curves["clean"][0, ONSET + 20 :]
    )
    assert (out / "fig3_loss_curves.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_probe_inject_at_model_is_recorded(clip_dir, tmp_path, capsys):
    out = tmp_path / "model"
    argv = ["probe", "--audio", str(clip_dir / "stereo48k.wav"), "--out", str(out)]
    argv += ["--onset", str(ONSET), "--lengths", "20", "--clip-seconds", "4", "--quiet"]
    argv += ["--inject-at", "model", "--independent-noise", "--cache-dir", "none", "--no-figures"]
    assert main(argv) == 0, capsys.readouterr().err
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["spec"]["inject_at"] == "model" and doc["spec"]["nested_noise"] is False
    assert doc["clips"][0]["conditioning"] == "sidecar"
    assert doc["clips"][0]["description"] == "bright piano arpeggio"


def test_cli_delete_reorder_bandstop_write_exact_files(tmp_path):
    src = write_audio(tmp_path / "in.wav", 44100, 2, seconds=4.0, subtype="FLOAT")
    x, _ = sf.read(src, always_2d=True)
    a, b = 100 * 882, 150 * 882  # tokens 100..150 at 44.1 kHz

    proc = _cli("delete", src, tmp_path / "del.wav", "--onset", 100, "--length", 50)
    assert proc.returncode == 0, proc.stderr
    y, sr = sf.read(tmp_path / "del.wav", always_2d=True)
    assert sr == 44100 and y.shape == (x.shape[0] - (b - a), 2)
    assert np.array_equal(y[:a], x[:a]) and np.array_equal(y[a:], x[b:])
    assert "removed samples [88200, 132300)" in proc.stdout

    proc = _cli("reorder", src, tmp_path / "re.wav", "--onset", 100, "--length", 50,
                "--reorder-segment", "5-20", "--seed", 4)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    y, _ = sf.read(tmp_path / "re.wav", always_2d=True)
    assert (
        np.array_equal(y[:a], x[:a]) and np.array_equal(y[b:], x[b:]) and not np.array_equal(y, x)
    )
    tokens_in = sorted(x[a:b].reshape(50, 882 * 2).tolist())  # the same tokens, another order
    assert sorted(y[a:b].reshape(50, 882 * 2).tolist()) == tokens_in

    proc = _cli("bandstop", src, tmp_path / "bs.wav", "--onset", 100, "--length", 50,
                "--band", "2000-30000")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    y, _ = sf.read(tmp_path / "bs.wav", always_2d=True)
    assert np.array_equal(y[:a], x[:a]) and np.array_equal(y[b:], x[b:])
    spectrum = np.abs(np.fft.rfft(y[a:b, 0]))  # 1 s window: 1 Hz bins
    assert spectrum[2000:].max() < 1e-4 * np.abs(np.fft.rfft(x[a:b, 0]))[:2000].max()


def _bad_cli_cases(tmp):
    good = write_audio(tmp / "good.wav", 48000, 1, seconds=3.0)
    probe = ["probe", "--audio", good, "--out", tmp / "o", "--quiet", "--cache-dir", "none"]
    return {
        "reorder window too short": ([*probe, "--reorder", 40], "--reorder 40"),
        "reorder segment order": ([*probe, "--reorder-segment", "9-3"], "'9-3'"),
        "band order": ([*probe, "--band", "5000-3000"], "'5000-3000'"),
        "band not a range": ([*probe, "--band", "2k"], "'2k'"),
        "no perturbation": ([*probe, "--lengths", "none"], "--lengths is none"),
        "delete zero": ([*probe, "--delete", "0"], "--delete"),
        "inject-at unknown": ([*probe, "--inject-at", "file"], "'file'"),
        "both conditionings": ([*probe, "--unconditional", "--description", "x"], "--description"),
        "delete past end": (["delete", good, tmp / "d.wav", "--onset", 140, "--length", 20], "140"),
        "reorder cli segment": (["reorder", good, tmp / "r.wav", "--length", 30], "--length 30"),
        "bandstop above nyquist": (
            ["bandstop", good, tmp / "b.wav", "--band", "25000-30000"],
            "25000",
        ),
    }


BAD_CLI_CASES = [
    "reorder window too short",
    "reorder segment order",
    "band order",
    "band not a range",
    "no perturbation",
    "delete zero",
    "inject-at unknown",
    "both conditionings",
    "delete past end",
    "reorder cli segment",
    "bandstop above nyquist",
]


@pytest.mark.parametrize("case", BAD_CLI_CASES)
def test_new_flags_bad_input_one_line_exit_2_no_output(tmp_path, capsys, case):
    argv, needle = _bad_cli_cases(tmp_path)[case]
    before = {p.name for p in tmp_path.iterdir()}
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse's own checks (choices, types)
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "error:" in lines[0] and needle in lines[0], err
    assert {p.name for p in tmp_path.iterdir()} == before  # no output, no temp file


def test_bad_input_through_a_subprocess(tmp_path):
    good = write_audio(tmp_path / "good.wav", 32000, 1, seconds=3.0)
    proc = _cli("reorder", good, tmp_path / "r.wav", "--reorder-segment", "10-5")
    assert proc.returncode == 2 and proc.stdout == ""
    assert (
        proc.stderr.count("\n") == 1
        and "--reorder-segment" in proc.stderr
        and "'10-5'" in proc.stderr
    )
    assert not (tmp_path / "r.wav").exists()


# ----------------------------------------------------------------------------- callback
def test_callback_with_token_deletion_in_trainer_fit(clip_dir, tmp_path):
    probe = NoiseProbeCallback(
        probe_audio=clip_dir,
        onset=ONSET,
        lengths=(20,),
        delete_lengths=(20,),
        clip_seconds=4.0,
        unconditional=True,
        cache_dir="none",
        batch_size=4,
        log_figures=False,
    )
    trainer = cpu_trainer(tmp_path, [probe], max_epochs=1, num_sanity_val_steps=0)
    trainer.fit(ProtocolModule())
    result = probe.last_result
    assert result is not None and [p.kind for p in result.perturbations] == ["noise", "delete"]
    assert tuple(result.spec["delete_lengths"]) == (20,)
    assert {c["conditioning"] for c in result.conditioning} == {"unconditional"}
    logged = float(trainer.callback_metrics["noiseprobe/delete/len20/delta_loss"])
    assert logged == pytest.approx(float(result.analysis.delta_loss[:, 1].mean()), rel=1e-5)
    assert result.analysis.regions[:, 1, 2, 1].tolist() == [180, 180]
    with pytest.raises(NoiseProbeError, match="unconditional"):
        NoiseProbeCallback(probe_audio=clip_dir, descriptions="jazz", unconditional=True)


# ----------------------------------------------------------------------------- figures
def test_figure_regions_are_the_logged_regions_for_the_specs_settings(tiny_backend, clip_dir):
    """Fig. 3 shades the regions metrics.json reports, with the spec's smoothing and margin
    (not analyze_curves' defaults: a margin of 9 moves the Recovery start by 4 tokens)."""
    from matplotlib.patches import Rectangle

    from lightning_noiseprobe import plots
    from lightning_noiseprobe.functional.curves import REGION_NAMES

    spec = ProbeSpec(lengths=(20, 50), smoothing=3, margin=9, **SHORT)
    result = score_probe_set(
        tiny_backend, build_probe_set(tiny_backend, clip_dir / "mono32k.wav", spec)
    )
    logged = [clip["regions"] for clip in result.to_json()["clips"]]  # one clip: one per length
    assert [r["recovery"][0] for r in logged] == [ONSET + 20 + 9, ONSET + 50 + 9]

    fig = plots.loss_curves(result)
    try:
        for pert, regions, ax in zip(result.perturbations, logged, fig.axes, strict=False):
            drawn = {
                patch.get_label().lower(): [
                    round(patch.get_x()),
                    round(patch.get_x() + patch.get_width()),
                ]
                for patch in ax.patches
                if isinstance(patch, Rectangle) and patch.get_label().lower() in REGION_NAMES
            }
            shown = {name: span for name, span in regions.items() if span[1] > span[0]}
            assert drawn == shown, pert.key
    finally:
        plots.close(fig)
    assert plots.analysis_settings(result) == {"smoothing": 3, "margin": 9, "regions": "default"}
