"""``NoiseProbeTrainerCallback``: the probe in a Hugging Face ``transformers.Trainer``.

::

    trainer.add_callback(NoiseProbeTrainerCallback(probe_audio="probe_clips/"))

After each evaluation it probes the Trainer's model (unwrapped from DDP/accelerate and
PEFT wrappers; LoRA adapters stay active) with a
:class:`~lightning_noiseprobe.probe.engine.NoiseProber` and adds the metrics to the
evaluation's metrics under the Trainer's own prefix: ``eval_noiseprobe/<metric>``. So
``trainer.state.log_history``, the Trainer's loggers (``report_to``: TensorBoard, W&B,
MLflow, ...), ``metric_for_best_model="noiseprobe/peak_sharpness"`` (the Trainer adds
``eval_``) and ``EarlyStoppingCallback`` see them.

How it gets there: ``Trainer.evaluate`` logs the metrics (``on_log``) before it calls
``on_evaluate``, and the Trainer puts its logger callbacks before the user's. So at the
start of training the callback moves itself first in the Trainer's callback list and
probes in ``on_log`` of an evaluation (the weights are those just evaluated: no training
step runs in between), adding to the very dict ``evaluate`` returns.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from transformers import TrainerCallback

from lightning_noiseprobe._errors import NoiseProbeError, NonFiniteLossError
from lightning_noiseprobe.probe.engine import NoiseProber, isolated_probe

if TYPE_CHECKING:
    from lightning_noiseprobe.backends.base import ProbeBackend
    from lightning_noiseprobe.probe.result import ProbeResult
    from lightning_noiseprobe.probe.spec import ProbeSpec

__all__ = ["NoiseProbeTrainerCallback"]

log = logging.getLogger(__name__)


class NoiseProbeTrainerCallback(TrainerCallback):
    """Probe the Trainer's model after each evaluation; log ``eval_<prefix>/<metric>``.

    Guarantees (as :class:`~lightning_noiseprobe.callback.NoiseProbeCallback`): the probe
    runs under ``no_grad`` with the model in eval mode (every submodule's mode restored)
    and the global RNGs restored, so training is bitwise the same with and without it.
    Under ``torch.distributed`` (the Trainer launched with ``torchrun``/``accelerate``)
    the clips are sharded over the processes and every process gets the same values.

    Failure policy: the probe set is built before the first training step (a
    configuration error, such as no usable clip, raises :class:`NoiseProbeError` then).
    A failure at an evaluation warns, logs ``eval_<prefix>/probe_ok`` = 0 (1 on
    success), records it in :attr:`failures`, and training goes on; a
    ``metric_for_best_model`` of this callback then sees the last successful value (a
    tie, never a new best) or, before any, the worst value. NaN/inf model outputs log
    the summary metrics as NaN. ``fatal=True`` re-raises instead.

    Args:
        probe_audio: folder(s) or files of clean probe clips.
        spec, descriptions, unconditional, batch_size, cache_dir, max_clips, and any
            :class:`~lightning_noiseprobe.probe.spec.ProbeSpec` field (``onset``,
            ``lengths``, ``noises``, ...): as for ``NoiseProbeCallback``.
        precision: ``None`` follows the Trainer (``bf16``/``fp16`` autocast, else fp32);
            or ``"32"``, ``"bf16"``, ``"16"``.
        processor: the model's processor or tokenizer (transformers models), needed
            only for text conditions (``descriptions`` or ``.json`` sidecars).
        every_n_evals: probe every n-th evaluation (count from 1).
        log_per_length: also log ``<prefix>/<noise>/len<L>/<metric>``.
        fatal: re-raise probe failures.
        prefix: metric name prefix.
    """

    def __init__(
        self,
        probe_audio: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
        *,
        spec: ProbeSpec | None = None,
        descriptions: str | None = None,
        unconditional: bool = False,
        batch_size: int = 8,
        precision: str | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        max_clips: int | None = None,
        processor: Any = None,
        every_n_evals: int = 1,
        log_per_length: bool = True,
        fatal: bool = False,
        prefix: str = "noiseprobe",
        **spec_fields: Any,
    ) -> None:
        if probe_audio is None:
            raise NoiseProbeError(
                "Expected argument `probe_audio` (a folder or files of probe clips) but got None."
            )
        #: The probe engine (configuration, probe set, scoring).
        self.engine = NoiseProber(
            probe_audio,
            spec=spec,
            descriptions=descriptions,
            unconditional=unconditional,
            batch_size=batch_size,
            precision=precision,
            cache_dir=cache_dir,
            max_clips=max_clips,
            **spec_fields,
        )
        self.engine.warn = lambda message: warnings.warn(
            f"NoiseProbeTrainerCallback: {message}", stacklevel=2
        )
        if (
            isinstance(every_n_evals, bool)
            or not isinstance(every_n_evals, int)
            or every_n_evals < 1
        ):
            raise NoiseProbeError(
                f"Expected argument `every_n_evals` to be a positive integer but got {every_n_evals!r}."
            )
        if not prefix or "/" in prefix:
            raise NoiseProbeError(
                f"Expected argument `prefix` to be a non-empty name without '/' but got {prefix!r}."
            )
        self.processor = processor
        self.every_n_evals = every_n_evals
        self.log_per_length = log_per_length
        self.fatal = fatal
        self.prefix = prefix
        #: One entry per probe: ``{"step", "seconds", "probe_ok", <summary metrics> | "error"}``.
        self.history: list[dict[str, Any]] = []
        self.failures: list[dict[str, Any]] = []
        self.last_result: ProbeResult | None = None
        self._evals = 0
        self._step_values: tuple[int, dict[str, float]] | None = None  # (step, metrics)
        self._last_good: dict[str, float] = {}

    # ------------------------------------------------------------------ setup
    def _move_first(self) -> None:
        """Put this callback first in the Trainer's callback list (found as the caller's
        ``CallbackHandler``), so its metrics are in an evaluation's logs before the logger
        callbacks read them. Order among other callbacks is unchanged."""
        from transformers.trainer_callback import CallbackHandler

        frame: Any = sys._getframe(1)
        for _ in range(6):
            if frame is None:
                break
            handler = frame.f_locals.get("self")
            if isinstance(handler, CallbackHandler):
                callbacks = handler.callbacks
                if callbacks and callbacks[0] is not self and self in callbacks:
                    callbacks.remove(
                        self
                    )  # the handler's loop keeps its place: later items keep their index
                    callbacks.insert(0, self)
                return
            frame = frame.f_back
        log.warning(
            "NoiseProbeTrainerCallback: could not find the Trainer's callback list; its metrics"
            " reach metric_for_best_model and EarlyStoppingCallback but may miss the loggers."
        )

    def _backend(self, model: Any) -> ProbeBackend:
        from lightning_noiseprobe.backends.wrap import as_backend

        if model is None:
            raise NoiseProbeError(
                "Expected the Trainer to pass its `model` to the callback but got None."
            )
        backend = as_backend(model)
        if self.processor is not None and getattr(backend, "tokenizer", "") is None:
            backend.tokenizer = getattr(self.processor, "tokenizer", self.processor)  # type: ignore[attr-defined]
        return backend

    def on_train_begin(
        self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any
    ) -> None:
        """Move first among the callbacks; build the probe set before the first step."""
        self._move_first()
        try:
            backend = self._backend(model)
            with isolated_probe(backend.lm):
                self.engine.probe_set(backend)
        except NoiseProbeError:
            raise
        except Exception as err:
            raise NoiseProbeError(
                f"NoiseProbeTrainerCallback could not prepare the probe set before training"
                f" ({type(err).__name__}: {err}); training has not started."
            ) from err

    # ------------------------------------------------------------------ probing
    @staticmethod
    def _eval_prefix(logs: dict[str, Any] | None) -> str | None:
        """``"eval"`` (or ``"eval_<dataset>"``) for the logs of an evaluation, else ``None``."""
        for key in logs or {}:
            if key.startswith("eval") and key.endswith("_runtime"):
                return key[: -len("_runtime")]
        return None

    def _context(self, args: Any, device: torch.device) -> Any:
        from lightning_noiseprobe.probe.runner import precision_context

        if self.engine.precision is not None:
            return None  # the engine's own
        if getattr(args, "bf16", False):
            return precision_context("bf16", device)
        if getattr(args, "fp16", False) and device.type != "cpu":
            return precision_context("16", device)
        return None

    def _values(self, args: Any, state: Any, model: Any) -> dict[str, float] | None:
        """This step's metrics (``<prefix>/<metric>``), probing once per step; ``None`` when
        this evaluation is not probed (``every_n_evals``)."""
        step = int(state.global_step)
        if self._step_values is not None and self._step_values[0] == step:
            return self._step_values[1]
        self._evals += 1
        if self._evals % self.every_n_evals:
            return None
        ok_key = f"{self.prefix}/probe_ok"
        started = time.perf_counter()
        try:
            values = {**self._probe(args, model), ok_key: 1.0}
            self._last_good.update(values)
            self.history.append(
                {
                    "step": step,
                    "seconds": time.perf_counter() - started,
                    "probe_ok": 1,
                    **(self.last_result.summary if self.last_result else {}),
                }
            )
        except Exception as err:
            values = self._on_failure(args, step, err)
        self._step_values = (step, values)
        return values

    def _probe(self, args: Any, model: Any) -> dict[str, float]:
        import torch.distributed as dist

        from lightning_noiseprobe.probe.engine import torch_all_gather

        backend = self._backend(model)
        device = next(backend.lm.parameters()).device
        distributed = dist.is_available() and dist.is_initialized()
        result = self.engine.run(
            backend,
            device=device,
            forward_context=self._context(args, device),
            world_size=dist.get_world_size() if distributed else 1,
            rank=dist.get_rank() if distributed else 0,
            all_gather=torch_all_gather if distributed else None,
        )
        self.last_result = result
        return self.engine.metrics(result, self.prefix, self.log_per_length)

    def _monitored(self, args: Any) -> str | None:
        """``<prefix>/<metric>`` when ``metric_for_best_model`` is one of this callback's."""
        name = getattr(args, "metric_for_best_model", None) or ""
        name = name.removeprefix("eval_")
        return name if name.startswith(f"{self.prefix}/") else None

    def _on_failure(self, args: Any, step: int, err: BaseException) -> dict[str, float]:
        self.failures.append({"step": step, "error": repr(err)})
        self.history.append({"step": step, "probe_ok": 0, "error": f"{type(err).__name__}: {err}"})
        if self.fatal:
            raise err
        values = {f"{self.prefix}/probe_ok": 0.0}
        if isinstance(err, NonFiniteLossError):
            from lightning_noiseprobe.probe.result import SUMMARY_METRICS

            values.update({f"{self.prefix}/{k}": math.nan for k in SUMMARY_METRICS})
        warnings.warn(
            f"NoiseProbeTrainerCallback: the probe failed at step {step} ({type(err).__name__}: {err});"
            f" training goes on unchanged. {self.prefix}/probe_ok is logged as 0 and the failure is in"
            " `failures`. Pass fatal=True to stop instead.",
            stacklevel=2,
        )
        return values

    def _held(self, args: Any, values: dict[str, float]) -> dict[str, float]:
        """The value a monitored metric this probe did not produce is held at: the last
        success's (a tie: never a new best), else the worst for the direction."""
        key = self._monitored(args)
        if key is None or key in values:
            return {}
        if key in self._last_good:
            return {key: self._last_good[key]}
        worst = float(torch.finfo(torch.float32).max)
        greater = getattr(args, "greater_is_better", None)
        return {key: -worst if greater else worst}

    # ------------------------------------------------------------------ hooks
    def on_log(
        self,
        args: Any,
        state: Any,
        control: Any,
        logs: dict[str, Any] | None = None,
        model: Any = None,
        **kwargs: Any,
    ) -> None:
        """An evaluation's logs: probe and add ``<eval prefix>_<prefix>/<metric>`` to them
        (the dict ``evaluate`` returns) and to their ``log_history`` entry."""
        key_prefix = self._eval_prefix(logs)
        if key_prefix is None or logs is None:
            return
        values = self._values(args, state, model)
        if values is None:
            return
        named = {f"{key_prefix}_{k}": v for k, v in values.items()}
        logs.update(named)
        history = state.log_history
        if history and all(history[-1].get(k) == logs.get(k) for k in (f"{key_prefix}_runtime",)):
            history[-1].update(named)

    def on_evaluate(
        self,
        args: Any,
        state: Any,
        control: Any,
        metrics: dict[str, Any] | None = None,
        model: Any = None,
        **kwargs: Any,
    ) -> None:
        """Make sure the evaluation's metrics hold this step's values (probing here if
        ``on_log`` did not), plus a held value for a monitored metric the probe lacks."""
        key_prefix = self._eval_prefix(metrics)
        if key_prefix is None or metrics is None:
            return
        values = self._values(args, state, model)
        if values is None:
            return
        for name, value in {**values, **self._held(args, values)}.items():
            metrics.setdefault(f"{key_prefix}_{name}", value)
