"""Lightning data modules that cut fixed-length training segments from audio folders.

:class:`AudioFolderDataModule` reads a folder of audio files of any format, sample
rate and channel count, converts them to one rate and channel count, and yields
batches ``{"wav": [B, C, S], "description": list[str | None], "path": list[str]}``
in which every item has ``S = round(segment_seconds * sample_rate)`` samples.
:class:`ChoraleDataModule` does the same over the Bach chorales rendered by
:func:`~lightning_noiseprobe.data.chorales.write_chorale_dataset`, the package's
offline default data.

Randomness never comes from a global RNG: training offsets are drawn from a
generator seeded with ``(seed, epoch, index)``, and the epoch travels inside the
index yielded by :class:`EpochSampler` (``epoch * N + i``), so the same seed gives
the same batches with any ``num_workers`` and with persistent workers.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
from torch.utils.data import DataLoader

from lightning_noiseprobe._errors import NoiseProbeError
from lightning_noiseprobe._hashing import derive_seed
from lightning_noiseprobe.data.dataset import (
    AudioFile,
    AudioSegmentDataset,
    EpochSampler,
    PathLike,
    collate_segments,
    read_manifest,
    scan_audio_files,
)

# AudioFile, AudioSegmentDataset, EpochSampler, collate_segments and scan_audio_files
# live in data/dataset.py and are re-exported here, where they were first defined.
__all__ = [
    "AudioFile",
    "AudioFolderDataModule",
    "AudioSegmentDataset",
    "ChoraleDataModule",
    "EpochSampler",
    "collate_segments",
    "scan_audio_files",
]

log = logging.getLogger(__name__)


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _check_dir(name: str, value: object, *, must_exist: bool) -> None:
    if not isinstance(value, (str, os.PathLike)):
        raise NoiseProbeError(f"Expected argument `{name}` to be a folder path but got {value!r}.")
    if must_exist and not Path(value).is_dir():
        what = "is not a folder" if Path(value).exists() else "does not exist"
        raise NoiseProbeError(
            f"Expected argument `{name}` to be an existing folder of audio files but '{value}' "
            f"{what}. Check the path."
        )


@dataclass
class _Splits:
    train: list[AudioFile]
    val: list[AudioFile]
    probe: list[str]
    skipped: list[dict[str, str]]


class AudioFolderDataModule(pl.LightningDataModule):
    """Random training segments and fixed validation segments from audio folders.

    Files (wav, flac, ogg, mp3, ... found recursively) are checked at
    :meth:`setup` from their headers: unreadable files, files whose channels
    cannot be converted, and files shorter than one segment are skipped with one
    logged warning that names them (they are also listed in :attr:`skipped`).
    Nothing is padded.

    Without ``val_dir`` (``probe_dir``), a deterministic held-out share of the
    usable files of ``train_dir`` becomes the validation (probe) split; the
    three splits never share a file. :meth:`probe_files` lists the probe split,
    for ``NoiseProbeCallback(probe_audio=datamodule.probe_files())``.

    Descriptions come from ``manifest`` when it lists the file, else from an
    audiocraft-style ``.json`` sidecar next to the file (``{"description": ...}``),
    else ``default_description`` (``None``: unconditional).

    Args:
        train_dir: Folder of training audio.
        val_dir: Folder of validation audio; ``None`` holds out ``val_fraction``
            of the files of ``train_dir`` (at least one).
        probe_dir: Folder of probe audio; ``None`` holds out ``probe_fraction`` of
            the files of ``train_dir`` (at least one when the fraction is positive).
        manifest: JSONL file, one ``{"path", "description"}`` per line, with paths
            relative to the manifest's folder.
        sample_rate: Sample rate of the batches.
        channels: Channel count of the batches (mono files are repeated, others
            averaged to mono).
        segment_seconds: Length of every segment.
        batch_size: Segments per batch.
        num_workers: DataLoader worker processes.
        seed: Seeds the splits and the training offsets and order.
        default_description: Description of files that have none.
        val_fraction: Share of ``train_dir`` held out for validation, in ``(0, 1)``.
        probe_fraction: Share of ``train_dir`` held out for probing, in ``[0, 1)``.
        val_segments_per_file: Evenly spaced, non-overlapping validation segments
            per file (fewer when the file is too short for them).
        cache_size: Decoded files kept in memory per process (0: none).

    Raises:
        NoiseProbeError: On a bad argument (naming it and its value) or a missing folder.

    Example::

        dm = AudioFolderDataModule("data/my_songs", segment_seconds=5.0, probe_fraction=0.1)
        callback = NoiseProbeCallback(probe_audio=dm.probe_files())
        pl.Trainer(callbacks=[callback]).fit(module, datamodule=dm)
        # batches: {"wav": [4, 1, 160000], "description": [...], "path": [...]}
    """

    #: Subclasses that write their data in :meth:`prepare_data` set this: their
    #: folders need not exist yet when the module is built.
    _creates_data = False

    def __init__(
        self,
        train_dir: PathLike,
        val_dir: PathLike | None = None,
        probe_dir: PathLike | None = None,
        manifest: PathLike | None = None,
        sample_rate: int = 32000,
        channels: int = 1,
        segment_seconds: float = 10.0,
        batch_size: int = 4,
        num_workers: int = 0,
        seed: int = 0,
        default_description: str | None = None,
        val_fraction: float = 0.1,
        probe_fraction: float = 0.0,
        val_segments_per_file: int = 1,
        cache_size: int = 8,
    ) -> None:
        super().__init__()
        must_exist = not self._creates_data
        _check_dir("train_dir", train_dir, must_exist=must_exist)
        for name, value in (("val_dir", val_dir), ("probe_dir", probe_dir)):
            if value is not None:
                _check_dir(name, value, must_exist=must_exist)
        if manifest is not None and not (
            isinstance(manifest, (str, os.PathLike))
            and (not must_exist or Path(manifest).is_file())
        ):
            raise NoiseProbeError(
                f"Expected argument `manifest` to be an existing JSONL file but got {manifest!r}. "
                "Check the path, or pass None to read descriptions from .json sidecars."
            )
        positive: tuple[tuple[str, int], ...] = (
            ("sample_rate", sample_rate),
            ("channels", channels),
            ("batch_size", batch_size),
            ("val_segments_per_file", val_segments_per_file),
        )
        for arg, number in positive:
            if not _is_int(number) or number <= 0:
                raise NoiseProbeError(
                    f"Expected argument `{arg}` to be a positive integer but got {number!r}."
                )
        non_negative: tuple[tuple[str, int], ...] = (
            ("num_workers", num_workers),
            ("seed", seed),
            ("cache_size", cache_size),
        )
        for arg, number in non_negative:
            if not _is_int(number) or number < 0:
                raise NoiseProbeError(
                    f"Expected argument `{arg}` to be an integer >= 0 but got {number!r}."
                )
        if (
            not _is_number(segment_seconds)
            or not math.isfinite(segment_seconds)
            or segment_seconds <= 0
        ):
            raise NoiseProbeError(
                f"Expected argument `segment_seconds` to be a positive number of seconds but got "
                f"{segment_seconds!r}."
            )
        if round(segment_seconds * sample_rate) < 1:
            raise NoiseProbeError(
                f"Expected argument `segment_seconds` to hold at least one sample at {sample_rate} Hz "
                f"but got {segment_seconds!r}."
            )
        if not _is_number(val_fraction) or not 0 < val_fraction < 1:
            raise NoiseProbeError(
                f"Expected argument `val_fraction` to be a number in (0, 1) but got {val_fraction!r}."
            )
        if not _is_number(probe_fraction) or not 0 <= probe_fraction < 1:
            raise NoiseProbeError(
                f"Expected argument `probe_fraction` to be a number in [0, 1) but got "
                f"{probe_fraction!r}."
            )
        held_out = (val_fraction if val_dir is None else 0) + (
            probe_fraction if probe_dir is None else 0
        )
        if held_out >= 1:
            raise NoiseProbeError(
                f"Expected `val_fraction` + `probe_fraction` to be below 1 but got {held_out!r}; "
                "nothing would be left to train on."
            )
        if default_description is not None and not isinstance(default_description, str):
            raise NoiseProbeError(
                f"Expected argument `default_description` to be a string or None but got "
                f"{default_description!r}."
            )
        self.save_hyperparameters()
        self.train_dir = Path(train_dir)
        self.val_dir = Path(val_dir) if val_dir is not None else None
        self.probe_dir = Path(probe_dir) if probe_dir is not None else None
        self.manifest = Path(manifest) if manifest is not None else None
        self.sample_rate = int(sample_rate)
        self.channels = int(channels)
        self.segment_seconds = float(segment_seconds)
        self.segment_samples = round(self.segment_seconds * self.sample_rate)
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.seed = int(seed)
        self.default_description = default_description
        self.val_fraction = float(val_fraction)
        self.probe_fraction = float(probe_fraction)
        self.val_segments_per_file = int(val_segments_per_file)
        self.cache_size = int(cache_size)
        self.train_dataset: AudioSegmentDataset | None = None
        self.val_dataset: AudioSegmentDataset | None = None
        self.skipped: list[dict[str, str]] = []
        self._splits: _Splits | None = None

    # ---------------------------------------------------------------- splits

    def _ensure_data(self) -> None:
        """Hook for subclasses that create their data (called before scanning)."""

    def _find(self, folder: Path) -> list[Path]:
        from lightning_noiseprobe.probe.probeset import AUDIO_EXTENSIONS

        if not folder.is_dir():
            raise NoiseProbeError(
                f"Expected an existing folder of audio files but '{folder}' does not exist."
            )
        return sorted(
            p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file()
        )

    def _scan(
        self, paths: list[Path], manifest: dict[str, str | None] | None
    ) -> tuple[list[AudioFile], list[dict[str, str]]]:
        return scan_audio_files(
            paths,
            self.sample_rate,
            self.channels,
            self.segment_samples,
            manifest=manifest,
            default_description=self.default_description,
        )

    def _compute_splits(self) -> _Splits:
        self._ensure_data()
        manifest = read_manifest(self.manifest) if self.manifest is not None else None
        probe_given = self._find(self.probe_dir) if self.probe_dir is not None else []
        val_given = self._find(self.val_dir) if self.val_dir is not None else []
        taken = {p.resolve() for p in (*probe_given, *val_given)}
        pool_paths = [p for p in self._find(self.train_dir) if p.resolve() not in taken]
        pool, skipped = self._scan(pool_paths, manifest)
        if not pool:
            found = len(pool_paths)
            reasons = "; ".join(f"{s['path']}: {s['reason']}" for s in skipped[:3])
            raise NoiseProbeError(
                f"Expected usable audio files in folder '{self.train_dir}' but "
                + (
                    f"all {found} were skipped ({reasons}{'; ...' if found > 3 else ''})."
                    if found
                    else "found none (wav, flac, ogg, mp3, ...)."
                )
                + f" Each file must be readable and at least {self.segment_seconds:g} s long "
                "(`segment_seconds`)."
            )
        n = len(pool)
        n_probe = (
            max(1, round(self.probe_fraction * n))
            if self.probe_dir is None and self.probe_fraction > 0
            else 0
        )
        n_val = max(1, round(self.val_fraction * n)) if self.val_dir is None else 0
        if n - n_probe - n_val < 1:
            raise NoiseProbeError(
                f"Expected more usable files in folder '{self.train_dir}' than the {n_val} held out "
                f"for validation and {n_probe} held out for probing, but found {n}. Add files, "
                "pass `val_dir`/`probe_dir`, or lower `val_fraction`/`probe_fraction`."
            )
        order = np.random.default_rng(derive_seed(self.seed, "split")).permutation(n)
        probe_idx = sorted(int(i) for i in order[:n_probe])
        val_idx = sorted(int(i) for i in order[n_probe : n_probe + n_val])
        train_idx = sorted(int(i) for i in order[n_probe + n_val :])
        if self.val_dir is not None:
            val, val_skipped = self._scan(val_given, manifest)
            skipped += val_skipped
            if not val:
                raise NoiseProbeError(
                    f"Expected usable audio files in folder '{self.val_dir}' (`val_dir`) but all "
                    f"{len(val_given)} were skipped or none were found. Each file must be readable "
                    f"and at least {self.segment_seconds:g} s long."
                )
        else:
            val = [pool[i] for i in val_idx]
        if self.probe_dir is not None:
            probe = [str(p) for p in probe_given]
        else:
            probe = [pool[i].path for i in probe_idx]
        if skipped:
            log.warning(
                "Skipping %d audio file(s): %s",
                len(skipped),
                "; ".join(f"{s['path']} ({s['reason']})" for s in skipped),
            )
        return _Splits([pool[i] for i in train_idx], val, probe, skipped)

    @property
    def splits(self) -> _Splits:
        """The train / val / probe files (computed once, on first use)."""
        if self._splits is None:
            self._splits = self._compute_splits()
            self.skipped = self._splits.skipped
        return self._splits

    def probe_files(self) -> list[str]:
        """Paths of the probe split (or of the audio files in ``probe_dir``).

        Callable before :meth:`setup`, e.g. to build the noise-probe callback.
        Empty when ``probe_fraction`` is 0 and there is no ``probe_dir``.
        """
        return list(self.splits.probe)

    # ---------------------------------------------------------------- lightning hooks

    def setup(self, stage: str | None = None) -> None:
        """Scan the folders and build the datasets (once)."""
        if self.train_dataset is not None:
            return
        splits = self.splits
        common = {
            "sample_rate": self.sample_rate,
            "channels": self.channels,
            "segment_samples": self.segment_samples,
            "seed": self.seed,
            "cache_size": self.cache_size,
        }
        self.train_dataset = AudioSegmentDataset(splits.train, random_offsets=True, **common)
        self.val_dataset = AudioSegmentDataset(
            splits.val,
            random_offsets=False,
            segments_per_file=self.val_segments_per_file,
            **common,
        )

    def _loader(self, dataset: AudioSegmentDataset, shuffle: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=EpochSampler(len(dataset), seed=self.seed, shuffle=shuffle),
            num_workers=self.num_workers,
            collate_fn=collate_segments,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        """Random segments in a seeded order that changes every epoch."""
        self.setup("fit")
        assert self.train_dataset is not None
        return self._loader(self.train_dataset, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """The same segments, in the same order, every epoch."""
        self.setup("validate")
        assert self.val_dataset is not None
        return self._loader(self.val_dataset, shuffle=False)


class ChoraleDataModule(AudioFolderDataModule):
    """:class:`AudioFolderDataModule` over Bach chorales rendered into ``root``.

    :meth:`prepare_data` calls
    :func:`~lightning_noiseprobe.data.chorales.write_chorale_dataset` (needs
    ``music21``; idempotent, and nothing is rendered when ``root`` already holds
    the same dataset). Descriptions come from the sidecars it writes. By default
    15% of the clips are held out for validation and 15% for probing (4 and 4
    of 24).

    Args:
        root: Folder the clips are written to.
        num_clips: Chorales to render.
        clip_seconds: Length of each clip; must be at least ``segment_seconds``.
        seed: Picks the chorales, the splits and the training offsets.
        **kwargs: The other arguments of :class:`AudioFolderDataModule`
            (``segment_seconds``, ``batch_size``, ``val_fraction``, ...).
    """

    _creates_data = True

    def __init__(
        self,
        root: PathLike = "data/chorales",
        num_clips: int = 24,
        clip_seconds: float = 15.0,
        seed: int = 0,
        sample_rate: int = 32000,
        channels: int = 1,
        segment_seconds: float = 10.0,
        batch_size: int = 4,
        num_workers: int = 0,
        default_description: str | None = None,
        val_fraction: float = 0.15,
        probe_fraction: float = 0.15,
        val_segments_per_file: int = 1,
        cache_size: int = 8,
    ) -> None:
        if not _is_int(num_clips) or num_clips < 1:
            raise NoiseProbeError(
                f"Expected argument `num_clips` to be a positive integer but got {num_clips!r}."
            )
        if not _is_number(clip_seconds) or not math.isfinite(clip_seconds) or clip_seconds <= 0:
            raise NoiseProbeError(
                f"Expected argument `clip_seconds` to be a positive number of seconds but got "
                f"{clip_seconds!r}."
            )
        if _is_number(segment_seconds) and segment_seconds > clip_seconds:
            raise NoiseProbeError(
                f"Expected argument `segment_seconds` to be at most `clip_seconds` ({clip_seconds!r}) "
                f"but got {segment_seconds!r}."
            )
        super().__init__(
            train_dir=root,
            sample_rate=sample_rate,
            channels=channels,
            segment_seconds=segment_seconds,
            batch_size=batch_size,
            num_workers=num_workers,
            seed=seed,
            default_description=default_description,
            val_fraction=val_fraction,
            probe_fraction=probe_fraction,
            val_segments_per_file=val_segments_per_file,
            cache_size=cache_size,
        )
        self.root = Path(root)
        self.num_clips = int(num_clips)
        self.clip_seconds = float(clip_seconds)

    def prepare_data(self) -> None:
        """Render the chorales into ``root`` unless they are already there."""
        from lightning_noiseprobe.data.chorales import write_chorale_dataset

        write_chorale_dataset(
            self.root,
            num_clips=self.num_clips,
            seconds=self.clip_seconds,
            sample_rate=self.sample_rate,
            seed=self.seed,
        )

    def _ensure_data(self) -> None:
        self.prepare_data()  # a cheap check when the dataset is already there
