"""``noiseprobe sweep``: a run's checkpoints on one probe set, against the training step.

The probe-set flags are ``probe``'s (:func:`~lightning_noiseprobe.cli.probe.add_probe_set_flags`);
the work is :mod:`lightning_noiseprobe.posthoc`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from lightning_noiseprobe._errors import NoiseProbeError
from lightning_noiseprobe.cli._common import _check_outputs, _require_writable

__all__ = ["add_sweep_parser"]


def add_sweep_parser(sub: Any) -> None:
    """Add ``sweep`` to ``sub``."""
    from lightning_noiseprobe.cli.probe import add_probe_set_flags

    p = sub.add_parser(
        "sweep",
        help="score a run's checkpoints on one probe set, against the training step",
        description="Score every checkpoint in PATH (Lightning .ckpt files of MusicGenLightningModule,"
        " transformers checkpoint-N or PEFT adapter folders, audiocraft export folders) on one probe"
        " set, tokenized once, in training order; write sweep.json, sweep.txt and sweep_metrics.png"
        " to OUT, and with --tensorboard the metrics at each checkpoint's global step. Results are"
        " kept in the cache folder: a rerun scores only checkpoints not done yet.",
    )
    p.add_argument(
        "checkpoints",
        nargs="+",
        metavar="PATH",
        help="checkpoints, or folders holding them (e.g. a ModelCheckpoint dirpath, a Trainer output_dir)",
    )
    p.add_argument(
        "--base",
        default=None,
        metavar="BASE",
        help="the base model of PEFT adapter checkpoints (a save_pretrained folder or hub id)",
    )
    p.add_argument(
        "--tensorboard",
        default=None,
        metavar="DIR",
        help="also write the metrics as TensorBoard scalars at each checkpoint's global step, with"
        " the live callback's tags (e.g. a folder beside the run's own logs)",
    )
    p.add_argument(
        "--prefix",
        default="noiseprobe",
        help="metric name prefix of the TensorBoard tags, as the callback's `prefix` (default noiseprobe)",
    )
    add_probe_set_flags(p, out_help="output folder (sweep.json, sweep.txt, sweep_metrics.png)")
    p.set_defaults(func=_cmd_sweep)


def _note(message: str) -> None:
    print(f"noiseprobe sweep: {message}", file=sys.stderr, flush=True)


def _cmd_sweep(args: argparse.Namespace) -> int:
    from lightning_noiseprobe.backends.adapters import adapter_folder_message
    from lightning_noiseprobe.cli.probe import check_probe_set_args
    from lightning_noiseprobe.posthoc.checkpoints import find_checkpoints
    from lightning_noiseprobe.posthoc.output import SWEEP_FILES, TENSORBOARD_FILE

    # every check before any work
    checked = check_probe_set_args(args)
    if not args.prefix or "/" in args.prefix:
        raise NoiseProbeError(
            f"Expected --prefix to be a non-empty name without '/' but got {args.prefix!r}."
        )
    if args.tensorboard is not None:
        _require_writable("--tensorboard", args.tensorboard, folder=True)
    checkpoints, skipped = find_checkpoints(args.checkpoints, strict=args.strict)
    adapters = [c for c in checkpoints if c.kind == "peft"]
    if adapters and args.base is None:
        raise NoiseProbeError(
            f"Expected --base (the base model) for the PEFT adapter checkpoints but it is not given:"
            f" {adapter_folder_message(adapters[0].path, 'transformers')}"
        )
    if args.base is not None and not adapters:
        raise NoiseProbeError(
            f"Expected --base only with PEFT adapter checkpoints but none of {len(checkpoints)} is one"
            f" (--base {args.base!r}). Drop --base."
        )
    if args.tensorboard is not None:
        missing = [c for c in checkpoints if c.step is None]
        if missing:
            raise NoiseProbeError(
                f"Expected a training step for every checkpoint with --tensorboard (its scalars go to"
                f" that step) but '{missing[0].path}' records none (no metadata, no step in its name)."
                " Name it with its step (e.g. step-1200) or drop --tensorboard."
            )
    if not checkpoints:
        shown = "; ".join(f"{s['path']}: {s['reason']}" for s in skipped[:3])
        raise NoiseProbeError(f"Expected a checkpoint that can be read but none could: {shown}.")
    inputs = [("--audio", str(f)) for f in checked.files]
    inputs += [("PATH", str(c.path)) for c in checkpoints]
    outputs = [("--out", checked.out / name) for name in SWEEP_FILES]
    if args.tensorboard is not None:
        outputs.append(("--tensorboard", Path(args.tensorboard) / TENSORBOARD_FILE))
    _check_outputs(outputs, inputs)
    for s in skipped:
        print(f"skipped {s['path']}: {s['reason']}", flush=True)

    from lightning_noiseprobe.posthoc.output import (
        format_sweep_table,
        sweep_document,
        write_sweep,
        write_tensorboard,
    )
    from lightning_noiseprobe.posthoc.sweep import run_sweep

    settings = {
        "batch_size": args.batch_size,
        "precision": args.precision,
        "device": checked.device,
        "descriptions": args.description,
        "unconditional": args.unconditional,
    }
    sweep = run_sweep(
        checkpoints,
        [str(f) for f in checked.files],
        checked.spec,
        base=args.base,
        cache_dir=checked.cache_dir,
        strict=args.strict,
        progress=not args.quiet,
        note=_note,
        **settings,  # type: ignore[arg-type]
    )
    sweep.skipped[:0] = skipped
    if not sweep.entries:
        shown = "; ".join(f"{s['path']}: {s['reason']}" for s in sweep.skipped[:3])
        raise NoiseProbeError(
            f"Expected at least one checkpoint to be scored but none was: {shown}."
        )
    document = sweep_document(sweep, checked.spec.to_dict(), {**settings, "base": args.base})
    written = []
    try:
        if args.tensorboard is not None:
            written.append(write_tensorboard(sweep.entries, args.tensorboard, args.prefix))
        written[:0] = write_sweep(document, checked.out, figures=not args.no_figures)
    except OSError as err:
        raise NoiseProbeError(
            f"Could not write the results to --out '{checked.out}' or --tensorboard: {err.strerror or err}."
            " Nothing was changed there; free space or choose another folder."
        ) from err
    scored = len(sweep.entries) - sweep.reused
    print(
        f"noiseprobe sweep: {len(sweep.entries)} checkpoints x {len(sweep.clips)} clips; probe set"
        f" tokenized {sweep.tokenized}x ({sweep.seconds['tokenize']:.1f} s), {scored} checkpoints loaded"
        f" ({sweep.seconds['load']:.1f} s) and scored ({sweep.seconds['score']:.1f} s), {sweep.reused}"
        " already done (reused from the cache)"
    )
    print(format_sweep_table(sweep.entries))
    for s in sweep.skipped[len(skipped) :]:
        print(f"skipped {s['path']}: {s['reason']}")
    for clip in sweep.skipped_clips:
        print(f"skipped clip {clip['path']}: {clip['reason']}")
    print("wrote " + ", ".join(os.fspath(p) for p in written))
    return 0
