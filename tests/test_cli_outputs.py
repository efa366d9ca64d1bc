"""The CLI never harms its inputs or leaves half an output (issue 10, items 6, 7, 8, 11).

Every refusal must be: exit status 2, one line on stderr naming the user's flag
(or file) and the value, inputs unchanged, nothing written, and no work done
before it (loading the model or starting the demo fails the test). Each kind of
case runs once through the real ``noiseprobe`` command in a subprocess; the
tables of cases call the same ``main()`` in this process (importing torch in a
fresh process for each case would cost seconds apiece).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import signal
import stat
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from audio_fixtures import write_audio

from lightning_noiseprobe.cli import main
from lightning_noiseprobe.report import OUTPUT_FILES

# Run the CLI as the console script does; the two stand-ins make a refusal that
# comes after the work has started visible as exit status 3.
_NO_WORK = textwrap.dedent(
    """
    import sys, types
    import lightning_noiseprobe.backends.base as base

    def _started(*args, **kwargs):
        print("work started", file=sys.stderr)
        sys.exit(3)

    base.get_backend = _started
    sys.modules["lightning_noiseprobe.demo"] = types.SimpleNamespace(run_demo=_started)
    from lightning_noiseprobe.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)


def _cli(*argv, cwd=None, work_guard=False):
    """Run ``noiseprobe ARGV`` in a subprocess; returns (exit status, stdout, stderr)."""
    code = ["-c", _NO_WORK] if work_guard else ["-m", "lightning_noiseprobe.cli"]
    proc = subprocess.run(
        [sys.executable, *code, *map(str, argv)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return proc.returncode, proc.stdout, proc.stderr


def _main(argv, capsys, monkeypatch):
    """Run ``main(ARGV)`` here, with loading a model or starting the demo forbidden."""

    def started(*args, **kwargs):
        raise AssertionError("the work started before the refusal")

    monkeypatch.setattr("lightning_noiseprobe.backends.base.get_backend", started)
    monkeypatch.setitem(
        sys.modules, "lightning_noiseprobe.demo", types.SimpleNamespace(run_demo=started)
    )
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse's own checks
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("noiseprobe") and "error:" in lines[0], err
    return lines[0]


def _snapshot(folder: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``folder`` (hidden ones included)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _write_loss_csvs(folder: Path) -> tuple[Path, Path]:
    T = 400
    clean = 3 + 0.3 * np.sin(np.arange(T))
    pert = clean.copy()
    pert[250:255] += 2.0
    pert[255:350] -= 1.0
    for name, values in (("clean.csv", clean), ("pert.csv", pert)):
        np.savetxt(
            folder / name,
            np.c_[np.arange(T), values],
            delimiter=",",
            header="token,loss",
            comments="",
        )
    return folder / "clean.csv", folder / "pert.csv"


# ----------------------------------------------------------------------------- item 6
@pytest.mark.parametrize("how", ["same path", "symlink", "dot-dot", "hard link", "perturbed"])
def test_analyze_refuses_json_that_is_an_input(tmp_path, capsys, monkeypatch, how):
    clean, pert = _write_loss_csvs(tmp_path)
    (tmp_path / "sub").mkdir()
    json_arg = {
        "same path": clean,
        "symlink": tmp_path / "link.csv",
        "dot-dot": tmp_path / "sub" / ".." / "clean.csv",
        "hard link": tmp_path / "hard.csv",
        "perturbed": pert,
    }[how]
    os.symlink(clean, tmp_path / "link.csv")
    os.link(clean, tmp_path / "hard.csv")
    before = _snapshot(tmp_path)
    argv = ["analyze", "--clean", clean, "--perturbed", pert, "--onset", 250, "--length", 100]
    if how == "symlink":  # once through the real command
        code, out, err = _cli(*argv, "--json", json_arg)
    else:
        code, out, err = _main([*argv, "--json", json_arg], capsys, monkeypatch)
    assert code == 2 and out == ""
    line = _one_error_line(err)
    flag = "--perturbed" if how == "perturbed" else "--clean"
    assert f"--json '{json_arg}'" in line and flag in line, line
    assert _snapshot(tmp_path) == before  # the input is intact, nothing else written


@pytest.mark.parametrize("command", ["inject", "shuffle"])
def test_inject_and_shuffle_refuse_output_that_is_the_input_through_a_symlink(tmp_path, command):
    src = write_audio(tmp_path / "a.wav", 32000, 1, seconds=8.0)
    os.symlink(src, tmp_path / "alias.wav")
    before = _snapshot(tmp_path)
    code, _, err = _cli(command, src, tmp_path / "alias.wav")
    assert code == 2
    line = _one_error_line(err)
    assert "OUTPUT" in line and "alias.wav" in line and "INPUT" in line, line
    assert _snapshot(tmp_path) == before


# ----------------------------------------------------------------------------- item 7
def _unwritable_cases(tmp: Path) -> dict[str, tuple[list, str]]:
    audio = write_audio(tmp / "a.wav", 32000, 1, seconds=4.5)
    clean, pert = _write_loss_csvs(tmp)
    plain = tmp / "plain.txt"
    plain.write_text("a regular file")
    os.mkfifo(tmp / "fifo")
    probe = ["probe", "--audio", audio, "--quiet", "--device", "cpu"]
    analyze = ["analyze", "--clean", clean, "--perturbed", pert, "--onset", 250, "--length", 100]
    return {
        "probe --out under a file": ([*probe, "--out", plain / "out"], "--out"),
        "probe --out is a file": ([*probe, "--out", plain], "--out"),
        "probe --out is a FIFO": ([*probe, "--out", tmp / "fifo"], "--out"),
        "probe --out in /proc": ([*probe, "--out", "/proc/noiseprobe-out"], "--out"),
        "probe --cache-dir under a file": (
            [*probe, "--out", tmp / "o", "--cache-dir", plain / "cache"],
            "--cache-dir",
        ),
        "analyze --json under a file": ([*analyze, "--json", plain / "r.json"], "--json"),
        "analyze --json is a folder": ([*analyze, "--json", tmp], "--json"),
        "demo --workdir under a file": (["demo", "--workdir", plain / "run"], "--workdir"),
        "demo --workdir in /proc": (["demo", "--workdir", "/proc/noiseprobe-demo"], "--workdir"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "probe --out under a file",
        "probe --out is a file",
        "probe --out is a FIFO",
        "probe --out in /proc",
        "probe --cache-dir under a file",
        "analyze --json under a file",
        "analyze --json is a folder",
        "demo --workdir under a file",
        "demo --workdir in /proc",
    ],
)
def test_unwritable_output_is_refused_before_any_work(tmp_path, capsys, monkeypatch, case):
    argv, flag = _unwritable_cases(tmp_path)[case]
    before = _snapshot(tmp_path)
    names = sorted(p.name for p in tmp_path.iterdir())
    if case == "probe --out under a file":  # once through the real command
        code, _, err = _cli(*argv, cwd=tmp_path, work_guard=True)
    else:
        monkeypatch.chdir(tmp_path)
        code, _, err = _main(argv, capsys, monkeypatch)
    assert code == 2, err  # 3 would mean the model was loaded / the demo started first
    line = _one_error_line(err)
    value = str(argv[argv.index(flag) + 1])
    assert f"{flag} '{value}'" in line, line
    assert _snapshot(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == names


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a 0555 folder anyway")
def test_read_only_folder_is_refused(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        code, _, err = _cli("demo", "--workdir", folder / "run", work_guard=True)
    finally:
        folder.chmod(0o755)
    assert code == 2 and "--workdir" in _one_error_line(err)


_PROBE = ["--onset", "60", "--lengths", "5", "--clip-seconds", "4", "--quiet", "--device", "cpu"]


def _killed_writer(out: Path) -> None:
    """Start writing a probe output set into ``out`` the way ``ProbeResult.save``
    does, and die by SIGKILL half way (a user's kill -9, the OOM killer)."""
    code = textwrap.dedent(
        f"""
        import os, signal
        from lightning_noiseprobe._io import atomic_dir
        from lightning_noiseprobe.report import OUTPUT_FILES
        with atomic_dir({str(out)!r}, owned=OUTPUT_FILES) as tmp:
            (tmp / "metrics.json").write_text("half")
            os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr


def _temps(out: Path) -> list[str]:
    prefix = f".{out.name}."
    found = [p.name for p in out.parent.iterdir() if p.name.startswith(prefix)]
    if out.is_dir():
        found += [p.name for p in out.iterdir() if p.name.startswith(".")]
    return found


def test_probe_output_set_is_all_or_nothing(tmp_path, capsys, monkeypatch):
    audio = write_audio(tmp_path / "a.wav", 32000, 1, seconds=4.5)
    out = tmp_path / "out"

    # A killed run before this one: its temporary folder beside a new --out ...
    _killed_writer(out)
    assert len(_temps(out)) == 1 and not out.exists()
    # ... and, once --out exists, inside it; plus an earlier run's full set and a file of the user's.
    out.mkdir()
    for name in OUTPUT_FILES:
        (out / name).write_text("old")
    (out / "notes.txt").write_text("the user's own file")
    beside = _temps(out)
    _killed_writer(out)  # a later writer removes the first one's leftovers, and leaves its own
    assert len(_temps(out)) == 1 and _temps(out) != beside
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == _temps(out)

    argv = ["probe", "--audio", audio, "--out", out, "--cache-dir", "none", *_PROBE]
    code = main([*map(str, argv), "--no-figures"])
    assert code == 0, capsys.readouterr().err
    # the new set replaced the old one: no stale figures that look like this run's
    assert sorted(p.name for p in out.iterdir()) == ["curves.npz", "metrics.json", "notes.txt"]
    assert json.loads((out / "metrics.json").read_text())["spec"]["onset"] == 60
    assert np.load(out / "curves.npz")["perturbed"].shape[:2] == (1, 1)
    assert (out / "notes.txt").read_text() == "the user's own file"
    assert _temps(out) == []  # the killed runs' leftovers are gone
    capsys.readouterr()

    # A full disk while writing the last figure: --out keeps exactly what it had.
    from lightning_noiseprobe import plots

    def full_disk(result):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(plots, "region_distributions", full_disk)
    before = _snapshot(out)
    code = main(list(map(str, argv)))
    err = capsys.readouterr().err
    assert code == 2
    line = _one_error_line(err)
    assert f"--out '{out}'" in line and "No space left on device" in line, line
    assert _snapshot(out) == before
    assert _temps(out) == []


def test_a_running_writer_keeps_its_temporary_folder(tmp_path):
    """Leftovers are told from a live run by its lock, not guessed from names or age."""
    from lightning_noiseprobe._io import atomic_dir

    out = tmp_path / "out"
    other = textwrap.dedent(
        f"""
        from lightning_noiseprobe._io import atomic_dir
        with atomic_dir({str(out)!r}) as tmp:
            (tmp / "b.txt").write_text("b")
        """
    )
    with atomic_dir(out) as mine:
        (mine / "a.txt").write_text("a")
        proc = subprocess.run([sys.executable, "-c", other], capture_output=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert (mine / "a.txt").read_text() == "a"  # the other writer did not take it for litter
    assert sorted(p.name for p in out.iterdir()) == ["a.txt"]  # the last to finish wins, whole
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


# ----------------------------------------------------------------------------- item 8
def _modes(folder: Path) -> dict[str, int]:
    return {
        str(p.relative_to(folder)): stat.S_IMODE(p.stat().st_mode)
        for p in [folder, *sorted(folder.rglob("*"))]
    }


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def test_exported_models_and_rendered_dataset_are_readable_by_others(tmp_path, umask_022):
    from lightning_noiseprobe.data.chorales import write_chorale_dataset
    from lightning_noiseprobe.module import MusicGenLightningModule

    folder = MusicGenLightningModule(model="tiny").export(tmp_path / "export")
    assert sorted(p.name for p in folder.iterdir()) == [
        "compression_state_dict.bin",
        "state_dict.bin",
    ]
    exported = _modes(folder)
    assert exported == {".": 0o755, "compression_state_dict.bin": 0o644, "state_dict.bin": 0o644}
    MusicGenLightningModule(model="tiny", seed=1).export(folder)  # into the existing folder
    assert _modes(folder) == exported
    assert [p.name for p in tmp_path.iterdir()] == ["export"]  # no temporary leftovers

    data = tmp_path / "chorales"
    write_chorale_dataset(data, num_clips=1, seconds=1.0)
    modes = _modes(data)
    assert modes.pop(".") == 0o755
    assert len(modes) == 4 and set(modes.values()) == {0o644}, (
        modes
    )  # wav, sidecar, manifest, dataset.json


def test_transformers_save_is_readable_by_others(tmp_path, umask_022):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from lightning_noiseprobe.backends.transformers import TransformersBackend

    backend = TransformersBackend(model="tiny", seed=0).load()
    folder = backend.save(tmp_path / "hf")
    backend.save(folder)  # an earlier save is replaced
    modes = _modes(folder)
    assert modes.pop(".") == 0o755
    assert modes and set(modes.values()) == {0o644}, modes
    assert [p.name for p in tmp_path.iterdir()] == ["hf"]


def test_outputs_follow_a_stricter_umask(tmp_path):
    from lightning_noiseprobe._io import atomic_dir, atomic_path

    old = os.umask(0o027)
    try:
        with atomic_dir(tmp_path / "set") as tmp:
            (tmp / "a.txt").write_text("a")
        with atomic_path(tmp_path / "b.txt") as tmp:
            tmp.write_text("b")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "set").stat().st_mode) == 0o750
    assert stat.S_IMODE((tmp_path / "b.txt").stat().st_mode) == 0o640


# ----------------------------------------------------------------------------- item 11
def _bad_value_cases(tmp: Path) -> dict[str, tuple[list, list[str]]]:
    audio = write_audio(tmp / "a.wav", 32000, 1, seconds=8.0)
    clean, pert = _write_loss_csvs(tmp)
    garbage_mp3 = tmp / "broken.mp3"
    garbage_mp3.write_bytes(np.random.default_rng(0).integers(0, 256, 6000, np.uint8).tobytes())
    os.mkfifo(tmp / "fifo")
    analyze = ["analyze", "--clean", clean, "--perturbed", pert, "--onset", 250, "--length", 100]
    inject = ["inject", audio, tmp / "o.wav"]
    probe = ["probe", "--audio", audio, "--out", tmp / "out", "--quiet"]
    return {
        "negative margin": ([*analyze, "--margin", -100], ["--margin", "-100"]),
        "even smoothing": ([*analyze, "--smoothing", 4], ["--smoothing", "4"]),
        "zero smoothing": ([*analyze, "--smoothing", 0], ["--smoothing", "0"]),
        "smoothing past the curve": ([*analyze, "--smoothing", 1001], ["--smoothing", "1001"]),
        "level above full scale": ([*inject, "--level-dbfs", 200], ["--level-dbfs", "200"]),
        "relative level above full scale": (
            [*inject, "--level-db-rel", 40],
            ["--level-db-rel", "40"],
        ),
        "probe level above full scale": ([*probe, "--level-dbfs", 3], ["--level-dbfs", "3"]),
        "empty length": ([*probe, "--lengths", "5,,10"], ["--lengths", "5,,10"]),
        "duplicate lengths": ([*probe, "--lengths", "5,10,5"], ["--lengths", "5"]),
        "zero length": ([*probe, "--lengths", "5,0"], ["--lengths", "0"]),
        "duplicate noises": ([*probe, "--noise", "white,white"], ["--noise", "white"]),
        "unknown noise": ([*probe, "--noise", "red"], ["--noise", "red"]),
        "device tpu9": ([*probe, "--device", "tpu9"], ["--device", "tpu9"]),
        "device mps": ([*probe, "--device", "mps"], ["--device", "mps"]),
        "device meta": ([*probe, "--device", "meta"], ["--device", "meta"]),
        "device cuda:99": ([*probe, "--device", "cuda:99"], ["--device", "cuda:99"]),
        "zero frame rate": ([*inject, "--frame-rate", 0], ["--frame-rate", "0"]),
        "FIFO as the audio input": (["inject", tmp / "fifo", tmp / "o.wav"], ["fifo", "a FIFO"]),
        "FIFO as the probe audio": (
            ["probe", "--audio", tmp / "fifo", "--out", tmp / "out"],
            ["fifo", "a FIFO"],
        ),
        "undecodable mp3": (["inject", garbage_mp3, tmp / "o.wav"], ["broken.mp3", "decode"]),
    }


BAD_VALUES = [
    "negative margin",
    "even smoothing",
    "zero smoothing",
    "smoothing past the curve",
    "level above full scale",
    "relative level above full scale",
    "probe level above full scale",
    "empty length",
    "duplicate lengths",
    "zero length",
    "duplicate noises",
    "unknown noise",
    "device tpu9",
    "device mps",
    "device meta",
    "device cuda:99",
    "zero frame rate",
    "FIFO as the audio input",
    "FIFO as the probe audio",
    "undecodable mp3",
]


@pytest.mark.parametrize("case", BAD_VALUES)
def test_bad_values_are_refused_naming_the_flag(tmp_path, capsys, monkeypatch, case):
    argv, needles = _bad_value_cases(tmp_path)[case]
    before = _snapshot(tmp_path)
    # once through the real command each: a level, and the mp3 decoder's own chatter on stderr
    if case in ("level above full scale", "undecodable mp3"):
        code, _, err = _cli(*argv, work_guard=True)
    else:
        code, _, err = _main(argv, capsys, monkeypatch)
    assert code == 2, err
    line = _one_error_line(err)
    for needle in needles:
        assert needle in line, line
    # never the library's argument names (`lengths`, `wav`), never a misleading diagnosis
    assert not re.search(r"`[a-z_]+`", line), line
    for wrong in ("level_dbfs", "noises", "nll", "does not exist", "a folder"):
        assert wrong not in line, line
    assert _snapshot(tmp_path) == before


def test_allow_clipping_writes_noise_clipped_to_full_scale(tmp_path):
    src = write_audio(tmp_path / "a.wav", 32000, 1, seconds=8.0, subtype="FLOAT")
    code, _, err = _cli("inject", src, tmp_path / "o.wav", "--level-dbfs", 6, "--allow-clipping")
    assert code == 0, err
    x, _ = sf.read(src)
    y, _ = sf.read(tmp_path / "o.wav")
    start, end = 160000, 224000
    assert np.array_equal(x[:start], y[:start]) and np.array_equal(x[end:], y[end:])
    assert np.abs(y).max() == 1.0 and np.mean(np.abs(y[start:end]) == 1.0) > 0.5
