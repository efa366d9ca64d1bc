"""Figures and audio examples for every attached Lightning logger that can take them.

Scalars reach every logger through ``LightningModule.log``; media have no common
Lightning API, so each logger kind gets a small adapter (a *sink*):

- ``TensorBoardLogger``: ``SummaryWriter.add_figure`` / ``add_audio`` and the
  custom-scalars layout;
- ``WandbLogger``: ``log_image`` / ``log_audio`` (``wandb.Image`` / ``wandb.Audio``);
- ``MLFlowLogger``: ``MlflowClient.log_figure`` (``<tag>/step_<step>.png``) and the
  audio as a ``.wav`` artifact (``<tag>_step_<step>.wav``).

Other loggers (``CSVLogger``, ...) are skipped silently. Both Lightning packages
(``lightning.pytorch`` and ``pytorch_lightning``) are recognised. wandb, mlflow and
tensorboard are only used through the logger objects the user attached.

A sink that raises while logging never stops training: :class:`MediaLogger` warns
once per logger and goes on with the others (the probe's failure policy).
"""

from __future__ import annotations

import importlib
import sys
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn

__all__ = ["MEDIA_LOGGERS", "MediaLogger", "MediaSink", "media_sinks"]

#: The Lightning logger classes that receive figures and audio examples.
MEDIA_LOGGERS = ("TensorBoardLogger", "WandbLogger", "MLFlowLogger")


class MediaSink:
    """One logger's way of taking figures and audio examples (no-ops by default)."""

    def __init__(self, logger: Any) -> None:
        self.logger = logger

    @property
    def name(self) -> str:
        return type(self.logger).__name__

    def layout(self, layout: dict[str, Any]) -> None:
        """A TensorBoard custom-scalars layout (other loggers have no such thing)."""

    def figure(self, tag: str, fig: Any, step: int) -> None:
        """Log a matplotlib figure (left open: the caller closes it)."""

    def audio(self, tag: str, wav: torch.Tensor, sample_rate: int, step: int) -> None:
        """Log a mono waveform ``[1, S]`` in ``[-1, 1]``."""

    def flush(self) -> None:
        """Make what was logged visible (e.g. write the event file)."""


class _TensorBoardSink(MediaSink):
    def layout(self, layout: dict[str, Any]) -> None:
        self.logger.experiment.add_custom_scalars(layout)

    def figure(self, tag: str, fig: Any, step: int) -> None:
        self.logger.experiment.add_figure(tag, fig, global_step=step, close=False)

    def audio(self, tag: str, wav: torch.Tensor, sample_rate: int, step: int) -> None:
        self.logger.experiment.add_audio(tag, wav, step, sample_rate=sample_rate)

    def flush(self) -> None:
        self.logger.experiment.flush()


class _WandbSink(MediaSink):
    def figure(self, tag: str, fig: Any, step: int) -> None:
        self.logger.log_image(key=tag, images=[fig], step=step)

    def audio(self, tag: str, wav: torch.Tensor, sample_rate: int, step: int) -> None:
        samples = wav.detach().to("cpu", torch.float32)[0].numpy()
        self.logger.log_audio(key=tag, audios=[samples], step=step, sample_rate=[sample_rate])


class _MLflowSink(MediaSink):
    def figure(self, tag: str, fig: Any, step: int) -> None:
        self.logger.experiment.log_figure(
            self.logger.run_id, fig, artifact_file=f"{tag}/step_{step:06d}.png"
        )

    def audio(self, tag: str, wav: torch.Tensor, sample_rate: int, step: int) -> None:
        from lightning_noiseprobe.audio import save_audio

        folder, _, name = tag.rpartition("/")
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"{name}_step_{step:06d}.wav"
            save_audio(path, wav.detach().to("cpu", torch.float32), sample_rate)
            self.logger.experiment.log_artifact(
                self.logger.run_id, str(path), artifact_path=folder or None
            )


_SINKS: dict[str, type[MediaSink]] = {
    "TensorBoardLogger": _TensorBoardSink,
    "WandbLogger": _WandbSink,
    "MLFlowLogger": _MLflowSink,
}


def _logger_classes(name: str) -> tuple[type, ...]:
    """``name`` from ``lightning.pytorch.loggers`` and, if the user imported it, ``pytorch_lightning.loggers``."""
    packages = ["lightning.pytorch.loggers"]
    if "pytorch_lightning" in sys.modules:  # the user's trainer may come from this package
        packages.append("pytorch_lightning.loggers")
    return tuple(getattr(importlib.import_module(p), name) for p in packages)


def media_sinks(loggers: Iterable[Any]) -> list[MediaSink]:
    """A sink for each logger in ``loggers`` that takes media (see :data:`MEDIA_LOGGERS`), in order."""
    kinds = {name: _logger_classes(name) for name in _SINKS}
    sinks = []
    for logger in loggers:
        for name, classes in kinds.items():
            if isinstance(logger, classes):
                sinks.append(_SINKS[name](logger))
                break
    return sinks


class MediaLogger:
    """Sends figures and audio examples to sinks; a failing logger is warned about once.

    Args:
        owner: the name that starts every warning (e.g. ``"NoiseProbeCallback"``).
    """

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self.failed: list[dict[str, Any]] = []
        self._warned: set[int] = set()

    def log(
        self,
        sinks: Iterable[MediaSink],
        step: int,
        *,
        figures: Mapping[str, Any] | None = None,
        audio: Mapping[str, tuple[torch.Tensor, int]] | None = None,
        layout: dict[str, Any] | None = None,
    ) -> None:
        """Log ``figures`` (tag -> matplotlib figure, left open) and ``audio``
        (tag -> ``(wav [1, S], sample_rate)``) to every sink, and ``layout`` where it applies.

        An exception from a sink skips the rest of that sink's media for this call,
        is recorded in :attr:`failed` and warned about once per logger; the other
        sinks still get everything.
        """
        for sink in sinks:
            try:
                if layout is not None:
                    sink.layout(layout)
                for tag, fig in (figures or {}).items():
                    sink.figure(tag, fig, step)
                for tag, (wav, rate) in (audio or {}).items():
                    sink.audio(tag, wav, rate, step)
                sink.flush()
            except Exception as err:  # never harm the run
                self.failed.append({"logger": sink.name, "step": step, "error": repr(err)})
                if id(sink.logger) not in self._warned:
                    self._warned.add(id(sink.logger))
                    rank_zero_warn(
                        f"{self.owner}: logging figures/audio to the {sink.name} failed at step"
                        f" {step} ({type(err).__name__}: {err}); training goes on, the scalars"
                        " are unaffected, and this logger's media failures are not warned about again."
                    )
