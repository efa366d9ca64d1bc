"""Fixed-length training segments from audio files: scanning, sampler, dataset, collate.

:func:`scan_audio_files` finds the usable files of a folder from their headers,
:class:`AudioSegmentDataset` cuts segments of ``S = round(segment_seconds *
sample_rate)`` samples from them, converted to one rate and channel count, and
:func:`collate_segments` makes batches ``{"wav": [B, C, S], "description":
list[str | None], "path": list[str]}``. The Lightning data modules of
:mod:`~lightning_noiseprobe.data.datamodule` are built on them.

Randomness never comes from a global RNG: training offsets are drawn from a
generator seeded with ``(seed, epoch, index)``, and the epoch travels inside the
index yielded by :class:`EpochSampler` (``epoch * N + i``), so the same seed gives
the same batches with any ``num_workers`` and with persistent workers.
"""

from __future__ import annotations

import json
import math
import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler

from lightning_noiseprobe._errors import NoiseProbeError

__all__ = [
    "AudioFile",
    "AudioSegmentDataset",
    "EpochSampler",
    "collate_segments",
    "read_manifest",
    "scan_audio_files",
]

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class AudioFile:
    """One usable audio file, as found by :func:`scan_audio_files`.

    Attributes:
        path: The file, as found under its folder.
        description: Its text description (``None``: unconditional).
        sample_rate: Its own sample rate.
        num_channels: Its own channel count.
        num_frames: Its length in samples at its own rate.
        num_samples: Its expected length at the target rate,
            ``ceil(num_frames * target_rate / sample_rate)``.
    """

    path: str
    description: str | None
    sample_rate: int
    num_channels: int
    num_frames: int
    num_samples: int


# --------------------------------------------------------------------------- scanning


def _file_info(path: Path) -> tuple[int, int, int]:
    """``(sample_rate, channels, frames)`` from the header, else from a full decode."""
    import soundfile as sf

    try:
        info = sf.info(str(path))
        if info.samplerate > 0 and info.channels > 0 and info.frames > 0:
            return int(info.samplerate), int(info.channels), int(info.frames)
    except Exception:  # not readable by libsndfile: let the full reader decide (PyAV, ...)
        pass
    from lightning_noiseprobe.audio import load_audio

    _, sr, info2 = load_audio(path, return_info=True)  # raises NoiseProbeError when unreadable
    return int(sr), int(info2.num_channels), int(info2.num_frames)


def read_manifest(manifest: PathLike) -> dict[str, str | None]:
    """Descriptions from a JSONL manifest: resolved audio path -> description.

    Each line is an object with ``"path"`` (relative to the manifest's folder, or
    absolute) and ``"description"``; blank lines are ignored.

    Raises:
        NoiseProbeError: If the file is missing or a line is not such an object.
    """
    manifest = Path(manifest)
    if not manifest.is_file():
        raise NoiseProbeError(f"Manifest '{manifest}' does not exist. Check the `manifest` path.")
    out: dict[str, str | None] = {}
    for lineno, line in enumerate(manifest.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise NoiseProbeError(
                f"Manifest '{manifest}' line {lineno} is not valid JSON ({err.msg}). Expected one "
                'object per line such as {"path": "a.wav", "description": "..."}.'
            ) from err
        if not isinstance(record, dict) or not isinstance(record.get("path"), str):
            raise NoiseProbeError(
                f"Expected manifest '{manifest}' line {lineno} to be an object with a string "
                f'"path" but got {line.strip()[:120]!r}.'
            )
        desc = record.get("description")
        key = str((manifest.parent / record["path"]).resolve())
        out[key] = str(desc) if desc else None
    return out


def _describe(
    path: Path, manifest: dict[str, str | None] | None, default: str | None
) -> str | None:
    from lightning_noiseprobe.probe.probeset import _sidecar_description

    if manifest is not None:
        desc = manifest.get(str(path.resolve()))
        if desc:
            return desc
    return _sidecar_description(path) or default


def scan_audio_files(
    paths: Sequence[PathLike],
    sample_rate: int,
    channels: int,
    min_samples: int,
    *,
    manifest: dict[str, str | None] | None = None,
    default_description: str | None = None,
) -> tuple[list[AudioFile], list[dict[str, str]]]:
    """Check audio files cheaply (headers only) and describe the usable ones.

    A file is skipped when it cannot be read, when its channel count cannot be
    converted to ``channels``, or when it would hold fewer than ``min_samples``
    samples at ``sample_rate``. Nothing is padded.

    Args:
        paths: The audio files.
        sample_rate: Target sample rate.
        channels: Target channel count.
        min_samples: Shortest usable length, in samples at ``sample_rate``.
        manifest: Resolved path -> description (see :func:`read_manifest`).
        default_description: Description of files that have none in the manifest
            or in a ``.json`` sidecar.

    Returns:
        ``(usable files, skipped)`` where ``skipped`` holds ``{"path", "reason"}``.
    """
    files: list[AudioFile] = []
    skipped: list[dict[str, str]] = []
    for item in paths:
        path = Path(item)
        try:
            sr, ch, frames = _file_info(path)
        except NoiseProbeError as err:
            skipped.append({"path": str(path), "reason": f"unreadable: {err}"})
            continue
        if ch != channels and channels != 1 and ch != 1:
            skipped.append(
                {"path": str(path), "reason": f"{ch} channels cannot be converted to {channels}"}
            )
            continue
        num_samples = math.ceil(frames * sample_rate / sr)
        if num_samples < min_samples:
            skipped.append(
                {
                    "path": str(path),
                    "reason": f"too short: {frames / sr:.2f} s but a segment is "
                    f"{min_samples / sample_rate:.2f} s",
                }
            )
            continue
        desc = _describe(path, manifest, default_description)
        files.append(AudioFile(str(path), desc, sr, ch, frames, num_samples))
    return files, skipped


# --------------------------------------------------------------------------- dataset


class EpochSampler(DistributedSampler):
    """Seeded order over ``num_items`` items that carries the epoch in each index.

    Yields ``epoch * num_items + i``; :class:`AudioSegmentDataset` reads the epoch
    back from it, so random offsets change with the epoch even in worker
    processes that live across epochs. The order is a permutation seeded with
    ``(seed, epoch)`` (or ``0..N-1`` without ``shuffle``). Under
    ``torch.distributed`` each rank takes every ``world_size``-th index (the
    list is padded by wrapping around, as :class:`DistributedSampler` does);
    being a :class:`DistributedSampler`, Lightning keeps it and calls
    :meth:`set_epoch` every epoch.

    >>> s = EpochSampler(4, seed=0, shuffle=False)
    >>> s.set_epoch(2)
    >>> list(s)
    [8, 9, 10, 11]
    """

    def __init__(self, num_items: int, seed: int = 0, shuffle: bool = True) -> None:
        import torch.distributed as dist

        distributed = dist.is_available() and dist.is_initialized()
        world = dist.get_world_size() if distributed else 1
        rank = dist.get_rank() if distributed else 0
        super().__init__(
            range(num_items),  # type: ignore[arg-type]  # only len() is used
            num_replicas=world,
            rank=rank,
            shuffle=shuffle,
            seed=seed,
        )
        self.num_items = num_items

    def __iter__(self):  # type: ignore[override]
        n = self.num_items
        if self.shuffle:
            order = np.random.default_rng([int(self.seed), int(self.epoch)]).permutation(n)
        else:
            order = np.arange(n)
        indices = [int(i) for i in order]
        if indices and len(indices) < self.total_size:
            indices = (indices * math.ceil(self.total_size / len(indices)))[: self.total_size]
        base = int(self.epoch) * n
        return iter(base + i for i in indices[self.rank : self.total_size : self.num_replicas])


class AudioSegmentDataset(Dataset):
    """Fixed-length segments of audio files, converted to one rate and channel count.

    With ``random_offsets`` there is one item per file, cut at an offset drawn
    from ``np.random.default_rng([seed, epoch, i])``; the epoch is
    ``self.epoch + k // len(files)`` for index ``k`` (see :class:`EpochSampler`,
    or call :meth:`set_epoch`). Without it there are up to
    ``segments_per_file`` evenly spaced, non-overlapping segments per file
    (the first at offset 0), the same in every epoch.

    Files are decoded whole with :func:`~lightning_noiseprobe.audio.load_audio`
    when an item needs them; the last ``cache_size`` converted files are kept
    (per process; the cache is not pickled to workers).

    Items are ``{"wav": [C, S], "description": str | None, "path": str}``.
    """

    def __init__(
        self,
        files: Sequence[AudioFile],
        sample_rate: int,
        channels: int,
        segment_samples: int,
        *,
        random_offsets: bool,
        seed: int = 0,
        segments_per_file: int = 1,
        cache_size: int = 0,
    ) -> None:
        self.files = list(files)
        self.sample_rate = int(sample_rate)
        self.channels = int(channels)
        self.segment_samples = int(segment_samples)
        self.random_offsets = bool(random_offsets)
        self.seed = int(seed)
        self.cache_size = int(cache_size)
        self.epoch = 0
        self._fixed: list[tuple[int, int]] = []
        if not self.random_offsets:
            for i, f in enumerate(self.files):
                m = max(1, min(segments_per_file, f.num_samples // self.segment_samples))
                span = f.num_samples - self.segment_samples
                self._fixed.extend((i, round(j * span / (m - 1)) if m > 1 else 0) for j in range(m))
        self._cache: OrderedDict[int, torch.Tensor] = OrderedDict()

    def __len__(self) -> int:
        return len(self._fixed) if not self.random_offsets else len(self.files)

    def set_epoch(self, epoch: int) -> None:
        """Epoch added to the one carried by the index (for samplers other than :class:`EpochSampler`)."""
        self.epoch = int(epoch)

    def segment_offset(self, k: int) -> tuple[int, int]:
        """``(file index, offset in samples at the target rate)`` of item ``k``.

        The offset assumes the length read from the file's header; if decoding
        gives fewer samples, :meth:`__getitem__` moves the segment back so it ends
        at the last sample.
        """
        if not self.random_offsets:
            return self._fixed[k % len(self._fixed)]  # the epoch in the index changes nothing
        n = len(self.files)
        i, epoch = k % n, self.epoch + k // n
        span = self.files[i].num_samples - self.segment_samples
        rng = np.random.default_rng([self.seed, epoch, i])
        return i, int(rng.integers(0, span + 1))

    def _load(self, i: int) -> torch.Tensor:
        if i in self._cache:
            self._cache.move_to_end(i)
            return self._cache[i]
        from lightning_noiseprobe.audio import convert_audio, load_audio

        wav, sr = load_audio(self.files[i].path)
        wav = convert_audio(wav, sr, self.sample_rate, self.channels)
        if self.cache_size > 0:
            self._cache[i] = wav
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return wav

    def __getitem__(self, k: int) -> dict[str, Any]:
        i, offset = self.segment_offset(int(k))
        wav = self._load(i)
        seg = self.segment_samples
        if wav.shape[-1] < seg:
            raise NoiseProbeError(
                f"Audio file '{self.files[i].path}' decodes to {wav.shape[-1]} samples at "
                f"{self.sample_rate} Hz but its header promised {self.files[i].num_samples}, fewer "
                f"than one segment ({seg}). Remove or re-encode the file."
            )
        offset = min(offset, wav.shape[-1] - seg)
        return {
            "wav": wav[:, offset : offset + seg].clone(),
            "description": self.files[i].description,
            "path": self.files[i].path,
        }

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_cache"] = OrderedDict()
        return state


def collate_segments(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack items of :class:`AudioSegmentDataset` into a batch.

    Returns:
        ``{"wav": [B, C, S], "description": list[str | None], "path": list[str]}``.

    >>> batch = collate_segments([
    ...     {"wav": torch.zeros(1, 8), "description": "organ", "path": "a.wav"},
    ...     {"wav": torch.ones(1, 8), "description": None, "path": "b.wav"},
    ... ])
    >>> batch["wav"].shape, batch["description"], batch["path"]
    (torch.Size([2, 1, 8]), ['organ', None], ['a.wav', 'b.wav'])
    """
    shapes = {tuple(it["wav"].shape) for it in items}
    if len(shapes) != 1:
        raise NoiseProbeError(
            f"Expected every item of a batch to have the same shape [C, S] but got {sorted(shapes)}."
        )
    return {
        "wav": torch.stack([it["wav"] for it in items]),
        "description": [it["description"] for it in items],
        "path": [it["path"] for it in items],
    }
