"""Tests for lightning_noiseprobe.audio on real files."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from audio_fixtures import (
    AUDIO_CASES,
    AudioCase,
    synth_music,
    write_audio,
    write_empty_wav,
    write_garbage,
    write_nan_wav,
)

from lightning_noiseprobe._errors import NoiseProbeError
from lightning_noiseprobe.audio import convert_audio, load_audio, rms_dbfs, save_audio


def _ls(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ----------------------------------------------------------------------------- load
@pytest.mark.parametrize("case", AUDIO_CASES, ids=str)
def test_load_real_files(tmp_path: Path, case: AudioCase) -> None:
    path = write_audio(tmp_path / case.filename, case.sample_rate, case.channels, seconds=1.0)
    wav, sr, info = load_audio(path, return_info=True)
    ref = torch.from_numpy(synth_music(case.sample_rate, case.channels, 1.0))
    assert wav.dtype == torch.float32 and wav.ndim == 2
    assert sr == case.sample_rate == info.sample_rate
    assert wav.shape[0] == case.channels == info.num_channels
    assert info.backend == "soundfile" and info.format == case.ext.upper()
    if case.lossy:
        # Codecs may pad a little; the level of the music must survive.
        assert abs(wav.shape[1] - ref.shape[1]) < 0.1 * case.sample_rate
        assert abs(float(rms_dbfs(wav) - rms_dbfs(ref))) < 1.0
    else:
        assert wav.shape == ref.shape
        assert info.subtype == "PCM_16"
        assert torch.allclose(wav, ref, atol=1.0 / 32768)
        assert float(wav.abs().max()) > 0.4  # music, not silence


def test_load_pyav_fallback_matches_soundfile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_audio(tmp_path / "a.wav", 48000, 2, seconds=0.5, subtype="PCM_16")
    ref, ref_sr = load_audio(path)

    def refuse(*args: object, **kwargs: object) -> None:
        raise sf.LibsndfileError(0, "pretend libsndfile cannot read this")

    monkeypatch.setattr(sf, "SoundFile", refuse)
    wav, sr, info = load_audio(path, return_info=True)
    assert info.backend == "pyav" and info.subtype is None
    assert sr == ref_sr == 48000
    assert torch.equal(wav, ref)


def test_load_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.wav"
    with pytest.raises(NoiseProbeError, match=r"Audio file '.*nope\.wav' does not exist"):
        load_audio(path)


def test_load_folder(tmp_path: Path) -> None:
    with pytest.raises(NoiseProbeError, match="it is a folder"):
        load_audio(tmp_path)


def test_load_corrupt_file(tmp_path: Path) -> None:
    path = write_garbage(tmp_path / "garbage.wav")
    with pytest.raises(NoiseProbeError) as err:
        load_audio(path)
    msg = str(err.value)
    assert f"Could not decode audio file '{path}'" in msg and "does not exist" not in msg
    assert "Check that it is a valid wav/flac/ogg/mp3 file." in msg


def test_load_truncated_file(tmp_path: Path) -> None:
    path = write_audio(tmp_path / "t.flac", 32000, 1, seconds=0.5)
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(NoiseProbeError, match=r"t\.flac"):
        load_audio(path)


def test_load_empty_audio(tmp_path: Path) -> None:
    path = write_empty_wav(tmp_path / "empty.wav")
    with pytest.raises(NoiseProbeError, match=r"'.*empty\.wav' holds no samples .*0 samples"):
        load_audio(path)


def test_load_nan_audio(tmp_path: Path) -> None:
    path = write_nan_wav(tmp_path / "nan.wav", nan_at=123)
    with pytest.raises(
        NoiseProbeError, match=r"'.*nan\.wav' holds NaN or infinite samples .*sample 123"
    ):
        load_audio(path)


# ----------------------------------------------------------------------------- save
@pytest.mark.parametrize(
    ("ext", "subtype"),
    [("wav", "FLOAT"), ("flac", "PCM_24"), ("ogg", "VORBIS"), ("mp3", "MPEG_LAYER_III")],
)
def test_save_default_subtypes(tmp_path: Path, ext: str, subtype: str) -> None:
    x = torch.from_numpy(synth_music(48000, 2, 0.5))
    path = tmp_path / f"out.{ext}"
    save_audio(path, x, 48000)
    assert _ls(tmp_path) == [path.name]
    wav, sr, info = load_audio(path, return_info=True)
    assert info.subtype == subtype and sr == 48000 and wav.shape[0] == 2
    if ext == "wav":
        assert torch.equal(wav, x)  # float wav is lossless
    elif ext == "flac":
        assert torch.allclose(wav, x, atol=2.0**-23)


@pytest.mark.parametrize("subtype", ["PCM_16", "PCM_24", "FLOAT"])
def test_save_same_subtype_roundtrip_is_exact(tmp_path: Path, subtype: str) -> None:
    src = write_audio(tmp_path / "in.wav", 32000, 2, seconds=0.5, subtype=subtype)
    wav, sr, info = load_audio(src, return_info=True)
    out = tmp_path / "out.wav"
    save_audio(out, wav, sr, subtype=info.subtype)
    again, _, info2 = load_audio(out, return_info=True)
    assert info2.subtype == subtype
    assert torch.equal(again, wav)


def test_save_float_wav_keeps_out_of_range_and_pcm_clips(tmp_path: Path) -> None:
    x = torch.tensor([[0.5, 1.5, -2.0, 0.25]])
    save_audio(tmp_path / "f.wav", x, 32000)
    assert torch.equal(load_audio(tmp_path / "f.wav")[0], x)
    save_audio(tmp_path / "i.wav", x, 32000, subtype="pcm_16")
    y = load_audio(tmp_path / "i.wav")[0]
    assert torch.equal(y, torch.tensor([[0.5, 32767 / 32768, -1.0, 0.25]]))
    assert torch.equal(x, torch.tensor([[0.5, 1.5, -2.0, 0.25]]))  # input not clipped in place


def test_save_unsupported_extension_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(
        NoiseProbeError,
        match=r"'.*out\.aiff' to end in one of .wav, .flac, .ogg, .mp3 but got '.aiff'",
    ):
        save_audio(tmp_path / "out.aiff", torch.zeros(1, 10), 32000)
    assert _ls(tmp_path) == []


def test_save_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(NoiseProbeError, match=r"`subtype` to be one of .* but got 'VORBIS'"):
        save_audio(tmp_path / "a.wav", torch.zeros(1, 10), 32000, subtype="VORBIS")
    with pytest.raises(
        NoiseProbeError, match=r"`sample_rate` to be a positive integer \(Hz\) but got 0"
    ):
        save_audio(tmp_path / "a.wav", torch.zeros(1, 10), 0)
    with pytest.raises(
        NoiseProbeError, match=r"`wav` to be a non-empty tensor of shape \[C, S\] but got \(10,\)"
    ):
        save_audio(tmp_path / "a.wav", torch.zeros(10), 32000)
    with pytest.raises(NoiseProbeError, match="NaN or inf"):
        save_audio(tmp_path / "a.wav", torch.full((1, 10), math.nan), 32000)
    with pytest.raises(NoiseProbeError, match=r"Folder '.*missing' .* does not exist"):
        save_audio(tmp_path / "missing" / "a.wav", torch.zeros(1, 10), 32000)
    assert _ls(tmp_path) == []


def test_save_encoder_failure_leaves_nothing(tmp_path: Path) -> None:
    # libsndfile's mp3 encoder takes at most 2 channels: it fails after the temp file is opened.
    with pytest.raises(NoiseProbeError, match=r"Could not write audio file '.*x\.mp3'"):
        save_audio(tmp_path / "x.mp3", torch.zeros(3, 3200), 32000)
    assert _ls(tmp_path) == []


def test_save_is_atomic_on_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "clip.flac"
    out.write_bytes(b"previous content")
    seen: list[Path] = []

    def write_half_then_fail(file: str, *args: object, **kwargs: object) -> None:
        tmp = Path(file)
        seen.append(tmp)
        tmp.write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(sf, "write", write_half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        save_audio(out, torch.zeros(1, 100), 32000)
    assert len(seen) == 1
    tmp = seen[0]
    assert tmp.parent == tmp_path and tmp.suffix == ".flac" and tmp != out
    assert _ls(tmp_path) == ["clip.flac"]
    assert out.read_bytes() == b"previous content"


# ----------------------------------------------------------------------------- convert
def test_convert_channels() -> None:
    x = torch.from_numpy(synth_music(32000, 2, 0.25))
    mono = convert_audio(x, 32000, 32000, 1)
    assert torch.equal(mono, x.mean(dim=0, keepdim=True))
    up = convert_audio(mono, 32000, 32000, 2)
    assert torch.equal(up[0], mono[0]) and torch.equal(up[1], mono[0])
    batched = convert_audio(x[None].repeat(3, 1, 1), 32000, 32000, 1)
    assert batched.shape == (3, 1, x.shape[1])
    assert convert_audio(x, 32000, 32000, 2) is x
    with pytest.raises(NoiseProbeError, match=r"`to_channels` .* but got 2 -> 3 channels"):
        convert_audio(x, 32000, 32000, 3)
    with pytest.raises(NoiseProbeError, match=r"`to_channels` to be a positive integer but got 0"):
        convert_audio(x, 32000, 32000, 0)
    with pytest.raises(
        NoiseProbeError, match=r"`from_sr` to be a positive integer \(Hz\) but got -1"
    ):
        convert_audio(x, -1, 32000, 1)
    with pytest.raises(NoiseProbeError, match=r"\[\.\.\., C, S\] but got \(5,\)"):
        convert_audio(torch.zeros(5), 32000, 32000, 1)


def test_convert_resample_keeps_the_tone() -> None:
    t48 = torch.arange(48000, dtype=torch.float64) / 48000
    t32 = torch.arange(32000, dtype=torch.float64) / 32000
    x = (0.5 * torch.sin(2 * math.pi * 1000 * t48)).float()[None]
    y = convert_audio(x, 48000, 32000, 1)
    ref = (0.5 * torch.sin(2 * math.pi * 1000 * t32)).float()[None]
    assert y.shape == (1, 32000)
    mid = slice(1000, -1000)
    assert float((y[:, mid] - ref[:, mid]).abs().max()) < 1e-2


# ----------------------------------------------------------------------------- rms
def test_rms_dbfs_convention() -> None:
    assert float(rms_dbfs(torch.ones(2, 10))) == 0.0
    assert (
        abs(float(rms_dbfs(torch.full((1, 10), 10 ** (-30 / 20), dtype=torch.float64))) + 30.0)
        < 1e-9
    )
    t = torch.arange(48000, dtype=torch.float64) / 48000
    assert abs(float(rms_dbfs(torch.sin(2 * math.pi * 440 * t))) + 10 * math.log10(2)) < 1e-6
    assert float(rms_dbfs(torch.zeros(1, 10))) == -math.inf
    per_channel = rms_dbfs(torch.stack([torch.full((4,), 0.1), torch.full((4,), 0.01)]), dim=-1)
    assert torch.allclose(per_channel, torch.tensor([-20.0, -40.0], dtype=torch.float64))
    assert np.isclose(
        float(rms_dbfs(torch.tensor([[3.0, -4.0]]) / 5)), 20 * math.log10(math.sqrt(0.5))
    )
