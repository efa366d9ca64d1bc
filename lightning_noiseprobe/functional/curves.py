r"""Loss-curve analysis around a perturbation: the maths of the paper's Sections 3-4.

Pure tensor functions, batched over any leading dimensions ``[...]`` and the
token axis ``T`` last. No I/O, no Lightning: the probe runner, the callback
and the CLI all call these same functions.

Notation (per clip): clean per-token loss :math:`l_t(x)`, perturbed per-token
loss :math:`l_t(x')` (both averaged over codebooks), token-wise difference

.. math:: \Delta_t = l_t(x') - l_t(x)

and its centred moving average :math:`\bar\Delta_t` and running median
:math:`\tilde\Delta_t` (:mod:`~lightning_noiseprobe.functional.smoothing`).
:func:`analyze_curves` finds the Peak, Assimilation and Recovery regions with
one of the rules of :mod:`~lightning_noiseprobe.functional.regions` (where the
default rule, and the reason for each of its parts, is written down) and
computes each region's metrics (:func:`region_metrics`).

The smoothers and region rules are re-exported here, so
``from lightning_noiseprobe.functional.curves import detect_regions`` keeps working.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lightning_noiseprobe._errors import NoiseProbeError, NonFiniteLossError
from lightning_noiseprobe.functional.regions import (
    AUTHORS_MIN_ONSET,
    AUTHORS_SOURCE,
    REGION_NAMES,
    REGION_RULES,
    authors_regions,
    check_region_settings,
    detect_regions,
)
from lightning_noiseprobe.functional.smoothing import moving_average, moving_median

__all__ = [
    "AUTHORS_MIN_ONSET",
    "AUTHORS_SOURCE",
    "EMPTY_COUNT_NAMES",
    "METRIC_NAMES",
    "REGION_NAMES",
    "REGION_RULES",
    "CurveAnalysis",
    "analyze_curves",
    "authors_regions",
    "check_region_settings",
    "codebook_average",
    "detect_regions",
    "first_differing_token",
    "moving_average",
    "moving_median",
    "region_metrics",
]

#: Per-clip metrics, in the order of :class:`CurveAnalysis`' metric fields.
METRIC_NAMES = (
    "delta_loss",
    "clean_loss",
    "peak_mean",
    "assimilation_mean",
    "recovery_mean",
    "recovery_std",
    "peak_height",
    "peak_width",
    "peak_area",
    "peak_sharpness",
)

#: Summary counts of curves whose region is empty (``end <= start``), one per region.
EMPTY_COUNT_NAMES = tuple(f"{name}_empty" for name in REGION_NAMES)

_SHARPNESS_EPS = 1e-6


def _check_finite(name: str, t: torch.Tensor, mask: torch.Tensor | None = None) -> None:
    values = t if mask is None else t[mask]
    if not torch.isfinite(values).all():
        bad = int((~torch.isfinite(values)).sum())
        raise NonFiniteLossError(
            f"Expected argument `{name}` to hold finite values but got {bad} NaN/inf entries at valid"
            " positions: the model's outputs are not finite (diverged weights or activations, an fp16"
            " overflow). Check the model; lower the learning rate or train in bf16/fp32."
        )


def codebook_average(nll: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Average per-codebook losses into one loss per frame (the paper's ``tokens_avg``).

    Args:
        nll: ``[..., K, T]`` per-codebook per-token losses.
        mask: ``[..., K, T]`` bool, ``True`` where the loss is valid.

    Returns:
        ``(loss [..., T], valid [..., T])``: the mean over the valid codebooks
        of each frame, and whether any codebook was valid there (``loss`` is 0
        where not valid).

    Example:
        >>> nll = torch.tensor([[1.0, 2.0, 3.0], [3.0, 4.0, 0.0]])
        >>> mask = torch.tensor([[True, True, True], [True, True, False]])
        >>> loss, valid = codebook_average(nll, mask)
        >>> loss
        tensor([2., 3., 3.])
        >>> valid
        tensor([True, True, True])
    """
    if nll.shape != mask.shape:
        raise NoiseProbeError(
            f"Expected `nll` and `mask` to have the same shape but got {tuple(nll.shape)}"
            f" and {tuple(mask.shape)}."
        )
    mask = mask.bool()
    _check_finite("nll", nll, mask)
    weights = mask.to(torch.float32)
    total = torch.where(mask, nll.float(), 0.0).sum(-2)
    count = weights.sum(-2)
    valid = count > 0
    return torch.where(valid, total / count.clamp_min(1.0), 0.0), valid


def first_differing_token(clean_codes: torch.Tensor, perturbed_codes: torch.Tensor) -> torch.Tensor:
    """Index of the first frame where any codebook's code differs.

    Because the codec's convolutions see a few frames around each sample, the
    codes usually change a few frames before the nominal onset; this is the
    true start of the perturbation.

    Args:
        clean_codes: ``[..., K, T]`` codes of the clean clip.
        perturbed_codes: ``[..., K, T]`` codes of the perturbed clip.

    Returns:
        ``[...]`` long tensor; ``T`` where no code differs.

    Example:
        >>> clean = torch.zeros(2, 4, 10, dtype=torch.long)
        >>> pert = clean.clone(); pert[0, 2, 6] = 5
        >>> first_differing_token(clean, pert)
        tensor([ 6, 10])
    """
    if clean_codes.shape != perturbed_codes.shape:
        raise NoiseProbeError(
            f"Expected clean and perturbed codes of the same shape but got"
            f" {tuple(clean_codes.shape)} and {tuple(perturbed_codes.shape)}."
        )
    differs = (clean_codes != perturbed_codes).any(-2)  # [..., T]
    T = differs.shape[-1]
    pos = torch.arange(T, device=differs.device)
    return torch.where(differs, pos, T).amin(-1)


def _region_mask(regions: torch.Tensor, index: int, T: int) -> torch.Tensor:
    pos = torch.arange(T, device=regions.device)
    lo = regions[..., index, 0].unsqueeze(-1)
    hi = regions[..., index, 1].unsqueeze(-1)
    return (pos >= lo) & (pos < hi)


def _masked_mean(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    n = m.sum(-1)
    s = torch.where(m, x, 0.0).sum(-1)
    return torch.where(n > 0, s / n.clamp_min(1), torch.nan)


def _masked_std(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    mean = _masked_mean(x, m)
    n = m.sum(-1)
    var = torch.where(m, (x - mean.unsqueeze(-1)) ** 2, 0.0).sum(-1) / n.clamp_min(1)
    return torch.where(n > 0, var.sqrt(), torch.nan)


@dataclass
class CurveAnalysis:
    """Result of :func:`analyze_curves`; every field has the batch shape ``[...]``
    unless stated otherwise.

    Region means over an empty region are NaN (the region is reported empty in
    :attr:`regions`); the peak-shape metrics of an empty Peak are 0 (no peak).
    """

    delta: torch.Tensor  #: ``[..., T]`` token-wise difference (0 where invalid)
    smoothed: torch.Tensor  #: ``[..., T]`` moving average of ``delta``
    start: torch.Tensor  #: perturbation start token
    regions: torch.Tensor  #: ``[..., 3, 2]`` peak / assimilation / recovery intervals
    delta_loss: torch.Tensor
    clean_loss: torch.Tensor
    peak_mean: torch.Tensor
    assimilation_mean: torch.Tensor
    recovery_mean: torch.Tensor
    recovery_std: torch.Tensor
    peak_height: torch.Tensor
    peak_width: torch.Tensor
    peak_area: torch.Tensor
    peak_sharpness: torch.Tensor
    #: ``[...]`` float64 baseline of the authors' rule (``regions="authors"``), else ``None``
    baseline: torch.Tensor | None = None

    def metrics(self) -> dict[str, torch.Tensor]:
        """The per-clip metrics by name (see :data:`METRIC_NAMES`)."""
        return {name: getattr(self, name) for name in METRIC_NAMES}

    def empty_counts(self) -> dict[str, int]:
        """How many curves have each region empty (``end <= start``; with
        ``regions="authors"`` that includes their start-after-end Assimilation),
        named as in :data:`EMPTY_COUNT_NAMES`.

        The means of :mod:`~lightning_noiseprobe.functional.aggregate` leave empty
        regions out (NaN); these counts say how many were left out.
        """
        empty = self.regions[..., 1] <= self.regions[..., 0]  # [..., 3]
        return {name: int(empty[..., k].sum()) for k, name in enumerate(EMPTY_COUNT_NAMES)}

    def to_records(self) -> list[dict[str, object]]:
        """One JSON-able dict per clip (batch flattened), NaN written as ``None``."""
        batch = self.start.shape
        n = int(torch.tensor(batch).prod()) if len(batch) else 1
        regions = self.regions.reshape(n, 3, 2).tolist()
        starts = self.start.reshape(n).tolist()
        metrics = {k: v.reshape(n).tolist() for k, v in self.metrics().items()}
        baseline = None if self.baseline is None else self.baseline.reshape(n).tolist()
        out: list[dict[str, object]] = []
        for i in range(n):
            rec: dict[str, object] = {
                "start": int(starts[i]),
                "regions": {
                    name: [int(a), int(b)]
                    for name, (a, b) in zip(REGION_NAMES, regions[i], strict=False)
                },
            }
            for k, v in metrics.items():
                fv = float(v[i])
                rec[k] = None if math.isnan(fv) else (int(fv) if k == "peak_width" else fv)
            if baseline is not None:
                rec["baseline"] = float(baseline[i])
            out.append(rec)
        return out


def region_metrics(
    delta: torch.Tensor,
    smoothed: torch.Tensor,
    clean: torch.Tensor,
    valid: torch.Tensor,
    regions: torch.Tensor,
) -> dict[str, torch.Tensor]:
    r"""Peak-shape and per-region metrics for detected regions.

    * ``peak_mean``, ``assimilation_mean``, ``recovery_mean``: mean of
      :math:`\Delta_t` over the region's valid tokens (NaN if empty);
    * ``recovery_std``: population standard deviation of :math:`\Delta_t` in Recovery;
    * ``peak_height`` :math:`= \max_{t \in \text{Peak}} \bar\Delta_t` (0 if empty);
    * ``peak_width``: Peak length in tokens;
    * ``peak_area`` :math:`= \sum_{t \in \text{Peak}} \max(\Delta_t, 0)`;
    * ``peak_sharpness`` :math:`= h / \max(\sigma_{pre}, 10^{-6})`, the Peak height
      as a z-score of the clean loss's standard deviation before the start.

    Args:
        delta: ``[..., T]`` token-wise difference.
        smoothed: ``[..., T]`` its moving average.
        clean: ``[..., T]`` clean per-token loss.
        valid: ``[..., T]`` bool.
        regions: ``[..., 3, 2]`` from :func:`detect_regions`.

    Returns:
        dict of ``[...]`` float32 tensors named as in :data:`METRIC_NAMES` (minus
        ``delta_loss`` and ``clean_loss``).

    Example:
        >>> d = torch.tensor([0., 0., 3., 1., -2., -2.])
        >>> clean = torch.tensor([1., 3., 2., 2., 2., 2.])
        >>> regions = torch.tensor([[2, 4], [4, 6], [6, 6]])
        >>> m = region_metrics(d, d, clean, torch.ones(6, dtype=torch.bool), regions)
        >>> m["peak_mean"], m["peak_area"], m["peak_sharpness"], m["recovery_mean"]
        (tensor(2.), tensor(4.), tensor(3.), tensor(nan))
    """
    T = delta.shape[-1]
    masks = [_region_mask(regions, i, T) & valid for i in range(3)]
    peak, assim, recov = masks
    width = (regions[..., 0, 1] - regions[..., 0, 0]).to(torch.float32)
    has_peak = peak.any(-1)
    height = torch.where(peak, smoothed, -torch.inf).amax(-1)
    height = torch.where(has_peak, height, 0.0)
    area = torch.where(peak, delta.clamp_min(0.0), 0.0).sum(-1)
    pos = torch.arange(T, device=delta.device)
    pre = (pos < regions[..., 0, 0].unsqueeze(-1)) & valid
    pre_std = _masked_std(clean, pre)
    if torch.isnan(torch.where(has_peak, pre_std, 0.0)).any():
        raise NoiseProbeError(
            "Expected at least one valid clean token before the perturbation start to compute"
            " `peak_sharpness` but got none. Use a later `onset`."
        )
    sharpness = torch.where(
        has_peak, height / pre_std.nan_to_num(1.0).clamp_min(_SHARPNESS_EPS), 0.0
    )
    return {
        "peak_mean": _masked_mean(delta, peak),
        "assimilation_mean": _masked_mean(delta, assim),
        "recovery_mean": _masked_mean(delta, recov),
        "recovery_std": _masked_std(delta, recov),
        "peak_height": height,
        "peak_width": width,
        "peak_area": area,
        "peak_sharpness": sharpness,
    }


def analyze_curves(
    clean: torch.Tensor,
    perturbed: torch.Tensor,
    onset: int | torch.Tensor,
    length: int | torch.Tensor,
    *,
    valid: torch.Tensor | None = None,
    clean_codes: torch.Tensor | None = None,
    perturbed_codes: torch.Tensor | None = None,
    start: torch.Tensor | None = None,
    first_difference: torch.Tensor | None = None,
    smoothing: int = 5,
    margin: int = 5,
    run: int = 5,
    regions: str = "default",
) -> CurveAnalysis:
    r"""Analyse clean vs perturbed per-token loss curves around an injection.

    ``delta_loss`` is the mean of :math:`\Delta_t` over valid tokens and
    ``clean_loss`` the mean clean loss; the regions and their metrics are
    described in the module docstring and :func:`region_metrics`.

    With ``regions="authors"`` the regions, ``start`` (onset - 5), the three
    region means (float64, 0 when empty) and ``baseline`` are those of
    :func:`authors_regions`, on each curve up to its last valid token (invalid
    tokens inside count as a difference of 0); ``start``, ``first_difference``, the codes, ``margin``
    and ``run`` are then not used. The other metrics (peak height, width, area,
    sharpness, ``recovery_std``) are this module's, computed over their regions,
    with ``peak_width`` their Peak length (even when the Peak runs past the curve).

    Args:
        clean: ``[..., T]`` clean per-token loss (codebook-averaged).
        perturbed: ``[..., T]`` perturbed per-token loss.
        onset: injection onset token (int or ``[...]``).
        length: injection length in tokens (int or ``[...]``).
        valid: optional ``[..., T]`` bool mask of tokens to use.
        clean_codes, perturbed_codes: optional ``[..., K, T]`` codes; when both are
            given, the start is :func:`first_differing_token` (capped at the onset
            + length, since codes that never differ mean the model saw nothing).
        start: optional explicit ``[...]`` start token (wins over codes).
        first_difference: optional ``[...]`` first differing token of the codes,
            already computed (:func:`first_differing_token`, e.g. by the scorer):
            used as the codes would be (capped at onset + length) without
            comparing them again; wins over ``clean_codes``/``perturbed_codes``.
        smoothing: window (odd) of the moving average and the running median.
        margin: tokens after the window end where Assimilation ends and Recovery starts.
        run: consecutive tokens at or below zero that end the Peak.
        regions: ``"default"`` (this module's rule) or ``"authors"`` (the paper's code).

    Returns:
        :class:`CurveAnalysis`.

    Raises:
        NoiseProbeError: on shape mismatch, NaN/inf losses, empty curves,
            a non-positive length, a window outside the clip, or bad
            ``smoothing``/``margin`` (:func:`check_region_settings`).

    Example:
        >>> T = 40
        >>> clean = torch.full((T,), 2.0); clean[::2] += 0.5
        >>> delta = torch.zeros(T); delta[10:13] = 3.0; delta[13:20] = -1.0
        >>> a = analyze_curves(clean, clean + delta, onset=10, length=10)
        >>> a.regions.tolist()  # Recovery starts after the window (token 20) and the 5-token margin
        [[10, 14], [14, 25], [25, 40]]
        >>> round(float(a.peak_mean), 3), round(float(a.assimilation_mean), 3)
        (2.0, -0.545)
        >>> round(float(a.peak_height), 3), round(float(a.peak_sharpness), 3)
        (1.8, 7.2)
    """
    if regions not in REGION_RULES:
        raise NoiseProbeError(
            f"Expected argument `regions` to be one of {list(REGION_RULES)} but got {regions!r}."
        )
    check_region_settings(smoothing, margin)
    if clean.shape != perturbed.shape:
        raise NoiseProbeError(
            f"Expected clean and perturbed curves of the same shape but got {tuple(clean.shape)}"
            f" and {tuple(perturbed.shape)}."
        )
    if clean.ndim == 0 or clean.shape[-1] == 0:
        raise NoiseProbeError(f"Expected non-empty loss curves but got shape {tuple(clean.shape)}.")
    T = clean.shape[-1]
    if smoothing > T:
        raise NoiseProbeError(
            f"Expected argument `smoothing` to be at most the curve length ({T} tokens) but got {smoothing}."
        )
    batch = clean.shape[:-1]
    device = clean.device
    if valid is None:
        valid = torch.ones_like(clean, dtype=torch.bool)
    elif valid.shape != clean.shape:
        raise NoiseProbeError(
            f"Expected `valid` of shape {tuple(clean.shape)} but got {tuple(valid.shape)}."
        )
    valid = valid.bool()
    if not valid.any(-1).all():
        raise NoiseProbeError(
            "Expected at least one valid token per curve but got a curve with none."
        )
    _check_finite("clean", clean, valid)
    _check_finite("perturbed", perturbed, valid)
    onset_t = torch.as_tensor(onset, device=device).long().expand(batch)
    length_t = torch.as_tensor(length, device=device).long().expand(batch)
    if (length_t <= 0).any():
        raise NoiseProbeError(
            f"Expected argument `length` to be positive but got {length_t.min().item()}."
        )
    if (onset_t < 0).any() or (onset_t + length_t > T).any():
        raise NoiseProbeError(
            f"Expected the window [onset, onset + length) inside the {T}-token curve but got"
            f" onset={onset_t.max().item()}, length={length_t.max().item()}."
        )
    window_end = onset_t + length_t
    if regions == "authors":
        return _analyze_authors(clean, perturbed, onset_t, length_t, valid, smoothing)
    if start is not None:
        start_t = torch.as_tensor(start, device=device).long().expand(batch)
    elif first_difference is not None:
        first = torch.as_tensor(first_difference, device=device).long().expand(batch)
        start_t = torch.minimum(first, window_end)
    elif clean_codes is not None and perturbed_codes is not None:
        start_t = torch.minimum(first_differing_token(clean_codes, perturbed_codes), window_end)
    else:
        start_t = onset_t

    clean32 = clean.float()
    delta = torch.where(valid, perturbed.float() - clean32, 0.0)
    smoothed = moving_average(delta, smoothing, valid)
    bounds = detect_regions(
        delta,
        start_t,
        onset_t,
        window_end,
        smoothing=smoothing,
        margin=margin,
        run=run,
        valid=valid,
    )
    metrics = region_metrics(delta, smoothed, clean32, valid, bounds)
    return CurveAnalysis(
        delta=delta,
        smoothed=smoothed,
        start=start_t,
        regions=bounds,
        delta_loss=_masked_mean(delta, valid),
        clean_loss=_masked_mean(clean32, valid),
        **metrics,
    )


def _analyze_authors(
    clean: torch.Tensor,
    perturbed: torch.Tensor,
    onset: torch.Tensor,
    length: torch.Tensor,
    valid: torch.Tensor,
    smoothing: int,
) -> CurveAnalysis:
    """:func:`analyze_curves` with ``regions="authors"`` (inputs already checked)."""
    T = clean.shape[-1]
    pos = torch.arange(T, device=clean.device)
    num_tokens = torch.where(valid, pos + 1, 0).amax(-1)  # each curve ends at its last valid token
    # float64 on the CPU, as their numpy code (and MPS has no float64)
    raw = perturbed.detach().cpu().double() - clean.detach().cpu().double()
    raw = torch.where(valid.cpu(), raw, 0.0)
    bounds, means, baseline = authors_regions(raw, onset, length, num_tokens)
    bounds = bounds.to(clean.device)
    clean32 = clean.float()
    delta = torch.where(valid, perturbed.float() - clean32, 0.0)
    smoothed = moving_average(delta, smoothing, valid)
    metrics = region_metrics(delta, smoothed, clean32, valid, bounds)
    for k, name in enumerate(REGION_NAMES):
        metrics[f"{name}_mean"] = means[..., k].to(clean.device)
    return CurveAnalysis(
        delta=delta,
        smoothed=smoothed,
        start=bounds[..., 0, 0],
        regions=bounds,
        delta_loss=_masked_mean(delta, valid),
        clean_loss=_masked_mean(clean32, valid),
        baseline=baseline.to(clean.device),
        **metrics,
    )
