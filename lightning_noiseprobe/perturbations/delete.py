"""Token deletion: cut a window out of a clip, so the music after it arrives early.

The paper authors' experiment "remove 50 tokens at 5 s" cut codec frames and
decoded the rest; here the window's samples are cut from the waveform, which
the codec then encodes like any other clip (no decoder round trip).
"""

from __future__ import annotations

import torch

from lightning_noiseprobe._defaults import DEFAULT_ONSET
from lightning_noiseprobe.perturbations.inject import (
    _check_sample_rate,
    _check_waveform,
    _window,
)

__all__ = ["delete_window"]


def delete_window(
    wav: torch.Tensor,
    sample_rate: int,
    *,
    onset: float = DEFAULT_ONSET,
    length: float = 50,
    frame_rate: float = 50.0,
    unit: str = "tokens",
) -> torch.Tensor:
    """Remove the samples of a window; the clip gets shorter by the window's length.

    The window ``[start, end)`` comes from
    :func:`~lightning_noiseprobe.perturbations.inject.token_window_to_samples` (or
    :func:`~lightning_noiseprobe.perturbations.inject.seconds_window_to_samples`), so
    removing ``N`` tokens removes exactly the samples those tokens span, and the
    result is ``wav[..., :start]`` followed by ``wav[..., end:]``, both bit for bit.
    Deterministic: there is nothing random in it.

    Args:
        wav: Waveform of shape ``[C, S]`` or ``[B, C, S]``, floating point.
        sample_rate: Samples per second of ``wav``.
        onset: Window start, in ``unit`` (default token 250 = 5.0 s at 50 Hz).
        length: Window length, in ``unit``, ``> 0`` (default 50 tokens, as the authors).
        frame_rate: Tokens per second, used when ``unit="tokens"``.
        unit: ``"tokens"`` or ``"seconds"``.

    Returns:
        A new tensor ``[..., C, S - (end - start)]`` of ``wav``'s dtype and device.

    Raises:
        NoiseProbeError: On empty, NaN or infinite audio; ``length <= 0``;
            ``onset < 0``; a window past the end of the clip; an unknown ``unit``.

    Example:
        >>> x = torch.arange(10.0).repeat_interleave(640)[None]  # 10 tokens at 32 kHz
        >>> y = delete_window(x, 32000, onset=2, length=3)
        >>> y.shape[-1], y[0, ::640].tolist()
        (4480, [0.0, 1.0, 5.0, 6.0, 7.0, 8.0, 9.0])
    """
    _check_waveform(wav)
    _check_sample_rate(sample_rate)
    start, end = _window(wav, sample_rate, onset, length, frame_rate, unit)
    return torch.cat([wav[..., :start], wav[..., end:]], dim=-1)
