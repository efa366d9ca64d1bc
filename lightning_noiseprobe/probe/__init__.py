"""The probe engine: probe sets, scoring and results."""

from lightning_noiseprobe.probe.engine import NoiseProber
from lightning_noiseprobe.probe.probeset import ProbeSet, build_probe_set, find_audio_files
from lightning_noiseprobe.probe.result import SUMMARY_METRICS, ProbeResult
from lightning_noiseprobe.probe.runner import precision_context, score_probe_set
from lightning_noiseprobe.probe.spec import PAPER_LENGTHS, Perturbation, ProbeSpec

__all__ = [
    "PAPER_LENGTHS",
    "SUMMARY_METRICS",
    "NoiseProber",
    "Perturbation",
    "ProbeResult",
    "ProbeSet",
    "ProbeSpec",
    "build_probe_set",
    "find_audio_files",
    "precision_context",
    "score_probe_set",
]
