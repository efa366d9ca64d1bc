"""``NoiseProber``: the framework-free probe engine.

One object holds a probe configuration (a :class:`~lightning_noiseprobe.probe.spec.ProbeSpec`
plus how clips are conditioned, batched and cached), builds its probe set once per
backend, scores it (sharded over ranks when there are several) and turns a result
into a flat dict of metrics. The Lightning :class:`~lightning_noiseprobe.callback.NoiseProbeCallback`
is a thin layer over it (hooks, failure policy, checkpoint state, logging); a plain
training loop uses it directly::

    prober = NoiseProber("probe_clips/", lengths=(5, 50, 200))
    for epoch in range(epochs):
        train_one_epoch(model)
        result = prober(backend)                 # no_grad, eval mode, RNG untouched
        print(prober.metrics(result))            # {"noiseprobe/peak_sharpness": ..., ...}

The model itself works as well as a backend: an audiocraft ``MusicGen`` or a transformers
``MusicgenForConditionalGeneration``, inside DDP/accelerate/PEFT wrappers or not::

    metrics, result = prober.probe(model)      # (metrics dict, ProbeResult)

Distributed: pass ``world_size``, ``rank`` and an ``all_gather`` (a callable taking a
tensor and returning it stacked over ranks, ``[W, *shape]``); by default
``torch.distributed`` is used when it is initialised.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager as ContextManager
from typing import TYPE_CHECKING, Any

import torch

from lightning_noiseprobe._errors import NoiseProbeError
from lightning_noiseprobe.probe.spec import ProbeSpec

if TYPE_CHECKING:
    from lightning_noiseprobe.backends.base import ProbeBackend
    from lightning_noiseprobe.probe.probeset import ProbeSet
    from lightning_noiseprobe.probe.result import ProbeResult

__all__ = [
    "PER_LENGTH_METRICS",
    "NoiseProber",
    "flat_metrics",
    "isolated_probe",
    "torch_all_gather",
]

#: Metrics broken down per (noise, length) by :meth:`NoiseProber.metrics` with ``per_length``.
PER_LENGTH_METRICS = (
    "delta_loss",
    "peak_mean",
    "peak_sharpness",
    "assimilation_mean",
    "recovery_mean",
)


def flat_metrics(
    summary: Mapping[str, float],
    by_length: Mapping[Any, Mapping[Any, Mapping[str, Any]]],
    prefix: str = "noiseprobe",
    per_length: bool = True,
) -> dict[str, float]:
    """The metric names and values the callbacks log, from a result's ``summary`` and
    ``by_length`` (as :class:`~lightning_noiseprobe.probe.result.ProbeResult` holds them or
    ``metrics.json`` stores them): ``{"<prefix>/<metric>": value}`` for the finite summary
    values (p-values left out), and with ``per_length`` ``"<prefix>/<group>/len<L>/<metric>"``
    for the :data:`PER_LENGTH_METRICS` of each noise and length.

    >>> flat_metrics({"peak_mean": 0.5, "length_pearson_p": 0.01},
    ...              {"white": {5: {"peak_mean": {"mean": 0.4, "std": 0.1, "n": 2}}}})
    {'noiseprobe/peak_mean': 0.5, 'noiseprobe/white/len5/peak_mean': 0.4}
    """
    out = {
        f"{prefix}/{k}": float(v)
        for k, v in summary.items()
        if not k.endswith("_p") and math.isfinite(v)
    }
    if per_length:
        for group, by_len in by_length.items():
            for length, metrics in by_len.items():
                for name in PER_LENGTH_METRICS:
                    value = metrics.get(name, {}).get("mean")
                    if value is not None and math.isfinite(value):
                        out[f"{prefix}/{group}/len{length}/{name}"] = float(value)
    return out


AllGather = Callable[[torch.Tensor], torch.Tensor]
ProbeAudio = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]


def torch_all_gather(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` of every rank stacked, ``[W, *shape]``, with ``torch.distributed``
    (every rank must pass the same shape)."""
    import torch.distributed as dist

    out = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(out, tensor.contiguous())
    return torch.stack(out)


@contextlib.contextmanager
def _isolated_rng() -> Iterator[None]:
    """Restore the global RNGs (Python, NumPy, torch CPU and initialised CUDA) on exit."""
    import numpy as np

    states: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    try:
        yield
    finally:
        random.setstate(states["python"])
        np.random.set_state(states["numpy"])
        torch.set_rng_state(states["torch"])
        if "cuda" in states:
            torch.cuda.set_rng_state_all(states["cuda"])


@contextlib.contextmanager
def isolated_probe(module: torch.nn.Module | None) -> Iterator[None]:
    """The conditions every probe step runs under: ``module`` (and every submodule) in eval
    mode, each submodule's own mode restored afterwards; global RNGs restored; ``no_grad``
    (not ``inference_mode``: tensors the model caches during the probe, such as audiocraft's
    pattern indexes, must stay usable by later training steps)."""
    modes = {m: m.training for m in module.modules()} if module is not None else {}
    if module is not None:
        module.eval()
    try:
        with _isolated_rng(), torch.inference_mode(False), torch.no_grad():
            yield
    finally:
        for submodule, training in modes.items():
            submodule.train(training)


class NoiseProber:
    """A probe: its configuration, its probe set (built once) and how it is scored.

    Args:
        probe_audio: folder(s) or files of clean probe clips (may be given later to
            :meth:`resolve_audio`, e.g. from a datamodule).
        spec: a full :class:`ProbeSpec` instead of per-field arguments.
        descriptions: text condition for every clip (``None``: ``.json`` sidecars,
            else unconditional).
        unconditional: score every clip without text, even with sidecars; not together
            with ``descriptions``.
        batch_size: sequences per forward pass.
        precision: ``None`` follows ``forward_context`` (fp32 without one); or ``"32"``,
            ``"bf16"``, ``"16"`` (Lightning spellings accepted).
        cache_dir: token cache folder (default: ``~/.cache/lightning_noiseprobe``;
            ``"none"`` disables).
        max_clips: use at most this many clips (sorted by path).
        **spec_fields: any :class:`ProbeSpec` field (``onset``, ``lengths``, ...); refused
            together with a ``spec`` when different from the field's default
            (:meth:`ProbeSpec.resolve`).

    Attributes:
        spec: the resolved :class:`ProbeSpec`.
        warn: called with a message for each skipped clip (default: ``logging``).

    Example:
        >>> NoiseProber("clips/", onset=100, lengths=(5, 50)).spec.max_window_end
        150
        >>> NoiseProber("clips/", spec=ProbeSpec(), onset=100)
        Traceback (most recent call last):
        ...
        lightning_noiseprobe._errors.NoiseProbeError: Pass either spec= or per-field arguments, not both; got spec and onset=100. Put the fields in the spec (dataclasses.replace(spec, ...)).
    """

    def __init__(
        self,
        probe_audio: ProbeAudio | None = None,
        *,
        spec: ProbeSpec | None = None,
        descriptions: str | None = None,
        unconditional: bool = False,
        batch_size: int = 8,
        precision: str | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        max_clips: int | None = None,
        **spec_fields: Any,
    ) -> None:
        from lightning_noiseprobe.probe.runner import PRECISIONS

        self.spec = ProbeSpec.resolve(spec, **spec_fields)
        if not isinstance(unconditional, bool):
            raise NoiseProbeError(
                f"Expected argument `unconditional` to be True or False but got {unconditional!r}."
            )
        if unconditional and descriptions is not None:
            raise NoiseProbeError(
                f"Expected either `descriptions` or `unconditional=True` but got both (descriptions={descriptions!r});"
                " drop one of them."
            )
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise NoiseProbeError(
                f"Expected argument `batch_size` to be a positive integer but got {batch_size!r}."
            )
        if precision is not None and str(precision) not in PRECISIONS:
            raise NoiseProbeError(
                f"Expected argument `precision` to be None or one of {sorted(PRECISIONS)} but got {precision!r}."
            )
        if max_clips is not None and (
            isinstance(max_clips, bool) or not isinstance(max_clips, int) or max_clips < 1
        ):
            raise NoiseProbeError(
                f"Expected argument `max_clips` to be a positive integer or None but got {max_clips!r}."
            )
        self.probe_audio = probe_audio
        self.descriptions = descriptions
        self.unconditional = unconditional
        self.batch_size = batch_size
        self.precision = None if precision is None else str(precision)
        self.cache_dir = cache_dir
        self.max_clips = max_clips
        self.warn: Callable[[str], None] = _log_warning
        self.audio_files: list[str] | None = None
        self._probe_set: ProbeSet | None = None

    # ------------------------------------------------------------------ probe set
    def resolve_audio(self, source: ProbeAudio | None = None) -> list[str]:
        """The probe files (sorted, at most ``max_clips``) of ``source``, else of ``probe_audio``;
        resolved once and kept in :attr:`audio_files`."""
        from lightning_noiseprobe.probe.probeset import find_audio_files

        if self.audio_files is None:
            source = source if source is not None else self.probe_audio
            if source is None:
                raise NoiseProbeError(
                    "Expected argument `probe_audio` (a folder or files of probe clips) but got None."
                )
            files = [str(p) for p in find_audio_files(source)]
            self.audio_files = files[: self.max_clips] if self.max_clips else files
        return self.audio_files

    @property
    def built(self) -> ProbeSet | None:
        """The probe set, once :meth:`probe_set` has built it."""
        return self._probe_set

    def probe_set(self, backend: ProbeBackend) -> ProbeSet:
        """The probe set of ``backend``'s codec: built (tokenized, cached) on the first call,
        then kept; each skipped clip is reported once through :attr:`warn`."""
        from lightning_noiseprobe.probe.probeset import build_probe_set, default_cache_dir

        if self._probe_set is None:
            cache = self.cache_dir
            if cache is None:
                cache = default_cache_dir()
            elif str(cache).lower() == "none":
                cache = None
            self._probe_set = build_probe_set(
                backend,
                self.resolve_audio(),
                self.spec,
                descriptions=self.descriptions,
                unconditional=self.unconditional,
                cache_dir=cache,
            )
            for skipped in self._probe_set.skipped:
                self.warn(f"skipped probe clip {skipped['path']}: {skipped['reason']}")
        return self._probe_set

    # ------------------------------------------------------------------ scoring
    def forward_context(
        self, device: torch.device | str, default: Callable[[], ContextManager[Any]] | None = None
    ) -> Callable[[], ContextManager[Any]]:
        """The autocast context factory: ``precision``'s if set, else ``default`` (fp32 if none)."""
        from lightning_noiseprobe.probe.runner import precision_context

        if self.precision is not None:
            return precision_context(self.precision, device)
        return default or contextlib.nullcontext

    def score(
        self,
        backend: ProbeBackend,
        *,
        device: torch.device | str | None = None,
        forward_context: Callable[[], ContextManager[Any]] | None = None,
        world_size: int = 1,
        rank: int = 0,
        all_gather: AllGather | None = None,
    ) -> ProbeResult:
        """Score the probe set with ``backend`` and analyse it (no mode switch, no RNG
        isolation: see :meth:`run`).

        With ``world_size > 1`` clip ``j`` goes to rank ``j % W``; every rank scores
        ``ceil(N / W)`` clips (padded with repeats of clip 0, dropped after the gather),
        so all ranks run the same forward passes and gather tensors of the same shape.
        A failure on any rank is agreed on first, so no rank waits in a collective that
        another never reaches; then every rank raises. Every rank returns the same result.

        Args:
            device: where the LM runs (default: the LM's device).
            forward_context: autocast factory used when ``precision`` is ``None``
                (the callback passes the trainer's).
            world_size, rank: this process's place among the probing ranks.
            all_gather: ``tensor -> [W, *shape]`` over ranks (default ``torch.distributed``).
        """
        from lightning_noiseprobe.probe.runner import result_from_nll, score_nll, score_probe_set
        from lightning_noiseprobe.probe.shards import padded_shard, unpad_index

        if device is None:
            device = next(backend.lm.parameters()).device
        ps = self.probe_set(backend)
        ctx = self.forward_context(device, forward_context)
        if world_size <= 1:
            return score_probe_set(
                backend, ps, batch_size=self.batch_size, device=device, forward_context=ctx
            )
        gather = all_gather or torch_all_gather
        N = len(ps)
        error: BaseException | None = None
        try:
            nll, mask = score_nll(
                backend,
                ps.subset(padded_shard(N, world_size, rank)),
                batch_size=self.batch_size,
                device=device,
                forward_context=ctx,
            )
        except Exception as err:
            error = err
        ok = gather(torch.tensor([error is None], dtype=torch.uint8, device=device))
        if error is not None:
            raise error
        if not bool(ok.all()):
            failed = [r for r, flag in enumerate(ok.reshape(-1).tolist()) if not flag]
            raise RuntimeError(f"the probe failed on rank(s) {failed}; skipped on every rank")
        all_nll = gather(nll.to(device)).cpu()  # [W, per_rank, 1 + P, K, T]
        all_mask = gather(mask.to(device, torch.uint8)).cpu().bool()
        ranks, slots = unpad_index(N, world_size)
        return result_from_nll(backend, ps, all_nll[ranks, slots], all_mask[ranks, slots])

    def run(
        self,
        backend: ProbeBackend | torch.nn.Module | Any,
        *,
        module: torch.nn.Module | None = None,
        device: torch.device | str | None = None,
        forward_context: Callable[[], ContextManager[Any]] | None = None,
        world_size: int = 1,
        rank: int = 0,
        all_gather: AllGather | None = None,
    ) -> ProbeResult:
        """:meth:`score` under :func:`isolated_probe`: ``no_grad``, ``module`` (default
        ``backend.lm``) in eval mode with every submodule's mode restored, and the global
        RNGs untouched, so training is bitwise the same with and without the probe.

        ``backend`` may also be the model itself: an audiocraft ``MusicGen`` or a
        transformers ``MusicgenForConditionalGeneration``, inside DDP/accelerate/PEFT
        wrappers or not (wrapped in place by
        :func:`~lightning_noiseprobe.backends.wrap.as_backend`; nothing is copied).
        :meth:`probe` returns the metrics dict too.
        """
        from lightning_noiseprobe.backends.wrap import as_backend

        backend = as_backend(backend)
        with isolated_probe(module if module is not None else backend.lm):
            return self.score(
                backend,
                device=device,
                forward_context=forward_context,
                world_size=world_size,
                rank=rank,
                all_gather=all_gather,
            )

    __call__ = run

    def probe(
        self,
        model: ProbeBackend | torch.nn.Module | Any,
        *,
        prefix: str = "noiseprobe",
        per_length: bool = True,
        **run_kwargs: Any,
    ) -> tuple[dict[str, float], ProbeResult]:
        """:meth:`run`, then :meth:`metrics`: ``metrics, result = prober.probe(model)``.

        ``run_kwargs`` go to :meth:`run` (``device``, ``world_size``, ``all_gather``, ...).
        """
        result = self.run(model, **run_kwargs)
        return self.metrics(result, prefix, per_length), result

    # ------------------------------------------------------------------ outputs
    @staticmethod
    def metrics(
        result: ProbeResult, prefix: str = "noiseprobe", per_length: bool = True
    ) -> dict[str, float]:
        """The finite summary metrics as ``{"<prefix>/<metric>": value}`` (p-values left
        out), and with ``per_length`` the :data:`PER_LENGTH_METRICS` of each noise and
        length as ``"<prefix>/<group>/len<L>/<metric>"`` (:func:`flat_metrics`)."""
        return flat_metrics(result.summary, result.by_length, prefix, per_length)

    def metric_names(self, prefix: str = "noiseprobe", per_length: bool = True) -> list[str]:
        """Every name :meth:`metrics` can return for this spec."""
        from lightning_noiseprobe.probe.result import SUMMARY_METRICS

        names = [f"{prefix}/{k}" for k in SUMMARY_METRICS]
        if per_length:
            names += [
                f"{prefix}/{p.group}/len{p.length}/{m}"
                for p in self.spec.perturbations()
                for m in PER_LENGTH_METRICS
            ]
        return names

    def audio_examples(self, index: int = 0) -> dict[str, torch.Tensor]:
        """Clip ``index`` of the built probe set as the model hears it, clean and with the
        longest perturbation: ``{"clean": [C, S], "<group>_len<L>": [C, S']}`` at the
        probe set's sample rate (loaded, converted, cropped and perturbed exactly as
        when the probe set was built)."""
        from lightning_noiseprobe.probe.probeset import load_prepared

        ps = self._probe_set
        if ps is None:
            raise NoiseProbeError("Expected a built probe set; call probe_set(backend) first.")
        prepared = load_prepared(
            ps.clips[index].name,
            ps.spec,
            sample_rate=ps.sample_rate,
            channels=ps.channels,
            frame_rate=ps.frame_rate,
        )
        pert = max(ps.perturbations, key=lambda p: p.length)
        return {"clean": prepared.clean, f"{pert.group}_len{pert.length}": prepared.perturbed(pert)}


def _log_warning(message: str) -> None:
    import logging

    logging.getLogger(__name__).warning("NoiseProber: %s", message)
