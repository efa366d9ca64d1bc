"""The probe outside Lightning: ``transformers.Trainer`` (:mod:`.transformers`).

Plain PyTorch / accelerate loops use :class:`~lightning_noiseprobe.probe.engine.NoiseProber`
directly. Importing this package imports nothing heavy; ``lightning_noiseprobe.integrations.transformers``
imports transformers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["NoiseProbeTrainerCallback"]

if TYPE_CHECKING:
    from lightning_noiseprobe.integrations.transformers import NoiseProbeTrainerCallback


def __getattr__(name: str) -> Any:
    if name == "NoiseProbeTrainerCallback":
        from lightning_noiseprobe.integrations.transformers import NoiseProbeTrainerCallback

        return NoiseProbeTrainerCallback
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
