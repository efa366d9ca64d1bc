"""Coloured Gaussian noise with an exact unit RMS per channel."""

from __future__ import annotations

import torch

from lightning_noiseprobe._errors import NoiseProbeError

__all__ = ["NOISE_COLORS", "NOISE_EXPONENTS", "check_noise_color", "colored_noise"]

#: Exponent ``beta`` of the power spectral density ``P(f) ~ f**beta`` per colour:
#: white 0, pink -1 (-3 dB/octave), blue +1 (+3 dB/octave), brown -2 (-6 dB/octave),
#: violet +2 (+6 dB/octave).
NOISE_EXPONENTS: dict[str, float] = {
    "white": 0.0,
    "pink": -1.0,
    "blue": 1.0,
    "brown": -2.0,
    "violet": 2.0,
}
NOISE_COLORS: tuple[str, ...] = tuple(NOISE_EXPONENTS)


def check_noise_color(color: object, name: str = "noise") -> str:
    """Return ``color`` if it is one of :data:`NOISE_COLORS`, else raise.

    Example:
        >>> check_noise_color("pink")
        'pink'
        >>> check_noise_color("red")
        Traceback (most recent call last):
        ...
        lightning_noiseprobe._errors.NoiseProbeError: Expected argument `noise` to be one of 'white', 'pink', 'blue', 'brown', 'violet' but got 'red'.
    """
    if not isinstance(color, str) or color not in NOISE_EXPONENTS:
        choices = ", ".join(repr(c) for c in NOISE_COLORS)
        raise NoiseProbeError(
            f"Expected argument `{name}` to be one of {choices} but got {color!r}."
        )
    return color


def colored_noise(
    color: str,
    channels: int,
    num_samples: int,
    generator: torch.Generator,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Gaussian noise with a power-law spectrum, each channel at exactly unit RMS.

    White Gaussian noise is drawn on the CPU in float64 from ``generator``, its
    spectrum is scaled by ``f ** (beta / 2)`` (``beta`` from
    :data:`NOISE_EXPONENTS`) with the DC bin set to zero, and each channel is then
    divided by its own RMS. Channels are independent draws. The result depends
    only on the generator's state, never on the device it is later moved to.
    With ``num_samples == 1`` there is no non-DC bin, so that single sample is
    ``+-1`` (the sign of a white draw).

    Args:
        color: One of :data:`NOISE_COLORS`.
        channels: ``C``, at least 1.
        num_samples: ``S``, at least 1.
        generator: A CPU :class:`torch.Generator`; it is advanced.
        dtype: Output floating dtype.

    Returns:
        Tensor of shape ``[C, S]`` on the CPU, zero mean (for ``S >= 2``) and
        RMS 1 per channel.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x = colored_noise("pink", 2, 32000, g)
        >>> x.shape, x.dtype
        (torch.Size([2, 32000]), torch.float32)
        >>> x.square().mean(dim=-1).sqrt()
        tensor([1.0000, 1.0000])
        >>> torch.equal(x, colored_noise("pink", 2, 32000, torch.Generator().manual_seed(0)))
        True
    """
    check_noise_color(color, "color")
    for name, value in (("channels", channels), ("num_samples", num_samples)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise NoiseProbeError(
                f"Expected argument `{name}` to be a positive integer but got {value!r}."
            )
    if not isinstance(generator, torch.Generator) or generator.device.type != "cpu":
        raise NoiseProbeError(
            f"Expected argument `generator` to be a CPU torch.Generator but got {generator!r}; "
            "noise is drawn on the CPU so that every device gets the same samples."
        )
    white = torch.randn(channels, num_samples, generator=generator, dtype=torch.float64)
    if num_samples == 1:
        shaped = white
    else:
        spectrum = torch.fft.rfft(white, dim=-1)
        freqs = torch.fft.rfftfreq(num_samples, dtype=torch.float64)
        gain = torch.zeros_like(freqs)
        gain[1:] = freqs[1:].pow(NOISE_EXPONENTS[color] / 2.0)
        shaped = torch.fft.irfft(spectrum * gain, n=num_samples, dim=-1)
    rms = shaped.square().mean(dim=-1, keepdim=True).sqrt()
    return (shaped / rms).to(dtype)
