"""``noiseprobe compare``: several models on one probe set, side by side.

The probe-set flags are ``probe``'s (:func:`~lightning_noiseprobe.cli.probe.add_probe_set_flags`);
the work is :mod:`lightning_noiseprobe.posthoc.compare`.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from lightning_noiseprobe._errors import NoiseProbeError
from lightning_noiseprobe.cli._common import _check_outputs

__all__ = ["add_compare_parser"]


def add_compare_parser(sub: Any) -> None:
    """Add ``compare`` to ``sub``."""
    from lightning_noiseprobe.backends.base import available_backends
    from lightning_noiseprobe.cli.probe import add_probe_set_flags

    p = sub.add_parser(
        "compare",
        help="score several models on one probe set, side by side",
        description="Score every --model on the same probe set (the same clips, noise draws and spec),"
        " each tokenized by its own codec, one model in memory at a time; print a table and write"
        " compare.json, compare.txt and two figures to OUT. Each model's numbers equal its own"
        " `noiseprobe probe`.",
    )
    p.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="[BACKEND:]MODEL",
        help="a model, repeated: 'tiny', a hub id, a model or checkpoint folder, or a Lightning .ckpt;"
        f" BACKEND: ({', '.join(available_backends())}) picks its backend (default: a checkpoint"
        " folder's own, else --backend)",
    )
    p.add_argument(
        "--backend",
        choices=available_backends(),
        default="audiocraft",
        help="the backend of models given without BACKEND: that are no checkpoint folder (default audiocraft)",
    )
    p.add_argument(
        "--base",
        default=None,
        metavar="BASE",
        help="the base model of the PEFT adapter folders among the models (a save_pretrained folder or hub id)",
    )
    add_probe_set_flags(p, out_help="output folder (compare.json, compare.txt, two figures)")
    p.set_defaults(func=_cmd_compare)


def _cmd_compare(args: argparse.Namespace) -> int:
    from lightning_noiseprobe.backends._common import looks_like_path
    from lightning_noiseprobe.backends.adapters import recorded_base
    from lightning_noiseprobe.backends.base import available_backends
    from lightning_noiseprobe.cli.probe import check_probe_set_args
    from lightning_noiseprobe.posthoc.compare import parse_model
    from lightning_noiseprobe.posthoc.output import COMPARE_FILES

    # every check before any work
    checked = check_probe_set_args(args)
    sources = [parse_model(text, available_backends()) for text in args.model]
    if len(sources) < 2:
        raise NoiseProbeError(
            f"Expected at least two --model to compare but got {len(sources)} ({args.model[0]!r});"
            " use `noiseprobe probe` for one model."
        )
    repeated = sorted({s.text for s in sources if [t.text for t in sources].count(s.text) > 1})
    if repeated:
        raise NoiseProbeError(
            f"Expected each --model once but {repeated} are given more than once."
        )
    for source in sources:
        if not os.path.exists(source.model) and looks_like_path(source.model):
            raise NoiseProbeError(
                f"Expected --model {source.text!r} to be 'tiny', a hub id or an existing model, checkpoint"
                f" folder or .ckpt file, but '{source.model}' does not exist."
            )
    adapters = [s for s in sources if s.is_adapter]
    for source in adapters:
        if args.base is None:
            recorded = recorded_base(source.model)
            raise NoiseProbeError(
                f"Expected --base (the base model) with the PEFT adapter folder --model {source.text!r},"
                " which holds only the adapter's weights, but --base is not given. Add --base"
                f" {recorded or 'BASE'} (a save_pretrained folder or hub id"
                + (", as its adapter_config.json records)." if recorded else ").")
            )
        if (source.backend or "transformers") != "transformers":
            raise NoiseProbeError(
                f"Expected the PEFT adapter folder --model {source.text!r} with the transformers backend"
                f" (adapters load onto a transformers MusicGen) but it names {source.backend!r}."
                f" Write --model transformers:{source.model}."
            )
    if args.base is not None and not adapters:
        raise NoiseProbeError(
            f"Expected --base only with a PEFT adapter folder among the models but none is one"
            f" (--base {args.base!r}). Drop --base."
        )
    inputs = [("--audio", str(f)) for f in checked.files]
    inputs += [("--model", s.model) for s in sources if os.path.lexists(s.model)]
    if args.base is not None and os.path.lexists(args.base):
        inputs.append(("--base", args.base))
    _check_outputs([("--out", checked.out / name) for name in COMPARE_FILES], inputs)

    from lightning_noiseprobe.posthoc.compare import run_compare
    from lightning_noiseprobe.posthoc.output import (
        compare_document,
        format_compare_table,
        write_compare,
    )

    comparison = run_compare(
        sources,
        [str(f) for f in checked.files],
        checked.spec,
        default_backend=args.backend,
        base=args.base,
        descriptions=args.description,
        unconditional=args.unconditional,
        batch_size=args.batch_size,
        precision=args.precision,
        device=checked.device,
        cache_dir=checked.cache_dir,
        strict=args.strict,
        progress=not args.quiet,
        note=lambda message: print(f"noiseprobe compare: {message}", file=sys.stderr, flush=True),
    )
    document = compare_document(
        comparison.models, checked.spec.to_dict(), comparison.clips, comparison.skipped_clips
    )
    try:
        written = write_compare(
            document,
            [m["regions"] for m in comparison.models],
            checked.out,
            figures=not args.no_figures,
        )
    except OSError as err:
        raise NoiseProbeError(
            f"Could not write the results to --out '{checked.out}': {err.strerror or err}."
            f" Nothing was changed in '{checked.out}'; free space or choose another --out."
        ) from err
    print(
        f"noiseprobe compare: {len(comparison.models)} models x {len(comparison.clips)} clips;"
        f" the probe set tokenized {comparison.tokenized}x (once per codec)"
    )
    print(format_compare_table(document["models"], document["same_codec"]))
    for clip in comparison.skipped_clips:
        print(f"skipped clip {clip['path']}: {clip['reason']}")
    print("wrote " + ", ".join(os.fspath(p) for p in written))
    return 0
