"""What both studies share: argument checks, reuse of finished runs, progress bars, machine info."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning_noiseprobe._errors import NoiseProbeError

__all__ = [
    "check_out_dir",
    "check_positive_ints",
    "check_positive_numbers",
    "check_probe_window",
    "machine_info",
    "progress_bars",
    "reusable_record",
]


def check_positive_ints(**values: Any) -> None:
    """Refuse any value that is not a positive integer; keys are the flag names (``train_clips`` -> ``--train-clips``)."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            flag = "--" + name.replace("_", "-")
            raise NoiseProbeError(f"Expected {flag} to be a positive integer but got {value!r}.")


def check_positive_numbers(**values: Any) -> None:
    """Refuse any value that is not a finite number > 0; keys are the flag names."""
    for name, value in values.items():
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not (ok and math.isfinite(value) and value > 0):
            flag = "--" + name.replace("_", "-")
            raise NoiseProbeError(f"Expected {flag} to be a positive number but got {value!r}.")


#: Token rate of MusicGen's codec and the tiny model's (the bursts and probe windows are placed at it).
FRAME_RATE = 50.0


def check_probe_window(onset: int, lengths: Sequence[int], clip_seconds: float) -> None:
    """Refuse probe injections that end past the clip (the probe would skip every clip)."""
    tokens = math.floor(clip_seconds * FRAME_RATE)
    if onset + max(lengths) > tokens:
        raise NoiseProbeError(
            f"Expected --onset ({onset}) + the longest of --lengths ({max(lengths)}) to fit in the"
            f" {tokens} tokens of a {clip_seconds:g} s clip (--clip-seconds). Lower them or use longer clips."
        )


def check_out_dir(out: str | os.PathLike[str]) -> Path:
    """``out`` as a path; refused when it is an existing file."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise NoiseProbeError(
            f"Expected --out to be a folder but '{path}' is a file. Choose another --out."
        )
    return path


def machine_info() -> dict[str, Any]:
    """Where the numbers came from: platform, processor, cores, torch threads and version."""
    import platform

    import torch

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def reusable_record(
    path: Path, config: dict[str, Any], level: float, seed: int
) -> dict[str, Any] | None:
    """The record of an earlier run with the same settings, level and seed, else ``None``."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    same = (
        isinstance(record, dict)
        and record.get("config") == config
        and record.get("level") == level
        and record.get("seed") == seed
    )
    return record if same else None


def progress_bars(runs: int, epochs: int, enabled: bool) -> tuple[Any, Any]:
    """A bar over runs and one over the epochs of the current run (tqdm, on stderr)."""
    from tqdm.auto import tqdm

    bar = tqdm(total=runs, desc="runs", unit="run", disable=not enabled)
    epoch_bar = tqdm(total=epochs, desc="epochs", unit="epoch", leave=False, disable=not enabled)
    return bar, epoch_bar
