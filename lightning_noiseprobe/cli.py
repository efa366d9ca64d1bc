"""The ``noiseprobe`` command line.

Sub-commands (each documented by ``noiseprobe <command> --help``):

* ``inject``   write a copy of an audio file with noise injected in a token window;
* ``shuffle``  write a copy with the segments of a window shuffled (paper Sec. 5.1);
* ``delete``   write a copy with a token window cut out (the authors' "remove 50 tokens at 5 s");
* ``reorder``  write a copy with a window cut into random-length segments, reordered;
* ``bandstop`` write a copy with a frequency band deleted inside a window;
* ``analyze``  detect the Peak / Assimilation / Recovery regions in two per-token loss CSVs;
* ``probe``    score a model on a noise-injected probe set and write metrics, curves and figures;
* ``demo``     the whole loop on the embedded tiny model and Bach chorales;
* ``study``    controlled experiments on the demo's setup (``contamination``, ``overfit``);
* ``fit`` / ``validate``  LightningCLI for fine-tuning with the callback.

Bad input ends with a one-line ``noiseprobe: error: ...`` message and exit status 2,
and leaves no partial output file behind. Outputs are checked before any work:
an output that is one of the command's inputs (the same file through a symlink,
``..`` or a hard link), or that cannot be written, is refused.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

from lightning_noiseprobe._errors import NoiseProbeError

__all__ = ["main"]

EXIT_USAGE = 2


# ----------------------------------------------------------------------------- helpers
class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``noiseprobe inject: error: ...`` and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _integer(name: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            return int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected an integer for {name} but got {text!r}"
            ) from None

    return parse


def _positive_int(name: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected an integer for {name} but got {text!r}"
            ) from None
        if value <= 0:
            raise argparse.ArgumentTypeError(
                f"expected a positive integer for {name} but got {value}"
            )
        return value

    return parse


def _finite_float(name: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a number for {name} but got {text!r}"
            ) from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(
                f"expected a finite number for {name} but got {text!r}"
            )
        return value

    return parse


def _range(name: str, integer: bool) -> Callable[[str], tuple[Any, Any]]:
    """Parse ``LOW-HIGH`` (two non-negative numbers, ``LOW < HIGH``; ``<=`` for integers)."""
    kind = "whole numbers" if integer else "numbers"

    def parse(text: str) -> tuple[Any, Any]:
        parts = text.split("-")
        try:
            if len(parts) != 2:
                raise ValueError
            values = [int(v) if integer else float(v) for v in parts]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected LOW-HIGH ({kind}) for {name} but got {text!r}"
            ) from None
        low, high = values
        ok = all(math.isfinite(v) for v in values) and (
            1 <= low <= high if integer else 0 <= low < high
        )
        if not ok:
            order = "1 <= LOW <= HIGH" if integer else "0 <= LOW < HIGH"
            raise argparse.ArgumentTypeError(f"expected {order} for {name} but got {text!r}")
        return low, high

    return parse


def _add_window_args(
    p: argparse.ArgumentParser, length_default: float = 100, seed: bool = True, unit: bool = True
) -> None:
    p.add_argument(
        "--onset",
        type=_finite_float("--onset"),
        default=250,
        help="window start (default 250 tokens = 5 s at 50 Hz)",
    )
    p.add_argument(
        "--length",
        type=_finite_float("--length"),
        default=length_default,
        help=f"window length (default {length_default:g})",
    )
    p.add_argument(
        "--frame-rate",
        type=_finite_float("--frame-rate"),
        default=50.0,
        help="token frame rate in Hz (default 50, MusicGen)",
    )
    if unit:
        p.add_argument(
            "--unit",
            choices=("tokens", "seconds"),
            default="tokens",
            help="unit of --onset/--length (default tokens)",
        )
    else:
        p.set_defaults(unit="tokens")
    if seed:
        p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


def _add_level_args(p: argparse.ArgumentParser) -> None:
    level = p.add_mutually_exclusive_group()
    level.add_argument(
        "--level-dbfs",
        type=_finite_float("--level-dbfs"),
        default=-30.0,
        help="noise RMS in dBFS, at most 0 (default -30)",
    )
    level.add_argument(
        "--level-db-rel",
        type=_finite_float("--level-db-rel"),
        default=None,
        help="noise RMS in dB relative to each clip's RMS (instead of --level-dbfs)",
    )


def _add_regions_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--regions",
        choices=("default", "authors"),
        default="default",
        help="region rule: this project's (default) or the paper authors' Fig. 4 code, exactly"
        " (Peak from onset-5, their baseline and boundaries; needs --onset >= 51)",
    )


def _check_regions_onset(args: argparse.Namespace) -> None:
    from lightning_noiseprobe.functional.curves import AUTHORS_MIN_ONSET

    if args.regions == "authors" and args.onset < AUTHORS_MIN_ONSET:
        raise NoiseProbeError(
            f"Expected --onset to be at least {AUTHORS_MIN_ONSET} tokens with --regions authors (their"
            f" baseline is the mean difference over the first onset - 50 tokens) but got {args.onset}."
        )


def _check_outputs(
    outputs: Sequence[tuple[str, str | os.PathLike[str]]],
    inputs: Sequence[tuple[str, str | os.PathLike[str]]],
) -> None:
    """Refuse an output that is one of the inputs (the same file by any path)."""
    from lightning_noiseprobe._io import same_file

    for out_flag, out_path in outputs:
        for in_flag, in_path in inputs:
            if same_file(out_path, in_path):
                raise NoiseProbeError(
                    f"Expected {out_flag} '{out_path}' to differ from {in_flag} '{in_path}' but both are"
                    f" '{os.path.realpath(in_path)}'; writing it would destroy the input. Choose another {out_flag}."
                )


def _require_writable(flag: str, path: str | os.PathLike[str], *, folder: bool) -> None:
    """Refuse, before any work, an output ``path`` that cannot be written."""
    from lightning_noiseprobe._io import writable_problem

    problem = writable_problem(path, folder=folder)
    if problem is not None:
        what = "folder" if folder else "file"
        raise NoiseProbeError(
            f"Expected {flag} '{path}' to be a {what} that can be written but {problem}. Choose another {flag}."
        )


@contextlib.contextmanager
def _flag_names(flags: Mapping[str, str]) -> Iterator[None]:
    """Re-raise the library's errors with the user's flag names (``--lengths``) in
    place of its argument names (```lengths```), so each rule is written once."""
    try:
        yield
    except NoiseProbeError as err:
        text = str(err)
        for name, flag in flags.items():
            text = re.sub(rf"(?:argument )?`{re.escape(name)}`", flag, text)
        raise NoiseProbeError(text) from err


_WINDOW_FLAGS = {
    "onset": "--onset",
    "length": "--length",
    "frame_rate": "--frame-rate",
    "unit": "--unit",
    "seed": "--seed",
    "noise": "--noise",
    "mode": "--mode",
    "level_dbfs": "--level-dbfs",
    "level_db_rel": "--level-db-rel",
    "segment": "--segment",
}


def _check_level(args: argparse.Namespace, clip: Any = None, path: str = "") -> None:
    """Refuse noise above full scale (an RMS above 0 dBFS) unless ``--allow-clipping``.

    ``--level-dbfs`` is checked as given; ``--level-db-rel`` once the ``clip`` is loaded.
    """
    if getattr(args, "allow_clipping", False):
        return
    hint = (
        " Pass --allow-clipping to write it clipped to full scale."
        if hasattr(args, "allow_clipping")
        else ""
    )
    if args.level_db_rel is None:
        if args.level_dbfs > 0:
            raise NoiseProbeError(
                f"Expected --level-dbfs to be at most 0 dBFS (full scale) but got {args.level_dbfs:g}.{hint}"
            )
    elif clip is not None:
        from lightning_noiseprobe.audio import rms_dbfs

        level = float(rms_dbfs(clip)) + args.level_db_rel
        if level > 0:
            raise NoiseProbeError(
                f"Expected --level-db-rel {args.level_db_rel:g} to keep the noise at most at 0 dBFS (full scale)"
                f" but it puts it at {level:+.1f} dBFS for '{path}'.{hint}"
            )


def _device(text: str | None) -> str:
    """The torch device for ``--device``: ``cpu``, ``cuda``, ``cuda:N`` (N < the devices
    present) or ``mps`` where available; default ``cuda`` if present, else ``cpu``."""
    import torch

    if text is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    match = re.fullmatch(r"(cpu|cuda|mps)(?::(\d+))?", text.strip())
    if match is None or (match[1] != "cuda" and match[2] not in (None, "0")):
        raise NoiseProbeError(f"Expected --device to be cpu, cuda or cuda:N but got {text!r}.")
    kind, index = match[1], match[2]
    if kind == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise NoiseProbeError(
                f"Expected a CUDA device for --device {text} but none is available. Use --device cpu."
            )
        if index is not None and int(index) >= count:
            raise NoiseProbeError(
                f"Expected --device cuda:N with N < {count} (the CUDA devices present) but got {text!r}."
            )
    if kind == "mps" and not torch.backends.mps.is_available():
        raise NoiseProbeError(
            f"Expected --device to be cpu, cuda or cuda:N but got {text!r} (MPS is not available here)."
        )
    return text.strip()


def _window_values(args: argparse.Namespace) -> tuple[int | float, int | float]:
    if args.unit == "tokens":
        for name in ("onset", "length"):
            value = getattr(args, name)
            if value != int(value):
                raise NoiseProbeError(
                    f"Expected argument `--{name}` to be a whole number of tokens but got {value}. Use --unit seconds for fractions."
                )
        return int(args.onset), int(args.length)
    return float(args.onset), float(args.length)


# ----------------------------------------------------------------------------- inject / shuffle
def _same_subtype(input_path: str, output_path: str, subtype: str | None) -> str | None:
    """Keep the input's sample format when the output has the same container."""
    if subtype and Path(input_path).suffix.lower() == Path(output_path).suffix.lower():
        return subtype
    return None


def _cmd_inject(args: argparse.Namespace) -> int:
    _check_outputs([("OUTPUT", args.output)], [("INPUT", args.input)])
    _require_writable("OUTPUT", args.output, folder=False)
    _check_level(args)

    import torch

    from lightning_noiseprobe.audio import load_audio, save_audio
    from lightning_noiseprobe.perturbations import inject_noise

    wav, sr, info = load_audio(args.input, return_info=True)
    _check_level(args, wav, args.input)
    onset, length = _window_values(args)
    with _flag_names(_WINDOW_FLAGS):
        out = inject_noise(
            wav,
            sr,
            onset=onset,
            length=length,
            frame_rate=args.frame_rate,
            unit=args.unit,
            noise=args.noise,
            level_dbfs=args.level_dbfs,
            level_db_rel=args.level_db_rel,
            mode=args.mode,
            seed=args.seed,
        )
    if args.allow_clipping:  # only the noise is clipped: samples it did not touch stay as they were
        out = torch.where(out != wav, out.clamp(-1.0, 1.0), out)
    save_audio(args.output, out, sr, subtype=_same_subtype(args.input, args.output, info.subtype))
    level = (
        f"{args.level_db_rel:+g} dB rel. to the clip"
        if args.level_db_rel is not None
        else f"{args.level_dbfs:g} dBFS"
    )
    print(
        f"wrote {args.output}: {args.noise} noise ({args.mode}, {level}) at onset {onset} for {length} {args.unit}, {sr} Hz, {wav.shape[0]} channel(s)"
    )
    return 0


def _cmd_shuffle(args: argparse.Namespace) -> int:
    _check_outputs([("OUTPUT", args.output)], [("INPUT", args.input)])
    _require_writable("OUTPUT", args.output, folder=False)

    from lightning_noiseprobe.audio import load_audio, save_audio
    from lightning_noiseprobe.perturbations import shuffle_segments

    if args.unit != "tokens":
        raise NoiseProbeError(
            "Expected --unit tokens for shuffle (segments are whole tokens) but got seconds."
        )
    wav, sr, info = load_audio(args.input, return_info=True)
    onset, length = _window_values(args)
    with _flag_names(_WINDOW_FLAGS):
        out, perm = shuffle_segments(
            wav,
            sr,
            onset=int(onset),
            length=int(length),
            segment=args.segment,
            frame_rate=args.frame_rate,
            seed=args.seed,
        )
    save_audio(args.output, out, sr, subtype=_same_subtype(args.input, args.output, info.subtype))
    print(
        f"wrote {args.output}: {len(perm)} segments of {args.segment} tokens shuffled as {list(map(int, perm))}"
    )
    return 0


def _cmd_delete(args: argparse.Namespace) -> int:
    _check_outputs([("OUTPUT", args.output)], [("INPUT", args.input)])
    _require_writable("OUTPUT", args.output, folder=False)

    from lightning_noiseprobe.audio import load_audio, save_audio
    from lightning_noiseprobe.perturbations import delete_window
    from lightning_noiseprobe.perturbations.inject import _window

    wav, sr, info = load_audio(args.input, return_info=True)
    onset, length = _window_values(args)
    with _flag_names(_WINDOW_FLAGS):
        start, end = _window(wav, sr, onset, length, args.frame_rate, args.unit)
        out = delete_window(
            wav, sr, onset=onset, length=length, frame_rate=args.frame_rate, unit=args.unit
        )
    save_audio(args.output, out, sr, subtype=_same_subtype(args.input, args.output, info.subtype))
    print(
        f"wrote {args.output}: removed samples [{start}, {end}) ({length} {args.unit} at onset {onset}),"
        f" {wav.shape[-1] / sr:.3f} s -> {out.shape[-1] / sr:.3f} s, {sr} Hz, {wav.shape[0]} channel(s)"
    )
    return 0


def _check_reorder_segments(length: int, low: int, high: int, flag: str) -> None:
    if length <= high:
        raise NoiseProbeError(
            f"Expected {flag} {length} tokens to be longer than the largest segment"
            f" (--reorder-segment {low}-{high}), so that the window holds 2 segments."
            " Use a longer window or shorter segments."
        )


def _cmd_reorder(args: argparse.Namespace) -> int:
    _check_outputs([("OUTPUT", args.output)], [("INPUT", args.input)])
    _require_writable("OUTPUT", args.output, folder=False)

    from lightning_noiseprobe.audio import load_audio, save_audio
    from lightning_noiseprobe.perturbations import reorder_segments

    onset, length = _window_values(args)
    low, high = args.reorder_segment
    _check_reorder_segments(int(length), low, high, "--length")
    wav, sr, info = load_audio(args.input, return_info=True)
    flags = {
        **_WINDOW_FLAGS,
        "min_segment": "--reorder-segment",
        "max_segment": "--reorder-segment",
    }
    with _flag_names(flags):
        out, sizes, perm = reorder_segments(
            wav,
            sr,
            onset=int(onset),
            length=int(length),
            min_segment=low,
            max_segment=high,
            frame_rate=args.frame_rate,
            seed=args.seed,
        )
    save_audio(args.output, out, sr, subtype=_same_subtype(args.input, args.output, info.subtype))
    print(
        f"wrote {args.output}: {len(sizes)} segments of {sizes} tokens reordered as {list(map(int, perm))}"
    )
    return 0


def _cmd_bandstop(args: argparse.Namespace) -> int:
    _check_outputs([("OUTPUT", args.output)], [("INPUT", args.input)])
    _require_writable("OUTPUT", args.output, folder=False)

    from lightning_noiseprobe.audio import load_audio, save_audio
    from lightning_noiseprobe.perturbations import bandstop_window

    low, high = args.band
    wav, sr, info = load_audio(args.input, return_info=True)
    if low >= sr / 2:
        raise NoiseProbeError(
            f"Expected --band to start below the Nyquist frequency {sr / 2:g} Hz of '{args.input}'"
            f" ({sr} Hz) but got {low:g}-{high:g}. Use a lower band."
        )
    onset, length = _window_values(args)
    with _flag_names({**_WINDOW_FLAGS, "low_hz": "--band", "high_hz": "--band"}):
        out = bandstop_window(
            wav,
            sr,
            onset=onset,
            length=length,
            low_hz=low,
            high_hz=high,
            frame_rate=args.frame_rate,
            unit=args.unit,
        )
    save_audio(args.output, out, sr, subtype=_same_subtype(args.input, args.output, info.subtype))
    print(
        f"wrote {args.output}: {low:g}-{min(high, sr / 2):g} Hz deleted at onset {onset} for {length} {args.unit},"
        f" {sr} Hz, {wav.shape[0]} channel(s)"
    )
    return 0


# ----------------------------------------------------------------------------- analyze
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


# ----------------------------------------------------------------------------- probe
def _items(name: str, text: str, what: str) -> list[str]:
    """The comma-separated items of ``text``; an empty item (``5,,10``) is an error."""
    items = [v.strip() for v in text.split(",")]
    if not all(items):
        raise argparse.ArgumentTypeError(
            f"expected comma-separated {what} for {name} but got {text!r}, which has an empty item"
        )
    return items


def _int_list(name: str, allow_none: bool = False) -> Callable[[str], tuple[int, ...]]:
    """Parse ``5,10,50`` (or ``none`` for an empty list where ``allow_none``); the values
    are checked by ``ProbeSpec`` (positive, distinct)."""

    def parse(text: str) -> tuple[int, ...]:
        if allow_none and text.strip().lower() == "none":
            return ()
        items = _items(name, text, "integers")
        try:
            return tuple(int(v) for v in items)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated integers for {name} but got {text!r}"
            ) from None

    return parse


def _str_list(name: str) -> Callable[[str], tuple[str, ...]]:
    def parse(text: str) -> tuple[str, ...]:
        return tuple(_items(name, text, "names"))

    return parse


def _add_probe_parser(sub: Any) -> None:
    from lightning_noiseprobe.backends.base import available_backends

    p = sub.add_parser(
        "probe",
        help="score a model on a noise-injected probe set",
        description="Score MODEL on clean clips and their noise-injected copies; write metrics.json, curves.npz and the paper's figures to OUT.",
    )
    p.add_argument(
        "--model",
        default="tiny",
        help="'tiny' (built offline), a local folder of weights, or a hub id (default tiny)",
    )
    p.add_argument(
        "--backend",
        choices=available_backends(),
        default="audiocraft",
        help="model library (default audiocraft)",
    )
    p.add_argument(
        "--audio", required=True, nargs="+", metavar="DIR_OR_FILE", help="audio folder(s) or files"
    )
    p.add_argument("--out", required=True, metavar="OUTDIR", help="output folder")
    p.add_argument(
        "--onset",
        type=_positive_int("--onset"),
        default=250,
        help="injection onset token (default 250)",
    )
    p.add_argument(
        "--lengths",
        type=_int_list("--lengths", allow_none=True),
        default=(5, 10, 50, 100, 150, 200),
        help="injection lengths in tokens (default 5,10,50,100,150,200; 'none' for no noise)",
    )
    p.add_argument(
        "--noise",
        type=_str_list("--noise"),
        default=("white",),
        help="noise colours, comma-separated (default white)",
    )
    _add_level_args(p)
    p.add_argument("--mode", choices=("replace", "add"), default="replace")
    p.add_argument(
        "--shuffle",
        type=_int_list("--shuffle"),
        default=(),
        help="also shuffle segments of these token sizes (paper Sec. 5.1)",
    )
    p.add_argument(
        "--delete",
        type=_int_list("--delete"),
        default=(),
        metavar="LENGTHS",
        help="also delete this many tokens at the onset, e.g. 50 (the clip gets shorter; the"
        " clean curve is compared on the same music: token t >= onset with clean t + N)",
    )
    p.add_argument(
        "--reorder",
        type=_int_list("--reorder"),
        default=(),
        metavar="LENGTHS",
        help="also reorder windows of these token lengths from the onset, cut into segments"
        " of random lengths (--reorder-segment)",
    )
    p.add_argument(
        "--reorder-segment",
        type=_range("--reorder-segment", integer=True),
        default=(5, 50),
        metavar="MIN-MAX",
        help="segment lengths of --reorder, in tokens (default 5-50)",
    )
    p.add_argument(
        "--bandstop",
        type=_int_list("--bandstop"),
        default=(),
        metavar="LENGTHS",
        help="also delete the frequency band --band in windows of these token lengths",
    )
    p.add_argument(
        "--band",
        type=_range("--band", integer=False),
        default=(2000.0, 20000.0),
        metavar="LOW-HIGH",
        help="band of --bandstop in Hz (default 2000-20000, the authors'; cut at Nyquist)",
    )
    p.add_argument(
        "--inject-at",
        choices=("source", "model"),
        default="source",
        help="perturb each file at its own rate and channels, then convert to the model's"
        " (source, default: the paper's protocol), or convert first (model)",
    )
    p.add_argument(
        "--independent-noise",
        action="store_true",
        help="draw independent noise per length (default: one draw per clip, each shorter"
        " window is the start of the longest, as the authors)",
    )
    p.add_argument(
        "--clip-seconds",
        type=_finite_float("--clip-seconds"),
        default=15.0,
        help="crop clips to this duration (default 15)",
    )
    p.add_argument("--batch-size", type=_positive_int("--batch-size"), default=8)
    p.add_argument("--precision", choices=("32", "bf16", "16"), default="32")
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
    p.add_argument("--seed", type=int, default=0)
    _add_regions_arg(p)
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
    p.set_defaults(func=_cmd_probe)


_PROBE_FLAGS = {
    "onset": "--onset",
    "lengths": "--lengths",
    "noises": "--noise",
    "level_dbfs": "--level-dbfs",
    "level_db_rel": "--level-db-rel",
    "mode": "--mode",
    "shuffle_segments": "--shuffle",
    "clip_seconds": "--clip-seconds",
    "seed": "--seed",
    "inject_at": "--inject-at",
    "delete_lengths": "--delete",
    "reorder_lengths": "--reorder",
    "reorder_segment": "--reorder-segment",
    "bandstop_lengths": "--bandstop",
    "bandstop_band": "--band",
}


def _cmd_probe(args: argparse.Namespace) -> int:
    from lightning_noiseprobe.probe import ProbeSpec, find_audio_files
    from lightning_noiseprobe.probe.result import OUTPUT_FILES

    # every check before any work: the spec, the device, the outputs, the inputs
    _check_regions_onset(args)
    if not (args.lengths or args.shuffle or args.delete or args.reorder or args.bandstop):
        raise NoiseProbeError(
            "Expected at least one perturbation but --lengths is none and none of --shuffle,"
            " --delete, --reorder, --bandstop is given."
        )
    for length in args.reorder:
        _check_reorder_segments(
            length, args.reorder_segment[0], args.reorder_segment[1], "--reorder"
        )
    with _flag_names(_PROBE_FLAGS):
        spec = ProbeSpec(
            onset=args.onset,
            lengths=args.lengths,
            noises=args.noise,
            level_dbfs=args.level_dbfs,
            level_db_rel=args.level_db_rel,
            mode=args.mode,
            shuffle_segments=args.shuffle,
            clip_seconds=args.clip_seconds,
            seed=args.seed,
            regions=args.regions,
            inject_at=args.inject_at,
            nested_noise=not args.independent_noise,
            delete_lengths=args.delete,
            reorder_lengths=args.reorder,
            reorder_segment=args.reorder_segment,
            bandstop_lengths=args.bandstop,
            bandstop_band=args.band,
        )
    _check_level(args)
    device = _device(args.device)
    out = Path(args.out)
    _require_writable("--out", out, folder=True)
    from lightning_noiseprobe.probe.probeset import default_cache_dir

    if args.cache_dir is not None and args.cache_dir.lower() == "none":
        cache_dir = None
    elif args.cache_dir:
        cache_dir = Path(args.cache_dir)
        _require_writable("--cache-dir", cache_dir, folder=True)
    else:
        cache_dir = default_cache_dir()
    files = find_audio_files(args.audio)
    inputs = [("--audio", str(f)) for f in files]
    if os.path.lexists(args.model):
        inputs.append(("--model", args.model))
    _check_outputs([("--out", out / name) for name in OUTPUT_FILES], inputs)

    from lightning_noiseprobe.backends.base import get_backend
    from lightning_noiseprobe.probe import build_probe_set, score_probe_set

    backend = get_backend(args.backend, model=args.model, device=device).load()
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
        precision=args.precision,
        device=device,
        progress=not args.quiet,
        model_name=args.model,
    )
    try:
        written = result.save(out, figures=not args.no_figures)
    except OSError as err:
        raise NoiseProbeError(
            f"Could not write the results to --out '{out}': {err.strerror or err}."
            f" Nothing was changed in '{out}'; free space or choose another --out."
        ) from err
    print(
        format_summary(
            result.summary,
            title=f"noiseprobe: {len(probe_set)} clips x {len(probe_set.perturbations)} perturbations, model {args.model}",
        )
    )
    for s in result.skipped:
        print(f"skipped {s['path']}: {s['reason']}")
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


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


# ----------------------------------------------------------------------------- demo
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


# ----------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    """The ``noiseprobe`` argument parser (sub-commands registered here)."""
    from lightning_noiseprobe.perturbations.noise import NOISE_COLORS

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
    from lightning_noiseprobe.study.command import add_study_parser

    add_study_parser(sub)

    p = sub.add_parser(
        "inject",
        help="inject noise into an audio file",
        description="Write INPUT with the samples of a window replaced by (or mixed with) noise.",
    )
    p.add_argument(
        "input",
        metavar="INPUT",
        help="audio file (wav, flac, ogg, mp3; any rate and channel count)",
    )
    p.add_argument("output", metavar="OUTPUT", help="output audio file, format from its extension")
    _add_window_args(p)
    p.add_argument(
        "--noise", choices=NOISE_COLORS, default="white", help="noise colour (default white)"
    )
    _add_level_args(p)
    p.add_argument(
        "--mode",
        choices=("replace", "add"),
        default="replace",
        help="replace the window (paper Eq. 2, default) or add noise to it",
    )
    p.add_argument(
        "--allow-clipping",
        action="store_true",
        help="accept a noise level above 0 dBFS; the noisy samples are clipped to [-1, 1]",
    )
    p.set_defaults(func=_cmd_inject)

    p = sub.add_parser(
        "shuffle",
        help="shuffle the order of segments in a window",
        description="Write INPUT with the segments of a token window permuted (paper Sec. 5.1).",
    )
    p.add_argument("input", metavar="INPUT")
    p.add_argument("output", metavar="OUTPUT")
    _add_window_args(p)
    p.add_argument(
        "--segment",
        type=_positive_int("--segment"),
        default=10,
        help="segment length in tokens (default 10)",
    )
    p.set_defaults(func=_cmd_shuffle)

    p = sub.add_parser(
        "delete",
        help="cut a token window out of an audio file",
        description="Write INPUT without the samples of a window: the clip gets shorter by the"
        " window (the authors' 'remove 50 tokens at 5 s', cut from the waveform).",
    )
    p.add_argument("input", metavar="INPUT")
    p.add_argument("output", metavar="OUTPUT")
    _add_window_args(p, length_default=50, seed=False)
    p.set_defaults(func=_cmd_delete)

    p = sub.add_parser(
        "reorder",
        help="reorder random-length segments of a window",
        description="Write INPUT with a token window cut into segments of random lengths"
        " (--reorder-segment) put in a random order.",
    )
    p.add_argument("input", metavar="INPUT")
    p.add_argument("output", metavar="OUTPUT")
    _add_window_args(p, length_default=200, unit=False)
    p.add_argument(
        "--reorder-segment",
        type=_range("--reorder-segment", integer=True),
        default=(5, 50),
        metavar="MIN-MAX",
        help="segment lengths in tokens (default 5-50)",
    )
    p.set_defaults(func=_cmd_reorder)

    p = sub.add_parser(
        "bandstop",
        help="delete a frequency band inside a window",
        description="Write INPUT with the frequencies --band removed from the samples of a window"
        " (one FFT over the window, band bins zeroed, as the authors' frequency deletion).",
    )
    p.add_argument("input", metavar="INPUT")
    p.add_argument("output", metavar="OUTPUT")
    _add_window_args(p, length_default=100, seed=False)
    p.add_argument(
        "--band",
        type=_range("--band", integer=False),
        default=(2000.0, 20000.0),
        metavar="LOW-HIGH",
        help="band in Hz (default 2000-20000; cut at the Nyquist frequency)",
    )
    p.set_defaults(func=_cmd_bandstop)

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
    p.add_argument("--onset", type=int, default=250, help="injection onset token (default 250)")
    p.add_argument(
        "--length",
        type=_positive_int("--length"),
        default=100,
        help="injection length in tokens (default 100)",
    )
    p.add_argument(
        "--smoothing",
        type=_integer("--smoothing"),
        default=5,
        help="moving-average and running-median window, odd (default 5)",
    )
    p.add_argument(
        "--margin",
        type=_integer("--margin"),
        default=5,
        help="tokens after the window where Assimilation ends and Recovery starts, >= 0 (default 5; default rule only)",
    )
    _add_regions_arg(p)
    p.add_argument("--json", metavar="OUT", help="also write the result to this JSON file")
    p.set_defaults(func=_cmd_analyze)

    _add_probe_parser(sub)
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
