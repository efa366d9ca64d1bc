"""The studies' data: the demo's rendered chorales, split once, and contaminated copies.

The clean chorales are rendered by the demo's datamodule
(:func:`lightning_noiseprobe.demo.chorale_datamodule`, cached in its folder) and
split once into train / validation / probe clips with the data seed, so every
run probes the same held-out clean chorales.

A contaminated copy of the train and validation clips at level ``p`` (seed
``s``) carries ``bursts`` white-noise bursts (:func:`~lightning_noiseprobe.perturbations.inject.inject_noise`,
replace mode, -30 dBFS) in ``round(p * n)`` of the ``n`` clips of each split.
The design is nested: with one seed, the clips contaminated at a lower level are
also contaminated, with the same bursts, at every higher level (the clips are
the first ones of one seeded permutation per split; the bursts of a clip are
seeded by the seed and the clip's name). Clean clips are hard links (or copies)
of the rendered files.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lightning_noiseprobe._errors import NoiseProbeError
from lightning_noiseprobe._hashing import derive_seed
from lightning_noiseprobe.study._common import (
    FRAME_RATE,
    check_out_dir,
    check_positive_numbers,
    check_probe_window,
)

__all__ = [
    "BURST_LEVEL_DBFS",
    "BURST_TOKENS",
    "FRAME_RATE",
    "CleanSplits",
    "burst_windows",
    "contaminated_names",
    "prepare_clean_splits",
    "write_contaminated",
]

#: Shortest and longest burst, in tokens (inclusive).
BURST_TOKENS = (50, 150)
#: RMS of each burst.
BURST_LEVEL_DBFS = -30.0
_MARKER = "contamination.json"
_VERSION = 1


@dataclass(frozen=True)
class CleanSplits:
    """The rendered chorales, split once: paths of the train, validation and probe clips."""

    root: str
    train: list[str]
    val: list[str]
    probe: list[str]
    segment_seconds: float


def prepare_clean_splits(
    root: str | os.PathLike[str],
    *,
    num_clips: int,
    probe_clips: int,
    val_clips: int,
    clip_seconds: float,
    batch_size: int,
    seed: int = 0,
) -> CleanSplits:
    """Render (or reuse) ``num_clips`` chorales in ``root`` with the demo's datamodule and split them.

    Raises:
        NoiseProbeError: if the split would leave fewer than two training clips.
    """
    from lightning_noiseprobe.demo import chorale_datamodule

    if num_clips - probe_clips - val_clips < 2:
        raise NoiseProbeError(
            f"Expected --clips ({num_clips}) to leave at least 2 training clips after --probe-clips"
            f" ({probe_clips}) and --val-clips ({val_clips}). Use more --clips."
        )
    data = chorale_datamodule(
        root,
        num_clips=num_clips,
        probe_clips=probe_clips,
        val_clips=val_clips,
        clip_seconds=clip_seconds,
        batch_size=batch_size,
        seed=seed,
    )
    if Path(root).exists() and not Path(root).is_dir():
        raise NoiseProbeError(
            f"Expected --data-dir to be a folder but '{root}' is a file. Choose another --data-dir."
        )
    try:
        data.prepare_data()
    except ValueError as err:  # the renderer's argument checks (e.g. more clips than chorales)
        raise NoiseProbeError(
            f"Could not render {num_clips} chorales of {clip_seconds:g} s into '{root}' (--clips,"
            f" --clip-seconds): {err}."
        ) from err
    splits = data.splits
    if len(splits.val) != val_clips or len(splits.probe) != probe_clips:
        raise NoiseProbeError(  # pragma: no cover - the fractions are exact multiples of 1 / num_clips
            f"Expected {val_clips} validation and {probe_clips} probe clips from '{root}' but got"
            f" {len(splits.val)} and {len(splits.probe)}."
        )
    return CleanSplits(
        root=str(root),
        train=[f.path for f in splits.train],
        val=[f.path for f in splits.val],
        probe=list(splits.probe),
        segment_seconds=data.segment_seconds,
    )


def start_study(
    name: str,
    plan: str,
    *,
    out: str | os.PathLike[str],
    data_dir: str | os.PathLike[str] | None,
    num_clips: int,
    probe_clips: int,
    val_clips: int,
    clip_seconds: float,
    batch_size: int,
    lr: float,
    onset: int,
    lengths: Sequence[int],
) -> tuple[Path, CleanSplits]:
    """What both studies do first: check the shared settings and the output folder, say
    what will run, and render (or reuse) the clean chorale splits (``DIR/chorales`` unless
    ``data_dir``). Returns the output folder and the splits."""
    check_positive_numbers(lr=lr, clip_seconds=clip_seconds)
    check_probe_window(onset, lengths, clip_seconds)
    folder = check_out_dir(out)
    chorales = Path(data_dir) if data_dir is not None else folder / "chorales"
    print(
        f"noiseprobe study {name}: {plan}; rendering {num_clips} Bach chorales into {chorales} ...",
        flush=True,
    )
    clean = prepare_clean_splits(
        chorales,
        num_clips=num_clips,
        probe_clips=probe_clips,
        val_clips=val_clips,
        clip_seconds=clip_seconds,
        batch_size=batch_size,
    )
    return folder, clean


def contaminated_names(names: Sequence[str], level: float, seed: int, split: str) -> list[str]:
    """The ``round(level * n)`` names (half up) of ``names`` that get bursts, in a nested, seeded order.

    >>> names = [f"c{i}" for i in range(8)]
    >>> low, high = contaminated_names(names, 0.25, 0, "train"), contaminated_names(names, 0.5, 0, "train")
    >>> len(low), len(high), set(low) <= set(high), contaminated_names(names, 0.0, 0, "train")
    (2, 4, True, [])
    """
    ordered = sorted(names)
    count = math.floor(level * len(ordered) + 0.5)
    order = np.random.default_rng(derive_seed(seed, "contamination", split)).permutation(
        len(ordered)
    )
    return [ordered[int(i)] for i in order[:count]]


def burst_windows(num_tokens: int, bursts: int, seed: int, name: str) -> list[tuple[int, int]]:
    """``bursts`` windows ``(onset, length)`` in tokens inside a clip of ``num_tokens`` tokens.

    Lengths are uniform in :data:`BURST_TOKENS` and onsets uniform over the
    places where the burst fits; windows may overlap. Seeded by ``(seed, name)``.

    >>> w = burst_windows(750, 3, 0, "a.wav")
    >>> len(w), all(50 <= n <= 150 and 0 <= o and o + n <= 750 for o, n in w), w == burst_windows(750, 3, 0, "a.wav")
    (3, True, True)
    """
    low, high = BURST_TOKENS
    if num_tokens < high:
        raise NoiseProbeError(
            f"Expected clips of at least {high} tokens ({high / FRAME_RATE:g} s) for the noise bursts"
            f" but '{name}' has {num_tokens}. Use a longer --clip-seconds."
        )
    rng = np.random.default_rng(derive_seed(seed, "bursts", name))
    windows = []
    for _ in range(bursts):
        length = int(rng.integers(low, high + 1))
        onset = int(rng.integers(0, num_tokens - length + 1))
        windows.append((onset, length))
    return windows


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.unlink(missing_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _contaminate_file(src: Path, dst: Path, bursts: int, seed: int) -> list[list[int]]:
    from lightning_noiseprobe.audio import load_audio, save_audio
    from lightning_noiseprobe.perturbations.inject import inject_noise

    wav, sr, info = load_audio(src, return_info=True)
    num_tokens = math.floor(wav.shape[-1] * FRAME_RATE / sr)
    windows = burst_windows(num_tokens, bursts, seed, src.name)
    for index, (onset, length) in enumerate(windows):
        wav = inject_noise(
            wav,
            sr,
            onset=onset,
            length=length,
            frame_rate=FRAME_RATE,
            unit="tokens",
            noise="white",
            level_dbfs=BURST_LEVEL_DBFS,
            mode="replace",
            seed=derive_seed(seed, "burst noise", src.name, index),
        )
    save_audio(dst, wav, sr, subtype=info.subtype)
    return [[onset, length] for onset, length in windows]


def write_contaminated(
    folder: str | os.PathLike[str],
    clean: CleanSplits,
    *,
    level: float,
    seed: int,
    bursts: int,
) -> dict[str, Any]:
    """Write ``folder/train`` and ``folder/val``: the clean clips with a fraction ``level`` contaminated.

    Each clip keeps its name and its ``.json`` sidecar (its description).
    Nothing is written when ``folder`` already holds the same copy (its
    ``contamination.json`` records the arguments and what was done), so
    copies are made once and reused across runs and invocations.

    Returns:
        The record of ``contamination.json``: the arguments and, per split,
        ``{clip name: [[onset, length], ...]}`` of the contaminated clips.

    Raises:
        NoiseProbeError: if ``folder`` exists, is not empty and was not written here.
    """
    from lightning_noiseprobe._io import atomic_write_json

    folder = Path(folder)
    params = {
        "version": _VERSION,
        "level": float(level),
        "seed": int(seed) if level > 0 else None,
        "bursts": int(bursts) if level > 0 else None,
        "burst_tokens": list(BURST_TOKENS),
        "level_dbfs": BURST_LEVEL_DBFS,
        "frame_rate": FRAME_RATE,
        "source": _dataset_params(clean.root),
        "train": [Path(p).name for p in clean.train],
        "val": [Path(p).name for p in clean.val],
    }
    marker = folder / _MARKER
    if marker.is_file():
        try:
            record = json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            record = None
        if (
            isinstance(record, dict)
            and record.get("params") == params
            and _complete(folder, params)
        ):
            return record
        shutil.rmtree(folder)  # ours (it holds our marker) but stale
    elif folder.exists() and any(folder.iterdir()):
        raise NoiseProbeError(
            f"Expected folder '{folder}' for contaminated chorales to be new or written by an earlier"
            " study, but it holds other files. Move them away or choose another --out."
        )
    contaminated: dict[str, dict[str, list[list[int]]]] = {}
    for split, paths in (("train", clean.train), ("val", clean.val)):
        out = folder / split
        out.mkdir(parents=True, exist_ok=True)
        chosen = set(contaminated_names([Path(p).name for p in paths], level, seed, split))
        contaminated[split] = {}
        for path in map(Path, paths):
            sidecar = path.with_suffix(".json")
            if sidecar.is_file():
                _link_or_copy(sidecar, out / sidecar.name)
            if path.name in chosen:
                contaminated[split][path.name] = _contaminate_file(
                    path, out / path.name, bursts, seed
                )
            else:
                _link_or_copy(path, out / path.name)
    record = {"params": params, "contaminated": contaminated}
    atomic_write_json(marker, record)
    return record


def _dataset_params(root: str) -> Any:
    """What the clean chorales were rendered with (their ``dataset.json``), to key the copies on."""
    try:
        return json.loads((Path(root) / "dataset.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _complete(folder: Path, params: Mapping[str, Any]) -> bool:
    return all(
        (folder / split / name).is_file() for split in ("train", "val") for name in params[split]
    )
