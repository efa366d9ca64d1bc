"""Reading per-token loss curves from CSV files (``noiseprobe analyze``).

A column is never taken as a loss just because it is numeric. The rules, in order:

1. **Header or not.** The first row is a header unless every non-empty cell of it
   parses as a number, so a header-less file keeps its first value.
2. **Header-less files**: one column (one loss per line) or one row (one loss per
   cell) is the curve; with several columns and rows, choose one with ``--column N``
   (1-based).
3. **With a header**: ``--column NAME`` wins (several comma-separated names are
   averaged per row, e.g. per-codebook losses); else a column named ``loss``, then
   ``avg_loss_value`` (the authors' format ``token_position,avg_loss_value``); else the
   only numeric column that is not an index. Index columns are ``token_position``,
   ``index``, ``token``, ``t``, ``frame``, ``step``, ``position``, ... and any column
   whose name contains ``pos``, ``index``, ``idx``, ``token``, ``step`` or ``frame``
   and whose values are strictly increasing integers.
4. Anything else (no candidate, or several) is refused with the columns found and
   how to choose.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

from lightning_noiseprobe._errors import NoiseProbeError

__all__ = ["INDEX_COLUMNS", "LOSS_COLUMNS", "read_loss_csv"]

#: Column names that are always an index, never a loss (compared lower-case).
INDEX_COLUMNS = frozenset(
    {
        "",
        "index",
        "idx",
        "token",
        "tokens",
        "t",
        "frame",
        "frames",
        "step",
        "steps",
        "position",
        "pos",
        "token_position",
        "token_index",
        "token_idx",
        "frame_index",
        "unnamed: 0",
    }
)
#: Loss column names, by preference (compared lower-case).
LOSS_COLUMNS = ("loss", "avg_loss_value")
#: A column whose name contains one of these is an index when its values are strictly
#: increasing integers.
_POSITION_WORDS = ("pos", "index", "idx", "token", "step", "frame")


def _number(cell: str) -> float | None:
    try:
        return float(cell)
    except ValueError:
        return None


def _read_rows(path: str) -> list[tuple[int, list[str]]]:
    """Non-blank rows with their line numbers, trailing empty cells dropped."""
    p = Path(path)
    if not p.exists():
        raise NoiseProbeError(f"Could not read CSV file '{path}': no such file.")
    if p.is_dir():
        raise NoiseProbeError(f"Could not read CSV file '{path}': it is a folder, not a file.")
    if not p.is_file():
        raise NoiseProbeError(f"Could not read CSV file '{path}': not a regular file.")
    rows: list[tuple[int, list[str]]] = []
    try:
        with p.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            for row in reader:
                cells = [c.strip() for c in row]
                while cells and not cells[-1]:
                    cells.pop()
                if cells:
                    rows.append((reader.line_num, cells))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise NoiseProbeError(f"Could not read CSV file '{path}': {err}.") from None
    if not rows:
        raise NoiseProbeError(f"Expected per-token losses in CSV file '{path}' but it is empty.")
    return rows


def _is_increasing_int(values: Sequence[str]) -> bool:
    prev = -math.inf
    for cell in values:
        x = _number(cell)
        if x is None or not x.is_integer() or x <= prev:
            return False
        prev = x
    return True


def _describe(header: list[str] | None, cols: Sequence[int], tags: dict[int, str]) -> str:
    parts = []
    for i in cols:
        name = f"'{header[i]}'" if header is not None else f"column {i + 1}"
        parts.append(f"{name} ({tags[i]})" if i in tags else name)
    return ", ".join(parts)


def _choose(path: str, header: list[str] | None, ncols: int, column: str) -> list[int]:
    """Column indices named by ``--column`` (names, or 1-based numbers)."""
    lower = [h.lower() for h in header] if header is not None else []
    chosen: list[int] = []
    for part in (s.strip() for s in column.split(",")):
        if part.lower() in lower:
            chosen.append(lower.index(part.lower()))
        elif part.isdigit() and 1 <= int(part) <= ncols:
            chosen.append(int(part) - 1)
        else:
            found = (
                f"its columns are {_describe(header, range(ncols), {})}"
                if header is not None
                else f"it has no header row and {ncols} column(s) (choose them by number, 1-{ncols})"
            )
            raise NoiseProbeError(
                f"Expected --column {column!r} to name columns of CSV file '{path}' but {found}."
            )
    return chosen


def _auto_columns(path: str, header: list[str], body: list[tuple[int, list[str]]]) -> list[int]:
    """The loss column of a file with a header, by the rules in the module docstring."""
    lower = [h.lower() for h in header]
    for name in LOSS_COLUMNS:
        if name in lower:
            return [lower.index(name)]
    columns = [[row[i] if i < len(row) else "" for _, row in body] for i in range(len(header))]
    tags: dict[int, str] = {}
    for i, name in enumerate(lower):
        if name in INDEX_COLUMNS or (
            any(w in name for w in _POSITION_WORDS) and _is_increasing_int(columns[i])
        ):
            tags[i] = "index"
        elif any(_number(c) is None for c in columns[i]):
            tags[i] = "not numeric"
    candidates = [i for i in range(len(header)) if i not in tags]
    if len(candidates) == 1:
        return candidates
    found = _describe(header, range(len(header)), tags)
    how = (
        "Name the loss column `loss` or `avg_loss_value`, or choose with --column NAME"
        " (several comma-separated names are averaged per row)."
    )
    if not candidates:
        raise NoiseProbeError(
            f"Expected a numeric loss column in CSV file '{path}' but found only {found}. {how}"
        )
    raise NoiseProbeError(
        f"Expected one loss column in CSV file '{path}' but several could be: {found}. {how}"
    )


def read_loss_csv(path: str, column: str | None = None) -> list[float]:
    """Per-token losses from a CSV file (rules in the module docstring).

    Args:
        path: the CSV file.
        column: ``--column``: a column name or 1-based number, or several
            comma-separated (averaged per row); ``None`` chooses by the rules.

    Returns:
        One finite loss per token.

    Raises:
        NoiseProbeError: unreadable or empty file, no or several loss columns,
            non-numeric or non-finite values (naming the file, line and columns).

    Example:
        >>> import tempfile, pathlib
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "clean.csv"
        >>> _ = f.write_text("token_position,avg_loss_value\\n0,6.5\\n1,5.5\\n")
        >>> read_loss_csv(str(f))
        [6.5, 5.5]
        >>> _ = f.write_text("6.5\\n5.5\\n")
        >>> read_loss_csv(str(f))
        [6.5, 5.5]
    """
    rows = _read_rows(path)
    first = rows[0][1]
    has_header = any(_number(c) is None for c in first if c)
    header = first if has_header else None
    body = rows[1:] if has_header else rows
    if not body:
        raise NoiseProbeError(
            f"Expected CSV file '{path}' to have rows of losses under its header but it has none."
        )
    ncols = len(header) if header is not None else max(len(r) for _, r in body)
    if column is not None:
        columns = _choose(path, header, ncols, column)
    elif header is not None:
        columns = _auto_columns(path, header, body)
    elif ncols == 1:
        columns = [0]
    elif len(body) == 1:  # one row of numbers: one loss per cell
        line_no, row = body[0]
        body = [(line_no, [c]) for c in row]
        columns = [0]
    else:
        raise NoiseProbeError(
            f"Expected one column of losses in CSV file '{path}' but it has no header row and"
            f" {ncols} columns. Choose one with --column N (1-{ncols}), or add a header naming"
            " the loss column `loss`."
        )
    names = [header[i] if header is not None else f"column {i + 1}" for i in columns]
    values: list[float] = []
    for line_no, row in body:
        cells = [_number(row[i]) if i < len(row) else None for i in columns]
        if any(c is None for c in cells):
            raise NoiseProbeError(
                f"Expected numeric values in {names} of CSV file '{path}' line {line_no} but got {row}."
            )
        value = sum(c for c in cells if c is not None) / len(cells)
        if not math.isfinite(value):
            raise NoiseProbeError(
                f"Expected finite losses in CSV file '{path}' but line {line_no} holds {row}."
            )
        values.append(value)
    return values
