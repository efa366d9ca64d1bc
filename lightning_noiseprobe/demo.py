"""``noiseprobe demo``: the whole loop on CPU in minutes, with no downloaded weights.

1. renders Bach chorales (music21's corpus) to 32 kHz audio with a small synthesizer;
2. fine-tunes the tiny MusicGen-shaped model (audiocraft) on them, with
   :class:`~lightning_noiseprobe.callback.NoiseProbeCallback` probing held-out
   chorales every epoch and ``ModelCheckpoint`` saving every epoch (best: the sharpest Peak);
3. writes TensorBoard logs, exports the model in audiocraft's format, and prints
   the headline metrics per epoch next to the validation loss, and the ``noiseprobe sweep``
   command that scores the saved checkpoints again after training.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback

from lightning_noiseprobe._defaults import DEFAULT_ONSET

__all__ = [
    "EpochTable",
    "TrainingRun",
    "build_training",
    "chorale_datamodule",
    "run_demo",
    "sweep_command",
]

TABLE_COLUMNS = (
    ("val/ce", "val_ce"),
    ("noiseprobe/peak_sharpness", "sharpness"),
    ("noiseprobe/peak_mean", "peak_mean"),
    ("noiseprobe/assimilation_mean", "assim_mean"),
    ("noiseprobe/assimilation_empty", "assim_empty"),  # items the mean leaves out
    ("noiseprobe/recovery_mean", "recov_mean"),
    ("noiseprobe/delta_loss", "delta_loss"),
    ("noiseprobe/length_pearson", "len_r"),
)


class EpochTable(Callback):
    """Collects validation and probe metrics per epoch (from ``trainer.callback_metrics``) and timings.

    Args:
        columns: ``(metric key, short name)`` pairs collected and printed.
    """

    def __init__(self, columns: Sequence[tuple[str, str]] = TABLE_COLUMNS) -> None:
        self.columns = tuple(columns)
        self.rows: list[dict[str, float]] = []
        self._epoch_start = 0.0
        self._train_seconds = 0.0

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self._epoch_start = time.perf_counter()

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.sanity_checking:
            self._train_seconds = time.perf_counter() - self._epoch_start

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        row: dict[str, float] = {
            "epoch": float(trainer.current_epoch),
            "train_seconds": self._train_seconds,
        }
        for key, _ in self.columns:
            if key in metrics:
                row[key] = float(metrics[key])
        for cb in trainer.callbacks:
            history = getattr(cb, "history", None)
            if history and history[-1].get("epoch") == trainer.current_epoch:
                row["probe_seconds"] = float(history[-1].get("seconds", float("nan")))
        self.rows.append(row)

    def format(self) -> str:
        head = ["epoch", *[short for _, short in self.columns], "train_s", "probe_s"]
        lines = ["  ".join(f"{h:>10}" for h in head)]
        for row in self.rows:
            cells = [f"{int(row['epoch']):>10d}"]
            for key, short in self.columns:
                width = max(10, len(short))
                if key not in row:
                    cells.append(f"{'-':>{width}}")
                elif key.endswith("_empty"):  # a count
                    cells.append(f"{row[key]:>{width}.0f}")
                else:
                    cells.append(f"{row[key]:>{width}.4f}")
            cells.append(f"{row.get('train_seconds', float('nan')):>10.1f}")
            cells.append(f"{row.get('probe_seconds', float('nan')):>10.1f}")
            lines.append("  ".join(cells))
        return "\n".join(lines)


@dataclass
class TrainingRun:
    """What :func:`build_training` puts together for one fine-tune; call :meth:`fit`."""

    model: Any
    probe: Any
    table: EpochTable
    trainer: Any
    checkpoint: Any | None
    logger: Any | None

    def fit(self, datamodule: Any) -> list[dict[str, float]]:
        """``trainer.fit`` on ``datamodule``; returns the per-epoch rows of :attr:`table`."""
        self.trainer.fit(self.model, datamodule=datamodule)
        return self.table.rows


def chorale_datamodule(
    root: str | os.PathLike[str],
    *,
    num_clips: int,
    probe_clips: int,
    clip_seconds: float,
    batch_size: int,
    seed: int,
    val_clips: int | None = None,
) -> Any:
    """The demo's :class:`~lightning_noiseprobe.data.datamodule.ChoraleDataModule` over ``root``.

    ``probe_clips`` chorales are held out for the probe and ``val_clips``
    (default: 10 % of the clips, at least 2) for validation; training segments
    are ``min(10, clip_seconds)`` s long.
    """
    from lightning_noiseprobe._errors import NoiseProbeError
    from lightning_noiseprobe.data.datamodule import ChoraleDataModule

    if probe_clips >= num_clips - 2:
        raise NoiseProbeError(
            f"Expected argument `probe_clips` to leave clips for training and validation but got {probe_clips} of {num_clips}."
        )
    val_fraction = max(0.1, 2 / num_clips) if val_clips is None else val_clips / num_clips
    return ChoraleDataModule(
        root=str(root),
        num_clips=num_clips,
        clip_seconds=clip_seconds,
        segment_seconds=min(10.0, clip_seconds),
        batch_size=batch_size,
        val_fraction=val_fraction,
        probe_fraction=probe_clips / num_clips,
        seed=seed,
    )


def build_training(
    workdir: str | os.PathLike[str],
    *,
    epochs: int,
    seed: int,
    lr: float,
    clip_seconds: float,
    onset: int,
    lengths: tuple[int, ...],
    probe_audio: Sequence[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    log_audio: bool = True,
    log_figures: bool = True,
    checkpoint: bool = True,
    tensorboard: bool = True,
    progress_bar: bool = True,
    callbacks: Sequence[Callback] = (),
    columns: Sequence[tuple[str, str]] = TABLE_COLUMNS,
) -> TrainingRun:
    """The demo's fine-tune of the tiny model with the probe, ready to ``fit``.

    Seeds everything with ``seed``, builds the tiny model (weights seeded with
    ``seed``), :class:`~lightning_noiseprobe.callback.NoiseProbeCallback` (on
    ``probe_audio``, else the datamodule's probe split; tokens cached in
    ``cache_dir``, default ``workdir/token_cache``), optionally a
    ``ModelCheckpoint`` keeping every epoch (the sharpest-peak one as best) and a TensorBoard
    logger under ``workdir``, then ``callbacks`` and an :class:`EpochTable`
    of ``columns``, and a deterministic CPU ``Trainer``.
    """
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import TensorBoardLogger

    from lightning_noiseprobe.callback import NoiseProbeCallback
    from lightning_noiseprobe.module import MusicGenLightningModule

    work = Path(workdir)
    pl.seed_everything(seed, workers=True, verbose=False)
    model = MusicGenLightningModule(
        model="tiny", seed=seed, lr=lr, warmup_steps=10, cfg_dropout=0.3
    )
    probe = NoiseProbeCallback(
        probe_audio=probe_audio,
        cache_dir=str(cache_dir if cache_dir is not None else work / "token_cache"),
        batch_size=8,
        log_audio=log_audio,
        log_figures=log_figures,
        onset=onset,
        lengths=lengths,
        clip_seconds=clip_seconds,
    )
    keep = None
    if checkpoint:
        keep = ModelCheckpoint(
            dirpath=work / "checkpoints",
            filename="epoch{epoch}-sharpness{noiseprobe/peak_sharpness:.3f}",
            auto_insert_metric_name=False,
            monitor="noiseprobe/peak_sharpness",
            mode="max",
            save_top_k=-1,  # every epoch: `noiseprobe sweep` re-scores them after training
            save_last=True,
        )
    table = EpochTable(columns)
    logger = TensorBoardLogger(work, name="tensorboard") if tensorboard else None
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=logger if logger is not None else False,
        callbacks=[probe, *([keep] if keep is not None else []), *callbacks, table],
        log_every_n_steps=1,
        num_sanity_val_steps=0,
        enable_model_summary=False,
        enable_checkpointing=keep is not None,
        enable_progress_bar=progress_bar,
        deterministic=True,
    )
    return TrainingRun(model, probe, table, trainer, keep, logger)


def run_demo(
    workdir: str | os.PathLike[str] = "runs/demo",
    *,
    epochs: int = 8,
    num_clips: int = 24,
    probe_clips: int = 4,
    batch_size: int = 4,
    lr: float = 3e-3,
    seed: int = 0,
    clip_seconds: float = 15.0,
    onset: int = DEFAULT_ONSET,
    lengths: tuple[int, ...] = (5, 10, 50, 100, 150, 200),
) -> dict[str, Any]:
    """Run the demo; returns the per-epoch rows, the export folder and the TensorBoard log dir.

    ``clip_seconds``, ``onset`` and ``lengths`` default to the paper's protocol; tests shrink them.
    """
    work = Path(workdir)
    data = chorale_datamodule(
        work / "chorales",
        num_clips=num_clips,
        probe_clips=probe_clips,
        clip_seconds=clip_seconds,
        batch_size=batch_size,
        seed=seed,
    )
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    print(
        f"noiseprobe demo: rendering {num_clips} Bach chorales into {work / 'chorales'} ...",
        flush=True,
    )
    data.prepare_data()
    run = build_training(
        work,
        epochs=epochs,
        seed=seed,
        lr=lr,
        clip_seconds=clip_seconds,
        onset=onset,
        lengths=lengths,
    )
    run.fit(data)
    model, probe, table, checkpoint, logger = (
        run.model,
        run.probe,
        run.table,
        run.checkpoint,
        run.logger,
    )
    assert checkpoint is not None and logger is not None
    export_dir = model.export(work / "export")
    elapsed = time.perf_counter() - started

    print()
    print(
        f"noiseprobe demo: {epochs} epochs in {elapsed:.0f} s; probe set of {len(data.probe_files())} held-out chorales x"
        f" {len(probe.spec.perturbations())} white-noise injections (onset {probe.spec.onset}, lengths {list(probe.spec.lengths)})"
    )
    print(table.format())
    if probe.history:
        best = max(probe.history, key=lambda h: h.get("peak_sharpness", float("-inf")))
        print(
            f"\nsharpest Peak at epoch {best['epoch']} (peak_sharpness {best['peak_sharpness']:.3f}); "
            f"best checkpoint: {checkpoint.best_model_path}"
        )
    print(
        f"exported model (audiocraft format): {export_dir}  -> MusicGen.get_pretrained('{export_dir}')"
    )
    sweep = sweep_command(work, [str(f) for f in data.probe_files()], probe.spec, batch_size=8)
    print(f"look at it:  tensorboard --logdir {logger.log_dir}")
    print(f"the probe columns again, from the saved checkpoints (after training):\n  {sweep}")
    return {
        "rows": table.rows,
        "export": str(export_dir),
        "log_dir": logger.log_dir,
        "history": probe.history,
        "sweep_command": sweep,
    }


def sweep_command(
    workdir: str | os.PathLike[str], probe_files: Sequence[str], spec: Any, batch_size: int
) -> str:
    """The ``noiseprobe sweep`` command that scores the demo's checkpoints (one per epoch) on its
    probe clips with its probe's spec and batch size, so it gives the callback's numbers again,
    and puts them beside the run's own curves in TensorBoard."""
    import shlex

    work = Path(workdir)
    argv = ["noiseprobe", "sweep", str(work / "checkpoints"), "--audio", *probe_files]
    argv += ["--out", str(work / "sweep"), "--tensorboard", str(work / "tensorboard" / "sweep")]
    argv += ["--onset", str(spec.onset), "--lengths", ",".join(map(str, spec.lengths))]
    argv += ["--clip-seconds", f"{spec.clip_seconds:g}", "--batch-size", str(batch_size)]
    argv += ["--cache-dir", str(work / "token_cache")]
    return shlex.join(argv)
