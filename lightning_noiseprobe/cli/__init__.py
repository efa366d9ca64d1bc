"""The ``noiseprobe`` command line.

Sub-commands (each documented by ``noiseprobe <command> --help``):

* ``inject``   write a copy of an audio file with noise injected in a token window;
* ``shuffle``  write a copy with the segments of a window shuffled (paper Sec. 5.1);
* ``delete``   write a copy with a token window cut out (the authors' "remove 50 tokens at 5 s");
* ``reorder``  write a copy with a window cut into random-length segments, reordered;
* ``bandstop`` write a copy with a frequency band deleted inside a window;
* ``analyze``  detect the Peak / Assimilation / Recovery regions in two per-token loss CSVs;
* ``probe``    score a model on a noise-injected probe set and write metrics, curves and figures;
* ``sweep``    score a run's checkpoints on one probe set, against the training step;
* ``compare``  score several models on one probe set, side by side;
* ``demo``     the whole loop on the embedded tiny model and Bach chorales;
* ``study``    controlled experiments on the demo's setup (``contamination``, ``overfit``);
* ``fit`` / ``validate``  LightningCLI for fine-tuning with the callback.

Bad input ends with a one-line ``noiseprobe: error: ...`` message and exit status 2,
and leaves no partial output file behind. Outputs are checked before any work:
an output that is one of the command's inputs (the same file through a symlink,
``..`` or a hard link), or that cannot be written, is refused.

One module per concern: :mod:`~lightning_noiseprobe.cli._common` (parser, value
parsers, output checks), :mod:`~lightning_noiseprobe.cli.spec_flags` (the probe-set
flags, made from ``ProbeSpec``'s fields), :mod:`~lightning_noiseprobe.cli.audio_edits`
(``inject`` ... ``bandstop``), :mod:`~lightning_noiseprobe.cli.analyze`,
:mod:`~lightning_noiseprobe.cli.probe`, :mod:`~lightning_noiseprobe.cli.sweep`,
:mod:`~lightning_noiseprobe.cli.compare`; ``demo``, the parser and :func:`main` are here.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from lightning_noiseprobe._errors import NoiseProbeError
from lightning_noiseprobe.cli._common import (
    EXIT_USAGE,
    _finite_float,
    _Parser,
    _positive_int,
    _require_writable,
)

__all__ = ["build_parser", "format_summary", "main"]


def __getattr__(name: str) -> Any:
    # format_summary lives in cli/probe.py; imported on first use (cli.probe loads the spec)
    if name == "format_summary":
        from lightning_noiseprobe.cli.probe import format_summary

        return format_summary
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _add_demo_parser(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="train the embedded tiny model on Bach chorales with the probe (CPU, minutes)",
        description="Render Bach chorales, fine-tune the tiny MusicGen-shaped model for a few epochs with"
        " NoiseProbeCallback, write TensorBoard logs, export the model and print the metrics per epoch.",
    )
    p.add_argument("--workdir", default="runs/demo", help="output folder (default runs/demo)")
    p.add_argument(
        "--epochs", type=_positive_int("--epochs"), default=8, help="training epochs (default 8)"
    )
    p.add_argument(
        "--clips",
        type=_positive_int("--clips"),
        default=24,
        help="chorale clips to render (default 24)",
    )
    p.add_argument(
        "--probe-clips",
        type=_positive_int("--probe-clips"),
        default=4,
        help="held-out probe clips (default 4)",
    )
    p.add_argument("--batch-size", type=_positive_int("--batch-size"), default=4)
    p.add_argument("--lr", type=_finite_float("--lr"), default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    from lightning_noiseprobe.demo import run_demo

    _require_writable("--workdir", args.workdir, folder=True)
    run_demo(
        workdir=args.workdir,
        epochs=args.epochs,
        num_clips=args.clips,
        probe_clips=args.probe_clips,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``noiseprobe`` argument parser (sub-commands registered here)."""
    from lightning_noiseprobe.cli.analyze import add_analyze_parser
    from lightning_noiseprobe.cli.audio_edits import add_audio_parsers
    from lightning_noiseprobe.cli.compare import add_compare_parser
    from lightning_noiseprobe.cli.probe import add_probe_parser
    from lightning_noiseprobe.cli.sweep import add_sweep_parser
    from lightning_noiseprobe.study.command import add_study_parser

    parser = _Parser(
        prog="noiseprobe",
        description="Probe music language models with noise injections (Li, Liu, Wang, ICASSP 2026).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in _LIGHTNING_COMMANDS:
        sub.add_parser(
            name, help=f"LightningCLI {name} (see `noiseprobe {name} --help`)", add_help=False
        )
    _add_demo_parser(sub)
    add_study_parser(sub)

    add_audio_parsers(sub)
    add_analyze_parser(sub)
    add_probe_parser(sub)
    add_sweep_parser(sub)
    add_compare_parser(sub)
    return parser


_LIGHTNING_COMMANDS = ("fit", "validate")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``noiseprobe`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in _LIGHTNING_COMMANDS:
        from lightning_noiseprobe.lightning_cli import run_lightning_cli

        try:
            run_lightning_cli(argv)
        except NoiseProbeError as err:
            print(f"noiseprobe: error: {err}", file=sys.stderr)
            return EXIT_USAGE
        return 0
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except NoiseProbeError as err:
        print(f"noiseprobe: error: {err}", file=sys.stderr)
        return EXIT_USAGE
