"""Figures of the studies (matplotlib, imported inside the functions; Agg backend)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from lightning_noiseprobe.study.stats import OVERFIT_MONITORS, STUDY_METRICS, level_key

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "detection_by_epoch",
    "metrics_by_epoch",
    "metrics_vs_level",
    "overfit_curves",
    "save_figure",
]

_MONITOR_COLORS = {"val_ce": "#1f77b4", "peak_sharpness": "#d62728", "delta_loss": "#2ca02c"}


def _value(row: Mapping[str, Any], metric: str) -> float:
    value = row.get(metric)
    return float(value) if isinstance(value, (int, float)) else math.nan


def _grid(n: int) -> tuple[Figure, list[Any]]:
    from lightning_noiseprobe.plots import _figure

    cols = min(3, n)
    rows = -(-n // cols)
    fig, axes = _figure(rows, cols, size=(4.0 * cols, 3.2 * rows))
    flat = [ax for row in axes for ax in row]
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _level_colors(levels: Sequence[float]) -> dict[float, Any]:
    import matplotlib

    cmap = matplotlib.colormaps["viridis"]
    span = max(levels) - min(levels) or 1.0
    return {lv: cmap(0.9 * (lv - min(levels)) / span) for lv in levels}


def metrics_vs_level(study: Mapping[str, Any], metrics: Sequence[str] = STUDY_METRICS) -> Figure:
    """Final value of each metric against the contamination level: a point per seed, the mean as a line."""
    runs = study["runs"]
    levels = sorted({float(r["level"]) for r in runs})
    seeds = sorted({int(r["seed"]) for r in runs})
    width = 0.02 * ((max(levels) - min(levels)) or 1.0)
    fig, axes = _grid(len(metrics))
    for ax, metric in zip(axes, metrics, strict=True):
        for i, seed in enumerate(seeds):
            offset = (i - (len(seeds) - 1) / 2) * width
            pts = [
                (float(r["level"]) + offset, _value(r["final"], metric))
                for r in runs
                if int(r["seed"]) == seed
            ]
            ax.plot(*zip(*pts, strict=True), "o", ms=4, alpha=0.7, label=f"seed {seed}")
        stats = study["summary"].get(metric, {})
        means = [stats.get("by_level", {}).get(level_key(lv), {}).get("mean") for lv in levels]
        ax.plot(levels, [math.nan if m is None else m for m in means], "k-", lw=2, label="mean")
        rho, d = stats.get("spearman_with_level"), stats.get("effect_size")
        title = metric
        title += f"\nSpearman {rho:+.2f}" if rho is not None else "\nSpearman n/a"
        title += f", d {d:+.2f}" if d is not None else ", d n/a"
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("contaminated fraction p")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    return fig


def metrics_by_epoch(study: Mapping[str, Any], metrics: Sequence[str] = STUDY_METRICS) -> Figure:
    """Each metric per epoch: a thin line per run, coloured by level; the mean over seeds thick."""
    from matplotlib.ticker import MaxNLocator

    runs = study["runs"]
    levels = sorted({float(r["level"]) for r in runs})
    colors = _level_colors(levels)
    fig, axes = _grid(len(metrics))
    for ax, metric in zip(axes, metrics, strict=True):
        for level in levels:
            chosen = [r for r in runs if float(r["level"]) == level]
            by_epoch: dict[int, list[float]] = {}
            for r in chosen:
                xs = [int(row["epoch"]) for row in r["epochs"]]
                ys = [_value(row, metric) for row in r["epochs"]]
                ax.plot(xs, ys, color=colors[level], lw=0.8, alpha=0.45)
                for x, y in zip(xs, ys, strict=True):
                    if math.isfinite(y):
                        by_epoch.setdefault(x, []).append(y)
            xs = sorted(by_epoch)
            ax.plot(
                xs,
                [sum(by_epoch[x]) / len(by_epoch[x]) for x in xs],
                color=colors[level],
                lw=2.2,
                label=f"p={level_key(level)}",
            )
        ax.set_title(metric, fontsize=9)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    return fig


def detection_by_epoch(study: Mapping[str, Any], metrics: Sequence[str] = STUDY_METRICS) -> Figure:
    """Per metric, the effect size ``d`` of the lowest level against each other level per
    epoch (filled where ``p <= alpha``), and below it ``p`` (log scale) with ``alpha`` and
    the smallest reachable p."""
    from matplotlib.ticker import MaxNLocator

    from lightning_noiseprobe.plots import _figure

    levels = [float(lv) for lv in study["levels"]]
    colors = _level_colors(levels)
    alpha, min_p = study["alpha"], study["min_p"]
    cols = min(3, len(metrics))
    rows = -(-len(metrics) // cols)
    fig, axes = _figure(2 * rows, cols, size=(4.0 * cols, 4.6 * rows))
    for i in range(len(metrics), rows * cols):
        for ax in (axes[2 * (i // cols)][i % cols], axes[2 * (i // cols) + 1][i % cols]):
            ax.set_visible(False)
    lowest = level_key(levels[0])
    for i, metric in enumerate(metrics):
        ax_d, ax_p = axes[2 * (i // cols)][i % cols], axes[2 * (i // cols) + 1][i % cols]
        for level in levels[1:]:
            key = level_key(level)
            cells = [
                entry.get(metric, {}).get("vs_lowest", {}).get(key, {})
                for entry in study["by_epoch"]
            ]
            ds = [math.nan if c.get("effect_size") is None else c["effect_size"] for c in cells]
            ps = [math.nan if c.get("p") is None else c["p"] for c in cells]
            xs = list(range(len(cells)))
            color = colors[level]
            label = f"level {lowest} vs {key}"
            ax_d.plot(xs, ds, "-", color=color, lw=1.4, label=label)
            hit = [x for x, p in zip(xs, ps, strict=True) if p <= alpha]
            ax_d.plot(hit, [ds[x] for x in hit], "o", color=color, ms=5)
            miss = [x for x, p in zip(xs, ps, strict=True) if not p <= alpha]
            ax_d.plot(miss, [ds[x] for x in miss], "o", mfc="white", color=color, ms=5)
            ax_p.plot(xs, ps, "o-", color=color, lw=1.2, ms=3, label=label)
        found = study["detection_epoch"].get(metric)
        pair = f"level {lowest} vs {level_key(levels[-1])}"
        verdict = "not detected" if found is None else f"detected from epoch {found}"
        ax_d.set_title(f"{metric}\n{pair}: {verdict}", fontsize=9)
        ax_d.axhline(0.0, color="gray", lw=0.6)
        ax_d.set_ylabel("effect d", fontsize=8)
        ax_p.set_yscale("log")
        ax_p.axhline(alpha, color="k", ls="--", lw=0.8, label=f"alpha {alpha:g}")
        if min_p is not None:
            ax_p.axhline(min_p, color="gray", ls=":", lw=0.8, label=f"smallest p {min_p:.3g}")
        ax_p.set_ylim(top=1.3)
        ax_p.set_ylabel("permutation p", fontsize=8)
        ax_p.set_xlabel("epoch")
        for ax in (ax_d, ax_p):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    axes[1][0].legend(fontsize=7)
    return fig


def overfit_curves(
    overfit: Mapping[str, Any], monitors: Sequence[tuple[str, str]] = OVERFIT_MONITORS
) -> Figure:
    """The monitored metrics per epoch, a line per seed, and the epoch each monitor picks (dashed)."""
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    from lightning_noiseprobe.plots import _figure

    fig, axes = _figure(len(monitors), 1, size=(7.0, 2.4 * len(monitors)))
    for row_axes, (metric, mode) in zip(axes, monitors, strict=True):
        ax = row_axes[0]
        for run in overfit["runs"]:
            xs = [int(r["epoch"]) for r in run["epochs"]]
            ax.plot(
                xs, [_value(r, metric) for r in run["epochs"]], lw=1.2, label=f"seed {run['seed']}"
            )
            for monitor, _ in monitors:
                epoch = run["picks"].get(monitor)
                if epoch is not None:
                    ax.axvline(
                        epoch,
                        color=_MONITOR_COLORS.get(monitor, "gray"),
                        ls="--",
                        lw=0.8,
                        alpha=0.6,
                    )
        ax.set_ylabel(metric, fontsize=9)
        ax.set_title(f"{metric} (monitor: {mode})", fontsize=9)
        ax.grid(alpha=0.3)
    axes[-1][0].set_xlabel("epoch")
    axes[-1][0].xaxis.set_major_locator(MaxNLocator(integer=True))
    handles, labels = axes[0][0].get_legend_handles_labels()
    for monitor, mode in monitors:
        handles.append(Line2D([], [], color=_MONITOR_COLORS.get(monitor, "gray"), ls="--"))
        labels.append(f"{monitor} {mode} pick")
    axes[0][0].legend(handles, labels, fontsize=7, ncol=2)
    return fig


def save_figure(fig: Figure, path: str | os.PathLike[str]) -> None:
    """Write ``fig`` to ``path`` (PNG) atomically and release it."""
    from lightning_noiseprobe._io import atomic_path
    from lightning_noiseprobe.plots import close

    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110)
    finally:
        close(fig)
