"""Data: the embedded chorale dataset, segment datasets and Lightning data modules over audio folders.

Names are imported on first use, so ``import lightning_noiseprobe.data`` loads
neither Lightning nor music21.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lightning_noiseprobe.data.chorales import write_chorale_dataset
    from lightning_noiseprobe.data.datamodule import AudioFolderDataModule, ChoraleDataModule
    from lightning_noiseprobe.data.dataset import (
        AudioFile,
        AudioSegmentDataset,
        EpochSampler,
        collate_segments,
        scan_audio_files,
    )

__all__ = [
    "AudioFile",
    "AudioFolderDataModule",
    "AudioSegmentDataset",
    "ChoraleDataModule",
    "EpochSampler",
    "collate_segments",
    "scan_audio_files",
    "write_chorale_dataset",
]

_MODULES = {name: "dataset" for name in __all__}
_MODULES.update(
    AudioFolderDataModule="datamodule",
    ChoraleDataModule="datamodule",
    write_chorale_dataset="chorales",
)


def __getattr__(name: str) -> Any:
    module = _MODULES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
