"""Perturbations of audio clips: noise injection (Eq. 2), segment-order shuffling and
random reordering, token deletion and frequency-band deletion."""

from lightning_noiseprobe.perturbations.bandstop import bandstop_bins, bandstop_window
from lightning_noiseprobe.perturbations.delete import delete_window
from lightning_noiseprobe.perturbations.inject import (
    INJECTION_MODES,
    WINDOW_UNITS,
    inject_noise,
    seconds_window_to_samples,
    token_window_to_samples,
)
from lightning_noiseprobe.perturbations.noise import NOISE_COLORS, NOISE_EXPONENTS, colored_noise
from lightning_noiseprobe.perturbations.reorder import random_segment_lengths, reorder_segments
from lightning_noiseprobe.perturbations.shuffle import shuffle_segments

__all__ = [
    "INJECTION_MODES",
    "NOISE_COLORS",
    "NOISE_EXPONENTS",
    "WINDOW_UNITS",
    "bandstop_bins",
    "bandstop_window",
    "colored_noise",
    "delete_window",
    "inject_noise",
    "random_segment_lengths",
    "reorder_segments",
    "seconds_window_to_samples",
    "shuffle_segments",
    "token_window_to_samples",
]
