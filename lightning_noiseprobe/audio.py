"""Reading, writing and converting audio files.

Waveforms are ``torch.Tensor`` of shape ``[C, S]`` (channels, samples), float32,
with full scale at amplitude 1.0. ``soundfile`` and ``av`` are imported inside the
functions that need them, so importing this module stays cheap.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, overload

import numpy as np
import torch

from lightning_noiseprobe._errors import NoiseProbeError

__all__ = [
    "AUDIO_FORMATS",
    "AudioInfo",
    "convert_audio",
    "load_audio",
    "rms_dbfs",
    "save_audio",
]

#: Extension -> (libsndfile format, default subtype) for :func:`save_audio`.
AUDIO_FORMATS: dict[str, tuple[str, str]] = {
    ".wav": ("WAV", "FLOAT"),
    ".flac": ("FLAC", "PCM_24"),
    ".ogg": ("OGG", "VORBIS"),
    ".mp3": ("MP3", "MPEG_LAYER_III"),
}

_FLOAT_SUBTYPES = ("FLOAT", "DOUBLE")
_READ_HINT = "Check that it is a valid wav/flac/ogg/mp3 file."


@dataclass(frozen=True)
class AudioInfo:
    """What :func:`load_audio` learned about a file.

    Attributes:
        sample_rate: Samples per second.
        num_channels: ``C``.
        num_frames: ``S``, the number of samples per channel actually decoded.
        format: The libsndfile major format (``"WAV"``, ``"FLAC"``, ``"OGG"``, ``"MP3"``)
            or, when PyAV decoded the file, the container name PyAV reports.
        subtype: The libsndfile subtype (``"PCM_16"``, ``"FLOAT"``, ``"VORBIS"``, ...), or
            ``None`` when PyAV decoded the file. Pass it to :func:`save_audio` to write
            the same sample format back.
        backend: ``"soundfile"`` or ``"pyav"``.
    """

    sample_rate: int
    num_channels: int
    num_frames: int
    format: str
    subtype: str | None
    backend: str

    @property
    def duration(self) -> float:
        """Duration in seconds."""
        return self.num_frames / self.sample_rate


def _read_soundfile(path: Path) -> tuple[np.ndarray, AudioInfo]:
    import soundfile as sf

    with sf.SoundFile(str(path)) as f:
        data = f.read(dtype="float32", always_2d=True)  # [S, C]
        info = AudioInfo(
            sample_rate=int(f.samplerate),
            num_channels=int(f.channels),
            num_frames=int(data.shape[0]),
            format=str(f.format),
            subtype=str(f.subtype),
            backend="soundfile",
        )
    return np.ascontiguousarray(data.T), info


def _read_pyav(path: Path) -> tuple[np.ndarray, AudioInfo]:
    import av

    with av.open(str(path)) as container:
        if not container.streams.audio:
            raise ValueError("the file has no audio stream")
        stream = container.streams.audio[0]
        ctx = stream.codec_context
        sample_rate = int(ctx.sample_rate or stream.rate or 0)
        channels = int(ctx.layout.nb_channels)
        if sample_rate <= 0 or channels <= 0:
            raise ValueError(f"unknown sample rate ({sample_rate}) or channel count ({channels})")
        resampler = av.AudioResampler(format="fltp", layout=ctx.layout, rate=sample_rate)
        chunks: list[np.ndarray] = []
        for frame in container.decode(stream):
            chunks.extend(out.to_ndarray() for out in resampler.resample(frame))
        chunks.extend(out.to_ndarray() for out in resampler.resample(None))
        fmt = str(container.format.name)
    data = (
        np.concatenate(chunks, axis=1).astype(np.float32, copy=False)
        if chunks
        else np.zeros((channels, 0), dtype=np.float32)
    )
    info = AudioInfo(sample_rate, channels, int(data.shape[1]), fmt, None, "pyav")
    return np.ascontiguousarray(data), info


@contextlib.contextmanager
def _decoder_messages_held() -> Iterator[None]:
    """Hold back what C decoders print to file descriptor 2 while reading a file.

    libsndfile's mp3 decoder (libmpg123) prints ``Note: Illegal Audio-MPEG-Header
    ...`` lines straight to stderr on a damaged file. Those lines are dropped when
    decoding fails (the :class:`NoiseProbeError` then says what went wrong, in
    one line) and written out unchanged when it succeeds.
    """
    import sys
    import tempfile

    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable fd 2 (e.g. a GUI): nothing to hold
        yield
        return
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            raise
        else:
            os.dup2(saved, 2)
            held.seek(0)
            text = held.read()
            if text:
                os.write(2, text)
        finally:
            os.close(saved)


def _reason(exc: BaseException) -> str:
    """The library's own words, without the file name it repeats."""
    for attr in ("error_string", "strerror"):  # soundfile.LibsndfileError, av.FFmpegError
        text = getattr(exc, attr, None)
        if isinstance(text, str) and text:
            return text.rstrip(".")
    return str(exc).rstrip(".") or type(exc).__name__


@overload
def load_audio(
    path: str | os.PathLike[str], *, return_info: Literal[False] = ...
) -> tuple[torch.Tensor, int]: ...
@overload
def load_audio(
    path: str | os.PathLike[str], *, return_info: Literal[True]
) -> tuple[torch.Tensor, int, AudioInfo]: ...
def load_audio(
    path: str | os.PathLike[str], *, return_info: bool = False
) -> tuple[torch.Tensor, int] | tuple[torch.Tensor, int, AudioInfo]:
    """Read an audio file into a float32 tensor.

    ``soundfile`` (libsndfile: wav, flac, ogg, mp3, ...) is tried first; files it
    cannot read are decoded with PyAV (FFmpeg), which covers m4a/aac, opus in
    other containers, and so on. Integer PCM is scaled to ``[-1, 1)``; float files
    keep their values, even outside ``[-1, 1]``.

    Args:
        path: The audio file.
        return_info: Also return an :class:`AudioInfo` (format, subtype, ...), e.g. to
            write the result back with the same subtype.

    Returns:
        ``(wav, sample_rate)`` with ``wav`` of shape ``[C, S]`` and dtype float32, or
        ``(wav, sample_rate, info)`` when ``return_info`` is true.

    Raises:
        NoiseProbeError: If the file is missing, is not a regular file (a folder,
            a FIFO), cannot be read or decoded, holds no samples, or holds NaN
            or infinite samples.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     save_audio(f"{folder}/a.wav", torch.zeros(2, 320), 32000, subtype="PCM_16")
        ...     wav, sr, info = load_audio(f"{folder}/a.wav", return_info=True)
        >>> wav.shape, wav.dtype, sr, info.subtype, info.duration
        (torch.Size([2, 320]), torch.float32, 32000, 'PCM_16', 0.01)
    """
    from lightning_noiseprobe._io import path_kind

    p = Path(path)
    kind = path_kind(p)
    if kind in ("missing", "a broken symlink"):
        detail = "" if kind == "missing" else f" (a symlink to missing '{os.readlink(p)}')"
        raise NoiseProbeError(f"Audio file '{p}' does not exist{detail}. Check the path.")
    if kind != "a file":
        raise NoiseProbeError(f"Expected '{p}' to be an audio file but it is {kind}.")
    if not os.access(p, os.R_OK):
        raise NoiseProbeError(
            f"Audio file '{p}' exists but cannot be read (permission denied). Check its permissions."
        )
    try:
        with _decoder_messages_held():
            data, info = _read_soundfile(p)
    except Exception as sf_exc:
        try:
            data, info = _read_pyav(p)
        except Exception as av_exc:
            # the file exists and is a regular file: libsndfile's "does not exist or is
            # not a regular file" only means it recognised no format it can decode
            sf_reason = _reason(sf_exc)
            if "does not exist" in sf_reason:
                sf_reason = "format not recognised"
            raise NoiseProbeError(
                f"Could not decode audio file '{p}': {sf_reason} (PyAV: {_reason(av_exc)}). "
                f"{_READ_HINT}"
            ) from av_exc
    if data.shape[0] == 0 or data.shape[1] == 0:
        raise NoiseProbeError(
            f"Audio file '{p}' holds no samples ({data.shape[0]} channel(s), {data.shape[1]} "
            "samples). Expected at least one sample; check that the file is not truncated."
        )
    wav = torch.from_numpy(data)
    finite = torch.isfinite(wav)
    if not bool(finite.all()):
        c, s = (int(i) for i in (~finite).nonzero()[0])
        raise NoiseProbeError(
            f"Audio file '{p}' holds NaN or infinite samples (first at channel {c}, sample "
            f"{s}: {float(wav[c, s])}). Expected finite samples; repair or replace the file."
        )
    if return_info:
        return wav, info.sample_rate, info
    return wav, info.sample_rate


def save_audio(
    path: str | os.PathLike[str],
    wav: torch.Tensor,
    sample_rate: int,
    *,
    subtype: str | None = None,
) -> None:
    """Write ``wav`` to ``path`` atomically; the format follows the extension.

    The file is first written to a temporary file in the same folder with the
    same suffix, then moved over ``path`` (:func:`lightning_noiseprobe._io.atomic_path`).
    On any failure the temporary file is removed and ``path`` is left as it was.

    Default subtypes (see :data:`AUDIO_FORMATS`): ``.wav`` -> ``FLOAT`` (lossless
    for float32 tensors, and values outside ``[-1, 1]`` are kept), ``.flac`` ->
    ``PCM_24``, ``.ogg`` -> ``VORBIS``, ``.mp3`` -> ``MPEG_LAYER_III``. For every
    subtype except ``FLOAT``/``DOUBLE`` the samples are clipped to ``[-1, 1]``, and
    only when some sample lies outside it. Float32 samples read from a PCM_16 or
    PCM_24 file and written back with the same subtype are reproduced exactly.

    Args:
        path: Output file, ending in ``.wav``, ``.flac``, ``.ogg`` or ``.mp3``.
        wav: Waveform of shape ``[C, S]``.
        sample_rate: Samples per second.
        subtype: A libsndfile subtype (e.g. ``"PCM_16"``, ``"PCM_24"``, ``"FLOAT"``),
            typically ``AudioInfo.subtype`` of the input file; ``None`` for the default.

    Raises:
        NoiseProbeError: On an unsupported extension or subtype, a bad ``wav`` or
            ``sample_rate``, a missing output folder, or when libsndfile cannot
            encode the data (e.g. more than 2 channels in mp3).

    Example:
        >>> import tempfile
        >>> t = torch.arange(3200) / 32000
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     save_audio(f"{folder}/tone.flac", 0.5 * torch.sin(2 * torch.pi * 440 * t)[None], 32000)
        ...     load_audio(f"{folder}/tone.flac")[0].shape
        torch.Size([1, 3200])
    """
    import soundfile as sf

    p = Path(path)
    ext = p.suffix.lower()
    if ext not in AUDIO_FORMATS:
        raise NoiseProbeError(
            f"Expected output file '{p}' to end in one of {', '.join(AUDIO_FORMATS)} "
            f"but got {ext or 'no extension'!r}."
        )
    fmt, default_subtype = AUDIO_FORMATS[ext]
    subtype = default_subtype if subtype is None else str(subtype).upper()
    if not sf.check_format(fmt, subtype):
        raise NoiseProbeError(
            f"Expected argument `subtype` to be one of {', '.join(sf.available_subtypes(fmt))} "
            f"for a {ext} file but got {subtype!r}."
        )
    _check_rate("sample_rate", sample_rate)
    if not isinstance(wav, torch.Tensor) or wav.ndim != 2 or wav.numel() == 0:
        shape = tuple(wav.shape) if isinstance(wav, torch.Tensor) else type(wav).__name__
        raise NoiseProbeError(
            f"Expected argument `wav` to be a non-empty tensor of shape [C, S] but got {shape}."
        )
    if not bool(torch.isfinite(wav).all()):
        raise NoiseProbeError(
            f"Expected argument `wav` to hold finite samples but it holds NaN or inf; not writing '{p}'."
        )
    if not p.parent.is_dir():
        raise NoiseProbeError(
            f"Folder '{p.parent}' for output file '{p}' does not exist. Create it first."
        )

    np_dtype = np.float64 if subtype == "DOUBLE" else np.float32
    data = wav.detach().to("cpu", torch.float64).numpy().T.astype(np_dtype)  # [S, C]
    if subtype not in _FLOAT_SUBTYPES and float(np.abs(data).max()) > 1.0:
        data = np.clip(data, -1.0, 1.0)

    from lightning_noiseprobe._io import atomic_path

    try:
        with atomic_path(p) as tmp:
            sf.write(str(tmp), data, int(sample_rate), format=fmt, subtype=subtype)
    except sf.SoundFileError as exc:
        raise NoiseProbeError(
            f"Could not write audio file '{p}' ({fmt}/{subtype}, {data.shape[1]} channels, "
            f"{sample_rate} Hz): {exc}."
        ) from exc


def _check_rate(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise NoiseProbeError(
            f"Expected argument `{name}` to be a positive integer (Hz) but got {value!r}."
        )


def convert_audio(wav: torch.Tensor, from_sr: int, to_sr: int, to_channels: int) -> torch.Tensor:
    """Convert channel count and sample rate.

    Channels: ``C -> 1`` averages the channels; ``1 -> N`` repeats the single
    channel; ``C -> C`` is kept; anything else is an error. The channel step runs
    first, then band-limited resampling with
    :func:`torchaudio.functional.resample` (skipped if the rates are equal).

    Args:
        wav: Waveform of shape ``[..., C, S]``.
        from_sr: Sample rate of ``wav``.
        to_sr: Wanted sample rate.
        to_channels: Wanted number of channels.

    Returns:
        Tensor of shape ``[..., to_channels, S']`` with
        ``S' = ceil(S * to_sr / from_sr)``, same dtype as ``wav``.

    Example:
        >>> x = torch.randn(2, 48000)
        >>> convert_audio(x, 48000, 32000, 1).shape
        torch.Size([1, 32000])
        >>> convert_audio(x[:1], 48000, 48000, 2).shape
        torch.Size([2, 48000])
    """
    _check_rate("from_sr", from_sr)
    _check_rate("to_sr", to_sr)
    if isinstance(to_channels, bool) or not isinstance(to_channels, int) or to_channels <= 0:
        raise NoiseProbeError(
            f"Expected argument `to_channels` to be a positive integer but got {to_channels!r}."
        )
    if not isinstance(wav, torch.Tensor) or wav.ndim < 2:
        shape = tuple(wav.shape) if isinstance(wav, torch.Tensor) else type(wav).__name__
        raise NoiseProbeError(f"Expected argument `wav` to have shape [..., C, S] but got {shape}.")
    channels = wav.shape[-2]
    if channels != to_channels:
        if to_channels == 1:
            wav = wav.mean(dim=-2, keepdim=True)
        elif channels == 1:
            wav = wav.expand(*wav.shape[:-2], to_channels, wav.shape[-1]).contiguous()
        else:
            raise NoiseProbeError(
                f"Expected argument `to_channels` to be 1, or {channels} (the input's channel "
                f"count), or the input to be mono, but got {channels} -> {to_channels} channels."
            )
    if from_sr != to_sr:
        import torchaudio.functional as taF

        wav = taF.resample(wav, int(from_sr), int(to_sr))
    return wav


def rms_dbfs(wav: torch.Tensor, dim: int | tuple[int, ...] | None = None) -> torch.Tensor:
    """RMS level in dBFS, with full scale at amplitude 1.0: ``20 * log10(rms)``.

    A constant 1.0 is 0 dBFS, a full-scale sine is about -3.01 dBFS, silence is
    ``-inf``. Computed in float64.

    Args:
        wav: Any shape, e.g. ``[C, S]``.
        dim: Dimension(s) to average over; ``None`` (default) averages all samples
            of all channels.

    Returns:
        float64 tensor: a scalar when ``dim`` is ``None``, else ``wav``'s shape
        without ``dim``.

    Example:
        >>> rms_dbfs(torch.full((1, 100), 0.1))
        tensor(-20., dtype=torch.float64)
        >>> t = torch.arange(32000, dtype=torch.float64) / 32000
        >>> round(float(rms_dbfs(torch.sin(2 * torch.pi * 100 * t))), 2)
        -3.01
        >>> rms_dbfs(torch.stack([torch.full((10,), 1.0), torch.zeros(10)]), dim=-1)
        tensor([0., -inf], dtype=torch.float64)
    """
    power = wav.detach().to(torch.float64).square()
    mean = power.mean() if dim is None else power.mean(dim=dim)
    return 10.0 * torch.log10(mean)
