"""Statistics of the studies: pure functions of the recorded runs (no training, no I/O).

A *run* is a dict ``{"level", "seed", "epochs": [{"epoch", metric: value, ...}],
"final": {metric: value}}``; missing or non-finite values are left out of every
statistic (and counted in ``n``). Standard deviations are sample standard
deviations over seeds (``ddof=1``); with one value they are ``None``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeGuard

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "DETECTION_ALPHA",
    "OVERFIT_MONITORS",
    "STUDY_METRICS",
    "detection_epoch",
    "effect_size",
    "level_key",
    "mean_std",
    "min_permutation_p",
    "permutation_p",
    "pick_epoch",
    "pooled_std",
    "spearman",
    "summarize_by_epoch",
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


#: Significance level of the per-epoch tests and of the detection epoch.
DETECTION_ALPHA = 0.05
#: Two samples are relabelled exhaustively up to this many relabelings (10 seeds a
#: side: C(20, 10) = 184756); beyond, :func:`permutation_p` draws
#: :data:`MONTE_CARLO_DRAWS` at random.
EXACT_RELABELINGS = 200_000
MONTE_CARLO_DRAWS = 200_000
#: A relabeling ties the observed one when their ``|mean difference|`` differ by less
#: than this times the largest ``|value|`` (the same difference summed in another order
#: can differ in its last bits).
TIE_RTOL = 1e-9


@functools.lru_cache(maxsize=16)
def _relabelings(total: int, size: int) -> np.ndarray:
    """Every choice of ``size`` of ``total`` indices, ``[C(total, size), size]``; the first
    row is ``0 .. size - 1``."""
    import itertools

    import numpy as np

    count = math.comb(total, size)
    flat = itertools.chain.from_iterable(itertools.combinations(range(total), size))
    return np.fromiter(flat, dtype=np.int16, count=count * size).reshape(count, size)


def permutation_p(low: Sequence[Any], high: Sequence[Any]) -> float | None:
    """Two-sided permutation p-value of ``|mean(low) - mean(high)|``.

    The finite values of both samples are pooled and every split into ``len(low)``
    and ``len(high)`` values is a relabeling; p is the fraction of relabelings whose
    ``|mean difference|`` is at least the observed one (ties within :data:`TIE_RTOL`
    of the largest ``|value|`` counted), the observed labeling included. Exact: all
    ``C(n_low + n_high, n_low)`` relabelings, up to :data:`EXACT_RELABELINGS`; beyond,
    :data:`MONTE_CARLO_DRAWS` drawn at random (seed 0) and ``p = (1 + hits) / (1 + draws)``. ``None``
    when either sample has no finite value.

    >>> permutation_p([5.0, 6.0, 7.0, 8.0], [1.0, 2.0, 3.0, 4.0])  # 2 of C(8, 4) = 70
    0.02857142857142857
    >>> permutation_p([1.0, 2.0], [2.0, 1.0])  # no difference: every relabeling ties
    1.0
    """
    import numpy as np

    xa, xb = _finite(low), _finite(high)
    if not xa or not xb:
        return None
    values = np.array(xa + xb)
    na, nb = len(xa), len(xb)
    tol = TIE_RTOL * float(np.max(np.abs(values)))
    total = values.sum()
    count = math.comb(na + nb, na)
    if count <= EXACT_RELABELINGS:
        sums = values[_relabelings(na + nb, na)].sum(axis=1)  # row 0: the observed labeling
        diffs = np.abs(sums / na - (total - sums) / nb)
        return float(np.count_nonzero(diffs >= diffs[0] - tol)) / count
    rng = np.random.default_rng(0)
    draws = rng.permuted(
        np.tile(np.arange(na + nb, dtype=np.int16), (MONTE_CARLO_DRAWS, 1)), axis=1
    )[:, :na]
    observed = abs(values[:na].sum() / na - (total - values[:na].sum()) / nb)
    sums = values[draws].sum(axis=1)
    hits = np.count_nonzero(np.abs(sums / na - (total - sums) / nb) >= observed - tol)
    return (1.0 + float(hits)) / (1.0 + MONTE_CARLO_DRAWS)


def min_permutation_p(n_low: int, n_high: int) -> float | None:
    """The smallest p :func:`permutation_p` can give for samples of these sizes:
    ``2 / C(2n, n)`` for two samples of ``n`` (a labeling and its swap have the same
    ``|mean difference|``), ``1 / C(n_low + n_high, n_low)`` for unequal sizes; ``None``
    when either is empty.

    >>> min_permutation_p(3, 3), min_permutation_p(4, 4), round(min_permutation_p(5, 5), 4)
    (0.1, 0.02857142857142857, 0.0079)
    """
    if n_low < 1 or n_high < 1:
        return None
    return min(1.0, (2.0 if n_low == n_high else 1.0) / math.comb(n_low + n_high, n_low))


def detection_epoch(ps: Sequence[float | None], alpha: float = DETECTION_ALPHA) -> int | None:
    """The first epoch from which ``p <= alpha`` holds at every later epoch; ``None`` when
    the last epoch's does not (a missing p is not significant).

    >>> detection_epoch([0.3, 0.01, 0.2, 0.04, 0.008]), detection_epoch([0.01, 0.2]), detection_epoch([])
    (3, None, None)
    """
    first: int | None = None
    for epoch, p in enumerate(ps):
        if p is not None and p <= alpha:
            first = epoch if first is None else first
        else:
            first = None
    return first


def _compare(low: Sequence[Any], high: Sequence[Any]) -> dict[str, Any]:
    return {
        "effect_size": effect_size(low, high),
        "p": permutation_p(low, high),
        "n": [len(_finite(low)), len(_finite(high))],
    }


def summarize_by_epoch(
    runs: Sequence[Mapping[str, Any]],
    metrics: Sequence[str] = STUDY_METRICS,
    alpha: float = DETECTION_ALPHA,
) -> dict[str, Any]:
    """Per epoch, how well each metric separates the lowest level from each other one.

    Returns (the keys ``study.json`` gains):

    * ``by_epoch``: a list over epochs (index = the runs' ``epoch``); ``by_epoch[e][metric]``
      is ``{"effect_size", "p", "n", "vs_lowest"}``: the lowest level against the
      highest (:func:`effect_size`, :func:`permutation_p`, ``n`` = finite values
      ``[lowest, highest]``), and ``vs_lowest[level_key]``, the same three against the
      lowest level for every other level (the highest's repeats the top entry).
    * ``detection_epoch``: ``{metric: epoch or None}`` of the lowest level against the
      highest (:func:`detection_epoch`); ``detection_epoch_vs_lowest``:
      ``{metric: {level_key: epoch or None}}``.
    * ``alpha``; ``min_p``: the smallest p reachable with the runs at the lowest and
      highest levels (:func:`min_permutation_p`; above ``alpha`` with fewer than 4 seeds
      a level, when nothing can be detected); ``relabelings``: how many the test over
      those runs enumerates (``exact`` true) or draws (``exact`` false).

    Example:
        >>> runs = [{"level": lv, "seed": s, "epochs": [{"epoch": 0, "m": s}, {"epoch": 1, "m": s + 10 * lv}]}
        ...         for lv in (0, 1) for s in range(4)]
        >>> out = summarize_by_epoch(runs, metrics=["m"])
        >>> [e["m"]["p"] for e in out["by_epoch"]], out["detection_epoch"], out["min_p"]
        ([1.0, 0.02857142857142857], {'m': 1}, 0.02857142857142857)
    """
    levels = sorted({float(run["level"]) for run in runs})
    last = max((int(row["epoch"]) for run in runs for row in run.get("epochs", [])), default=-1)
    rows = [
        (float(run["level"]), {int(row["epoch"]): row for row in run.get("epochs", [])})
        for run in runs
    ]

    def values(level: float, epoch: int, metric: str) -> list[Any]:
        return [by[epoch].get(metric) for lv, by in rows if lv == level and epoch in by]

    by_epoch: list[dict[str, Any]] = []
    for epoch in range(last + 1):
        entry: dict[str, Any] = {}
        for metric in metrics:
            low = values(levels[0], epoch, metric)
            vs = {level_key(lv): _compare(low, values(lv, epoch, metric)) for lv in levels[1:]}
            entry[metric] = {**vs[level_key(levels[-1])], "vs_lowest": vs} if vs else {}
        by_epoch.append(entry)
    n_low = sum(1 for lv, _ in rows if levels and lv == levels[0])
    n_high = sum(1 for lv, _ in rows if levels and lv == levels[-1])
    relabelings = math.comb(n_low + n_high, n_low)
    return {
        "alpha": alpha,
        "min_p": min_permutation_p(n_low, n_high) if len(levels) > 1 else None,
        "relabelings": relabelings if relabelings <= EXACT_RELABELINGS else MONTE_CARLO_DRAWS,
        "exact": relabelings <= EXACT_RELABELINGS,
        "by_epoch": by_epoch,
        "detection_epoch": {
            m: detection_epoch([e[m].get("p") for e in by_epoch], alpha) for m in metrics
        },
        "detection_epoch_vs_lowest": {
            m: {
                level_key(lv): detection_epoch(
                    [e[m]["vs_lowest"][level_key(lv)]["p"] if e[m] else None for e in by_epoch],
                    alpha,
                )
                for lv in levels[1:]
            }
            for m in metrics
        },
    }


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
