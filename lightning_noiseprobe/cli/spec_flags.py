"""The ``noiseprobe probe`` flags of :class:`~lightning_noiseprobe.probe.spec.ProbeSpec`, made
from its fields.

Each field of ``ProbeSpec`` is one flag: ``--kebab-case`` of its name unless :data:`SPEC_FLAGS`
names another (the flags that existed before this table keep their names), its type
parsed from the field's annotation, its default the field's default, its help from
:data:`SPEC_FLAGS`. A new spec field therefore needs one entry here and nothing else
in the CLI; :func:`add_spec_flags` refuses a field without one (and an entry without a
field), so the two cannot drift apart.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Callable, Iterable
from typing import Any

from lightning_noiseprobe._defaults import DEFAULT_ONSET
from lightning_noiseprobe.cli._common import (
    _finite_float,
    _int_list,
    _integer,
    _positive_int,
    _range,
    _str_list,
)
from lightning_noiseprobe.probe.spec import INJECT_AT

__all__ = ["SPEC_FLAGS", "SpecFlag", "add_spec_flags", "spec_flag", "spec_kwargs"]


@dataclasses.dataclass(frozen=True)
class SpecFlag:
    """How one ``ProbeSpec`` field appears on the command line.

    Attributes:
        help: the flag's help text.
        flag: the flag, default ``--`` + the field name in kebab case.
        parse: a value parser ``(flag) -> (text -> value)``; default from the field's type.
        choices: the accepted values of a text field.
        metavar: the value's name in ``--help``.
        negate: a ``True``-by-default switch whose flag sets the field to ``False``.
        group: flags of the same group are mutually exclusive.
    """

    help: str
    flag: str | None = None
    parse: Callable[[str], Callable[[str], Any]] | None = None
    choices: tuple[str, ...] | None = None
    metavar: str | None = None
    negate: bool = False
    group: str | None = None


def _lengths(flag: str) -> Callable[[str], tuple[int, ...]]:
    return _int_list(flag, allow_none=True)


#: One entry per ``ProbeSpec`` field, in the order of ``noiseprobe probe --help``.
SPEC_FLAGS: dict[str, SpecFlag] = {
    "onset": SpecFlag(f"injection onset token (default {DEFAULT_ONSET})", parse=_positive_int),
    "lengths": SpecFlag(
        "injection lengths in tokens (default 5,10,50,100,150,200; 'none' for no noise)",
        parse=_lengths,
    ),
    "noises": SpecFlag("noise colours, comma-separated (default white)", flag="--noise"),
    "level_dbfs": SpecFlag("noise RMS in dBFS, at most 0 (default -30)", group="level"),
    "level_db_rel": SpecFlag(
        "noise RMS in dB relative to each clip's RMS (instead of --level-dbfs)", group="level"
    ),
    "mode": SpecFlag(
        "replace the window (paper Eq. 2, default) or add noise to it",
        choices=("replace", "add"),
    ),
    "shuffle_segments": SpecFlag(
        "also shuffle segments of these token sizes (paper Sec. 5.1)", flag="--shuffle"
    ),
    "shuffle_length": SpecFlag(
        "window of --shuffle from the onset, in tokens (default 200)", parse=_positive_int
    ),
    "delete_lengths": SpecFlag(
        "also delete this many tokens at the onset, e.g. 50 (the clip gets shorter; the"
        " clean curve is compared on the same music: token t >= onset with clean t + N)",
        flag="--delete",
        metavar="LENGTHS",
    ),
    "reorder_lengths": SpecFlag(
        "also reorder windows of these token lengths from the onset, cut into segments"
        " of random lengths (--reorder-segment)",
        flag="--reorder",
        metavar="LENGTHS",
    ),
    "reorder_segment": SpecFlag(
        "segment lengths of --reorder, in tokens (default 5-50)", metavar="MIN-MAX"
    ),
    "bandstop_lengths": SpecFlag(
        "also delete the frequency band --band in windows of these token lengths",
        flag="--bandstop",
        metavar="LENGTHS",
    ),
    "bandstop_band": SpecFlag(
        "band of --bandstop in Hz (default 2000-20000, the authors'; cut at Nyquist)",
        flag="--band",
        metavar="LOW-HIGH",
    ),
    "inject_at": SpecFlag(
        "perturb each file at its own rate and channels, then convert to the model's"
        " (source, default: the paper's protocol), or convert first (model)",
        choices=INJECT_AT,
    ),
    "nested_noise": SpecFlag(
        "draw independent noise per length (default: one draw per clip, each shorter"
        " window is the start of the longest, as the authors)",
        flag="--independent-noise",
        negate=True,
    ),
    "clip_seconds": SpecFlag("crop clips to this duration (default 15)"),
    "seed": SpecFlag("base seed; each clip x perturbation derives its own (default 0)"),
    "smoothing": SpecFlag("moving-average and running-median window, odd (default 5)"),
    "margin": SpecFlag(
        "tokens after the window where Assimilation ends and Recovery starts, >= 0"
        " (default 5; default rule only)"
    ),
    "regions": SpecFlag(
        "region rule: this project's (default) or the paper authors' Fig. 4 code, exactly"
        " (Peak from onset-5, their baseline and boundaries; needs --onset >= 51)",
        choices=("default", "authors"),
    ),
}


def _fields() -> dict[str, dataclasses.Field[Any]]:
    from lightning_noiseprobe.probe.spec import ProbeSpec

    return {f.name: f for f in dataclasses.fields(ProbeSpec)}


def spec_flag(name: str) -> str:
    """The command-line flag of the ``ProbeSpec`` field ``name``."""
    return SPEC_FLAGS[name].flag or "--" + name.replace("_", "-")


def _parser_for(name: str, hint: Any, flag: str) -> Callable[[str], Any] | None:
    """The value parser of a field from its annotation (``int``, ``float``, ``float | None``,
    ``tuple[int, ...]``, ``tuple[str, ...]``, ``tuple[int, int]``, ``tuple[float, float]``)."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if hint in (int, float) or (len(args) == 1 and args[0] is float):
        return _integer(flag) if hint is int else _finite_float(flag)
    if hint is str:
        return None
    if typing.get_origin(hint) is tuple:
        if args[-1] is Ellipsis:
            return _int_list(flag) if args[0] is int else _str_list(flag)
        if len(args) == 2 and args[0] is args[1] and args[0] in (int, float):
            return _range(flag, integer=args[0] is int)
    raise TypeError(f"ProbeSpec field `{name}` has a type the CLI cannot parse: {hint!r}.")


def add_spec_flags(p: argparse.ArgumentParser, names: Iterable[str] | None = None) -> None:
    """Add the flags of ``names`` (default every ``ProbeSpec`` field) to ``p``; each value
    lands in ``args.<field name>``, with the field's default."""
    from lightning_noiseprobe.probe.spec import ProbeSpec

    fields = _fields()
    missing = sorted(set(fields) - set(SPEC_FLAGS))
    extra = sorted(set(SPEC_FLAGS) - set(fields))
    if missing or extra:
        raise TypeError(
            f"Expected one entry of cli.spec_flags.SPEC_FLAGS per ProbeSpec field but"
            f" {missing or 'none'} have none and {extra or 'none'} are not fields. Add or"
            " remove the entries."
        )
    if names is None:
        names = SPEC_FLAGS
    hints = typing.get_type_hints(ProbeSpec)
    groups: dict[str, Any] = {}
    for name in names:
        entry, field = SPEC_FLAGS[name], fields[name]
        flag = spec_flag(name)
        target: Any = p
        if entry.group is not None:
            if entry.group not in groups:
                groups[entry.group] = p.add_mutually_exclusive_group()
            target = groups[entry.group]
        if hints[name] is bool:
            action = "store_false" if entry.negate else "store_true"
            target.add_argument(
                flag, dest=name, action=action, default=field.default, help=entry.help
            )
            continue
        kwargs: dict[str, Any] = {"dest": name, "default": field.default, "help": entry.help}
        parse = entry.parse(flag) if entry.parse else _parser_for(name, hints[name], flag)
        if parse is not None:
            kwargs["type"] = parse
        if entry.choices is not None:
            kwargs["choices"] = entry.choices
        else:  # named after the flag, not the field: --noise NOISE
            kwargs["metavar"] = entry.metavar or flag[2:].replace("-", "_").upper()
        target.add_argument(flag, **kwargs)


def spec_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The ``ProbeSpec`` arguments of parsed ``args`` (every field, by name)."""
    return {name: getattr(args, name) for name in _fields()}
