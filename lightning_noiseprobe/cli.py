"""The ``noiseprobe`` command line.

Sub-commands (each documented by ``noiseprobe <command> --help``):

* ``inject``   write a copy of an audio file with noise injected in a token window;
* ``shuffle``  write a copy with the segments of a window shuffled (paper Sec. 5.1);
* ``analyze``  detect the Peak / Assimilation / Recovery regions in two per-token loss CSVs;
* ``probe``    score a model on a noise-injected probe set and write metrics, curves and figures;
* ``demo``     the whole loop on the embedded tiny model and Bach chorales;
* ``study``    controlled experiments on the demo's setup (``contamination``, ``overfit``);
* ``fit`` / ``validate``  LightningCLI for fine-tuning with the callback.

Bad input ends with a one-line ``noiseprobe: error: ...`` message and exit status 2,
and leaves no partial output file behind.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from lightning_noiseprobe._errors import NoiseProbeError

__all__ = ["main"]

EXIT_USAGE = 2

_INDEX_COLUMNS = {
    "",
    "index",
    "idx",
    "token",
    "tokens",
    "t",
    "frame",
    "frames",
    "step",
    "position",
    "unnamed: 0",
}


# ----------------------------------------------------------------------------- helpers
class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``noiseprobe inject: error: ...`` and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


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


def _add_window_args(p: argparse.ArgumentParser, length_default: float = 100) -> None:
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
    p.add_argument(
        "--unit",
        choices=("tokens", "seconds"),
        default="tokens",
        help="unit of --onset/--length (default tokens)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


def _add_level_args(p: argparse.ArgumentParser) -> None:
    level = p.add_mutually_exclusive_group()
    level.add_argument(
        "--level-dbfs",
        type=_finite_float("--level-dbfs"),
        default=-30.0,
        help="noise RMS in dBFS (default -30)",
    )
    level.add_argument(
        "--level-db-rel",
        type=_finite_float("--level-db-rel"),
        default=None,
        help="noise RMS in dB relative to each clip's RMS (instead of --level-dbfs)",
    )


def _check_output(input_path: str, output_path: str) -> None:
    if Path(input_path).resolve() == Path(output_path).resolve():
        raise NoiseProbeError(
            f"Expected OUTPUT to differ from INPUT but both are '{output_path}'. Choose another OUTPUT path."
        )


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
    from lightning_noiseprobe.audio import load_audio, save_audio
    from lightning_noiseprobe.perturbations import inject_noise

    _check_output(args.input, args.output)
    wav, sr, info = load_audio(args.input, return_info=True)
    onset, length = _window_values(args)
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
    from lightning_noiseprobe.audio import load_audio, save_audio
    from lightning_noiseprobe.perturbations import shuffle_segments

    _check_output(args.input, args.output)
    if args.unit != "tokens":
        raise NoiseProbeError(
            "Expected --unit tokens for shuffle (segments are whole tokens) but got seconds."
        )
    wav, sr, info = load_audio(args.input, return_info=True)
    onset, length = _window_values(args)
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


# ----------------------------------------------------------------------------- analyze
def read_loss_csv(path: str) -> list[float]:
    """Per-token losses from a CSV with a header and one row per token.

    Uses the ``loss`` column if present, otherwise the mean of the numeric
    columns other than an index column (``index``, ``token``, ``t``, ``frame``, ...).
    """
    p = Path(path)
    if not p.is_file():
        raise NoiseProbeError(f"Could not read CSV file '{path}': no such file.")
    try:
        with p.open(newline="") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise NoiseProbeError(f"Could not read CSV file '{path}': {err}.") from None
    rows = [r for r in rows if any(cell.strip() for cell in r)]
    if len(rows) < 2:
        raise NoiseProbeError(
            f"Expected CSV file '{path}' to have a header and at least one row but got {len(rows)} line(s)."
        )
    header = [h.strip() for h in rows[0]]
    body = rows[1:]
    lower = [h.lower() for h in header]
    if "loss" in lower:
        columns = [lower.index("loss")]
    else:
        columns = [i for i, h in enumerate(lower) if h not in _INDEX_COLUMNS]
    if not columns:
        raise NoiseProbeError(
            f"Expected CSV file '{path}' to have a `loss` column or numeric loss columns but got only {header}."
        )
    values: list[float] = []
    for line_no, row in enumerate(body, start=2):
        try:
            cells = [float(row[i]) for i in columns]
        except (ValueError, IndexError):
            raise NoiseProbeError(
                f"Expected numeric values in columns {[header[i] for i in columns]} of '{path}' line {line_no} but got {row}."
            ) from None
        value = sum(cells) / len(cells)
        if not math.isfinite(value):
            raise NoiseProbeError(
                f"Expected finite losses in '{path}' but line {line_no} holds {row}."
            )
        values.append(value)
    return values


def _cmd_analyze(args: argparse.Namespace) -> int:
    import torch

    from lightning_noiseprobe._io import atomic_write_json
    from lightning_noiseprobe.functional.curves import analyze_curves

    clean = read_loss_csv(args.clean)
    perturbed = read_loss_csv(args.perturbed)
    if len(clean) != len(perturbed):
        raise NoiseProbeError(
            f"Expected --clean '{args.clean}' and --perturbed '{args.perturbed}' to have the same number of tokens"
            f" but got {len(clean)} and {len(perturbed)}."
        )
    if args.onset + args.length > len(clean):
        raise NoiseProbeError(
            f"Expected the window onset {args.onset} + length {args.length} inside the {len(clean)} tokens of '{args.clean}'."
        )
    result = analyze_curves(
        torch.tensor(clean, dtype=torch.float64).float(),
        torch.tensor(perturbed, dtype=torch.float64).float(),
        args.onset,
        args.length,
        smoothing=args.smoothing,
        margin=args.margin,
    )
    record = result.to_records()[0]
    out: dict[str, Any] = {"onset": args.onset, "length": args.length, **record}
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        atomic_write_json(args.json, out)
    return 0


# ----------------------------------------------------------------------------- probe
def _int_list(name: str) -> Callable[[str], tuple[int, ...]]:
    def parse(text: str) -> tuple[int, ...]:
        try:
            values = tuple(int(v) for v in text.split(",") if v.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated integers for {name} but got {text!r}"
            ) from None
        if not values or any(v <= 0 for v in values):
            raise argparse.ArgumentTypeError(
                f"expected positive integers for {name} but got {text!r}"
            )
        return values

    return parse


def _str_list(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


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
        type=_int_list("--lengths"),
        default=(5, 10, 50, 100, 150, 200),
        help="injection lengths in tokens (default 5,10,50,100,150,200)",
    )
    p.add_argument(
        "--noise",
        type=_str_list,
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
        "--clip-seconds",
        type=_finite_float("--clip-seconds"),
        default=15.0,
        help="crop clips to this duration (default 15)",
    )
    p.add_argument("--batch-size", type=_positive_int("--batch-size"), default=8)
    p.add_argument("--precision", choices=("32", "bf16", "16"), default="32")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument(
        "--description",
        default=None,
        help="text condition for every clip (default: .json sidecars, else unconditional)",
    )
    p.add_argument("--seed", type=int, default=0)
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


def _cmd_probe(args: argparse.Namespace) -> int:
    import torch

    from lightning_noiseprobe.backends.base import get_backend
    from lightning_noiseprobe.probe import ProbeSpec, build_probe_set, score_probe_set

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
    )
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise NoiseProbeError(
            f"Expected a CUDA device for --device {device} but none is available. Use --device cpu."
        )
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise NoiseProbeError(f"Expected --out to be a folder but '{out}' is a file.")
    from lightning_noiseprobe.probe.probeset import default_cache_dir

    if args.cache_dir is not None and args.cache_dir.lower() == "none":
        cache_dir = None
    else:
        cache_dir = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    backend = get_backend(args.backend, model=args.model, device=device).load()
    backend.lm.eval()
    probe_set = build_probe_set(
        backend,
        args.audio,
        spec,
        descriptions=args.description,
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
    written = result.save(out, figures=not args.no_figures)
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
            lines.append(f"  {name:<20} {summary[name]: .4f}")
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
        "analyze",
        help="detect regions in per-token loss CSVs",
        description="Compare clean and perturbed per-token loss curves (CSV, header + one row per token).",
    )
    p.add_argument("--clean", required=True, metavar="CLEAN.csv")
    p.add_argument("--perturbed", required=True, metavar="PERTURBED.csv")
    p.add_argument("--onset", type=int, default=250, help="injection onset token (default 250)")
    p.add_argument(
        "--length",
        type=_positive_int("--length"),
        default=100,
        help="injection length in tokens (default 100)",
    )
    p.add_argument(
        "--smoothing",
        type=_positive_int("--smoothing"),
        default=5,
        help="moving-average window (default 5)",
    )
    p.add_argument(
        "--margin",
        type=int,
        default=5,
        help="tokens after the window within which Peak/Assimilation end (default 5)",
    )
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
