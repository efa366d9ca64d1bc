"""``noiseprobe inject``, ``shuffle``, ``delete``, ``reorder`` and ``bandstop``: write a
perturbed copy of one audio file."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from lightning_noiseprobe._errors import NoiseProbeError
from lightning_noiseprobe.cli._common import (
    _WINDOW_FLAGS,
    _add_window_args,
    _check_level,
    _check_outputs,
    _flag_names,
    _positive_int,
    _range,
    _require_writable,
    _window_values,
)
from lightning_noiseprobe.cli.spec_flags import add_spec_flags

__all__ = ["add_audio_parsers", "check_reorder_segments"]


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


def check_reorder_segments(length: int, low: int, high: int, flag: str) -> None:
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
    check_reorder_segments(int(length), low, high, "--length")
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


def add_audio_parsers(sub: Any) -> None:
    """Add ``inject``, ``shuffle``, ``delete``, ``reorder`` and ``bandstop`` to ``sub``."""
    from lightning_noiseprobe.perturbations.noise import NOISE_COLORS

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
    add_spec_flags(p, ("level_dbfs", "level_db_rel", "mode"))  # as the probe's
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
