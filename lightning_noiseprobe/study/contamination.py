"""``noiseprobe study contamination``: does the probe see contamination that validation loss cannot?

For each contamination level ``p`` and seed, the demo's fine-tune runs on a copy
of the train and validation chorales in which a fraction ``p`` of the clips
carry white-noise bursts (:mod:`lightning_noiseprobe.study.data`), probing the
same held-out clean chorales every epoch, and records per epoch the validation
CE on its own (contaminated) validation set, the validation CE on the clean
validation set and the probe's metrics. The ground truth is known by
construction: ``p`` is how much garbage the model was trained on.

Per epoch it also tests, for every metric, the lowest level against each other
level (effect size and exact permutation p-value over seeds), and reports the
*detection epoch*: the first epoch from which the difference stays significant
(:func:`lightning_noiseprobe.study.stats.summarize_by_epoch`).

Output in ``out``: ``study.json`` (settings, runs, summary, ``by_epoch`` tests and
detection epochs), ``study_vs_level.png``, ``study_by_epoch.png``,
``study_detection.png``, per-run records under ``runs/`` (a rerun with the same
settings reuses them) and the contaminated copies under ``data/``.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning_noiseprobe._defaults import DEFAULT_ONSET
from lightning_noiseprobe._errors import NoiseProbeError
from lightning_noiseprobe.probe.spec import PAPER_LENGTHS
from lightning_noiseprobe.study.stats import (
    STUDY_METRICS,
    level_key,
    summarize_by_epoch,
    summarize_runs,
)

__all__ = [
    "DEFAULT_LEVELS",
    "format_detection_table",
    "format_epoch_table",
    "format_study_table",
    "run_contamination_study",
]

DEFAULT_LEVELS = (0.0, 0.25, 0.5, 1.0)


def _fmt(value: Any, width: int = 8, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return f"{'n/a':>{width}}"
    return f"{value:>{width}.{digits}f}"


def format_study_table(study: dict[str, Any], metrics: Sequence[str] = STUDY_METRICS) -> str:
    """The summary as text: per metric, mean +- std over seeds per level, Spearman rho with
    the level, and the effect size (lowest level vs highest)."""
    levels = [level_key(lv) for lv in study["levels"]]
    head = f"{'metric':<18}" + "".join(f"{'p=' + k:>20}" for k in levels)
    head += f"{'spearman':>10}{'effect d':>10}"
    lines = [head]
    for metric in metrics:
        stats = study["summary"][metric]
        cells = []
        for key in levels:
            entry = stats["by_level"].get(key, {})
            mean, std = entry.get("mean"), entry.get("std")
            cell = _fmt(mean, 9) + " +- " + (_fmt(std, 6, 3) if std is not None else f"{'n/a':>6}")
            cells.append(f"{cell:>20}")
        lines.append(
            f"{metric:<18}"
            + "".join(cells)
            + _fmt(stats["spearman_with_level"], 10, 3)
            + _fmt(stats["effect_size"], 10, 2)
        )
    return "\n".join(lines)


def format_detection_table(study: dict[str, Any], metrics: Sequence[str] = STUDY_METRICS) -> str:
    """Per metric, the detection epoch of the lowest level against each other level (the
    last column is lowest vs highest; ``never`` when the last epoch is not significant),
    then a note when the seeds are too few for any p to reach ``alpha``."""
    levels = [level_key(lv) for lv in study["levels"]]
    heads = [f"{levels[0]} vs {k}" for k in levels[1:]]
    width = max(12, *(len(h) + 2 for h in heads))
    lines = [f"{'metric':<18}" + "".join(f"{h:>{width}}" for h in heads)]
    for metric in metrics:
        found = study["detection_epoch_vs_lowest"][metric]
        cells = ["never" if found[k] is None else str(found[k]) for k in levels[1:]]
        lines.append(f"{metric:<18}" + "".join(f"{c:>{width}}" for c in cells))
    n = len(study["seeds"])
    if study["min_p"] is not None and study["min_p"] > study["alpha"]:
        lines.append(
            f"NOTE: with {n} seed{'s' if n > 1 else ''} a level the smallest p this test can reach is"
            f" 2/C({2 * n},{n}) = {study['min_p']:.3g} > {study['alpha']:g}: no epoch can be a"
            " detection epoch. Use --seeds 4 or more."
        )
    return "\n".join(lines)


def format_epoch_table(study: dict[str, Any], metrics: Sequence[str] = STUDY_METRICS) -> str:
    """Per epoch and metric, ``d`` and ``p`` of the lowest level against the highest."""
    lines = [
        f"{'metric':<18}"
        + "".join(f"{'epoch ' + str(e):>16}" for e in range(len(study["by_epoch"])))
    ]
    for metric in metrics:
        cells = []
        for entry in study["by_epoch"]:
            d, p = entry[metric].get("effect_size"), entry[metric].get("p")
            cell = (
                ("n/a" if d is None else f"{d:+.2f}") + " / " + ("n/a" if p is None else f"{p:.3f}")
            )
            cells.append(f"{cell:>16}")
        lines.append(f"{metric:<18}" + "".join(cells))
    return "\n".join(lines)


def _check_levels(levels: Sequence[float]) -> tuple[float, ...]:
    values = tuple(sorted({float(v) for v in levels}))
    if len(values) < 2 or any(not (math.isfinite(v) and 0.0 <= v <= 1.0) for v in values):
        raise NoiseProbeError(
            f"Expected --levels to hold at least two distinct fractions in [0, 1] but got"
            f" {','.join(f'{v:g}' for v in levels)}."
        )
    return values


def run_contamination_study(
    out: str | os.PathLike[str],
    *,
    levels: Sequence[float] = DEFAULT_LEVELS,
    seeds: int = 3,
    epochs: int = 8,
    bursts: int = 3,
    num_clips: int = 24,
    probe_clips: int = 4,
    val_clips: int = 4,
    clip_seconds: float = 15.0,
    batch_size: int = 4,
    lr: float = 3e-3,
    onset: int = DEFAULT_ONSET,
    lengths: Sequence[int] = PAPER_LENGTHS,
    data_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the contamination study into ``out``; returns what ``study.json`` holds.

    Seeds are ``0 .. seeds - 1``; a seed fixes the model's weights, the
    training segments, and which clips get which bursts. The chorales and
    their split (data seed 0) are the same for every run. Runs whose record
    in ``out/runs`` was written with the same settings are reused.
    """
    from lightning_noiseprobe._io import atomic_write_json
    from lightning_noiseprobe.study import figures
    from lightning_noiseprobe.study._common import (
        check_positive_ints,
        machine_info,
        progress_bars,
        reusable_record,
    )
    from lightning_noiseprobe.study.data import start_study, write_contaminated
    from lightning_noiseprobe.study.training import RunSettings, quiet_lightning, train_run

    level_values = _check_levels(levels)
    check_positive_ints(seeds=seeds, epochs=epochs, bursts=bursts)
    started = time.perf_counter()
    out, clean = start_study(
        "contamination",
        f"{len(level_values)} levels x {seeds} seeds x {epochs} epochs ({len(level_values) * seeds} runs)",
        out=out,
        data_dir=data_dir,
        num_clips=num_clips,
        probe_clips=probe_clips,
        val_clips=val_clips,
        clip_seconds=clip_seconds,
        batch_size=batch_size,
        lr=lr,
        onset=onset,
        lengths=lengths,
    )
    settings = RunSettings(
        lr=lr,
        batch_size=batch_size,
        clip_seconds=clip_seconds,
        segment_seconds=clean.segment_seconds,
        onset=onset,
        lengths=tuple(lengths),
    )
    config: dict[str, Any] = {
        "epochs": epochs,
        "bursts": bursts,
        "num_clips": num_clips,
        "clips": {"train": len(clean.train), "val": len(clean.val), "probe": len(clean.probe)},
        "probe_files": [Path(p).name for p in clean.probe],
        "clean_val_files": [Path(p).name for p in clean.val],
        **{k: list(v) if isinstance(v, tuple) else v for k, v in vars(settings).items()},
    }
    grid = [(level, seed) for seed in range(seeds) for level in level_values]
    runs: list[dict[str, Any]] = []
    reused = 0
    bar, epoch_bar = progress_bars(len(grid), epochs, progress)
    try:
        with quiet_lightning():
            for level, seed in grid:
                name = f"p{level_key(level)}_seed{seed}"
                bar.set_postfix_str(f"p={level_key(level)} seed={seed}")
                record_path = out / "runs" / f"{name}.json"
                record = reusable_record(record_path, config, level, seed)
                if record is None:
                    folder = out / "data" / (name if level > 0 else "p0")
                    contamination = write_contaminated(
                        folder, clean, level=level, seed=seed, bursts=bursts
                    )
                    epoch_bar.reset()
                    run_started = time.perf_counter()
                    epochs_rec = train_run(
                        train_dir=folder / "train",
                        val_dir=folder / "val",
                        probe_files=clean.probe,
                        seed=seed,
                        epochs=epochs,
                        settings=settings,
                        cache_dir=out / "token_cache",
                        clean_val_files=clean.val,
                        on_epoch=lambda _e: epoch_bar.update(1),
                    )
                    record = {
                        "level": level,
                        "seed": seed,
                        "contaminated": {
                            split: sorted(clips)
                            for split, clips in contamination["contaminated"].items()
                        },
                        "seconds": round(time.perf_counter() - run_started, 2),
                        "epochs": epochs_rec,
                        "final": _final(epochs_rec),
                        "config": config,
                    }
                    atomic_write_json(record_path, record)
                else:
                    reused += 1
                runs.append({k: v for k, v in record.items() if k != "config"})
                bar.update(1)
    finally:
        epoch_bar.close()
        bar.close()
    study = {
        "levels": list(level_values),
        "seeds": list(range(seeds)),
        "config": config,
        "machine": machine_info(),
        "seconds": round(time.perf_counter() - started, 1),
        "reused_runs": reused,
        "runs": runs,
        "summary": summarize_runs(runs),
        **summarize_by_epoch(runs),
    }
    atomic_write_json(out / "study.json", study)
    written = [out / "study.json"]
    for filename, draw in (
        ("study_vs_level.png", figures.metrics_vs_level),
        ("study_by_epoch.png", figures.metrics_by_epoch),
        ("study_detection.png", figures.detection_by_epoch),
    ):
        figures.save_figure(draw(study), out / filename)
        written.append(out / filename)
    print()
    print(
        f"noiseprobe study contamination: {len(runs)} runs ({reused} reused) in {study['seconds']:.0f} s;"
        f" {config['clips']['train']} train / {config['clips']['val']} val clips per run, a fraction p with"
        f" {bursts} white-noise bursts; probe: {len(clean.probe)} clean held-out chorales."
    )
    print(
        "final epoch, mean +- std over seeds; effect d = (mean at lowest p - mean at highest p) / pooled std"
    )
    print(format_study_table(study))
    lo, hi = level_key(level_values[0]), level_key(level_values[-1])
    test = "exact" if study["exact"] else "Monte Carlo"
    print(
        f"\nper epoch, level {lo} vs level {hi}: effect d / two-sided {test} permutation p of the mean"
        f" difference over seeds ({study['relabelings']} relabelings)"
    )
    print(format_epoch_table(study))
    print(
        f"\ndetection epoch: the first epoch from which p <= {study['alpha']:g} at every later epoch"
        f" (epochs from 0), level {lo} against each level"
    )
    print(format_detection_table(study))
    print("wrote " + ", ".join(str(p) for p in written))
    return study


def _final(epochs: list[dict[str, Any]]) -> dict[str, float]:
    if not epochs:
        return {}
    return {
        k: v for k, v in epochs[-1].items() if k not in ("epoch", "train_seconds", "probe_seconds")
    }
