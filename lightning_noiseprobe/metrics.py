"""The probe's peak-shape metrics as a ``torchmetrics.Metric``, for a user's own loop.

:class:`PeakShape` is the modular twin of
:func:`~lightning_noiseprobe.functional.curves.analyze_curves` and
:func:`~lightning_noiseprobe.functional.aggregate.summarize`, the way torchmetrics
pairs ``functional/`` with its classes: :meth:`PeakShape.update` analyses each
batch of clean / perturbed per-token losses with ``analyze_curves`` and keeps one
row of statistics per curve; :meth:`PeakShape.compute` summarises the rows of every
process with ``summarize``. No curve maths lives here.

States, and why they are exact: every per-curve metric is a function of its own
curve only, so the per-curve values (``"cat"`` across processes) are what the
functional API gives for the same curves, and the summary means are taken over
them as ``summarize`` takes them; the empty-region counts are integers
(``"sum"``). The length correlations need every curve's length and
``delta_loss``, which the rows hold too.

:func:`gather_clips` is the same ``"cat"`` reduction for per-clip tensors sharded
across ranks (clip ``j`` on rank ``j % world_size``, see :func:`clip_shard`).

Importing this module imports torchmetrics (and so Lightning's utilities); the
package exports :class:`PeakShape` lazily.
"""

from __future__ import annotations

from typing import Any

import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from lightning_noiseprobe._errors import NoiseProbeError, NonFiniteLossError
from lightning_noiseprobe.functional.aggregate import summarize
from lightning_noiseprobe.functional.curves import (
    EMPTY_COUNT_NAMES,
    METRIC_NAMES,
    REGION_RULES,
    analyze_curves,
    check_region_settings,
    codebook_average,
)
from lightning_noiseprobe.probe.shards import clip_shard  # re-exported: the one clip assignment

__all__ = ["PeakShape", "clip_shard", "gather_clips"]


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


class PeakShape(Metric):
    r"""Peak-shape metrics of noise injections, accumulated over batches and processes.

    Feed it the per-token losses of clean clips and of their noise-injected copies
    from your own validation loop; :meth:`compute` returns the headline metrics of
    the probe (``ProbeResult.summary``), with the same names and values that the
    functional API gives for the same curves: the means over curves of
    :data:`~lightning_noiseprobe.functional.curves.METRIC_NAMES` (each over the
    curves where it is finite: an empty region's mean is left out), the counts
    ``peak_empty``, ``assimilation_empty``, ``recovery_empty``, and, with at least
    3 curves of 2 or more lengths, ``length_pearson``, ``length_spearman``,
    ``length_slope`` (and their ``_p`` values) of ``delta_loss`` against the
    injection length. Every update is taken as a noise injection.

    Args:
        regions: region rule, ``"default"`` or ``"authors"`` (see
            :func:`~lightning_noiseprobe.functional.curves.analyze_curves`).
        smoothing: window (odd, tokens) of the moving average and running median.
        margin: tokens after the injection window where Recovery starts.
        per_codebook: ``False`` (default): :meth:`update` takes codebook-averaged
            losses ``[..., T]``; ``True``: per-codebook losses ``[..., K, T]``,
            averaged over the valid codebooks of each frame
            (:func:`~lightning_noiseprobe.functional.curves.codebook_average`).
        kwargs: torchmetrics' own (``process_group``, ``dist_sync_fn``, ...).

    Example:
        >>> T = 40
        >>> clean = torch.full((T,), 2.0); clean[::2] += 0.5
        >>> delta = torch.zeros(T); delta[10:13] = 3.0; delta[13:20] = -1.0
        >>> metric = PeakShape()
        >>> metric.update(clean, clean + delta, onset=10, length=10)
        >>> out = metric.compute()
        >>> round(float(out["peak_mean"]), 3), round(float(out["peak_sharpness"]), 3)
        (2.0, 7.2)
        >>> int(out["assimilation_empty"])
        0
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False
    #: the injection length of every curve (a ``"cat"`` state: a list until synced)
    length: list[torch.Tensor] | torch.Tensor

    def __init__(
        self,
        *,
        regions: str = "default",
        smoothing: int = 5,
        margin: int = 5,
        per_codebook: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if regions not in REGION_RULES:
            raise NoiseProbeError(
                f"Expected argument `regions` to be one of {list(REGION_RULES)} but got {regions!r}."
            )
        check_region_settings(smoothing, margin)
        if not isinstance(per_codebook, bool):
            raise NoiseProbeError(
                f"Expected argument `per_codebook` to be True or False but got {per_codebook!r}."
            )
        self.regions = regions
        self.smoothing = int(smoothing)
        self.margin = int(margin)
        self.per_codebook = per_codebook
        for name in (*METRIC_NAMES, "length"):  # one row per curve, in float64 (exact)
            self.add_state(name, default=[], dist_reduce_fx="cat")
        for name in EMPTY_COUNT_NAMES:
            self.add_state(
                name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum"
            )
        # A rank that saw no curve sends an empty tensor of the metric's dtype: match the rows'.
        self.set_dtype(torch.float64)

    def update(
        self,
        clean: torch.Tensor,
        perturbed: torch.Tensor,
        onset: int | torch.Tensor,
        length: int | torch.Tensor,
        *,
        mask: torch.Tensor | None = None,
        perturbed_mask: torch.Tensor | None = None,
        start: int | torch.Tensor | None = None,
        clean_codes: torch.Tensor | None = None,
        perturbed_codes: torch.Tensor | None = None,
    ) -> None:
        """Analyse a batch of clean / perturbed loss curves and keep their statistics.

        Args:
            clean: clean per-token losses, ``[..., T]`` (``[..., K, T]`` with
                ``per_codebook=True``); for a deletion, the clean curve on the
                copy's timeline.
            perturbed: the noise-injected copies' losses, same shape as ``clean``.
            onset: injection onset token, int or a tensor broadcastable to the batch shape ``[...]``.
            length: injection length in tokens, int or broadcastable to ``[...]``.
            mask: optional bool, same shape as ``clean``: tokens where the clean loss
                is valid (default: all).
            perturbed_mask: optional, the same for ``perturbed`` (default: ``mask``);
                a token is analysed where both are valid.
            start: optional perturbation start token, int or broadcastable to ``[...]``.
            clean_codes, perturbed_codes: optional ``[..., K, T]`` codes; when both are
                given (and no ``start``), the start is the first frame that differs.
                Without either the start is the onset. The ``"authors"`` rule uses neither.

        Raises:
            NoiseProbeError: on mismatched shapes, a window outside the curves, a
                non-positive length, NaN/inf losses at valid tokens (nothing is kept then).
        """
        if not isinstance(clean, torch.Tensor) or not isinstance(perturbed, torch.Tensor):
            raise NoiseProbeError(
                "Expected arguments `clean` and `perturbed` to be tensors but got"
                f" {type(clean).__name__} and {type(perturbed).__name__}."
            )
        if clean.shape != perturbed.shape:
            raise NoiseProbeError(
                "Expected arguments `clean` and `perturbed` to have the same shape but got"
                f" {_shape(clean)} and {_shape(perturbed)}."
            )
        layout = "[..., K, T]" if self.per_codebook else "[..., T]"
        if clean.ndim < (2 if self.per_codebook else 1):
            raise NoiseProbeError(
                f"Expected argument `clean` of shape {layout} (per_codebook={self.per_codebook}) but got"
                f" {_shape(clean)}."
            )
        for name, m in (("mask", mask), ("perturbed_mask", perturbed_mask)):
            if m is not None and m.shape != clean.shape:
                raise NoiseProbeError(
                    f"Expected argument `{name}` to have the shape of `clean` {_shape(clean)} but got"
                    f" {_shape(m)}."
                )
        clean_mask = torch.ones_like(clean, dtype=torch.bool) if mask is None else mask.bool()
        pert_mask = clean_mask if perturbed_mask is None else perturbed_mask.bool()
        if self.per_codebook:
            averaged = []
            for name, losses, m in (
                ("clean", clean, clean_mask),
                ("perturbed", perturbed, pert_mask),
            ):
                try:
                    averaged.append(codebook_average(losses, m))
                except NonFiniteLossError as err:  # it names its own argument, `nll`
                    raise NonFiniteLossError(str(err).replace("`nll`", f"`{name}`", 1)) from None
            (clean, clean_valid), (perturbed, pert_valid) = averaged
            valid = clean_valid & pert_valid
        else:
            valid = clean_mask & pert_mask
        batch = clean.shape[:-1]
        per_curve = {"onset": onset, "length": length, "start": start}
        for name, value in per_curve.items():
            if value is None:
                continue
            shape = _shape(torch.as_tensor(value))
            try:
                torch.broadcast_shapes(shape, batch)
                ok = len(shape) <= len(batch)
            except RuntimeError:
                ok = False
            if not ok:
                raise NoiseProbeError(
                    f"Expected argument `{name}` to be an int or a tensor broadcastable to the batch"
                    f" shape {tuple(batch)} but got shape {shape}."
                )
        for name, codes in (("clean_codes", clean_codes), ("perturbed_codes", perturbed_codes)):
            if codes is not None and (
                codes.ndim < 2 or codes.shape[:-2] + codes.shape[-1:] != clean.shape
            ):
                raise NoiseProbeError(
                    f"Expected argument `{name}` of shape [..., K, T] with [..., T] = {tuple(clean.shape)}"
                    f" (the curves') but got {_shape(codes)}."
                )
        analysis = analyze_curves(
            clean,
            perturbed,
            onset,
            length,
            valid=valid,
            clean_codes=clean_codes,
            perturbed_codes=perturbed_codes,
            start=None if start is None else torch.as_tensor(start, device=clean.device),
            smoothing=self.smoothing,
            margin=self.margin,
            regions=self.regions,
        )
        if self.regions == "default":
            # as the probe does (probe.runner): Recovery ends at each curve's last valid
            # token, not at the padded length (the authors' rule does so already)
            pos = torch.arange(valid.shape[-1], device=valid.device)
            analysis.regions[..., 2, 1] = torch.where(valid, pos + 1, 0).amax(-1)
        for name, value in analysis.metrics().items():
            getattr(self, name).append(value.detach().reshape(-1).to(self.device, self.dtype))
        lengths = torch.as_tensor(length, device=clean.device).expand(batch).reshape(-1)
        assert isinstance(self.length, list)  # a tensor only between sync and unsync
        self.length.append(lengths.to(self.device, self.dtype))
        for name, count in analysis.empty_counts().items():
            setattr(self, name, getattr(self, name) + count)

    def compute(self) -> dict[str, torch.Tensor]:
        """The headline metrics over every curve of every process (float64 scalars).

        Means of metrics with no finite value (e.g. ``assimilation_mean`` when every
        Assimilation is empty) and undefined length correlations are left out, as in
        ``ProbeResult.summary``; the ``*_empty`` counts are always there.
        """
        rows = {name: getattr(self, name) for name in METRIC_NAMES}
        if all(isinstance(v, list) and not v for v in rows.values()):
            summary: dict[str, float] = {}
        else:
            # summarize's correlations go through numpy: the rows (a few floats per curve) on the CPU
            items = {name: dim_zero_cat(v).cpu() for name, v in rows.items()}
            summary = summarize(items, dim_zero_cat(self.length).cpu())
        summary.update({name: float(getattr(self, name)) for name in EMPTY_COUNT_NAMES})
        return {k: torch.tensor(v, dtype=torch.float64) for k, v in summary.items()}


def gather_clips(local: torch.Tensor, num_clips: int, *, group: Any = None) -> torch.Tensor:
    """Every rank's per-clip rows, gathered onto every rank in clip order.

    The cross-rank reduction of :class:`PeakShape`'s ``"cat"`` states
    (torchmetrics' ``gather_all_tensors``: ranks may hold different numbers of
    rows, trailing dimensions must match) for tensors sharded by :func:`clip_shard`.
    Every rank must call it (a collective).

    Args:
        local: ``[n_rank, ...]`` rows of this rank's clips, in :func:`clip_shard`
            order (no padding rows).
        num_clips: clips over all ranks.
        group: process group (default: the world).

    Returns:
        ``[num_clips, ...]``; ``local`` itself when torch.distributed is not initialised.

    Example:
        >>> gather_clips(torch.arange(3.0), 3)  # one process
        tensor([0., 1., 2.])
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        world, rank = 1, 0
    else:
        world, rank = dist.get_world_size(group), dist.get_rank(group)
    own = clip_shard(num_clips, world, rank)
    if local.shape[0] != len(own):
        raise NoiseProbeError(
            f"Expected argument `local` to hold {len(own)} rows (the clips {own[:4]}{'...' if len(own) > 4 else ''}"
            f" of rank {rank} of {world}) but got {local.shape[0]}."
        )
    if world == 1:
        return local
    from torchmetrics.utilities.distributed import gather_all_tensors

    parts = gather_all_tensors(local, group=group)  # rank order
    order = torch.tensor([j for r in range(world) for j in clip_shard(num_clips, world, r)])
    out = torch.empty((num_clips, *local.shape[1:]), dtype=local.dtype, device=local.device)
    out[order.to(local.device)] = torch.cat(parts)
    return out
