"""``noiseprobe study overfit``: which epoch would each checkpoint monitor keep?

The demo's fine-tune runs on a small subset of the training chorales for many
epochs, until the validation CE (clean validation chorales) turns up and has
not made a new minimum for ``patience`` epochs. Training segments are the whole
clips (no random crops), so the subset is seen the same way every epoch. With
the demo's random 10 s crops of the 15 s clips the tiny model did not overfit
even one chorale (seed 0: validation CE still falling after 100 epochs at lr
3e-3, flat after 300 at 1e-2); on whole clips it turned up after about 20
epochs (seed 0, one or four chorales, lr 3e-3). For each seed the study reports
the epoch each monitor picks (``val/ce`` min, ``peak_sharpness`` max,
``delta_loss`` max), how far apart the picks are across seeds and from the
``val/ce`` pick, and how much validation CE stopping there gives up.

Output in ``out``: ``overfit.json``, ``overfit_curves.png``, per-seed records
under ``runs/`` (reused by a rerun with the same settings).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning_noiseprobe._defaults import DEFAULT_ONSET
from lightning_noiseprobe._errors import NoiseProbeError
from lightning_noiseprobe.probe.spec import PAPER_LENGTHS
from lightning_noiseprobe.study.stats import OVERFIT_MONITORS, summarize_overfit

__all__ = ["format_overfit_table", "run_overfit_study"]


def _cell(value: Any, width: int) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return f"{'n/a':>{width}}"
    if isinstance(value, bool):
        return f"{'yes' if value else 'no':>{width}}"
    if isinstance(value, int):
        return f"{value:>{width}d}"
    return f"{value:>{width}.3f}"


def format_overfit_table(overfit: dict[str, Any]) -> str:
    """Per seed, the epoch each monitor picks; then their spread across seeds, offset from
    the ``val_ce`` pick and the validation CE given up."""
    monitors = [m for m, _ in OVERFIT_MONITORS]
    names = [f"{m} {mode}" for m, mode in OVERFIT_MONITORS]
    width = max(20, *(len(n) + 2 for n in names))
    lines = [f"{'':<24}" + "".join(f"{n:>{width}}" for n in names) + f"{'val_ce turned up':>18}"]
    for run in overfit["runs"]:
        label = f"seed {run['seed']} ({len(run['epochs'])} epochs)"
        lines.append(
            f"{label:<24}"
            + "".join(_cell(run["picks"].get(m), width) for m in monitors)
            + _cell(run["turned_up"], 18)
        )
    summary = overfit["summary"]
    rows = (
        (
            "mean +- std of pick",
            lambda s: f"{_cell(s['mean'], 7).strip()} +- {_cell(s['std'], 5).strip()}",
        ),
        ("spread (max - min)", lambda s: _cell(s["spread"], width).strip()),
        ("pick - val_ce pick", lambda s: _cell(s["offset_from_val_ce"]["mean"], width).strip()),
        (
            "|pick - val_ce pick|",
            lambda s: _cell(s["offset_from_val_ce"]["mean_abs"], width).strip(),
        ),
        ("val_ce given up", lambda s: _cell(s["val_ce_excess"]["mean"], width).strip()),
    )
    for label, show in rows:
        lines.append(f"{label:<24}" + "".join(f"{show(summary[m]):>{width}}" for m in monitors))
    return "\n".join(lines)


def run_overfit_study(
    out: str | os.PathLike[str],
    *,
    seeds: int = 3,
    epochs: int = 60,
    patience: int = 15,
    train_clips: int = 4,
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
    """Run the overfit study into ``out``; returns what ``overfit.json`` holds.

    Trains on the whole clips of the first ``train_clips`` training chorales
    (sorted by name) for at most ``epochs`` epochs, stopping ``patience`` epochs after the last new
    minimum of the validation CE; seeds ``0 .. seeds - 1``.
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

    check_positive_ints(seeds=seeds, epochs=epochs, patience=patience, train_clips=train_clips)
    started = time.perf_counter()
    out, clean = start_study(
        "overfit",
        f"{seeds} seeds x up to {epochs} epochs on {train_clips} training chorales",
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
    if train_clips > len(clean.train):
        raise NoiseProbeError(
            f"Expected --train-clips to be at most the {len(clean.train)} training chorales but got"
            f" {train_clips}. Use more --clips."
        )
    subset = dataclasses.replace(clean, train=sorted(clean.train)[:train_clips])
    folder = out / "data" / f"overfit_train{train_clips}"
    write_contaminated(folder, subset, level=0.0, seed=0, bursts=0)
    settings = RunSettings(
        lr=lr,
        batch_size=batch_size,
        clip_seconds=clip_seconds,
        segment_seconds=clip_seconds,  # whole clips: nothing to crop at random
        onset=onset,
        lengths=tuple(lengths),
    )
    config: dict[str, Any] = {
        "study": "overfit",
        "epochs": epochs,
        "patience": patience,
        "num_clips": num_clips,
        "train_files": [Path(p).name for p in subset.train],
        "val_files": [Path(p).name for p in subset.val],
        "probe_files": [Path(p).name for p in subset.probe],
        **{k: list(v) if isinstance(v, tuple) else v for k, v in vars(settings).items()},
    }
    runs: list[dict[str, Any]] = []
    reused = 0
    bar, epoch_bar = progress_bars(seeds, epochs, progress)
    try:
        with quiet_lightning():
            for seed in range(seeds):
                bar.set_postfix_str(f"seed={seed}")
                record_path = out / "runs" / f"overfit_seed{seed}.json"
                record = reusable_record(record_path, config, 0.0, seed)
                if record is None:
                    epoch_bar.reset()
                    run_started = time.perf_counter()
                    rows = train_run(
                        train_dir=folder / "train",
                        val_dir=folder / "val",
                        probe_files=subset.probe,
                        seed=seed,
                        epochs=epochs,
                        settings=settings,
                        cache_dir=out / "token_cache",
                        patience=patience,
                        on_epoch=lambda _e: epoch_bar.update(1),
                    )
                    record = {
                        "level": 0.0,
                        "seed": seed,
                        "seconds": round(time.perf_counter() - run_started, 2),
                        "epochs": rows,
                        "config": config,
                    }
                    atomic_write_json(record_path, record)
                else:
                    reused += 1
                runs.append(
                    {"seed": seed, "seconds": record["seconds"], "epochs": record["epochs"]}
                )
                bar.update(1)
    finally:
        epoch_bar.close()
        bar.close()
    picks = summarize_overfit(runs)
    for run, pick in zip(runs, picks["runs"], strict=True):
        run.update({k: v for k, v in pick.items() if k != "seed"})
    overfit = {
        "seeds": list(range(seeds)),
        "monitors": [{"metric": m, "mode": mode} for m, mode in OVERFIT_MONITORS],
        "config": config,
        "machine": machine_info(),
        "seconds": round(time.perf_counter() - started, 1),
        "reused_runs": reused,
        "runs": runs,
        "summary": picks["summary"],
    }
    atomic_write_json(out / "overfit.json", overfit)
    figures.save_figure(figures.overfit_curves(overfit), out / "overfit_curves.png")
    print()
    print(
        f"noiseprobe study overfit: {seeds} seeds in {overfit['seconds']:.0f} s ({reused} reused);"
        f" {train_clips} training / {len(subset.val)} validation chorales; epoch picked by each monitor:"
    )
    print(format_overfit_table(overfit))
    print(f"wrote {out / 'overfit.json'}, {out / 'overfit_curves.png'}")
    return overfit
