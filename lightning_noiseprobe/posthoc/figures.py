"""Figures of ``sweep`` (metrics against the training step) and ``compare`` (models side by side).

matplotlib is imported inside the functions (through :mod:`lightning_noiseprobe.plots`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["SWEEP_PANELS", "compare_loss_vs_length", "compare_regions", "sweep_metrics"]

#: The metrics drawn against the step, one panel each.
SWEEP_PANELS = (
    "peak_sharpness",
    "peak_mean",
    "delta_loss",
    "assimilation_mean",
    "clean_loss",
    "length_pearson",
)


def sweep_axis(entries: Sequence[Mapping[str, Any]]) -> tuple[str, list[float]]:
    """The x axis of a sweep: ``("step", ...)`` when every checkpoint has a step, else
    ``("epoch", ...)`` when every one has an epoch, else ``("checkpoint", 0, 1, ...)``."""
    for name in ("step", "epoch"):
        values = [e.get(name) for e in entries]
        if values and all(v is not None for v in values):
            return name, [float(v) for v in values]  # type: ignore[arg-type]
    return "checkpoint", [float(i) for i in range(len(entries))]


def sweep_metrics(
    entries: Sequence[Mapping[str, Any]], panels: Sequence[str] = SWEEP_PANELS
) -> Figure:
    """The headline metrics of each checkpoint against its training step; where a checkpoint
    holds what the live callback logged at that step, those values as crosses."""
    from lightning_noiseprobe.plots import _figure

    ncols = 3
    nrows = (len(panels) + ncols - 1) // ncols
    fig, axes = _figure(nrows, ncols, size=(4.0 * ncols, 2.9 * nrows))
    axis, xs = sweep_axis(entries)
    for i, name in enumerate(panels):
        ax = axes[i // ncols, i % ncols]
        ys = [e["summary"].get(name, float("nan")) for e in entries]
        ax.plot(xs, ys, marker="o", ms=4, lw=1.2, label="sweep (after training)")
        live = [
            (x, e["logged"]["summary"][name])
            for x, e in zip(xs, entries, strict=True)
            if name in e.get("logged", {}).get("summary", {})
        ]
        if live:
            ax.plot(*zip(*live, strict=True), "x", color="k", ms=7, label="logged in training")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("global step" if axis == "step" else axis)
        ax.grid(alpha=0.3)
        if i == 0:
            ax.legend(fontsize=7)
    for j in range(len(panels), nrows * ncols):
        axes[j // ncols, j % ncols].set_visible(False)
    return fig


def compare_loss_vs_length(models: Sequence[Mapping[str, Any]], labels: Sequence[str]) -> Figure:
    """Fig. 2 per model: the sequence loss difference against the injection length, mean ±
    std over clips, one line per model (and noise colour)."""
    from lightning_noiseprobe.perturbations.noise import NOISE_COLORS
    from lightning_noiseprobe.plots import _figure

    fig, axes = _figure(size=(6.5, 4.2))
    ax = axes[0, 0]
    for label, model in zip(labels, models, strict=True):
        noises = [g for g in model["by_length"] if g in NOISE_COLORS]
        for group in noises:
            by_len = model["by_length"][group]
            lengths = sorted(by_len, key=int)
            means = [by_len[n]["delta_loss"]["mean"] for n in lengths]
            stds = [by_len[n]["delta_loss"]["std"] or 0.0 for n in lengths]
            name = label if len(noises) == 1 else f"{label}, {group}"
            ax.errorbar(
                [int(n) for n in lengths], means, yerr=stds, marker="o", capsize=3, label=name
            )
    ax.axhline(0.0, color="k", lw=0.8, ls="--")
    ax.set_xlabel("injection length (tokens)")
    ax.set_ylabel("loss difference  l(x') - l(x)")
    ax.set_title("Loss difference vs injection length, per model", fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return fig


def compare_regions(
    regions: Sequence[Mapping[str, Sequence[float]]], labels: Sequence[str]
) -> Figure:
    """Fig. 4 per model: for each region, the distribution over clips x perturbations of its
    mean loss difference, one box per model (empty regions left out)."""
    from lightning_noiseprobe.plots import _figure

    names = ("peak", "assimilation", "recovery")
    fig, axes = _figure(size=(max(6.0, 1.2 * len(labels) * len(names)), 4.2))
    ax = axes[0, 0]
    width = 0.8 / max(1, len(labels))
    colors = [f"C{i}" for i in range(len(labels))]
    for m, (label, values) in enumerate(zip(labels, regions, strict=True)):
        data, positions = [], []
        for r, name in enumerate(names):
            finite = [v for v in values.get(name, ()) if v == v]  # NaN: an empty region
            if finite:
                data.append(finite)
                positions.append(r - 0.4 + width * (m + 0.5))
        if data:
            parts = ax.boxplot(data, positions=positions, widths=0.9 * width, patch_artist=True)
            for patch in parts["boxes"]:
                patch.set_facecolor(colors[m])
                patch.set_alpha(0.5)
        ax.plot([], [], "s", color=colors[m], alpha=0.5, label=label)
    ax.set_xticks(range(len(names)), [n.capitalize() for n in names])
    ax.set_xlim(-0.6, len(names) - 0.4)
    ax.axhline(0.0, color="k", lw=0.8, ls="--")
    ax.set_ylabel("mean loss difference in region")
    ax.set_title("Peak, Assimilation, Recovery per model", fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, axis="y")
    return fig
