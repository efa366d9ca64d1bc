"""Perturbations of audio clips: noise injection (Eq. 2) and segment-order shuffling."""

from lightning_noiseprobe.perturbations.inject import (
    INJECTION_MODES,
    WINDOW_UNITS,
    Injection,
    inject_noise,
    seconds_window_to_samples,
    token_window_to_samples,
)
from lightning_noiseprobe.perturbations.noise import NOISE_COLORS, NOISE_EXPONENTS, colored_noise
from lightning_noiseprobe.perturbations.shuffle import shuffle_segments

__all__ = [
    "INJECTION_MODES",
    "NOISE_COLORS",
    "NOISE_EXPONENTS",
    "WINDOW_UNITS",
    "Injection",
    "colored_noise",
    "inject_noise",
    "seconds_window_to_samples",
    "shuffle_segments",
    "token_window_to_samples",
]
