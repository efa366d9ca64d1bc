"""``noiseprobe probe``: score a model on a perturbed probe set and write metrics, curves and figures.

The probe-set flags are :class:`~lightning_noiseprobe.probe.spec.ProbeSpec`'s fields
(:mod:`lightning_noiseprobe.cli.spec_flags`); the others say which model, where it runs,
which files and where the results go.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lightning_noiseprobe._errors import NoiseProbeError
from lightning_noiseprobe.cli._common import (
    _check_level,
    _check_outputs,
    _check_regions_onset,
    _device,
    _flag_names,
    _positive_int,
    _require_writable,
)
from lightning_noiseprobe.cli.spec_flags import SPEC_FLAGS, add_spec_flags, spec_flag, spec_kwargs

if TYPE_CHECKING:
    from lightning_noiseprobe.probe import ProbeSpec

__all__ = [
    "ProbeSetArgs",
    "add_probe_parser",
    "add_probe_set_flags",
    "check_probe_set_args",
    "format_summary",
]

#: The perturbation lists of a spec: a probe needs at least one of them.
_PERTURBATION_LISTS = (
    "lengths",
    "shuffle_segments",
    "delete_lengths",
    "reorder_lengths",
    "bandstop_lengths",
)


def add_probe_parser(sub: Any) -> None:
    """Add ``probe`` to ``sub``."""
    from lightning_noiseprobe.backends.base import available_backends

    p = sub.add_parser(
        "probe",
        help="score a model on a noise-injected probe set",
        description="Score MODEL on clean clips and their noise-injected copies; write metrics.json, curves.npz and the paper's figures to OUT.",
    )
    p.add_argument(
        "--model",
        default="tiny",
        help="'tiny', 'tiny-stereo' or 'tiny-melody' (built offline), a local"
        " folder of weights, or a hub id (default tiny)",
    )
    p.add_argument(
        "--base",
        default=None,
        metavar="BASE",
        help="with --backend transformers and a PEFT adapter folder as --model: the base model to"
        " load the adapter onto (a save_pretrained folder or hub id); the adapter stays active",
    )
    p.add_argument(
        "--backend",
        choices=available_backends(),
        default="audiocraft",
        help="model library (default audiocraft)",
    )
    add_probe_set_flags(p, bf16_true=True)
    p.set_defaults(func=_cmd_probe)


def add_probe_set_flags(
    p: argparse.ArgumentParser, out_help: str = "output folder", bf16_true: bool = False
) -> None:
    """The flags of a probe set and how it is scored, shared by ``probe``, ``sweep`` and
    ``compare``: ``--audio``, ``--out``, every ``ProbeSpec`` field, batch size, precision,
    device, conditioning, cache, ``--strict``, ``--no-figures``, ``--quiet``.

    ``bf16_true`` adds ``--precision bf16-true`` (the LM's weights loaded in bfloat16:
    ``probe`` only, which loads one model)."""
    p.add_argument(
        "--audio", required=True, nargs="+", metavar="DIR_OR_FILE", help="audio folder(s) or files"
    )
    p.add_argument("--out", required=True, metavar="OUTDIR", help=out_help)
    add_spec_flags(p)
    p.add_argument("--batch-size", type=_positive_int("--batch-size"), default=8)
    bf16_help = (
        "; bf16-true: the LM's weights in bfloat16, no autocast (half the memory:"
        " MusicGen-large on a 24 GB machine)"
    )
    p.add_argument(
        "--precision",
        choices=("32", "bf16", "bf16-true", "16") if bf16_true else ("32", "bf16", "16"),
        default="32",
        help="32 (default); bf16, 16 (CUDA): autocast over float32 weights"
        + (bf16_help if bf16_true else ""),
    )
    p.add_argument(
        "--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)"
    )
    cond = p.add_mutually_exclusive_group()
    cond.add_argument(
        "--description",
        default=None,
        help="text condition for every clip (default: .json sidecars, else unconditional)",
    )
    cond.add_argument(
        "--unconditional",
        action="store_true",
        help="score every clip without text, even with .json sidecars (the authors' setting)",
    )
    p.add_argument(
        "--cache-dir",
        default=None,
        help="token cache folder (default $NOISEPROBE_CACHE or ~/.cache/lightning_noiseprobe; 'none' to disable)",
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="fail on the first unreadable or too-short clip instead of skipping it",
    )
    p.add_argument("--no-figures", action="store_true", help="write metrics and curves only")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


@dataclasses.dataclass(frozen=True)
class ProbeSetArgs:
    """What :func:`check_probe_set_args` made of the flags of :func:`add_probe_set_flags`."""

    spec: ProbeSpec
    device: str
    out: Path
    cache_dir: Path | None
    files: list[Path]


def _autocast(precision: str) -> str:
    """The autocast precision of a ``--precision`` value: ``bf16-true`` loads the LM's
    weights in bfloat16 and computes in it, with no autocast on top (``"32"``)."""
    return "32" if precision == "bf16-true" else precision


def check_probe_set_args(args: argparse.Namespace) -> ProbeSetArgs:
    """Check the flags of :func:`add_probe_set_flags` before any work: the spec, the device,
    ``--out`` and ``--cache-dir`` writable, the audio files found.

    Raises:
        NoiseProbeError: naming the flag and the value.
    """
    from lightning_noiseprobe.cli.audio_edits import check_reorder_segments
    from lightning_noiseprobe.probe import ProbeSpec, find_audio_files
    from lightning_noiseprobe.probe.probeset import default_cache_dir

    _check_regions_onset(args)
    if not any(getattr(args, name) for name in _PERTURBATION_LISTS):
        first, *others = (spec_flag(name) for name in _PERTURBATION_LISTS)
        raise NoiseProbeError(
            f"Expected at least one perturbation but {first} is none and none of"
            f" {', '.join(others)} is given."
        )
    low, high = args.reorder_segment
    for length in args.reorder_lengths:
        check_reorder_segments(length, low, high, spec_flag("reorder_lengths"))
    with _flag_names({name: spec_flag(name) for name in SPEC_FLAGS}):
        spec = ProbeSpec(**spec_kwargs(args))
    _check_level(args)
    device = _device(args.device)
    from lightning_noiseprobe.probe.runner import precision_context

    with _flag_names({"precision": "--precision"}):  # fp16 needs CUDA: say so before any work
        precision_context(_autocast(args.precision), device)
    out = Path(args.out)
    _require_writable("--out", out, folder=True)
    cache_dir: Path | None
    if args.cache_dir is not None and args.cache_dir.lower() == "none":
        cache_dir = None
    elif args.cache_dir:
        cache_dir = Path(args.cache_dir)
        _require_writable("--cache-dir", cache_dir, folder=True)
    else:
        cache_dir = default_cache_dir()
    return ProbeSetArgs(spec, device, out, cache_dir, find_audio_files(args.audio))


def _cmd_probe(args: argparse.Namespace) -> int:
    from lightning_noiseprobe.report import OUTPUT_FILES

    # every check before any work: the spec, the device, the outputs, the inputs
    _check_base(args)
    checked = check_probe_set_args(args)
    spec, device, out, cache_dir, files = (
        checked.spec,
        checked.device,
        checked.out,
        checked.cache_dir,
        checked.files,
    )
    inputs = [("--audio", str(f)) for f in files]
    for flag, value in (("--model", args.model), ("--base", args.base)):
        if value is not None and os.path.lexists(value):
            inputs.append((flag, value))
    _check_outputs([("--out", out / name) for name in OUTPUT_FILES], inputs)

    from lightning_noiseprobe.backends.base import get_backend
    from lightning_noiseprobe.probe import build_probe_set, score_probe_set
    from lightning_noiseprobe.report import save_result

    model_name = args.model if args.base is None else f"{args.model} (PEFT adapter on {args.base})"
    adapter = {} if args.base is None else {"base": args.base}  # an adapter folder goes onto it
    import torch

    weights = {"dtype": torch.bfloat16} if args.precision == "bf16-true" else {}
    precision = _autocast(args.precision)
    backend = get_backend(
        args.backend, model=args.model, device=device, **adapter, **weights
    ).load()
    backend.lm.eval()
    probe_set = build_probe_set(
        backend,
        [str(f) for f in files],
        spec,
        descriptions=args.description,
        unconditional=args.unconditional,
        cache_dir=cache_dir,
        strict=args.strict,
        progress=not args.quiet,
    )
    result = score_probe_set(
        backend,
        probe_set,
        batch_size=args.batch_size,
        precision=precision,
        device=device,
        progress=not args.quiet,
        model_name=model_name,
    )
    try:
        written = save_result(result, out, figures=not args.no_figures)
    except OSError as err:
        raise NoiseProbeError(
            f"Could not write the results to --out '{out}': {err.strerror or err}."
            f" Nothing was changed in '{out}'; free space or choose another --out."
        ) from err
    print(
        format_summary(
            result.summary,
            title=f"noiseprobe: {len(probe_set)} clips x {len(probe_set.perturbations)} perturbations, model {model_name}",
        )
    )
    for s in result.skipped:
        print(f"skipped {s['path']}: {s['reason']}")
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def _check_base(args: argparse.Namespace) -> None:
    """``--base`` only goes with ``--backend transformers`` and a PEFT adapter folder as ``--model``."""
    if args.base is None:
        return
    from lightning_noiseprobe.backends.adapters import ADAPTER_CONFIG, is_adapter_folder

    if args.backend != "transformers":
        raise NoiseProbeError(
            f"Expected --base only with --backend transformers (PEFT adapters load onto a"
            f" transformers MusicGen) but --backend is {args.backend!r} and --base is {args.base!r}."
            " Add --backend transformers, or drop --base."
        )
    if not (os.path.isdir(args.model) and is_adapter_folder(args.model)):
        raise NoiseProbeError(
            f"Expected --model to be a PEFT adapter folder (holding {ADAPTER_CONFIG}) when --base"
            f" is given, but --model {args.model!r} is not one and --base is {args.base!r}. Drop"
            " --base to probe --model itself, or pass the adapter folder as --model."
        )


def format_summary(summary: dict[str, float], title: str = "") -> str:
    """A two-column text table of headline metrics."""
    from lightning_noiseprobe.probe.result import SUMMARY_METRICS

    lines = [title] if title else []
    for name in SUMMARY_METRICS:
        if name in summary:
            value = summary[name]
            text = f"{value: .0f}" if name.endswith("_empty") else f"{value: .4f}"  # counts
            lines.append(f"  {name:<20} {text}")
    return "\n".join(lines)
