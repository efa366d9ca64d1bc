"""``NoiseProbeCallback``: peak-shape metrics of a noise-injected probe set, every validation epoch.

The protocol a LightningModule must follow to be probed is small: expose a
``probe_backend`` attribute (or property) returning a loaded
:class:`~lightning_noiseprobe.backends.base.ProbeBackend` whose ``lm`` is the
module's own (training) language model. :class:`~lightning_noiseprobe.module.MusicGenLightningModule`
implements it; for your own module::

    class MyModule(L.LightningModule):
        def __init__(self):
            super().__init__()
            self._backend = AudiocraftBackend("facebook/musicgen-small").load()
            self.lm = self._backend.lm          # registered: trained, moved, checkpointed

        @property
        def probe_backend(self):
            return self._backend
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lightning_noiseprobe._errors import NoiseProbeError, NonFiniteLossError
from lightning_noiseprobe.loggers import MediaLogger
from lightning_noiseprobe.probe.engine import PER_LENGTH_METRICS, NoiseProber
from lightning_noiseprobe.probe.spec import (
    DEFAULT_CLIP_SECONDS,
    DEFAULT_LEVEL_DBFS,
    DEFAULT_MODE,
    DEFAULT_NOISES,
    DEFAULT_ONSET,
    PAPER_LENGTHS,
    ProbeSpec,
)

if TYPE_CHECKING:
    import lightning.pytorch as pl

    from lightning_noiseprobe.backends.base import ProbeBackend
    from lightning_noiseprobe.probe.probeset import ProbeSet
    from lightning_noiseprobe.probe.result import ProbeResult

__all__ = ["NoiseProbeCallback"]

log = logging.getLogger(__name__)
_T = TypeVar("_T")

#: Metrics drawn in the history figure.
HISTORY_METRICS = ("peak_sharpness", "peak_mean", "delta_loss", "assimilation_mean")


class NoiseProbeCallback(Callback):
    r"""Score a fixed noise-injected probe set at the end of validation epochs and log
    peak-shape metrics as ``noiseprobe/<metric>``.

    The metrics are logged with ``pl_module.log`` in ``on_validation_epoch_end``,
    on every rank with the same value, so ``EarlyStopping`` and
    ``ModelCheckpoint`` can monitor them in the same epoch::

        trainer = Trainer(callbacks=[
            NoiseProbeCallback(probe_audio="probe_clips/"),
            EarlyStopping(monitor="noiseprobe/peak_sharpness", mode="max", patience=3),
        ])

    The probe runs under ``torch.no_grad()`` and the trainer's precision
    (``precision_plugin.forward_context()``) on the module's device, switches the
    module to eval mode and restores every submodule's mode afterwards, and
    isolates the global RNGs, so training is bitwise the same with and without it.
    It is skipped during the sanity check and ``fast_dev_run``, and under
    ``trainer.validate()`` unless ``run_on_validate``.

    Under DDP and FSDP2 (``ModelParallelStrategy`` with ``tensor_parallel_size=1``)
    the clips are sharded across ranks with the same LM passes on each, the
    per-token losses gathered, and every rank logs the same values; FSDP2
    parameter groups the probe calls directly are gathered for it and resharded
    afterwards. Under FSDP1 (``FSDPStrategy``) it runs inside the wrapped root's
    forward (not verified on hardware). Tensor parallelism is refused.

    Failure policy (a probe never kills or corrupts the run):

    - **Before training** (``on_fit_start``), every rank builds and validates the probe
      set; a configuration error (no usable clip: too short, unreadable) raises one
      :class:`NoiseProbeError` naming the files and the shortest usable clip
      (:meth:`ProbeSpec.min_clip_seconds`), before any training step. A monitor of a
      name this callback never logs is refused there too.
    - **A transient failure at an epoch** (out of memory, a bad clip) warns, logs
      ``<prefix>/probe_ok`` = 0 (1 on success), appends ``{"probe_ok": 0, "error": ...}``
      to :attr:`history`, and training goes on. Monitors of this callback's metrics
      (``EarlyStopping``, ``ModelCheckpoint``, in their default settings) see the last
      successful probe's value in ``trainer.callback_metrics`` (not in the loggers, so
      plots show a gap): a tie, which is never a new best and never resets patience
      (it counts as an epoch without improvement). Before any success they see the worst
      finite value for their mode, which any later real value beats. The same holds for
      a monitored metric a successful probe could not compute (an empty region in every
      clip).
    - **Non-finite model outputs** (NaN/inf losses at valid positions) are not
      transient: the metrics are logged as NaN, so ``EarlyStopping(check_finite=True)``
      stops the run with its own message and ``ModelCheckpoint`` ranks the epoch last.
    - ``fatal=True`` re-raises instead.

    Args:
        probe_audio: folder(s) or files of clean probe clips. ``None`` takes
            ``trainer.datamodule.probe_files()``.
        onset, lengths, noises, level_dbfs, level_db_rel, mode, shuffle_segments,
            shuffle_length, clip_seconds, seed, smoothing, margin, regions, inject_at,
            nested_noise, delete_lengths, reorder_lengths, reorder_segment,
            bandstop_lengths, bandstop_band: the fields of :class:`ProbeSpec`, with its
            defaults (the paper's protocol).
        spec: a full :class:`ProbeSpec` instead of the arguments above; refused together
            with any of them set to another value than its default.
        descriptions: text condition for every clip (``None``: ``.json`` sidecars,
            else unconditional).
        unconditional: score every clip without text, even with sidecars (the paper
            authors' setting); not together with ``descriptions``.
        every_n_epochs: probe every n-th epoch (count from 1). Monitoring callbacks
            should then run only on probed epochs.
        batch_size: sequences per forward pass.
        precision: ``None`` follows the trainer; or ``"32"``, ``"bf16"``, ``"16"``.
        log_figures: log figures (rank zero) to every attached TensorBoard, W&B and MLflow
            logger (:mod:`lightning_noiseprobe.loggers`; other loggers are skipped).
        log_audio: log one clean and one perturbed audio example to those loggers (once).
        log_per_length: log ``noiseprobe/<noise>/len<L>/<metric>`` breakdowns.
        fatal: re-raise probe failures instead of warning and skipping the epoch.
        run_on_validate: also probe under ``trainer.validate()``.
        cache_dir: token cache folder (default: ``~/.cache/lightning_noiseprobe``; ``"none"`` disables).
        max_clips: use at most this many clips (sorted by path).
        prefix: metric name prefix.
    """

    def __init__(
        self,
        probe_audio: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
        *,
        onset: int = DEFAULT_ONSET,
        lengths: Sequence[int] = PAPER_LENGTHS,
        noises: Sequence[str] = DEFAULT_NOISES,
        level_dbfs: float = DEFAULT_LEVEL_DBFS,
        level_db_rel: float | None = ProbeSpec.level_db_rel,
        mode: str = DEFAULT_MODE,
        shuffle_segments: Sequence[int] = ProbeSpec.shuffle_segments,
        shuffle_length: int = ProbeSpec.shuffle_length,
        clip_seconds: float = DEFAULT_CLIP_SECONDS,
        seed: int = ProbeSpec.seed,
        smoothing: int = ProbeSpec.smoothing,
        margin: int = ProbeSpec.margin,
        regions: str = ProbeSpec.regions,
        inject_at: str = ProbeSpec.inject_at,
        nested_noise: bool = ProbeSpec.nested_noise,
        delete_lengths: Sequence[int] = ProbeSpec.delete_lengths,
        reorder_lengths: Sequence[int] = ProbeSpec.reorder_lengths,
        reorder_segment: Sequence[int] = ProbeSpec.reorder_segment,
        bandstop_lengths: Sequence[int] = ProbeSpec.bandstop_lengths,
        bandstop_band: Sequence[float] = ProbeSpec.bandstop_band,
        spec: ProbeSpec | None = None,
        descriptions: str | None = None,
        unconditional: bool = False,
        every_n_epochs: int = 1,
        batch_size: int = 8,
        precision: str | None = None,
        log_figures: bool = True,
        log_audio: bool = False,
        log_per_length: bool = True,
        fatal: bool = False,
        run_on_validate: bool = False,
        cache_dir: str | os.PathLike[str] | None = None,
        max_clips: int | None = None,
        prefix: str = "noiseprobe",
    ) -> None:
        given = locals()  # the ProbeSpec fields, by name (checked against the dataclass in tests)
        super().__init__()
        #: The probe engine this callback drives (configuration, probe set, scoring).
        self.engine = NoiseProber(
            probe_audio,
            spec=spec,
            descriptions=descriptions,
            unconditional=unconditional,
            batch_size=batch_size,
            precision=precision,
            cache_dir=cache_dir,
            max_clips=max_clips,
            **{name: given[name] for name in ProbeSpec.field_defaults()},
        )
        self.engine.warn = lambda message: rank_zero_warn(f"NoiseProbeCallback: {message}")
        if not isinstance(every_n_epochs, int) or every_n_epochs < 1:
            raise NoiseProbeError(
                f"Expected argument `every_n_epochs` to be a positive integer but got {every_n_epochs!r}."
            )
        if not prefix or "/" in prefix:
            raise NoiseProbeError(
                f"Expected argument `prefix` to be a non-empty name without '/' but got {prefix!r}."
            )
        self.every_n_epochs = every_n_epochs
        self.log_figures = log_figures
        self.log_audio = log_audio
        self.log_per_length = log_per_length
        self.fatal = fatal
        self.run_on_validate = run_on_validate
        self.prefix = prefix

        self.history: list[dict[str, Any]] = []
        self.failures: list[dict[str, Any]] = []
        self.last_result: ProbeResult | None = None
        self._last_logged: dict[str, float] = {}
        self._layout_written = False
        self._audio_logged = False
        self._warned_no_tb = False
        self._media = MediaLogger("NoiseProbeCallback")

    @property
    def spec(self) -> ProbeSpec:
        """The probe's :class:`ProbeSpec` (of :attr:`engine`)."""
        return self.engine.spec

    # ------------------------------------------------------------------ identity / state
    @property
    def state_key(self) -> str:
        # What identifies the instance is the metric names it logs (two probes in one
        # trainer need different prefixes), not its spec: a changed spec must still get
        # its saved state back, so that load_state_dict can report the change.
        return self._generate_state_key(prefix=self.prefix)

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": 2,
            "spec_hash": self.spec.hash(),
            "spec": self.spec.to_dict(),
            "history": list(self.history),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("spec_hash")
        history = [dict(h) for h in state_dict.get("history", [])]
        for entry in history:  # version 1 entries carry no hash of their own
            if saved is not None:
                entry.setdefault("spec_hash", saved)
            entry.setdefault("probe_ok", 1)
        if saved is not None and saved != self.spec.hash():
            rank_zero_warn(
                f"NoiseProbeCallback: the probe spec changed since the checkpoint (was {saved}, now"
                f" {self.spec.hash()}); the {len(history)} earlier probes were made with"
                f" {state_dict.get('spec')} and are kept in `history`, each tagged with its 'spec_hash'."
                " Metrics before and after the change are not comparable; monitors see only the new"
                " spec's values."
            )
        self.history = history

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # Checkpoints written before state_key dropped the spec hash store this
        # callback's state under "NoiseProbeCallback{'prefix': ..., 'spec': ...}".
        states = checkpoint.get("callbacks") or {}
        if self.state_key in states:
            return
        legacy = f"{type(self).__qualname__}{{'prefix': {self.prefix!r}, 'spec': "
        for key, state in states.items():
            if isinstance(key, str) and key.startswith(legacy) and state:
                self.load_state_dict(state)
                return

    # ------------------------------------------------------------------ failure policy
    @property
    def _ok_key(self) -> str:
        return f"{self.prefix}/probe_ok"

    def _monitored(self, trainer: pl.Trainer) -> dict[str, str]:
        """``{metric: mode}`` for every callback (EarlyStopping, ModelCheckpoint, ...)
        that monitors one of this callback's metrics."""
        out: dict[str, str] = {}
        for cb in trainer.callbacks:  # type: ignore[attr-defined]
            key = getattr(cb, "monitor", None)
            if isinstance(key, str) and key.startswith(f"{self.prefix}/") and key != self._ok_key:
                out.setdefault(key, str(getattr(cb, "mode", "min")))
        return out

    def _last_good(self, key: str) -> float | None:
        """The value of ``key`` at the last successful probe of the current spec."""
        if key in self._last_logged:
            return self._last_logged[key]
        name = key[len(self.prefix) + 1 :]  # after a resume: the summary metrics in history
        spec = self.spec.hash()
        for entry in reversed(self.history):
            if entry.get("probe_ok", 1) and entry.get("spec_hash", spec) == spec:
                value = entry.get(name)
                if isinstance(value, (int, float)) and math.isfinite(value):
                    return float(value)
        return None

    def _hold_monitored(self, trainer: pl.Trainer, keys: Sequence[str] | None = None) -> list[str]:
        """Give monitors a neutral value for metrics this epoch did not produce.

        The value is the last successful probe's (a tie: never a new best, never an
        improvement that resets patience), or, before any success, the worst finite value
        for the monitor's mode (any later real value beats it). It goes to
        ``trainer.callback_metrics`` only, never to the loggers, so plots show a gap.
        """
        held = []
        for key, mode in self._monitored(trainer).items():
            if keys is not None and key not in keys:
                continue
            value = self._last_good(key)
            if value is None:
                worst = torch.finfo(torch.float32).max
                value = -worst if mode == "max" else worst
            trainer.callback_metrics[key] = torch.tensor(value, dtype=torch.float32)
            held.append(key)
        return held

    # ------------------------------------------------------------------ setup
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._backend_of(pl_module)  # fail early with a clear message
        self._check_strategy(trainer)
        self._resolve_audio(trainer)

    def metric_names(self) -> list[str]:
        """Every metric this callback can log (``<prefix>/<name>``), for monitors to choose from."""
        return [*self.engine.metric_names(self.prefix, self.log_per_length), self._ok_key]

    def _check_monitors(self, trainer: pl.Trainer) -> None:
        """A monitor of a name this callback never logs would only ever see held values: refuse it."""
        import difflib

        known = set(self.metric_names())
        for key in self._monitored(trainer):
            if key not in known:
                close = difflib.get_close_matches(key, sorted(known), n=3)
                raise NoiseProbeError(
                    f"A callback monitors {key!r}, which NoiseProbeCallback(prefix={self.prefix!r}) never"
                    f" logs. Did you mean {close or sorted(known)[:5]}? See NoiseProbeCallback.metric_names()."
                )

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Build and validate the probe set before the first training step, on every rank.

        Configuration errors (no usable clip, unreadable files) then end the run before
        any training, with one message; ranks agree first, so none is left waiting.
        """
        if getattr(trainer, "fast_dev_run", False):
            return
        self._check_monitors(trainer)
        error: BaseException | None = None
        try:
            self._run_probe(
                trainer, pl_module, lambda backend, _: self._ensure_probe_set(trainer, backend)
            )
        except Exception as err:
            error = err
        ok = trainer.strategy.reduce_boolean_decision(error is None, all=True)
        if error is not None:
            if isinstance(error, NoiseProbeError):
                raise error
            raise NoiseProbeError(
                f"NoiseProbeCallback could not prepare the probe set before training"
                f" ({type(error).__name__}: {error}); training has not started. Fix the cause, or"
                " lower `batch_size` / `max_clips` if memory ran out."
            ) from error
        if not ok:
            raise NoiseProbeError(
                "NoiseProbeCallback could not prepare the probe set on another rank (its error is in"
                " that rank's log); training has not started."
            )

    @staticmethod
    def _check_strategy(trainer: pl.Trainer) -> None:
        """Refuse tensor parallelism; warn where probing is not verified (FSDP1, DeepSpeed)."""
        strategy = type(trainer.strategy).__name__
        # resolved by the strategy's setup_environment, before this hook ("auto": the devices of a node)
        tp = getattr(trainer.strategy, "_tensor_parallel_size", 1)
        if strategy == "ModelParallelStrategy" and tp != 1:
            raise NoiseProbeError(
                f"NoiseProbeCallback supports ModelParallelStrategy as FSDP2 data parallelism only, but"
                f" tensor_parallel_size is {tp!r} (its default 'auto' is every device of a node): the probe"
                " shards its clips across every rank. Pass ModelParallelStrategy(data_parallel_size=<devices>,"
                " tensor_parallel_size=1)."
            )
        if str(getattr(trainer, "precision", "")) == "bf16-true":
            rank_zero_warn(
                "NoiseProbeCallback: under precision='bf16-true' the LM's weights and residual stream are bf16, which"
                " moves the probe's metrics far more than bf16-mixed does (tiny model, vs fp32 scoring of the same"
                " weights: peak_mean by up to 0.40, peak_height by up to 0.44, clean_loss by 0.03; bf16-mixed: under 1e-3). Trends within the run"
                " stay comparable; to compare metrics across runs, train with bf16-mixed."
            )
        if strategy == "DeepSpeedStrategy":
            rank_zero_warn(
                "NoiseProbeCallback: probing under DeepSpeedStrategy is not supported: with ZeRO-3 the probe calls"
                " the LM outside the engine's forward, so it would fail and be skipped each epoch (training is not"
                " affected). Use DDP or ModelParallelStrategy (FSDP2)."
            )
        elif strategy == "FSDPStrategy":
            rank_zero_warn(
                "NoiseProbeCallback: under FSDPStrategy (FSDP1) the probe runs inside the wrapped root's forward;"
                " this path has not been verified on hardware (FSDP1 needs a GPU). ModelParallelStrategy (FSDP2)"
                " is tested. If the probe fails it is skipped with a warning; pass fatal=True to stop instead."
            )

    @staticmethod
    def _backend_of(pl_module: pl.LightningModule) -> ProbeBackend:
        from lightning_noiseprobe.backends.base import ProbeBackend

        backend = getattr(pl_module, "probe_backend", None)
        if not isinstance(backend, ProbeBackend):
            raise NoiseProbeError(
                f"NoiseProbeCallback needs the LightningModule to expose `probe_backend`, a loaded ProbeBackend"
                f" whose `.lm` is the module's language model, but {type(pl_module).__name__}.probe_backend is"
                f" {type(backend).__name__ if backend is not None else 'missing'}. Use MusicGenLightningModule or"
                " add the property (see the lightning_noiseprobe.callback docstring)."
            )
        lm_ids = {id(m) for m in pl_module.modules()}
        if id(backend.lm) not in lm_ids:
            raise NoiseProbeError(
                f"Expected `{type(pl_module).__name__}.probe_backend.lm` to be a submodule of the LightningModule"
                " (the model being trained) but it is not; the probe would score a stale copy. Register it, e.g."
                " `self.lm = backend.lm`."
            )
        return backend

    def _resolve_audio(self, trainer: pl.Trainer) -> list[str]:
        """The engine's probe files: ``probe_audio``, else the datamodule's ``probe_files()``."""
        if self.engine.audio_files is not None or self.engine.probe_audio is not None:
            return self.engine.resolve_audio()
        dm = getattr(trainer, "datamodule", None)
        getter = getattr(dm, "probe_files", None)
        if getter is None:
            raise NoiseProbeError(
                "Expected argument `probe_audio` (a folder or files of probe clips), or a datamodule with"
                f" `probe_files()`, but got probe_audio=None and datamodule {type(dm).__name__ if dm else None}."
            )
        source = list(getter())
        if not source:
            raise NoiseProbeError(
                f"Expected {type(dm).__name__}.probe_files() to return probe clips but it returned none."
                " Set its probe split (e.g. probe_fraction) or pass `probe_audio`."
            )
        return self.engine.resolve_audio(source)

    # ------------------------------------------------------------------ hook
    def _should_probe(self, trainer: pl.Trainer) -> bool:
        if trainer.sanity_checking or getattr(trainer, "fast_dev_run", False):
            return False
        fn = getattr(trainer.state.fn, "value", trainer.state.fn)
        if fn == "validate":
            return self.run_on_validate
        if fn != "fit":
            return False
        return (trainer.current_epoch + 1) % self.every_n_epochs == 0

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._should_probe(trainer):
            return
        started = time.perf_counter()
        try:
            result = self._run_probe(
                trainer, pl_module, lambda backend, device: self._probe(trainer, backend, device)
            )
        except Exception as err:
            self._on_failure(trainer, pl_module, err)
            return
        seconds = time.perf_counter() - started
        self.last_result = result
        logged = self.engine.metrics(result, self.prefix, self.log_per_length)
        self._log_metrics(pl_module, {**logged, self._ok_key: 1.0})
        self._last_logged.update(logged)
        held = self._hold_monitored(
            trainer, [k for k in self._monitored(trainer) if k not in logged]
        )
        if held:
            rank_zero_warn(
                f"NoiseProbeCallback: {held} had no finite value at epoch {trainer.current_epoch} (an empty"
                " region in every clip, or a correlation over one length); the monitors see the last"
                " probe's value instead."
            )
        entry = {
            "epoch": trainer.current_epoch,
            "step": trainer.global_step,
            "seconds": seconds,
            "probe_ok": 1,
            "spec_hash": self.spec.hash(),
            **result.summary,
        }
        self.history.append(entry)
        if trainer.is_global_zero:
            self._log_media(trainer, result)
        rank_zero_info(
            f"noiseprobe: epoch {trainer.current_epoch} peak_sharpness={result.summary.get('peak_sharpness', math.nan):.3f}"
            f" delta_loss={result.summary.get('delta_loss', math.nan):+.4f} ({seconds:.1f} s)"
        )

    def _on_failure(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, err: BaseException
    ) -> None:
        """The failure policy: record, warn, and keep the monitors working (see the class docstring)."""
        epoch = trainer.current_epoch
        self.failures.append({"epoch": epoch, "step": trainer.global_step, "error": repr(err)})
        self.history.append(
            {
                "epoch": epoch,
                "step": trainer.global_step,
                "probe_ok": 0,
                "spec_hash": self.spec.hash(),
                "error": f"{type(err).__name__}: {err}",
            }
        )
        if self.fatal:
            raise err
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if isinstance(err, NonFiniteLossError):
            from lightning_noiseprobe.probe.result import SUMMARY_METRICS

            # Not transient: the model itself is broken. Log NaN so that monitors treat the
            # epoch as non-finite (EarlyStopping(check_finite=True) stops the run with its own
            # message; ModelCheckpoint ranks NaN last).
            names = [f"{self.prefix}/{k}" for k in SUMMARY_METRICS] + list(self._monitored(trainer))
            self._log_metrics(pl_module, {**dict.fromkeys(names, math.nan), self._ok_key: 0.0})
            rank_zero_warn(
                f"NoiseProbeCallback: the model's outputs are NaN/inf at epoch {epoch} ({err}). Its"
                f" noiseprobe metrics are logged as NaN, so EarlyStopping(check_finite=True) stops the run."
            )
            return
        self._log_metrics(pl_module, {self._ok_key: 0.0})
        held = self._hold_monitored(trainer)
        rank_zero_warn(
            f"NoiseProbeCallback: the probe failed at epoch {epoch} ({type(err).__name__}: {err});"
            f" training goes on unchanged. {self._ok_key} is logged as 0 and the failure is in `history`."
            + (
                f" The monitors of {held} see the last successful probe's value (or, before any, the"
                " worst value), so this epoch is never a new best and never resets patience."
                if held
                else ""
            )
            + " Pass fatal=True to stop instead."
        )

    def _run_probe(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        work: Callable[[ProbeBackend, torch.device], _T],
    ) -> _T:
        """Run ``work(backend, device)`` the way every probe step runs: under the engine's
        :func:`~lightning_noiseprobe.probe.engine.isolated_probe` (no_grad, eval mode with
        every submodule's mode restored, isolated RNGs) and with sharded weights gathered."""
        from lightning_noiseprobe._sharding import run_in_root_forward, unsharded
        from lightning_noiseprobe.probe.engine import isolated_probe

        backend = self._backend_of(pl_module)
        device = pl_module.device
        used = (backend.lm, backend.codec)
        # Sharded models: FSDP2 groups holding weights the probe calls directly are
        # gathered for the probe; under FSDP1 it runs inside the root's forward.
        with isolated_probe(pl_module), unsharded(pl_module, used):
            return run_in_root_forward(trainer, pl_module, used, lambda: work(backend, device))

    def _ensure_probe_set(self, trainer: pl.Trainer, backend: ProbeBackend) -> ProbeSet:
        self._resolve_audio(trainer)
        return self.engine.probe_set(backend)

    def _probe(
        self, trainer: pl.Trainer, backend: ProbeBackend, device: torch.device
    ) -> ProbeResult:
        """Score with the engine: the trainer's precision (unless ``precision``), clips sharded
        over the trainer's ranks, gathered with ``trainer.strategy.all_gather``."""
        self._ensure_probe_set(trainer, backend)
        return self.engine.score(
            backend,
            device=device,
            forward_context=trainer.precision_plugin.forward_context,
            world_size=trainer.world_size,
            rank=trainer.global_rank,
            all_gather=trainer.strategy.all_gather,
        )

    # ------------------------------------------------------------------ logging
    @staticmethod
    def _log_metrics(pl_module: pl.LightningModule, metrics: dict[str, float]) -> None:
        # Every rank analysed the same gathered curves, so the values are already identical:
        # no sync_dist (which would average per-rank means) and no rank_zero_only (not monitorable).
        for name, value in metrics.items():
            pl_module.log(name, value, on_step=False, on_epoch=True, sync_dist=False, batch_size=1)

    def _log_media(self, trainer: pl.Trainer, result: ProbeResult) -> None:
        """Figures and audio examples to every logger that takes them
        (:mod:`lightning_noiseprobe.loggers`); a failing logger is warned about once."""
        from lightning_noiseprobe.loggers import MEDIA_LOGGERS, media_sinks

        sinks = media_sinks(trainer.loggers)
        if not sinks:
            if trainer.loggers and (self.log_figures or self.log_audio) and not self._warned_no_tb:
                self._warned_no_tb = True
                rank_zero_warn(
                    f"NoiseProbeCallback: figures and audio examples go to a {', '.join(MEDIA_LOGGERS)},"
                    f" and this trainer has none ({[type(x).__name__ for x in trainer.loggers]}); the"
                    " scalars are logged to every logger. Add one of those, or pass log_figures=False,"
                    " log_audio=False to silence this."
                )
            return
        from lightning_noiseprobe import plots

        figures = {}
        if self.log_figures:
            figures = {
                f"{self.prefix}/delta_curve": plots.delta_curve(result),
                f"{self.prefix}/loss_vs_length": plots.loss_vs_length(result),
                f"{self.prefix}/history": plots.metric_history(self.history, HISTORY_METRICS),
            }
        audio = {}
        if self.log_audio and not self._audio_logged and self.engine.built is not None:
            # the first clip, clean and with the longest perturbation, mixed to mono
            rate = self.engine.built.sample_rate
            for name, wav in self.engine.audio_examples(0).items():
                audio[f"{self.prefix}/audio/{name}"] = (
                    wav.mean(0, keepdim=True).clamp(-1, 1),
                    rate,
                )
            self._audio_logged = True
        layout = None if self._layout_written else self.custom_scalars_layout(result)
        self._layout_written = True
        try:
            self._media.log(sinks, trainer.global_step, figures=figures, audio=audio, layout=layout)
        finally:
            for fig in figures.values():
                plots.close(fig)

    def custom_scalars_layout(self, result: ProbeResult) -> dict[str, Any]:
        """TensorBoard custom-scalars layout: headline metrics, then one chart per metric across lengths."""
        p = self.prefix
        layout: dict[str, Any] = {
            f"{p}: peak shape": {
                "peak sharpness / height": [
                    "Multiline",
                    [f"^{p}/peak_sharpness$", f"^{p}/peak_height$"],
                ],
                "region means": [
                    "Multiline",
                    [f"^{p}/peak_mean$", f"^{p}/assimilation_mean$", f"^{p}/recovery_mean$"],
                ],
                "loss": ["Multiline", [f"^{p}/clean_loss$", f"^{p}/delta_loss$"]],
                "length correlation": [
                    "Multiline",
                    [f"^{p}/length_pearson$", f"^{p}/length_spearman$"],
                ],
            }
        }
        if self.log_per_length:
            layout[f"{p}: per length"] = {
                name: ["Multiline", [f"^{p}/[^/]+/len[0-9]+/{name}$"]]
                for name in PER_LENGTH_METRICS
            }
        return layout
