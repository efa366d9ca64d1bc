"""One training run of a study: the demo's fine-tune on given folders, metrics per epoch.

The model, probe callback and trainer come from
:func:`lightning_noiseprobe.demo.build_training` (the demo's recipe, without its
checkpoints, TensorBoard logs, figures and progress bar); the data from an
:class:`~lightning_noiseprobe.data.datamodule.AudioFolderDataModule` over the
run's train and validation folders. :class:`CleanValidation` adds the
validation loss on a second, clean set without touching training.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback

from lightning_noiseprobe._defaults import DEFAULT_ONSET
from lightning_noiseprobe.probe.result import SUMMARY_METRICS
from lightning_noiseprobe.probe.spec import PAPER_LENGTHS

__all__ = ["RUN_COLUMNS", "CleanValidation", "RunSettings", "quiet_lightning", "train_run"]

#: ``(logged key, name in the study's records)`` of what each epoch records.
RUN_COLUMNS: tuple[tuple[str, str], ...] = (
    ("val/ce", "val_ce"),
    ("clean_val/ce", "clean_val_ce"),
    *((f"noiseprobe/{name}", name) for name in SUMMARY_METRICS),
)


@dataclass(frozen=True)
class RunSettings:
    """The training and probe settings every run of a study shares (the demo's by default)."""

    lr: float = 3e-3
    batch_size: int = 4
    clip_seconds: float = 15.0
    segment_seconds: float = 10.0
    onset: int = DEFAULT_ONSET
    lengths: tuple[int, ...] = PAPER_LENGTHS


class CleanValidation(Callback):
    """Log the validation cross-entropy of a second (clean) set as ``key`` every validation epoch.

    The set is cut like the trainer's validation set (one segment of
    ``segment_seconds`` per file from its start, the files in sorted order,
    batches of ``batch_size``) and scored with the module's
    ``batch_codes`` and ``cross_entropy`` (the loss ``val/ce`` is), averaged
    over clips as Lightning averages ``val/ce`` over batches. It runs in
    ``on_validation_epoch_end`` under ``torch.no_grad()``, the trainer's
    precision context and isolated global RNGs, with the module in eval mode
    (every submodule's mode restored), so training is the same with and
    without it. Skipped during the sanity check.
    """

    def __init__(
        self,
        files: Sequence[str | os.PathLike[str]],
        *,
        segment_seconds: float,
        batch_size: int,
        key: str = "clean_val/ce",
    ) -> None:
        self.files = sorted(str(f) for f in files)
        self.segment_seconds = float(segment_seconds)
        self.batch_size = int(batch_size)
        self.key = key
        self._loader: Any = None

    def _build_loader(self, pl_module: Any) -> Any:
        from torch.utils.data import DataLoader

        from lightning_noiseprobe._errors import NoiseProbeError
        from lightning_noiseprobe.data.datamodule import (
            AudioSegmentDataset,
            collate_segments,
            scan_audio_files,
        )

        backend = pl_module.probe_backend
        sample_rate, channels = int(backend.sample_rate), int(backend.channels)
        segment = round(self.segment_seconds * sample_rate)
        files, skipped = scan_audio_files(self.files, sample_rate, channels, segment)
        if skipped or not files:
            reasons = "; ".join(f"{s['path']}: {s['reason']}" for s in skipped) or "no files"
            raise NoiseProbeError(f"Expected usable clean validation clips but got {reasons}.")
        dataset = AudioSegmentDataset(
            files, sample_rate, channels, segment, random_offsets=False, cache_size=len(files)
        )
        return DataLoader(dataset, batch_size=self.batch_size, collate_fn=collate_segments)

    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        from lightning.pytorch.utilities.seed import isolate_rng

        if trainer.sanity_checking:
            return
        if self._loader is None:
            self._loader = self._build_loader(pl_module)
        modes = {m: m.training for m in pl_module.modules()}
        pl_module.eval()
        total, count = 0.0, 0
        try:
            with isolate_rng(), torch.no_grad(), trainer.precision_plugin.forward_context():
                for batch in self._loader:
                    batch = {**batch, "wav": batch["wav"].to(pl_module.device)}
                    codes = pl_module.batch_codes(batch)
                    ce, _ = pl_module.cross_entropy(codes, batch.get("description"))
                    total += float(ce) * codes.shape[0]
                    count += codes.shape[0]
        finally:
            for module, training in modes.items():
                module.train(training)
        pl_module.log(self.key, total / count, on_step=False, on_epoch=True, batch_size=1)


class _EpochCounter(Callback):
    """Calls ``on_epoch(epoch)`` after each validation epoch (for progress bars)."""

    def __init__(self, on_epoch: Callable[[int], None]) -> None:
        self.on_epoch = on_epoch

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.sanity_checking:
            self.on_epoch(int(trainer.current_epoch))


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Silence Lightning's and the probe's per-run info lines and hints (warnings still show)."""
    names = ("lightning.pytorch", "lightning.fabric", "lightning_noiseprobe")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            # Hints that fit a real fine-tune, not these small CPU runs.
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
            # The frozen codec stays in eval mode by design (MusicGenLightningModule.train).
            warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")
            warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def train_run(
    *,
    train_dir: str | os.PathLike[str],
    val_dir: str | os.PathLike[str],
    probe_files: Sequence[str],
    seed: int,
    epochs: int,
    settings: RunSettings,
    cache_dir: str | os.PathLike[str],
    clean_val_files: Sequence[str] | None = None,
    patience: int | None = None,
    on_epoch: Callable[[int], None] | None = None,
) -> list[dict[str, float]]:
    """Fine-tune the tiny model (seed ``seed``) on ``train_dir``, validate on ``val_dir``.

    The probe scores ``probe_files`` every epoch (their tokens cached in
    ``cache_dir``, shared by the runs); with ``clean_val_files``,
    :class:`CleanValidation` adds ``clean_val_ce``; with ``patience``,
    ``EarlyStopping`` on ``val/ce`` ends the run after that many epochs
    without a new minimum. Training segments are drawn with ``seed``.

    Returns:
        One record per epoch: ``epoch``, ``train_seconds``, ``probe_seconds``
        and the metrics of :data:`RUN_COLUMNS` under their short names.
    """
    from lightning.pytorch.callbacks import EarlyStopping

    from lightning_noiseprobe.data.datamodule import AudioFolderDataModule
    from lightning_noiseprobe.demo import build_training

    cache = Path(cache_dir)
    data = AudioFolderDataModule(
        train_dir,
        val_dir=val_dir,
        segment_seconds=settings.segment_seconds,
        batch_size=settings.batch_size,
        seed=seed,
    )
    callbacks: list[Callback] = []
    if clean_val_files:
        callbacks.append(
            CleanValidation(
                clean_val_files,
                segment_seconds=settings.segment_seconds,
                batch_size=settings.batch_size,
            )
        )
    if patience is not None:
        callbacks.append(EarlyStopping(monitor="val/ce", mode="min", patience=patience))
    if on_epoch is not None:
        callbacks.append(_EpochCounter(on_epoch))
    run = build_training(
        cache.parent,
        epochs=epochs,
        seed=seed,
        lr=settings.lr,
        clip_seconds=settings.clip_seconds,
        onset=settings.onset,
        lengths=settings.lengths,
        probe_audio=list(probe_files),
        cache_dir=cache,
        log_audio=False,
        log_figures=False,
        checkpoint=False,
        tensorboard=False,
        progress_bar=False,
        callbacks=callbacks,
        columns=RUN_COLUMNS,
    )
    rows = run.fit(data)
    short = dict(RUN_COLUMNS)
    records = []
    for row in rows:
        record: dict[str, float] = {"epoch": int(row["epoch"])}
        for key in ("train_seconds", "probe_seconds"):
            if key in row:
                record[key] = round(float(row[key]), 3)
        for key, name in short.items():
            value = row.get(key)
            if value is not None and math.isfinite(value):
                record[name] = float(value)
        records.append(record)
    return records
