"""Frequency-band deletion: a brick-wall band-stop over the samples of a window
(the paper authors' ``fq_deletion.py``, applied to one window instead of random ones)."""

from __future__ import annotations

import math
from fractions import Fraction

import torch

from lightning_noiseprobe._defaults import DEFAULT_ONSET
from lightning_noiseprobe._errors import NoiseProbeError
from lightning_noiseprobe.perturbations.inject import (
    _check_real,
    _check_sample_rate,
    _check_waveform,
    _window,
)

__all__ = ["bandstop_bins", "bandstop_window"]


def bandstop_bins(num_samples: int, sample_rate: int, low_hz: float, high_hz: float) -> range:
    """The rFFT bins of an ``num_samples``-sample window whose frequency lies in the band.

    Bin ``k`` has frequency ``k * sample_rate / num_samples``; the bins kept are those
    with ``low_hz <= frequency <= high_hz`` (exactly, with :class:`fractions.Fraction`),
    up to the Nyquist bin ``num_samples // 2``.

    Example:
        >>> bandstop_bins(32000, 32000, 2000.0, 20000.0)  # 1 Hz bins, Nyquist 16 kHz
        range(2000, 16001)
        >>> bandstop_bins(100, 32000, 1000.0, 1500.0)  # 320 Hz bins: 1280 Hz only
        range(4, 5)
    """
    scale = Fraction(num_samples) / Fraction(sample_rate)
    first = math.ceil(Fraction(low_hz) * scale)
    last = min(math.floor(Fraction(high_hz) * scale), num_samples // 2)
    return range(first, max(first, last + 1))


def bandstop_window(
    wav: torch.Tensor,
    sample_rate: int,
    *,
    onset: float = DEFAULT_ONSET,
    length: float = 100,
    low_hz: float = 2000.0,
    high_hz: float = 20000.0,
    frame_rate: float = 50.0,
    unit: str = "tokens",
) -> torch.Tensor:
    """Delete the frequencies ``[low_hz, high_hz]`` from the samples of a window.

    Each channel's window ``[start, end)`` (as for noise injection) is transformed
    with one real FFT over its ``n`` samples in float64, the bins of
    :func:`bandstop_bins` are set to zero, and the inverse FFT of length ``n``
    replaces the window: a brick-wall band-stop, as the authors' frequency deletion.
    A ``high_hz`` above the Nyquist frequency removes everything from ``low_hz`` up.
    Samples outside the window are returned bit for bit; deterministic (nothing
    random); ``wav`` itself is never modified.

    Args:
        wav: Waveform of shape ``[C, S]`` or ``[B, C, S]``, floating point.
        sample_rate: Samples per second of ``wav``.
        onset: Window start, in ``unit``.
        length: Window length, in ``unit``, ``> 0``.
        low_hz: Lower band edge in Hz, ``>= 0`` and below the Nyquist frequency.
        high_hz: Upper band edge in Hz, ``> low_hz``.
        frame_rate: Tokens per second, used when ``unit="tokens"``.
        unit: ``"tokens"`` or ``"seconds"``.

    Returns:
        A new tensor of the same shape, dtype and device as ``wav``.

    Raises:
        NoiseProbeError: On empty, NaN or infinite audio; a window outside the clip;
            ``low_hz < 0``, ``high_hz <= low_hz``, ``low_hz`` at or above Nyquist.

    Example:
        >>> t = torch.arange(32000) / 32000
        >>> x = (torch.sin(2 * math.pi * 440 * t) + torch.sin(2 * math.pi * 5000 * t))[None]
        >>> y = bandstop_window(x, 32000, onset=10, length=25, low_hz=2000, high_hz=20000)
        >>> torch.equal(y[:, :6400], x[:, :6400]), torch.equal(y[:, 22400:], x[:, 22400:])
        (True, True)
        >>> spectrum = torch.fft.rfft(y[0, 6400:22400].double()).abs()  # 2 Hz bins
        >>> bool(spectrum[220] > 1000), bool(spectrum[2500] < 1e-6)
        (True, True)
    """
    _check_waveform(wav)
    _check_sample_rate(sample_rate)
    _check_real("low_hz", low_hz, sign="non-negative", what="frequency in Hz")
    _check_real("high_hz", high_hz, sign="positive", what="frequency in Hz")
    if high_hz <= low_hz:
        raise NoiseProbeError(
            f"Expected `high_hz` to be above `low_hz`={low_hz!r} but got {high_hz!r}."
        )
    nyquist = sample_rate / 2
    if low_hz >= nyquist:
        raise NoiseProbeError(
            f"Expected `low_hz` below the Nyquist frequency {nyquist:g} Hz of this {sample_rate} Hz"
            f" audio but got {low_hz!r}: the band holds no frequency to delete. Use a lower band."
        )
    start, end = _window(wav, sample_rate, onset, length, frame_rate, unit)
    n = end - start
    bins = bandstop_bins(n, sample_rate, low_hz, high_hz)
    segment = wav[..., start:end].detach().to("cpu", torch.float64)
    spectrum = torch.fft.rfft(segment, dim=-1)
    spectrum[..., bins.start : bins.stop] = 0
    filtered = torch.fft.irfft(spectrum, n=n, dim=-1)
    out = wav.clone()
    out[..., start:end] = filtered.to(wav.dtype).to(wav.device)
    return out
