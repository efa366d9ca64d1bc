"""Noise injection (Eq. 2 of the paper): replace, or add to, a window of samples.

Windows are given in tokens (codec frames, 50 per second for MusicGen) or in
seconds, and mapped to samples exactly with :class:`fractions.Fraction`.
Everything outside the window is returned bit for bit unchanged.
"""

from __future__ import annotations

import math
import numbers
from fractions import Fraction
from typing import Any

import torch

from lightning_noiseprobe._defaults import DEFAULT_LEVEL_DBFS, DEFAULT_MODE, DEFAULT_ONSET
from lightning_noiseprobe._errors import NoiseProbeError
from lightning_noiseprobe.perturbations.noise import check_noise_color, colored_noise

__all__ = [
    "INJECTION_MODES",
    "WINDOW_UNITS",
    "inject_noise",
    "seconds_window_to_samples",
    "token_window_to_samples",
]

INJECTION_MODES: tuple[str, ...] = ("replace", "add")  # ProbeSpec.mode takes these
WINDOW_UNITS: tuple[str, ...] = ("tokens", "seconds")


# ----------------------------------------------------------------------------- validators
def _check_real(name: str, value: Any, *, sign: str = "any", what: str = "number") -> None:
    """Raise unless ``value`` is a finite real; ``sign`` is "any", "non-negative" or "positive"."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok and sign == "positive":
        ok = value > 0
    elif ok and sign == "non-negative":
        ok = value >= 0
    if not ok:
        kind = "a finite" if sign == "any" else f"a {sign}"
        raise NoiseProbeError(f"Expected argument `{name}` to be {kind} {what} but got {value!r}.")


def _check_sample_rate(value: Any, name: str = "sample_rate") -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise NoiseProbeError(
            f"Expected argument `{name}` to be a positive integer (Hz) but got {value!r}."
        )


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if not isinstance(value, str) or value not in choices:
        listed = ", ".join(repr(c) for c in choices)
        raise NoiseProbeError(
            f"Expected argument `{name}` to be one of {listed} but got {value!r}."
        )


def _check_waveform(wav: Any, name: str = "wav") -> None:
    """Raise unless ``wav`` is a non-empty, finite, floating ``[C, S]`` or ``[B, C, S]`` tensor."""
    if not isinstance(wav, torch.Tensor):
        raise NoiseProbeError(
            f"Expected argument `{name}` to be a torch.Tensor but got {type(wav).__name__}."
        )
    if wav.ndim not in (2, 3):
        raise NoiseProbeError(
            f"Expected argument `{name}` to have shape [C, S] or [B, C, S] but got {tuple(wav.shape)}."
        )
    if not wav.is_floating_point():
        raise NoiseProbeError(
            f"Expected argument `{name}` to be a floating-point tensor but got {wav.dtype}."
        )
    if wav.numel() == 0:
        raise NoiseProbeError(
            f"Expected argument `{name}` to hold audio but it is empty (shape {tuple(wav.shape)})."
        )
    finite = torch.isfinite(wav)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise NoiseProbeError(
            f"Expected argument `{name}` to hold finite samples but it holds {bad} NaN or infinite "
            "sample(s). Check the input audio."
        )


def _round_half_up(x: Fraction) -> int:
    return math.floor(x + Fraction(1, 2))


# ----------------------------------------------------------------------------- windows
def token_window_to_samples(
    onset: float | Fraction, length: float | Fraction, frame_rate: float, sample_rate: int
) -> tuple[int, int]:
    """Sample window ``[start, end)`` covered by ``length`` tokens from token ``onset``.

    ``start = round(onset / frame_rate * sample_rate)`` and
    ``end = round((onset + length) / frame_rate * sample_rate)``, computed exactly
    with :class:`fractions.Fraction` (floats are taken at their exact binary value)
    and rounded half up, so a window of ``n`` tokens always spans the same samples
    as its first ``k`` plus its last ``n - k`` tokens.

    Args:
        onset: First token, ``>= 0``.
        length: Number of tokens, ``> 0``.
        frame_rate: Tokens per second (50 for MusicGen).
        sample_rate: Samples per second.

    Returns:
        ``(start, end)`` sample indices, end exclusive.

    Example:
        >>> token_window_to_samples(250, 100, 50.0, 32000)
        (160000, 224000)
        >>> token_window_to_samples(1, 1, 75, 44100)  # 588 samples per token
        (588, 1176)
        >>> token_window_to_samples(0, 1, 50, 25)  # 0.5 samples -> rounds half up
        (0, 1)
    """
    _check_real("onset", onset, sign="non-negative", what="number of tokens")
    _check_real("length", length, sign="positive", what="number of tokens")
    _check_real("frame_rate", frame_rate, sign="positive", what="number of tokens per second")
    _check_sample_rate(sample_rate)
    scale = Fraction(sample_rate) / Fraction(frame_rate)
    start = _round_half_up(Fraction(onset) * scale)
    end = _round_half_up((Fraction(onset) + Fraction(length)) * scale)
    return start, end


def seconds_window_to_samples(onset_s: float, length_s: float, sample_rate: int) -> tuple[int, int]:
    """Sample window ``[start, end)`` for a window given in seconds.

    ``start = round(onset_s * sample_rate)``, ``end = round((onset_s + length_s) *
    sample_rate)``, exact with :class:`fractions.Fraction`, rounded half up.

    Args:
        onset_s: Start in seconds, ``>= 0``.
        length_s: Duration in seconds, ``> 0``.
        sample_rate: Samples per second.

    Returns:
        ``(start, end)`` sample indices, end exclusive.

    Example:
        >>> seconds_window_to_samples(5.0, 2.0, 32000)
        (160000, 224000)
        >>> seconds_window_to_samples(0.1, 0.1, 32000)
        (3200, 6400)
    """
    _check_real("onset", onset_s, sign="non-negative", what="number of seconds")
    _check_real("length", length_s, sign="positive", what="number of seconds")
    _check_sample_rate(sample_rate)
    start = _round_half_up(Fraction(onset_s) * sample_rate)
    end = _round_half_up((Fraction(onset_s) + Fraction(length_s)) * sample_rate)
    return start, end


def _window(
    wav: torch.Tensor, sample_rate: int, onset: float, length: float, frame_rate: float, unit: str
) -> tuple[int, int]:
    """Map the window to samples and check that it is non-empty and inside the clip."""
    _check_choice("unit", unit, WINDOW_UNITS)
    if unit == "tokens":
        start, end = token_window_to_samples(onset, length, frame_rate, sample_rate)
    else:
        start, end = seconds_window_to_samples(onset, length, sample_rate)
    num_samples = wav.shape[-1]
    given = f"`onset`={onset!r}, `length`={length!r} {unit}"
    if end <= start:
        raise NoiseProbeError(
            f"Expected the window ({given}) to cover at least one sample but it maps to samples "
            f"[{start}, {end}) at {sample_rate} Hz. Use a longer `length`."
        )
    if end > num_samples:
        raise NoiseProbeError(
            f"Expected the window ({given}) to end within the clip, but it covers samples "
            f"[{start}, {end}) = {start / sample_rate:.3f} s to {end / sample_rate:.3f} s and the "
            f"clip has {num_samples} samples ({num_samples / sample_rate:.3f} s). "
            "Use a smaller `onset` or `length`, or a longer clip."
        )
    return start, end


def _cpu_generator(seed: Any, generator: torch.Generator | None) -> torch.Generator:
    if generator is not None:
        if not isinstance(generator, torch.Generator) or generator.device.type != "cpu":
            raise NoiseProbeError(
                f"Expected argument `generator` to be a CPU torch.Generator but got {generator!r}."
            )
        return generator
    if (
        isinstance(seed, bool)
        or not isinstance(seed, numbers.Integral)
        or not 0 <= int(seed) < 2**63
    ):
        raise NoiseProbeError(
            f"Expected argument `seed` to be an integer in [0, 2**63) but got {seed!r}; "
            "use lightning_noiseprobe._hashing.derive_seed to build one from keys."
        )
    return torch.Generator().manual_seed(int(seed))


# ----------------------------------------------------------------------------- injection
def inject_noise(
    wav: torch.Tensor,
    sample_rate: int,
    *,
    onset: float = DEFAULT_ONSET,
    length: float = 100,
    frame_rate: float = 50.0,
    unit: str = "tokens",
    noise: str = "white",
    level_dbfs: float = DEFAULT_LEVEL_DBFS,
    level_db_rel: float | None = None,
    mode: str = DEFAULT_MODE,
    seed: int = 0,
    generator: torch.Generator | None = None,
    nest_length: float | None = None,
) -> torch.Tensor:
    """Inject coloured noise into a window of a clip (Eq. 2 of the paper).

    With ``mode="replace"`` (the paper's setting) the samples of the window are
    replaced by noise; with ``mode="add"`` the noise is added to them. Outside the
    window the result equals ``wav`` bit for bit; ``wav`` itself is never modified.

    Level: the noise in the window has, per channel, an RMS of exactly
    ``level_dbfs`` dBFS (full scale = amplitude 1.0, so -30 dBFS is an RMS of
    ``10 ** (-30 / 20)``). If ``level_db_rel`` is given it takes precedence over
    ``level_dbfs``: the noise RMS is then ``level_db_rel`` dB relative to the RMS
    of the whole clean clip (all channels, per batch item). In ``"add"`` mode the
    level is that of the added noise, not of the sum.

    Noise is independent per channel (and per batch item), drawn on the CPU in
    float64 from ``generator`` (or from ``torch.Generator().manual_seed(seed)``),
    scaled, cast to ``wav.dtype`` and then moved to ``wav.device``, so a given
    seed gives the same samples on every device.

    Nested noise (``nest_length``, the paper authors' protocol: one noise seed for
    every injection length of a clip): the unit noise is drawn and coloured for a
    window of ``nest_length`` (same ``unit``, from the same onset; it need not fit
    in the clip) and this window takes its first samples, then scales them to the
    level. So, with the same seed and ``nest_length``, the noise of a shorter window
    is the start of the noise of a longer one, up to one gain per channel that sets
    each window's RMS exactly (the authors also normalise each length's draw to its
    own standard deviation); for white noise that gain is ``1 +- 1/sqrt(2 n)`` for
    ``n`` samples.

    Args:
        wav: Waveform of shape ``[C, S]`` or ``[B, C, S]``, floating point.
        sample_rate: Samples per second of ``wav``.
        onset: Window start, in ``unit`` (default token 250 = 5.0 s at 50 Hz).
        length: Window length, in ``unit``, ``> 0``.
        frame_rate: Tokens per second, used when ``unit="tokens"``.
        unit: ``"tokens"`` or ``"seconds"``.
        noise: One of ``NOISE_COLORS``.
        level_dbfs: Noise RMS per channel in dBFS.
        level_db_rel: Noise RMS in dB relative to the clip's RMS; overrides
            ``level_dbfs`` when given.
        mode: ``"replace"`` or ``"add"``.
        seed: Seed of the CPU generator used when ``generator`` is ``None``.
        generator: A CPU :class:`torch.Generator` to draw from (it is advanced).
        nest_length: Draw the noise for a window of this length (``>= length``) and
            use its start; ``None`` draws for the window itself.

    Returns:
        A new tensor of the same shape, dtype and device as ``wav``.

    Raises:
        NoiseProbeError: On empty, NaN or infinite audio; ``length <= 0``;
            ``onset < 0``; a window past the end of the clip; an unknown
            ``noise``, ``mode`` or ``unit``; a relative level on a silent clip;
            ``nest_length < length``.

    Example:
        >>> from lightning_noiseprobe.audio import rms_dbfs
        >>> clip = 0.1 * torch.randn(2, 32000 * 8, generator=torch.Generator().manual_seed(1))
        >>> out = inject_noise(clip, 32000, onset=250, length=100, level_dbfs=-30.0, seed=7)
        >>> torch.equal(out[:, :160000], clip[:, :160000]), torch.equal(out[:, 224000:], clip[:, 224000:])
        (True, True)
        >>> rms_dbfs(out[:, 160000:224000], dim=-1)
        tensor([-30.0000, -30.0000], dtype=torch.float64)
    """
    _check_waveform(wav)
    _check_sample_rate(sample_rate)
    check_noise_color(noise)
    _check_choice("mode", mode, INJECTION_MODES)
    if level_db_rel is None:
        _check_real("level_dbfs", level_dbfs, what="level in dBFS")
    else:
        _check_real("level_db_rel", level_db_rel, what="level in dB")
    start, end = _window(wav, sample_rate, onset, length, frame_rate, unit)
    num_noise = end - start
    if nest_length is not None:
        _check_real("nest_length", nest_length, sign="positive", what=f"number of {unit}")
        if nest_length < length:
            raise NoiseProbeError(
                f"Expected argument `nest_length` to be at least `length`={length!r} but got {nest_length!r}."
            )
        if unit == "tokens":
            num_noise = token_window_to_samples(onset, nest_length, frame_rate, sample_rate)[1]
        else:
            num_noise = seconds_window_to_samples(onset, nest_length, sample_rate)[1]
        num_noise -= start
    gen = _cpu_generator(seed, generator)

    batch_shape = wav.shape[:-2]
    channels = wav.shape[-2]
    if level_db_rel is None:
        target = torch.full(batch_shape, 10.0 ** (level_dbfs / 20.0), dtype=torch.float64)
    else:
        clip_rms = wav.detach().to("cpu", torch.float64).square().mean(dim=(-2, -1)).sqrt()
        if bool((clip_rms == 0).any()):
            where = "" if wav.ndim == 2 else f" (batch item {int((clip_rms == 0).nonzero()[0])})"
            raise NoiseProbeError(
                f"Expected a clip with non-zero RMS for `level_db_rel`={level_db_rel!r}, but the "
                f"clip{where} is silent. Use an absolute `level_dbfs` instead."
            )
        target = clip_rms * 10.0 ** (level_db_rel / 20.0)

    num_rows = math.prod(batch_shape) * channels
    unit_noise = colored_noise(noise, num_rows, num_noise, gen, dtype=torch.float64)
    if num_noise != end - start:  # nested: the start of a longer draw, back to unit RMS
        unit_noise = unit_noise[:, : end - start]
        unit_noise = unit_noise / unit_noise.square().mean(dim=-1, keepdim=True).sqrt()
    scaled = unit_noise.reshape(*batch_shape, channels, end - start) * target[..., None, None]
    scaled = scaled.to(wav.dtype).to(wav.device)

    out = wav.clone()
    if mode == "replace":
        out[..., start:end] = scaled
    else:
        out[..., start:end] += scaled
    return out
