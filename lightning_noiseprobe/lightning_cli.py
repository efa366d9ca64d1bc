"""``noiseprobe fit|validate``: LightningCLI over MusicGenLightningModule and the data modules.

Examples::

    noiseprobe fit --config configs/tiny.yaml
    noiseprobe fit --config configs/tiny.yaml --trainer.max_epochs 3
    noiseprobe fit --config configs/tiny.yaml --trainer.callbacks+=NoiseProbeCallback \\
        --trainer.callbacks.probe_audio data/probe
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["run_lightning_cli"]


def run_lightning_cli(args: Sequence[str]) -> Any:
    """Run LightningCLI with ``args`` (``["fit", "--config", ...]``)."""
    from lightning.pytorch.cli import LightningCLI

    # Imported so that jsonargparse can resolve short class names
    # (`--trainer.callbacks+=NoiseProbeCallback`, `--data ChoraleDataModule`).
    from lightning_noiseprobe.callback import NoiseProbeCallback  # noqa: F401
    from lightning_noiseprobe.data.datamodule import (  # noqa: F401
        AudioFolderDataModule,
        ChoraleDataModule,
    )
    from lightning_noiseprobe.module import MusicGenLightningModule

    return LightningCLI(
        MusicGenLightningModule,
        AudioFolderDataModule,
        subclass_mode_data=True,
        args=list(args),
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"prog": "noiseprobe"},
    )
