"""Figures in the style of the paper (Fig. 2, 3, 4) and for TensorBoard.

matplotlib is imported inside the functions (Agg backend, no display needed).
Every function returns a ``Figure``; call :func:`close` once it is saved or logged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from lightning_noiseprobe.functional.curves import CurveAnalysis
    from lightning_noiseprobe.probe.result import ProbeResult

__all__ = [
    "analysis_settings",
    "close",
    "delta_curve",
    "loss_curves",
    "loss_vs_length",
    "mean_curve_analysis",
    "metric_history",
    "region_distributions",
]

#: The spec fields that decide how curves are analysed (and so what a figure shades).
_ANALYSIS_FIELDS = ("smoothing", "margin", "regions")

_REGION_COLORS = {"peak": "#d62728", "assimilation": "#1f77b4", "recovery": "#2ca02c"}


def _figure(
    nrows: int = 1, ncols: int = 1, size: tuple[float, float] = (7.0, 4.0)
) -> tuple[Figure, Any]:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def close(fig: Figure) -> None:
    """Release a figure's memory (figures are not registered with pyplot, so this is cheap)."""
    fig.clear()


def _shade_regions(ax: Any, regions: Sequence[Sequence[int]], alpha: float = 0.15) -> None:
    from lightning_noiseprobe.functional.curves import REGION_NAMES

    for name, (lo, hi) in zip(REGION_NAMES, regions, strict=False):
        if hi > lo:
            ax.axvspan(
                lo, hi, color=_REGION_COLORS[name], alpha=alpha, lw=0, label=name.capitalize()
            )


def analysis_settings(result: ProbeResult) -> dict[str, Any]:
    """``smoothing``, ``margin`` and ``regions`` of the spec ``result`` was analysed with
    (a field its spec dict leaves out has the :class:`~lightning_noiseprobe.probe.spec.ProbeSpec`
    default), so a figure shades the regions its metrics were computed over."""
    import dataclasses

    from lightning_noiseprobe.probe.spec import ProbeSpec

    defaults = {f.name: f.default for f in dataclasses.fields(ProbeSpec)}
    return {name: result.spec.get(name, defaults[name]) for name in _ANALYSIS_FIELDS}


def mean_curve_analysis(result: ProbeResult) -> CurveAnalysis:
    """The analysis of each perturbation's mean curves over clips (batch ``[P]``), with the
    result's own settings (:func:`analysis_settings`) and the clips' mean start: the
    regions :func:`loss_curves` shades. With one clip they are that clip's regions."""
    from lightning_noiseprobe.functional.curves import analyze_curves

    curves = result.mean_curves()
    perts = result.perturbations
    return analyze_curves(
        curves["pair_clean"],
        curves["perturbed"],
        torch.tensor([p.onset for p in perts]),
        torch.tensor([p.length for p in perts]),
        valid=curves["pair_valid"],
        start=result.analysis.start.float().mean(0).round().long(),
        **analysis_settings(result),
    )


def loss_vs_length(result: ProbeResult) -> Figure:
    """Fig. 2: sequence loss difference against injection length, mean +- std over clips."""
    fig, axes = _figure(size=(6.0, 4.0))
    ax = axes[0, 0]
    from lightning_noiseprobe.perturbations.noise import NOISE_COLORS

    for group, by_len in result.by_length.items():
        if group not in NOISE_COLORS:  # Fig. 2 is about noise injections
            continue
        lengths = sorted(by_len)
        means = [by_len[n]["delta_loss"]["mean"] for n in lengths]
        stds = [by_len[n]["delta_loss"]["std"] or 0.0 for n in lengths]
        ax.errorbar(lengths, means, yerr=stds, marker="o", capsize=3, label=f"{group} noise")
    ax.axhline(0.0, color="k", lw=0.8, ls="--")
    ax.set_xlabel("injection length (tokens)")
    ax.set_ylabel("loss difference  l(x') - l(x)")
    title = "Loss difference vs injection length"
    if "length_pearson" in result.summary:
        title += f"\nPearson r = {result.summary['length_pearson']:.2f}, Spearman r = {result.summary['length_spearman']:.2f}"
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def loss_curves(result: ProbeResult, max_panels: int = 6) -> Figure:
    """Fig. 3: mean absolute clean and perturbed loss over tokens, regions shaded (one panel
    per length; regions of :func:`mean_curve_analysis`, with the spec's settings)."""
    curves = result.mean_curves()
    perts = [p for p in result.perturbations][:max_panels]
    ncols = min(3, len(perts))
    nrows = (len(perts) + ncols - 1) // ncols
    fig, axes = _figure(nrows, ncols, size=(4.2 * ncols, 3.0 * nrows))
    T = curves["clean"].shape[-1]
    regions = mean_curve_analysis(result).regions.tolist()
    for i, pert in enumerate(perts):
        ax = axes[i // ncols, i % ncols]
        lo = max(0, pert.onset - 50)
        hi = min(T, pert.onset + pert.length + 100)
        t = torch.arange(T)
        # on the copy's timeline: for a deletion, the clean curve is re-indexed after the cut
        ax.plot(t[lo:hi], curves["pair_clean"][i, lo:hi], color="0.3", lw=1.0, label="clean")
        ax.plot(t[lo:hi], curves["perturbed"][i, lo:hi], color="#d62728", lw=1.0, label="perturbed")
        _shade_regions(ax, regions[i])
        ax.axvline(pert.onset, color="k", lw=0.6, ls=":")
        ax.axvline(pert.onset + pert.length, color="k", lw=0.6, ls=":")
        ax.set_xlim(lo, hi - 1)
        ax.set_title(f"{pert.group}, {pert.length} tokens", fontsize=9)
        ax.set_xlabel("token")
        ax.set_ylabel("loss")
        if i == 0:
            ax.legend(fontsize=7, loc="upper right")
    for j in range(len(perts), nrows * ncols):
        axes[j // ncols, j % ncols].set_visible(False)
    return fig


def region_distributions(result: ProbeResult) -> Figure:
    """Fig. 4: distribution over clips x perturbations of the mean loss difference per region."""
    fig, axes = _figure(size=(5.5, 4.0))
    ax = axes[0, 0]
    data, labels, colors = [], [], []
    for name in ("peak", "assimilation", "recovery"):
        values = getattr(result.analysis, f"{name}_mean").reshape(-1)
        values = values[torch.isfinite(values)]
        if values.numel():
            data.append(values.numpy())
            labels.append(
                f"{name.capitalize()}\n{float(values.mean()):+.2f} ± {float(values.std(unbiased=False)):.2f}"
            )
            colors.append(_REGION_COLORS[name])
    if data:
        parts = ax.boxplot(data, patch_artist=True, widths=0.5)
        for patch, color in zip(parts["boxes"], colors, strict=False):
            patch.set_facecolor(color)
            patch.set_alpha(0.5)
        ax.set_xticks(range(1, len(labels) + 1), labels)
    ax.axhline(0.0, color="k", lw=0.8, ls="--")
    ax.set_ylabel("mean loss difference in region")
    ax.set_title("Three-stage response: Peak, Assimilation, Recovery", fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    return fig


def delta_curve(result: ProbeResult, max_lines: int = 6) -> Figure:
    """Mean token-wise loss difference per perturbation, regions of the longest one shaded."""
    fig, axes = _figure(size=(7.0, 3.6))
    ax = axes[0, 0]
    curves = result.mean_curves()
    T = curves["clean"].shape[-1]
    perts = result.perturbations[:max_lines]
    onset = min(p.onset for p in perts)
    lo, hi = max(0, onset - 30), min(T, max(p.onset + p.length for p in perts) + 60)
    t = torch.arange(T)[lo:hi]
    from lightning_noiseprobe.functional.curves import moving_average

    smoothing = analysis_settings(result)["smoothing"]
    smoothed = moving_average(curves["delta"], smoothing)
    for i, pert in enumerate(perts):
        (line,) = ax.plot(t, smoothed[i, lo:hi], lw=1.2, label=f"{pert.group} {pert.length}")
        ax.plot(t, curves["delta"][i, lo:hi], lw=0.5, alpha=0.3, color=line.get_color())
    # regions of each perturbation's mean over clips, for the longest one
    longest = max(range(len(perts)), key=lambda i: perts[i].length)
    regions = result.analysis.regions[:, longest].float().mean(0).round().long().tolist()
    _shade_regions(ax, regions)
    ax.set_xlim(lo, hi - 1)
    ax.axhline(0.0, color="k", lw=0.8)
    ax.set_xlabel("token")
    ax.set_ylabel("Δ loss")
    ax.set_title(
        f"Token-wise loss difference, mean over clips (bold: {smoothing}-token moving average)",
        fontsize=10,
    )
    ax.legend(fontsize=7, ncol=2)
    return fig


def metric_history(history: Sequence[Mapping[str, float]], names: Sequence[str]) -> Figure:
    """Headline metrics over probes (epochs), one panel each."""
    n = len(names)
    fig, axes = _figure(1, n, size=(3.2 * n, 2.8))
    epochs = [h.get("epoch", i) for i, h in enumerate(history)]
    for ax, name in zip(axes[0], names, strict=False):
        ys = [h.get(name, float("nan")) for h in history]
        ax.plot(epochs, ys, marker="o")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    return fig
