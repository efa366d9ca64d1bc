"""What the ``noiseprobe`` sub-commands share: the one-line-error parser, value parsers
(``--flag`` named in every message), output checks, window and level flags, the device."""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NoReturn

from lightning_noiseprobe._defaults import DEFAULT_ONSET
from lightning_noiseprobe._errors import NoiseProbeError

EXIT_USAGE = 2


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
        default=DEFAULT_ONSET,
        help=f"window start (default {DEFAULT_ONSET} tokens = {DEFAULT_ONSET / 50:g} s at 50 Hz)",
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
