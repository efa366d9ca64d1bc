"""The ``noiseprobe study`` sub-commands (registered by :mod:`lightning_noiseprobe.cli`)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from lightning_noiseprobe._defaults import DEFAULT_ONSET

__all__ = ["add_study_parser"]


def _levels(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated fractions for --levels but got {text!r}"
        ) from None
    if len(set(values)) < 2 or not all(0.0 <= v <= 1.0 for v in values):
        raise argparse.ArgumentTypeError(
            f"expected at least two distinct fractions in [0, 1] for --levels but got {text!r}"
        )
    return values


def _shared_args(p: argparse.ArgumentParser, positive: Callable[[str], Any], number: Any) -> None:
    from lightning_noiseprobe.cli._common import _int_list

    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument(
        "--seeds",
        type=positive("--seeds"),
        default=3,
        help="seeds 0..N-1 per setting (default 3)",
    )
    p.add_argument(
        "--data-dir",
        default=None,
        metavar="DIR",
        help="where the chorales are rendered and reused (default DIR/chorales)",
    )
    p.add_argument(
        "--clips",
        type=positive("--clips"),
        default=24,
        help="chorales to render (default 24)",
    )
    p.add_argument(
        "--probe-clips",
        type=positive("--probe-clips"),
        default=4,
        help="held-out clean probe chorales (default 4)",
    )
    p.add_argument(
        "--val-clips",
        type=positive("--val-clips"),
        default=4,
        help="validation chorales (default 4)",
    )
    p.add_argument(
        "--clip-seconds",
        type=number("--clip-seconds"),
        default=15.0,
        help="length of each chorale clip (default 15; training segments are min(10, this))",
    )
    p.add_argument("--batch-size", type=positive("--batch-size"), default=4)
    p.add_argument(
        "--lr", type=number("--lr"), default=3e-3, help="peak learning rate (default 3e-3)"
    )
    p.add_argument(
        "--onset",
        type=positive("--onset"),
        default=DEFAULT_ONSET,
        help="probe injection onset token (default %(default)s)",
    )
    p.add_argument(
        "--lengths",
        type=_int_list("--lengths"),
        default=(5, 10, 50, 100, 150, 200),
        help="probe injection lengths in tokens (default 5,10,50,100,150,200)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def add_study_parser(sub: Any) -> None:
    """Add ``study contamination`` and ``study overfit`` to the ``noiseprobe`` sub-parsers."""
    from lightning_noiseprobe.cli._common import _finite_float, _positive_int

    study = sub.add_parser(
        "study",
        help="controlled experiments: what does the probe see that validation loss does not?",
        description="Controlled experiments on the demo's tiny model and Bach chorales (CPU).",
    )
    kinds = study.add_subparsers(dest="study", metavar="STUDY", required=True)
    p = kinds.add_parser(
        "contamination",
        help="train on chorales with a known fraction of noise-burst clips; metrics vs fraction",
        description="For each contamination level p and seed, fine-tune the tiny model on chorales of"
        " which a fraction p carry white-noise bursts, probing clean held-out chorales; write"
        " DIR/study.json, three figures, a table of effect sizes and, per epoch, exact permutation"
        " tests of the lowest level against the others with the epoch from which each metric"
        " detects the contamination (needs --seeds 4 or more to reach p <= 0.05).",
    )
    _shared_args(p, _positive_int, _finite_float)
    p.add_argument(
        "--levels",
        type=_levels,
        default=(0.0, 0.25, 0.5, 1.0),
        help="contaminated fractions, comma-separated (default 0,0.25,0.5,1)",
    )
    p.add_argument(
        "--epochs", type=_positive_int("--epochs"), default=8, help="epochs per run (default 8)"
    )
    p.add_argument(
        "--bursts",
        type=_positive_int("--bursts"),
        default=3,
        help="noise bursts (50-150 tokens, -30 dBFS) per contaminated clip (default 3)",
    )
    p.set_defaults(func=_cmd_contamination)

    p = kinds.add_parser(
        "overfit",
        help="train a small subset past its best val CE; compare the epochs each monitor keeps",
        description="Fine-tune on a few whole chorale clips until validation CE turns up; report the epoch that"
        " val/ce (min), peak_sharpness (max) and delta_loss (max) would keep, per seed; write"
        " DIR/overfit.json, a figure and a table.",
    )
    _shared_args(p, _positive_int, _finite_float)
    p.add_argument(
        "--epochs",
        type=_positive_int("--epochs"),
        default=60,
        help="most epochs per seed (default 60)",
    )
    p.add_argument(
        "--patience",
        type=_positive_int("--patience"),
        default=15,
        help="stop this many epochs after the last new val/ce minimum (default 15)",
    )
    p.add_argument(
        "--train-clips",
        type=_positive_int("--train-clips"),
        default=4,
        help="training chorales of the subset (default 4)",
    )
    p.set_defaults(func=_cmd_overfit)


def _common_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "seeds": args.seeds,
        "epochs": args.epochs,
        "num_clips": args.clips,
        "probe_clips": args.probe_clips,
        "val_clips": args.val_clips,
        "clip_seconds": args.clip_seconds,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "onset": args.onset,
        "lengths": args.lengths,
        "data_dir": args.data_dir,
        "progress": not args.quiet,
    }


def _cmd_contamination(args: argparse.Namespace) -> int:
    from lightning_noiseprobe.study.contamination import run_contamination_study

    run_contamination_study(
        args.out, levels=args.levels, bursts=args.bursts, **_common_kwargs(args)
    )
    return 0


def _cmd_overfit(args: argparse.Namespace) -> int:
    from lightning_noiseprobe.study.overfit import run_overfit_study

    run_overfit_study(
        args.out, patience=args.patience, train_clips=args.train_clips, **_common_kwargs(args)
    )
    return 0
