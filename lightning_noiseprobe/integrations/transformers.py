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
step runs in between), adding to the very dict ``evaluate`` returns. ``on_evaluate`` of
the same evaluation reuses that probe; an evaluation whose ``on_log`` did not reach the
callback is probed there. Every evaluation is probed on its own weights: a final
``trainer.evaluate()`` after ``load_best_model_at_end`` probes the loaded best model, at
the same ``global_step`` as the last evaluation of training.
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

    Example (a ``Trainer`` or ``Seq2SeqTrainer`` you already have)::

        from lightning_noiseprobe import NoiseProbeTrainerCallback

        args = TrainingArguments(
            ...,
            eval_strategy="steps",
            metric_for_best_model="noiseprobe/peak_sharpness",  # the Trainer adds "eval_"
            greater_is_better=True,
            load_best_model_at_end=True,
        )
        trainer = Trainer(model=model, args=args, processing_class=processor, ...)
        trainer.add_callback(NoiseProbeTrainerCallback(probe_audio="probe_clips/"))
        trainer.train()  # eval_noiseprobe/peak_sharpness, ... in every evaluation

    Probe clips: a folder (or files) of clean music, wav/flac/ogg/mp3 at any rate,
    cropped to ``clip_seconds`` (15 s). The shortest usable clip is ``onset`` + the
    longest window + a 5-token margin: **9.1 s** with the defaults (250 + 200 + 5 tokens
    at 50 Hz); ``NoiseProber(...).spec.min_clip_seconds(50)`` gives it for other
    settings. A clip with a ``.json`` sidecar (``{"description": ...}``) is scored with
    that text, which needs the model's tokenizer: ``processor=``, else the Trainer's
    ``processing_class`` (or ``tokenizer``), else the tokenizer files saved beside the
    model; if none is found the callback stops before the first training step, naming
    ``processor=``. ``unconditional=True`` scores every clip without text.

    Metrics (every evaluation logs the same keys): ``eval_<prefix>/<metric>`` for the
    summary metrics (``peak_sharpness``, ``delta_loss``, ``peak_mean``, ... as in the
    README's table), ``eval_<prefix>/<group>/len<L>/<metric>`` per perturbation with
    ``log_per_length``, and ``eval_<prefix>/probe_ok`` (1 or 0). A value that does not
    exist is NaN: the mean of a region that is empty in every clip, a correlation over
    one length, or every value of a failed probe. ``metric_for_best_model`` takes the
    name without ``eval_`` (``"noiseprobe/peak_sharpness"``).

    Guarantees (as :class:`~lightning_noiseprobe.callback.NoiseProbeCallback`): the probe
    runs under ``no_grad`` with the model in eval mode (every submodule's mode restored)
    and the global RNGs restored, so training is bitwise the same with and without it.
    Every evaluation probes the weights it evaluates, once (a final ``evaluate()`` after
    ``load_best_model_at_end`` probes the best model). Under ``torch.distributed`` (the
    Trainer launched with ``torchrun``/``accelerate``) the clips are sharded over the
    processes and every process gets the same values.

    Failure policy: the probe set is built before the first training step (a
    configuration error, such as no usable clip or text conditions without a
    tokenizer, raises :class:`NoiseProbeError` then). A failure at an evaluation warns,
    logs ``eval_<prefix>/probe_ok`` = 0 and every other metric as NaN (no made-up
    value reaches ``log_history``, ``eval_results.json`` or ``best_metric``), records it
    in :attr:`failures`, and training goes on. transformers compares with ``>``/``<``,
    which is false for NaN, so a failed evaluation is never a new best checkpoint and
    counts for ``EarlyStoppingCallback`` as an evaluation without improvement, in both
    directions of ``greater_is_better``. ``fatal=True`` re-raises instead.

    Args:
        probe_audio: folder(s) or files of clean probe clips.
        spec, descriptions, unconditional, batch_size, cache_dir, max_clips, and any
            :class:`~lightning_noiseprobe.probe.spec.ProbeSpec` field (``onset``,
            ``lengths``, ``noises``, ...): as for ``NoiseProbeCallback``.
        precision: ``None`` follows the Trainer (``bf16``/``fp16`` autocast, else fp32);
            or ``"32"``, ``"bf16"``, ``"16"``.
        processor: the model's processor or tokenizer, for text conditions
            (``descriptions`` or ``.json`` sidecars); ``None``: the Trainer's
            ``processing_class``, else the tokenizer saved beside the model.
        every_n_evals: probe every n-th evaluation (count from 1).
        log_per_length: also log ``<prefix>/<group>/len<L>/<metric>``.
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
        #: The current evaluation's values, from its ``on_log`` to its ``on_evaluate``
        #: (``(values,)``; ``(None,)`` when ``every_n_evals`` skips it), else ``None``.
        self._pending: tuple[dict[str, float] | None] | None = None
        self._tokenizer: Any = None
        self._tokenizer_source = ""
        self._succeeded = False

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

    def _find_tokenizer(self, inner: Any, hook_kwargs: dict[str, Any]) -> tuple[Any, str]:
        """``(tokenizer, where it came from)``: ``processor=``, the Trainer's
        ``processing_class`` / ``tokenizer``, else the files saved beside the model; ``(None, "")``
        if none holds a text tokenizer."""
        for source, candidate in (
            ("processor=", self.processor),
            ("the Trainer's processing_class", hook_kwargs.get("processing_class")),
            ("the Trainer's tokenizer", hook_kwargs.get("tokenizer")),
        ):
            tokenizer = _text_tokenizer(candidate)
            if tokenizer is not None:
                return tokenizer, source
        folder = _model_folder(inner)
        if folder is not None:
            from lightning_noiseprobe.backends.transformers.compat import load_tokenizer

            tokenizer = load_tokenizer(folder, local_only=True)
            if tokenizer is not None:
                return tokenizer, folder
        return None, ""

    def _backend(self, model: Any, hook_kwargs: dict[str, Any] | None = None) -> ProbeBackend:
        from lightning_noiseprobe.backends._common import unwrap_model
        from lightning_noiseprobe.backends.wrap import as_backend

        if model is None:
            raise NoiseProbeError(
                "Expected the Trainer to pass its `model` to the callback but got None."
            )
        backend = as_backend(model)
        if getattr(backend, "tokenizer", "") is None:
            if self._tokenizer is None:
                self._tokenizer, self._tokenizer_source = self._find_tokenizer(
                    unwrap_model(model), hook_kwargs or {}
                )
            backend.tokenizer = self._tokenizer  # type: ignore[attr-defined]
        return backend

    def _require_tokenizer(self, backend: ProbeBackend, model: Any) -> None:
        """Text conditions without a tokenizer: a configuration error, before training."""
        from lightning_noiseprobe.backends._common import unwrap_model

        ps = self.engine.built
        texts = [clip for clip in (ps.clips if ps is not None else []) if clip.description]
        if not texts or getattr(backend, "tokenizer", "") is not None:
            return
        folder = _model_folder(unwrap_model(model))
        beside = (
            f"no tokenizer files in the model's folder {folder!r}"
            if folder is not None
            else "no local folder recorded in the model's config (`_name_or_path`) to read one from"
        )
        raise NoiseProbeError(
            f"NoiseProbeTrainerCallback: {len(texts)} probe clip(s) have text conditions (e.g."
            f" {texts[0].name!r}: {texts[0].conditioning}, {texts[0].description!r}) but no text"
            " tokenizer was found: none given as `processor=`, none in the Trainer"
            f" (`processing_class`/`tokenizer`), and {beside}. Pass"
            " `NoiseProbeTrainerCallback(..., processor=processor)` (your MusicgenProcessor or"
            " its tokenizer), or `unconditional=True` to score without text. Training has not"
            " started."
        )

    def on_train_begin(
        self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any
    ) -> None:
        """Move first among the callbacks; build the probe set before the first step."""
        self._move_first()
        try:
            backend = self._backend(model, kwargs)
            with isolated_probe(backend.lm):
                self.engine.probe_set(backend)
        except NoiseProbeError:
            raise
        except Exception as err:
            raise NoiseProbeError(
                f"NoiseProbeTrainerCallback could not prepare the probe set before training"
                f" ({type(err).__name__}: {err}); training has not started."
            ) from err
        self._require_tokenizer(backend, model)

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

    def _names(self) -> list[str]:
        """Every key an evaluation logs (without the evaluation's prefix)."""
        return [
            *self.engine.metric_names(self.prefix, self.log_per_length),
            f"{self.prefix}/probe_ok",
        ]

    def _evaluation(
        self, args: Any, state: Any, model: Any, hook_kwargs: dict[str, Any]
    ) -> dict[str, float] | None:
        """Probe the model as it is now, for one evaluation: every key of :meth:`_names`
        (NaN where no value exists); ``None`` when ``every_n_evals`` skips this evaluation."""
        self._evals += 1
        if self._evals % self.every_n_evals:
            return None
        step = int(state.global_step)
        values = dict.fromkeys(self._names(), math.nan)
        started = time.perf_counter()
        try:
            values.update(self._probe(args, model, hook_kwargs))
        except Exception as err:
            self._on_failure(step, err)
            values[f"{self.prefix}/probe_ok"] = 0.0
            return values
        values[f"{self.prefix}/probe_ok"] = 1.0
        self._succeeded = True
        self.history.append(
            {
                "step": step,
                "seconds": time.perf_counter() - started,
                "probe_ok": 1,
                **(self.last_result.summary if self.last_result else {}),
            }
        )
        return values

    def _probe(self, args: Any, model: Any, hook_kwargs: dict[str, Any]) -> dict[str, float]:
        import torch.distributed as dist

        from lightning_noiseprobe.probe.engine import torch_all_gather

        backend = self._backend(model, hook_kwargs)
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

    def _on_failure(self, step: int, err: BaseException) -> None:
        self.failures.append({"step": step, "error": repr(err)})
        self.history.append({"step": step, "probe_ok": 0, "error": f"{type(err).__name__}: {err}"})
        if self.fatal:
            raise err
        why = (
            "the model's outputs are NaN/inf"
            if isinstance(err, NonFiniteLossError)
            else f"{type(err).__name__}: {err}"
        )
        warnings.warn(
            f"NoiseProbeTrainerCallback: the probe failed at step {step} ({why}); training goes on"
            f" unchanged. {self.prefix}/probe_ok is logged as 0 and its other metrics as NaN (never"
            " a new best checkpoint, no improvement for early stopping); the failure is in"
            " `failures`. Pass fatal=True to stop instead.",
            stacklevel=3,
        )

    # ------------------------------------------------------------------ hooks
    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._pending = None  # weights change from here on: no evaluation is open

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
        values = self._evaluation(args, state, model, kwargs)
        self._pending = (values,)
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
        """Make sure the evaluation's metrics hold its probe: the one its ``on_log`` ran, or
        one run here if the logs did not reach this callback."""
        key_prefix = self._eval_prefix(metrics)
        if key_prefix is None or metrics is None:
            return
        pending, self._pending = self._pending, None
        values = pending[0] if pending is not None else self._evaluation(args, state, model, kwargs)
        if values is None:
            return
        for name, value in values.items():
            metrics.setdefault(f"{key_prefix}_{name}", value)

    def _unset_best(self, args: Any, state: Any) -> bool:
        """Whether ``state.best_metric`` holds only the ±inf transformers starts its comparisons
        from: this callback's metric is monitored and no probe has succeeded yet (every
        value was NaN, which never compares better)."""
        best = getattr(state, "best_metric", None)
        return (
            self._monitored(args) is not None
            and not self._succeeded
            and isinstance(best, float)
            and math.isinf(best)
        )

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """A checkpoint saved before any probe succeeded: its ``trainer_state.json`` says
        ``best_metric`` null instead of transformers' starting ±inf. (The value in memory
        stays, so early stopping keeps counting failed evaluations as no improvement.)"""
        if not self._unset_best(args, state) or not getattr(args, "should_save", True):
            return
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

        path = os.path.join(
            args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}", "trainer_state.json"
        )
        if os.path.isfile(path):
            best, state.best_metric = state.best_metric, None
            try:
                state.save_to_json(path)
            finally:
                state.best_metric = best

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Every probe failed: ``best_metric`` back to ``None`` (see :meth:`on_save`), so
        ``trainer.save_state()`` writes no made-up best value."""
        self._pending = None
        if self._unset_best(args, state):
            state.best_metric = None


def _text_tokenizer(candidate: Any) -> Any:
    """The text tokenizer in a processor (``.tokenizer``) or the candidate itself if it is
    one; ``None`` otherwise (a feature extractor, ``None``)."""
    from transformers import PreTrainedTokenizerBase

    tokenizer = getattr(candidate, "tokenizer", candidate)
    return tokenizer if isinstance(tokenizer, PreTrainedTokenizerBase) else None


def _model_folder(model: Any) -> str | None:
    """The local folder the model was loaded from (``config._name_or_path``), if any."""
    name = getattr(getattr(model, "config", None), "_name_or_path", "") or ""
    return name if name and os.path.isdir(name) else None
