"""lightning-noiseprobe: noise-injection probing of music language models as a Lightning training signal.

Importing the package is cheap: the names below load their modules (and
Lightning, audiocraft, transformers, matplotlib) on first use.

>>> import lightning_noiseprobe as lnp
>>> lnp.ProbeSpec().lengths
(5, 10, 50, 100, 150, 200)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "NoiseProbeCallback": "lightning_noiseprobe.callback",
    "NoiseProbeTrainerCallback": "lightning_noiseprobe.integrations.transformers",
    "NoiseProber": "lightning_noiseprobe.probe.engine",
    "MusicGenLightningModule": "lightning_noiseprobe.module",
    "AudioFolderDataModule": "lightning_noiseprobe.data.datamodule",
    "ChoraleDataModule": "lightning_noiseprobe.data.datamodule",
    "ProbeSpec": "lightning_noiseprobe.probe.spec",
    "ProbeResult": "lightning_noiseprobe.probe.result",
    "build_probe_set": "lightning_noiseprobe.probe.probeset",
    "score_probe_set": "lightning_noiseprobe.probe.runner",
    "get_backend": "lightning_noiseprobe.backends.base",
    "available_backends": "lightning_noiseprobe.backends.base",
    "analyze_curves": "lightning_noiseprobe.functional.curves",
    "inject_noise": "lightning_noiseprobe.perturbations.inject",
    "shuffle_segments": "lightning_noiseprobe.perturbations.shuffle",
    "NoiseProbeError": "lightning_noiseprobe._errors",
    "PeakShape": "lightning_noiseprobe.metrics",
}

__all__ = [
    "AudioFolderDataModule",
    "ChoraleDataModule",
    "MusicGenLightningModule",
    "NoiseProbeCallback",
    "NoiseProbeError",
    "NoiseProbeTrainerCallback",
    "NoiseProber",
    "PeakShape",
    "ProbeResult",
    "ProbeSpec",
    "__version__",
    "analyze_curves",
    "available_backends",
    "build_probe_set",
    "get_backend",
    "inject_noise",
    "score_probe_set",
    "shuffle_segments",
]

if TYPE_CHECKING:
    from lightning_noiseprobe._errors import NoiseProbeError
    from lightning_noiseprobe.backends.base import available_backends, get_backend
    from lightning_noiseprobe.callback import NoiseProbeCallback
    from lightning_noiseprobe.data.datamodule import AudioFolderDataModule, ChoraleDataModule
    from lightning_noiseprobe.functional.curves import analyze_curves
    from lightning_noiseprobe.integrations.transformers import NoiseProbeTrainerCallback
    from lightning_noiseprobe.metrics import PeakShape
    from lightning_noiseprobe.module import MusicGenLightningModule
    from lightning_noiseprobe.perturbations.inject import inject_noise
    from lightning_noiseprobe.perturbations.shuffle import shuffle_segments
    from lightning_noiseprobe.probe.engine import NoiseProber
    from lightning_noiseprobe.probe.probeset import build_probe_set
    from lightning_noiseprobe.probe.result import ProbeResult
    from lightning_noiseprobe.probe.runner import score_probe_set
    from lightning_noiseprobe.probe.spec import ProbeSpec


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lightning_noiseprobe' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
