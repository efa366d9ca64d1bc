"""The on-disk token cache never harms a run: damaged entries are rebuilt, unwritable folders skipped."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from audio_fixtures import write_audio
from proc_helpers import our_tracebacks

from lightning_noiseprobe.cli import main
from lightning_noiseprobe.probe import ProbeSpec, build_probe_set
from lightning_noiseprobe.probe.cache import _entry_checksum, clear_memory_cache

# The same protocol as the CLI flags below (a short one, so each build takes about a second).
SPEC = ProbeSpec(onset=60, lengths=(5, 20, 60), clip_seconds=4.0)
CLI_SPEC = ["--onset", "60", "--lengths", "5,20,60", "--clip-seconds", "4"]
LOGGER = "lightning_noiseprobe.probe.probeset"


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_audio(tmp_path_factory.mktemp("cache_audio") / "clip.wav", 32000, 1, seconds=4.5)


@pytest.fixture(scope="module")
def other_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_audio(tmp_path_factory.mktemp("cache_audio") / "other.flac", 48000, 2, seconds=4.5)


def _cli_probe(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``noiseprobe probe`` on the tiny model as a subprocess, as a user runs it."""
    command = [sys.executable, "-m", "lightning_noiseprobe.cli", "probe", "--model", "tiny"]
    return subprocess.run(
        [*command, *CLI_SPEC, "--no-figures", "--quiet", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def _build(backend, audio, cache: Path):
    clear_memory_cache()  # every build reads the disk cache, as a new run does
    return build_probe_set(backend, audio, SPEC, cache_dir=cache)


def _resave(path: Path, change) -> None:
    """Rewrite a cache entry with ``change(data)`` applied and its checksum made to match."""
    data = torch.load(path, weights_only=True)
    change(data)
    data["checksum"] = _entry_checksum(data["clean"], data["perturbed"], data["tokens"])
    torch.save(data, path)


def _flip_one_byte(path: Path) -> None:
    """Flip the lowest bit of one stored code: the file still loads, a code is wrong."""
    data = torch.load(path, weights_only=True)
    raw = bytearray(path.read_bytes())
    at = bytes(raw).find(data["clean"][0, 10:14].numpy().tobytes())
    assert at > 0
    raw[at] ^= 1
    path.write_bytes(bytes(raw))


def _out_of_range(data: dict) -> None:
    data["clean"][1, 5] = 2048  # the codec's cardinality: one past the last code


def _wrong_shape(data: dict) -> None:
    data["clean"] = data["clean"][:, :-7].clone()
    data["perturbed"] = data["perturbed"][..., :-7].clone()


def _wrong_dtype(data: dict) -> None:
    data["clean"] = data["clean"].int()


def _too_many_tokens(data: dict) -> None:
    data["tokens"][0] = data["clean"].shape[-1] + 1  # a copy longer than its clip


DAMAGE = {
    "flipped-byte": (_flip_one_byte, "checksum does not match"),
    "out-of-range-code": (lambda p: _resave(p, _out_of_range), "codes in [0, 2048)"),
    "wrong-shape": (lambda p: _resave(p, _wrong_shape), "frames for this clip"),
    "wrong-dtype": (lambda p: _resave(p, _wrong_dtype), "dtype torch.int64 but got torch.int32"),
    "bad-token-count": (lambda p: _resave(p, _too_many_tokens), "'tokens' of shape"),
    "no-checksum": (
        lambda p: torch.save({k: v for k, v in torch.load(p).items() if k != "checksum"}, p),
        "'checksum'",
    ),
    "not-torch": (lambda p: p.write_bytes(b"PK\x03\x04 truncated"), "unreadable"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_entry_is_rebuilt_with_a_warning(tiny_backend, clip, tmp_path, caplog, damage):
    first = _build(tiny_backend, clip, tmp_path)
    (entry,) = tmp_path.glob("*.pt")
    corrupt, problem = DAMAGE[damage]
    corrupt(entry)

    with caplog.at_level(logging.WARNING, logger=LOGGER):
        again = _build(tiny_backend, clip, tmp_path)
    (message,) = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert str(entry) in message and problem in message and "rebuilt" in message
    assert again.encoded_clips == 1  # encoded again, not crashed or trusted
    # the same process and code path: the rebuilt codes are the same bits
    assert torch.equal(again.clean_codes, first.clean_codes)
    assert torch.equal(again.perturbed_codes, first.perturbed_codes)
    assert sorted(p.name for p in tmp_path.iterdir()) == [entry.name]  # overwritten in place

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        third = _build(tiny_backend, clip, tmp_path)
    assert third.encoded_clips == 0 and not caplog.records  # the rewritten entry is valid


def test_cli_probe_rebuilds_a_damaged_entry(tiny_backend, clip, tmp_path):
    """A flipped byte in the cache used to crash every later run with IndexError."""
    cache = tmp_path / "cache"
    _build(tiny_backend, clip, cache)  # what an earlier run left
    (entry,) = cache.glob("*.pt")
    _resave(entry, _out_of_range)
    proc = _cli_probe(
        "--audio", str(clip), "--out", str(tmp_path / "out"), "--cache-dir", str(cache)
    )
    assert proc.returncode == 0, proc.stderr
    assert not our_tracebacks(proc.stderr), proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if "probe cache file" in line]
    assert len(warnings) == 1 and str(entry) in warnings[0] and "[0, 2048)" in warnings[0]
    assert (tmp_path / "out" / "metrics.json").is_file()
    assert [p.name for p in cache.glob("*.pt")] == [entry.name]  # the same key, rewritten
    assert _build(tiny_backend, clip, cache).encoded_clips == 0  # and valid again


def test_unwritable_cache_folder_warns_once_and_runs_uncached(
    tiny_backend, clip, other_clip, tmp_path, caplog
):
    # Tests may run as root, which ignores permission bits: the portable unwritable
    # folder is one under a regular file; a chmod 0555 folder is tried when not root.
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    caches = [blocker / "cache"]
    if os.geteuid() != 0:
        caches.append(tmp_path / "read_only")
        caches[-1].mkdir(mode=0o555)
    for cache in caches:
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            for _ in range(2):  # two runs in one process, two clips each: one warning
                ps = _build(tiny_backend, [clip, other_clip], cache)
                assert len(ps) == 2 and ps.encoded_clips == 2
        messages = [r.getMessage() for r in caplog.records if r.name == LOGGER]
        assert len(messages) == 1, messages
        assert str(cache) in messages[0] and "Cannot write" in messages[0]
    if os.geteuid() != 0:  # a read-only cache's valid entries are still used
        cache = tmp_path / "filled"
        _build(tiny_backend, clip, cache)
        cache.chmod(0o555)
        try:
            assert _build(tiny_backend, clip, cache).encoded_clips == 0
        finally:
            cache.chmod(0o755)


def test_cli_probe_with_unwritable_default_cache(clip, other_clip, tmp_path, monkeypatch, caplog):
    """A read-only home (the default cache folder): one warning, the probe still runs.

    In process (the subprocess path is covered above), so the suite stays fast.
    """
    blocker = tmp_path / "home_is_a_file"
    blocker.write_text("")
    monkeypatch.setenv("NOISEPROBE_CACHE", str(blocker / "tokens"))
    clear_memory_cache()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        audio = ["--audio", str(clip), str(other_clip)]
        code = main(
            [
                "probe",
                "--model",
                "tiny",
                *CLI_SPEC,
                "--no-figures",
                "--quiet",
                *audio,
                "--out",
                str(tmp_path / "out"),
            ]
        )
    assert code == 0
    messages = [r.getMessage() for r in caplog.records if "Cannot write" in r.getMessage()]
    assert len(messages) == 1 and str(blocker / "tokens") in messages[0]
    assert (tmp_path / "out" / "metrics.json").is_file()
