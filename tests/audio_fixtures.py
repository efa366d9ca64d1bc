"""Small real audio files for tests, reusable by any test module.

The signal is music-like, not silence: a short arpeggio of harmonic notes (six
partials each, decaying 1/k) with attack/decay envelopes; in stereo the right
channel plays a different voicing, so the channels differ. Files are written
with ``soundfile`` directly (not with the package's ``save_audio``), so fixtures
do not depend on the code under test.

Usage from another test module (``tests/`` is on ``sys.path`` under pytest)::

    from audio_fixtures import AUDIO_CASES, write_audio

    @pytest.mark.parametrize("case", AUDIO_CASES, ids=str)
    def test_something(tmp_path, case):
        path = write_audio(tmp_path / case.filename, case.sample_rate, case.channels)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "AUDIO_CASES",
    "AudioCase",
    "synth_music",
    "write_audio",
    "write_empty_wav",
    "write_garbage",
    "write_nan_wav",
]

# MIDI notes of a C major arpeggio (left / mono) and a voicing for the right channel.
_LEFT_NOTES = (60, 64, 67, 72, 67, 64, 60, 55)
_RIGHT_NOTES = (48, 55, 52, 60, 57, 53, 55, 43)


@dataclass(frozen=True)
class AudioCase:
    """One kind of fixture file: extension, sample rate, channel count."""

    ext: str
    sample_rate: int
    channels: int

    @property
    def filename(self) -> str:
        return f"music_{self.sample_rate // 1000}k_{self.channels}ch.{self.ext}"

    @property
    def lossy(self) -> bool:
        return self.ext in ("ogg", "mp3")

    def __str__(self) -> str:
        return (
            f"{self.ext}-{self.sample_rate // 1000}k-{'mono' if self.channels == 1 else 'stereo'}"
        )


#: The file kinds the tests cover: wav mono 32 kHz, wav stereo 48 kHz, flac, ogg, mp3.
AUDIO_CASES: tuple[AudioCase, ...] = (
    AudioCase("wav", 32000, 1),
    AudioCase("wav", 48000, 2),
    AudioCase("flac", 32000, 2),
    AudioCase("flac", 48000, 1),
    AudioCase("ogg", 32000, 1),
    AudioCase("ogg", 48000, 2),
    AudioCase("mp3", 32000, 1),
    AudioCase("mp3", 48000, 2),
)


def _notes(midi: tuple[int, ...], t: np.ndarray, seconds: float) -> np.ndarray:
    out = np.zeros_like(t)
    dur = seconds / len(midi)
    for i, note in enumerate(midi):
        f0 = 440.0 * 2.0 ** ((note - 69) / 12)
        local = t - i * dur
        active = (local >= 0) & (local < 1.5 * dur)  # notes ring into the next one
        lt = local[active]
        env = np.minimum(lt / 0.01, 1.0) * np.exp(-lt / (0.4 * dur))
        tone = sum(np.sin(2 * np.pi * k * f0 * lt) / k for k in range(1, 7) if k * f0 < 15000)
        out[active] += env * tone
    return out


def synth_music(
    sample_rate: int = 32000, channels: int = 1, seconds: float = 2.0, peak: float = 0.5
) -> np.ndarray:
    """A few harmonic notes with envelopes, shape ``[C, S]``, float32, peak ``peak``.

    >>> x = synth_music(32000, 2, 1.0)
    >>> x.shape, x.dtype, round(float(abs(x).max()), 3)
    ((2, 32000), dtype('float32'), 0.5)
    """
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    left = _notes(_LEFT_NOTES, t, seconds)
    rows = [left] if channels == 1 else [left, _notes(_RIGHT_NOTES, t, seconds) + 0.3 * left]
    while len(rows) < channels:
        rows.append(0.5 * rows[-1])
    x = np.stack(rows)
    return (peak * x / np.abs(x).max()).astype(np.float32)


def write_audio(
    path: str | Path,
    sample_rate: int = 32000,
    channels: int = 1,
    seconds: float = 2.0,
    subtype: str | None = None,
) -> Path:
    """Write :func:`synth_music` to ``path``; the format follows the extension.

    ``subtype`` is a soundfile subtype (``"PCM_16"``, ``"FLOAT"``, ...); ``None``
    uses soundfile's default (PCM_16 for wav and flac).
    """
    import soundfile as sf

    path = Path(path)
    sf.write(str(path), synth_music(sample_rate, channels, seconds).T, sample_rate, subtype=subtype)
    return path


def write_garbage(path: str | Path, size: int = 4096) -> Path:
    """Bytes that are no audio format at all (e.g. under a ``.wav`` name)."""
    path = Path(path)
    path.write_bytes((b"this is not audio; " * (size // 19 + 1))[:size])
    return path


def write_empty_wav(path: str | Path, sample_rate: int = 32000, channels: int = 1) -> Path:
    """A valid wav header with zero samples."""
    import soundfile as sf

    path = Path(path)
    sf.write(str(path), np.zeros((0, channels), dtype=np.float32), sample_rate, subtype="PCM_16")
    return path


def write_nan_wav(path: str | Path, sample_rate: int = 32000, nan_at: int = 100) -> Path:
    """A float wav with music and one NaN sample at index ``nan_at``."""
    import soundfile as sf

    path = Path(path)
    x = synth_music(sample_rate, 1, 0.1)
    x[0, nan_at] = np.nan
    sf.write(str(path), x.T, sample_rate, subtype="FLOAT")
    return path
