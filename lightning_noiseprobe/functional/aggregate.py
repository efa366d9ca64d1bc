r"""Aggregation across clips and injection lengths (the paper's Fig. 2 and Fig. 4 statistics).

Pure functions over per-item metric tensors ``[N]`` (one entry per clip x
perturbation). Region means are NaN where a region was empty; aggregates
leave those items out and report how many were used (``n``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from lightning_noiseprobe._errors import NoiseProbeError

__all__ = ["group_stats", "length_correlation", "nan_mean_std", "summarize"]


def nan_mean_std(x: torch.Tensor) -> tuple[float, float, int]:
    """Mean and population std over the finite entries of ``x``, and their count.

    Returns ``(nan, nan, 0)`` when no entry is finite.

    Example:
        >>> nan_mean_std(torch.tensor([1.0, float("nan"), 3.0]))
        (2.0, 1.0, 2)
    """
    x = x.detach().double().flatten()
    x = x[torch.isfinite(x)]
    n = int(x.numel())
    if n == 0:
        return math.nan, math.nan, 0
    mean = float(x.mean())
    std = float(((x - mean) ** 2).mean().sqrt())
    return mean, std, n


def group_stats(
    metrics: Mapping[str, torch.Tensor],
    keys: Sequence[tuple[str, int]],
) -> dict[str, dict[int, dict[str, dict[str, float | int | None]]]]:
    """Mean and std of each metric per ``(noise, length)`` group.

    Args:
        metrics: name -> ``[N]`` tensor.
        keys: ``N`` pairs ``(noise, length)``.

    Returns:
        ``{noise: {length: {metric: {"mean", "std", "n"}}}}`` with NaN written as ``None``.

    Example:
        >>> m = {"delta_loss": torch.tensor([0.1, 0.3, -0.5])}
        >>> group_stats(m, [("white", 5), ("white", 5), ("white", 200)])["white"][5]
        {'delta_loss': {'mean': 0.2, 'std': 0.1, 'n': 2}}
    """
    n_items = len(keys)
    for name, value in metrics.items():
        if value.numel() != n_items:
            raise NoiseProbeError(
                f"Expected metric `{name}` to have {n_items} entries (one per key) but got {value.numel()}."
            )
    out: dict[str, dict[int, dict[str, dict[str, float | int | None]]]] = {}
    groups: dict[tuple[str, int], list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault((str(key[0]), int(key[1])), []).append(i)
    for (noise, length), idx in sorted(groups.items()):
        index = torch.tensor(idx)
        entry: dict[str, dict[str, float | int | None]] = {}
        for name, value in metrics.items():
            mean, std, n = nan_mean_std(value.flatten()[index])
            entry[name] = {
                "mean": _none_if_nan(round(mean, 12)),
                "std": _none_if_nan(round(std, 12)),
                "n": n,
            }
        out.setdefault(noise, {})[length] = entry
    return out


def _none_if_nan(x: float) -> float | None:
    return None if math.isnan(x) else x


def length_correlation(lengths: torch.Tensor, delta_loss: torch.Tensor) -> dict[str, float] | None:
    """Correlation between injection length and sequence loss difference (Fig. 2).

    Pearson r, Spearman rho (with two-sided p-values) and the least-squares
    slope of ``delta_loss`` per token of injection length. Computed over items
    (clips x lengths).

    Args:
        lengths: ``[N]`` injection lengths (tokens).
        delta_loss: ``[N]`` sequence loss differences.

    Returns:
        ``{"length_pearson", "length_pearson_p", "length_spearman",
        "length_spearman_p", "length_slope"}``, or ``None`` when undefined
        (fewer than 3 items, fewer than 2 distinct lengths, or constant ``delta_loss``).

    Example:
        >>> r = length_correlation(torch.tensor([5., 50., 100., 200.]), torch.tensor([0.0, -0.1, -0.2, -0.45]))
        >>> round(r["length_pearson"], 3), r["length_spearman"], round(r["length_slope"], 5)
        (-0.999, -1.0, -0.0023)
    """
    from scipy import stats

    x = lengths.detach().double().flatten()
    y = delta_loss.detach().double().flatten()
    if x.numel() != y.numel():
        raise NoiseProbeError(
            f"Expected `lengths` and `delta_loss` of the same size but got {x.numel()} and {y.numel()}."
        )
    keep = torch.isfinite(x) & torch.isfinite(y)
    xs, ys = x[keep].numpy(), y[keep].numpy()
    if len(xs) < 3 or len(set(xs.tolist())) < 2 or float(ys.std()) == 0.0:
        return None
    pearson = stats.pearsonr(xs, ys)
    spearman = stats.spearmanr(xs, ys)
    slope = stats.linregress(xs, ys).slope
    return {
        "length_pearson": float(pearson[0]),
        "length_pearson_p": float(pearson[1]),
        "length_spearman": float(spearman[0]),
        "length_spearman_p": float(spearman[1]),
        "length_slope": float(slope),
    }


def summarize(
    metrics: Mapping[str, torch.Tensor],
    lengths: torch.Tensor | None = None,
) -> dict[str, float]:
    """Headline metrics: the mean of each per-item metric (finite items only),
    plus the length correlations when ``lengths`` are given and they are defined.

    Metrics with no finite item are left out rather than reported as NaN, so
    every value can be logged and monitored. A region mean is NaN where the region
    is empty, so its mean here is over the non-empty items only: the probe's
    summary reports how many were empty next to it (``<region>_empty``, from
    :meth:`~lightning_noiseprobe.functional.curves.CurveAnalysis.empty_counts`).

    Example:
        >>> s = summarize({"delta_loss": torch.tensor([0.0, -0.2, -0.4]), "peak_mean": torch.tensor([1.0, float("nan"), 2.0])},
        ...               lengths=torch.tensor([5, 100, 200]))
        >>> round(s["delta_loss"], 3), s["peak_mean"], round(s["length_pearson"], 3)
        (-0.2, 1.5, -1.0)
    """
    out: dict[str, float] = {}
    for name, value in metrics.items():
        mean, _, n = nan_mean_std(value)
        if n:
            out[name] = mean
    if lengths is not None and "delta_loss" in metrics:
        corr = length_correlation(lengths, metrics["delta_loss"])
        if corr is not None:
            out.update(corr)
    return out
