"""``noiseprobe analyze``: the regions of two per-token loss CSVs."""

from __future__ import annotations

import argparse
import json
from typing import Any

from lightning_noiseprobe._defaults import DEFAULT_ONSET
from lightning_noiseprobe._errors import NoiseProbeError
from lightning_noiseprobe.cli._common import (
    _check_outputs,
    _check_regions_onset,
    _flag_names,
    _positive_int,
    _require_writable,
)
from lightning_noiseprobe.cli.spec_flags import add_spec_flags

__all__ = ["add_analyze_parser"]


def _cmd_analyze(args: argparse.Namespace) -> int:
    if args.json:
        _check_outputs(
            [("--json", args.json)], [("--clean", args.clean), ("--perturbed", args.perturbed)]
        )
        _require_writable("--json", args.json, folder=False)

    import torch

    from lightning_noiseprobe._io import atomic_write_json
    from lightning_noiseprobe.csvio import read_loss_csv
    from lightning_noiseprobe.functional.curves import analyze_curves, check_region_settings

    flags = {
        "smoothing": "--smoothing",
        "margin": "--margin",
        "onset": "--onset",
        "length": "--length",
    }
    with _flag_names(flags):
        check_region_settings(args.smoothing, args.margin)
    _check_regions_onset(args)
    clean = read_loss_csv(args.clean, args.column)
    perturbed = read_loss_csv(args.perturbed, args.column)
    if len(clean) != len(perturbed):
        raise NoiseProbeError(
            f"Expected --clean '{args.clean}' and --perturbed '{args.perturbed}' to have the same number of tokens"
            f" but got {len(clean)} and {len(perturbed)}."
        )
    if args.onset + args.length > len(clean):
        raise NoiseProbeError(
            f"Expected the window onset {args.onset} + length {args.length} inside the {len(clean)} tokens of '{args.clean}'."
        )
    with _flag_names(flags):
        result = analyze_curves(  # float64 in: the authors' rule computes in float64
            torch.tensor(clean, dtype=torch.float64),
            torch.tensor(perturbed, dtype=torch.float64),
            args.onset,
            args.length,
            smoothing=args.smoothing,
            margin=args.margin,
            regions=args.regions,
        )
    record = result.to_records()[0]
    out: dict[str, Any] = {
        "onset": args.onset,
        "length": args.length,
        "region_rule": args.regions,
        **record,
    }
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        atomic_write_json(args.json, out)
    return 0


def add_analyze_parser(sub: Any) -> None:
    """Add ``analyze`` to ``sub``."""
    p = sub.add_parser(
        "analyze",
        help="detect regions in per-token loss CSVs",
        description="Compare clean and perturbed per-token loss curves (CSV, one row per token)."
        " The loss column is `loss`, else `avg_loss_value` (the paper authors' format"
        " token_position,avg_loss_value), else the only column that is not an index;"
        " a header-less file is one column or one row of losses.",
    )
    p.add_argument("--clean", required=True, metavar="CLEAN.csv")
    p.add_argument("--perturbed", required=True, metavar="PERTURBED.csv")
    p.add_argument(
        "--column",
        metavar="NAME",
        default=None,
        help="loss column of both CSVs: a name, or a 1-based number; comma-separated"
        " columns are averaged per row (default: chosen by the rules above)",
    )
    p.add_argument(
        "--onset",
        type=int,
        default=DEFAULT_ONSET,
        help="injection onset token (default %(default)s)",
    )
    p.add_argument(
        "--length",
        type=_positive_int("--length"),
        default=100,
        help="injection length in tokens (default 100)",
    )
    add_spec_flags(p, ("smoothing", "margin", "regions"))
    p.add_argument("--json", metavar="OUT", help="also write the result to this JSON file")
    p.set_defaults(func=_cmd_analyze)
