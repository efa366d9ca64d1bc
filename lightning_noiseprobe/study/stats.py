"""Statistics of the studies: pure functions of the recorded runs (no training, no I/O).

A *run* is a dict ``{"level", "seed", "epochs": [{"epoch", metric: value, ...}],
"final": {metric: value}}``; missing or non-finite values are left out of every
statistic (and counted in ``n``). Standard deviations are sample standard
deviations over seeds (``ddof=1``); with one value they are ``None``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, TypeGuard

__all__ = [
    "OVERFIT_MONITORS",
    "STUDY_METRICS",
    "effect_size",
    "level_key",
    "mean_std",
    "pick_epoch",
    "pooled_std",
    "spearman",
    "summarize_overfit",
    "summarize_runs",
]

#: Metrics summarised by the contamination study (``final`` values of each run).
STUDY_METRICS = (
    "val_ce",
    "clean_val_ce",
    "peak_sharpness",
    "peak_mean",
    "delta_loss",
    "assimilation_mean",
)
#: ``(metric, mode)`` of each checkpoint monitor compared by the overfit study.
OVERFIT_MONITORS = (("val_ce", "min"), ("peak_sharpness", "max"), ("delta_loss", "max"))


def level_key(level: float) -> str:
    """The JSON key of a contamination level.

    >>> level_key(0.0), level_key(0.25), level_key(1)
    ('0', '0.25', '1')
    """
    return f"{float(level):g}"


def _finite(values: Sequence[Any]) -> list[float]:
    return [float(v) for v in values if _is_finite(v)]


def _is_finite(value: Any) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def mean_std(values: Sequence[Any]) -> tuple[float | None, float | None, int]:
    """Mean, sample standard deviation (``ddof=1``) and count of the finite values.

    >>> mean_std([1.0, 2.0, 3.0, None])
    (2.0, 1.0, 3)
    >>> mean_std([4.0])
    (4.0, None, 1)
    >>> mean_std([])
    (None, None, 0)
    """
    xs = _finite(values)
    n = len(xs)
    if n == 0:
        return None, None, 0
    mean = math.fsum(xs) / n
    if n < 2:
        return mean, None, n
    return mean, math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1)), n


def pooled_std(a: Sequence[Any], b: Sequence[Any]) -> float | None:
    """Pooled standard deviation of two samples:
    ``sqrt(((n_a - 1) s_a^2 + (n_b - 1) s_b^2) / (n_a + n_b - 2))``.

    ``None`` when fewer than 3 values in all (no degree of freedom left).

    >>> pooled_std([1.0, 3.0], [2.0, 4.0, 6.0])  # sqrt((1 * 2 + 2 * 4) / 3)
    1.8257418583505538
    >>> pooled_std([1.0], [2.0]) is None
    True
    """
    xa, xb = _finite(a), _finite(b)
    dof = len(xa) + len(xb) - 2
    if dof < 1:
        return None
    ss = 0.0
    for xs in (xa, xb):
        if xs:
            m = math.fsum(xs) / len(xs)
            ss += math.fsum((x - m) ** 2 for x in xs)
    return math.sqrt(ss / dof)


def effect_size(low: Sequence[Any], high: Sequence[Any]) -> float | None:
    """Cohen's d of ``low`` against ``high``: ``(mean(low) - mean(high)) / pooled_std``.

    ``None`` when either sample is empty or the pooled standard deviation is
    undefined or zero.

    >>> effect_size([3.0, 5.0], [1.0, 3.0])  # (4 - 2) / sqrt(2)
    1.414213562373095
    >>> effect_size([1.0, 1.0], [1.0, 1.0]) is None
    True
    """
    xa, xb = _finite(low), _finite(high)
    pooled = pooled_std(xa, xb)
    if not xa or not xb or pooled is None or pooled == 0.0:
        return None
    return (math.fsum(xa) / len(xa) - math.fsum(xb) / len(xb)) / pooled


def spearman(x: Sequence[Any], y: Sequence[Any]) -> tuple[float | None, float | None]:
    """Spearman's rank correlation of the pairs where both values are finite, with its
    two-sided p-value (scipy); ``(None, None)`` with fewer than 3 pairs or a constant side.

    Ties get average ranks.

    >>> spearman([0, 0, 1, 1], [1.0, 2.0, 3.0, 4.0])[0]  # doctest: +ELLIPSIS
    0.894...
    >>> spearman([0, 0, 1], [1.0, 1.0, 1.0])
    (None, None)
    """
    pairs = [
        (float(a), float(b)) for a, b in zip(x, y, strict=True) if _is_finite(a) and _is_finite(b)
    ]
    if len(pairs) < 3 or len({a for a, _ in pairs}) < 2 or len({b for _, b in pairs}) < 2:
        return None, None
    from scipy import stats

    result = stats.spearmanr([a for a, _ in pairs], [b for _, b in pairs])
    rho, p = float(result[0]), float(result[1])
    return (rho if math.isfinite(rho) else None), (p if math.isfinite(p) else None)


def summarize_runs(
    runs: Sequence[Mapping[str, Any]], metrics: Sequence[str] = STUDY_METRICS
) -> dict[str, Any]:
    """The contamination study's summary, from the ``final`` values of the runs.

    For each metric: ``by_level`` (``{level_key: {"mean", "std", "n"}}`` over
    seeds), ``spearman_with_level`` and ``spearman_p`` (over all runs: level
    against final value), and ``effect_size``: Cohen's d of the lowest level
    against the highest, ``(mean_low - mean_high) / pooled_std``, positive
    when the metric is larger on cleaner data.

    Example:
        >>> runs = [{"level": p, "seed": s, "final": {"m": 10 * p + s}} for p in (0, 1) for s in (0, 1, 2)]
        >>> out = summarize_runs(runs, metrics=["m"])["m"]
        >>> out["by_level"]["0"], out["by_level"]["1"]["mean"], out["effect_size"]
        ({'mean': 1.0, 'std': 1.0, 'n': 3}, 11.0, -10.0)
    """
    levels = sorted({float(run["level"]) for run in runs})
    summary: dict[str, Any] = {}
    for metric in metrics:
        per_level: dict[float, list[Any]] = {level: [] for level in levels}
        xs, ys = [], []
        for run in runs:
            value = run.get("final", {}).get(metric)
            per_level[float(run["level"])].append(value)
            xs.append(float(run["level"]))
            ys.append(value)
        by_level = {}
        for level in levels:
            mean, std, n = mean_std(per_level[level])
            by_level[level_key(level)] = {"mean": mean, "std": std, "n": n}
        rho, p = spearman(xs, ys)
        d = effect_size(per_level[levels[0]], per_level[levels[-1]]) if levels else None
        summary[metric] = {
            "by_level": by_level,
            "spearman_with_level": rho,
            "spearman_p": p,
            "effect_size": d,
        }
    return summary


def pick_epoch(epochs: Sequence[Mapping[str, Any]], metric: str, mode: str) -> int | None:
    """The epoch a checkpoint monitor on ``metric`` would keep: the first epoch with
    the lowest (``mode="min"``) or highest (``"max"``) finite value, as
    ``ModelCheckpoint`` keeps the first of equal values; ``None`` if none is finite.

    >>> rows = [{"epoch": 0, "v": 3.0}, {"epoch": 1, "v": 1.0}, {"epoch": 2, "v": 1.0}, {"epoch": 3}]
    >>> pick_epoch(rows, "v", "min"), pick_epoch(rows, "v", "max"), pick_epoch(rows, "w", "max")
    (1, 0, None)
    """
    if mode not in ("min", "max"):
        raise ValueError(f"Expected argument `mode` to be 'min' or 'max' but got {mode!r}")
    best: tuple[float, int] | None = None
    for row in epochs:
        value = row.get(metric)
        if not _is_finite(value):
            continue
        score = float(value) if mode == "min" else -float(value)
        if best is None or score < best[0]:
            best = (score, int(row["epoch"]))
    return None if best is None else best[1]


def summarize_overfit(
    runs: Sequence[Mapping[str, Any]],
    monitors: Sequence[tuple[str, str]] = OVERFIT_MONITORS,
) -> dict[str, Any]:
    """Where each checkpoint monitor stops, per seed and across seeds.

    Each run (one seed) gets ``picks`` (``{metric: epoch}``), ``val_ce_at_pick``
    (``{metric: val_ce of that epoch}``) and ``turned_up``: validation CE rose
    after its minimum (the last epoch's is higher than the lowest). The summary
    has, per monitor, the epochs picked across seeds (``epochs``, ``mean``,
    ``std``, ``min``, ``max``, ``spread`` = max - min), the offset from the
    ``val_ce`` pick per seed (``offset_from_val_ce``: ``per_seed``, ``mean``,
    ``mean_abs``) and the validation CE given up by stopping there
    (``val_ce_excess``: ``per_seed`` = val_ce at the pick - min val_ce, ``mean``).

    Example:
        >>> rows = [{"epoch": e, "val_ce": abs(e - 2) + 5.0, "peak_sharpness": e} for e in range(5)]
        >>> s = summarize_overfit([{"seed": 0, "epochs": rows}])
        >>> s["runs"][0]["picks"], s["runs"][0]["turned_up"]
        ({'val_ce': 2, 'peak_sharpness': 4, 'delta_loss': None}, True)
        >>> s["summary"]["peak_sharpness"]["offset_from_val_ce"]["per_seed"], s["summary"]["peak_sharpness"]["val_ce_excess"]["mean"]
        ([2], 2.0)
    """
    per_run: list[dict[str, Any]] = []
    all_picks: list[dict[str, int | None]] = []
    all_at_pick: list[dict[str, float | None]] = []
    for run in runs:
        epochs = list(run.get("epochs", []))
        by_epoch = {int(row["epoch"]): row for row in epochs}
        picks = {metric: pick_epoch(epochs, metric, mode) for metric, mode in monitors}
        at_pick: dict[str, float | None] = {}
        for metric, e in picks.items():
            value = by_epoch[e].get("val_ce") if e is not None else None
            at_pick[metric] = float(value) if _is_finite(value) else None
        ce = [float(row["val_ce"]) for row in epochs if _is_finite(row.get("val_ce"))]
        turned_up = bool(ce) and ce[-1] > min(ce)
        all_picks.append(picks)
        all_at_pick.append(at_pick)
        per_run.append(
            {
                "seed": run.get("seed"),
                "picks": picks,
                "val_ce_at_pick": at_pick,
                "turned_up": turned_up,
            }
        )
    summary: dict[str, Any] = {}
    for metric, mode in monitors:
        picked = [p[metric] for p in all_picks]
        mean, std, n = mean_std(picked)
        valid = [e for e in picked if e is not None]
        offsets: list[int | None] = []
        for p in all_picks:
            here_e, best_e = p[metric], p.get("val_ce")
            offsets.append(here_e - best_e if here_e is not None and best_e is not None else None)
        off_mean, _, _ = mean_std(offsets)
        abs_mean, _, _ = mean_std([abs(o) if o is not None else None for o in offsets])
        excess: list[float | None] = []
        for a in all_at_pick:
            here, best = a.get(metric), a.get("val_ce")
            excess.append(here - best if here is not None and best is not None else None)
        excess_mean, _, _ = mean_std(excess)
        summary[metric] = {
            "mode": mode,
            "epochs": picked,
            "mean": mean,
            "std": std,
            "n": n,
            "min": min(valid) if valid else None,
            "max": max(valid) if valid else None,
            "spread": (max(valid) - min(valid)) if valid else None,
            "offset_from_val_ce": {"per_seed": offsets, "mean": off_mean, "mean_abs": abs_mean},
            "val_ce_excess": {"per_seed": excess, "mean": excess_mean},
        }
    return {"runs": per_run, "summary": summary}
