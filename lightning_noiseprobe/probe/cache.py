"""The probe token cache: a probe set's codes, in memory and on disk.

Entries are keyed by a hash of the clip's audio, the spec's perturbations
(:meth:`~lightning_noiseprobe.probe.spec.ProbeSpec.tokenization_key`) and the codec.
An entry on disk is used only if it loads and passes validation (shapes, dtype,
codes within the codec's cardinality, and the SHA-256 checksum stored with it);
otherwise it is rebuilt with a warning naming the file and the problem, and
overwritten atomically. A cache folder that cannot be written (read-only, or under
a file) is reported once and the run goes on without writing to it.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lightning_noiseprobe._hashing import hash_json, hash_tensor

if TYPE_CHECKING:
    from lightning_noiseprobe.backends.base import ProbeBackend
    from lightning_noiseprobe.probe.spec import ProbeSpec

__all__ = ["clear_memory_cache", "default_cache_dir"]

# the logger of the probe set (the cache was part of probeset.py): one name to filter on
log = logging.getLogger("lightning_noiseprobe.probe.probeset")

# process-wide memory cache: cache key -> (clean codes [K, T], perturbed codes [P, K, T],
# tokens of each perturbed copy [P])
_CacheEntry = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
_MEMORY_CACHE: dict[str, _CacheEntry] = {}
_MEMORY_CACHE_MAX = 4096
# cache folders already reported as unwritable in this process (warn once each)
_UNWRITABLE_WARNED: set[str] = set()


def default_cache_dir() -> Path:
    """``$NOISEPROBE_CACHE``, else ``$XDG_CACHE_HOME/lightning_noiseprobe``, else ``~/.cache/lightning_noiseprobe``."""
    if os.environ.get("NOISEPROBE_CACHE"):
        return Path(os.environ["NOISEPROBE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lightning_noiseprobe" / "tokens"


def _cache_key(audio_hash: str, spec: ProbeSpec, backend: ProbeBackend, codec_hash: str) -> str:
    return hash_json(
        {
            "audio": audio_hash,
            "spec": spec.tokenization_key(),
            "codec": codec_hash,
            "sample_rate": backend.sample_rate,
            "channels": backend.channels,
            "frame_rate": backend.frame_rate,
            "format": 3,  # 2: entries carry a checksum; 3: and each copy's token count
        }
    )


@dataclass(frozen=True)
class _EntryLayout:
    """What a cache entry of one clip must look like."""

    codebooks: int
    cardinality: int
    perturbations: int
    min_frames: int  # the codec gives floor or ceil(samples / hop) frames
    max_frames: int


def _entry_checksum(clean: torch.Tensor, perturbed: torch.Tensor, tokens: torch.Tensor) -> str:
    """SHA-256 over both code tensors and the copies' token counts (dtype, shape and bytes)."""
    h = hashlib.sha256()
    hash_tensor(clean, h)
    hash_tensor(perturbed, h)
    return hash_tensor(tokens, h)


def _entry_problem(data: Any, layout: _EntryLayout) -> str | None:
    """What is wrong with a loaded cache entry, or ``None`` if it is valid."""
    needed = {"clean", "perturbed", "tokens", "checksum"}
    if not isinstance(data, dict) or not needed <= data.keys():
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        return f"expected a dict with {sorted(needed)} but got {found}"
    clean, perturbed, tokens = data["clean"], data["perturbed"], data["tokens"]
    for name, t in (("clean", clean), ("perturbed", perturbed), ("tokens", tokens)):
        if not isinstance(t, torch.Tensor) or t.dtype != torch.long:
            got = t.dtype if isinstance(t, torch.Tensor) else type(t).__name__
            return f"expected '{name}' codes of dtype torch.int64 but got {got}"
    K, P = layout.codebooks, layout.perturbations
    if clean.dim() != 2 or clean.shape[0] != K:
        return f"expected 'clean' codes of shape [{K}, T] but got {tuple(clean.shape)}"
    T = clean.shape[1]
    if not layout.min_frames <= T <= layout.max_frames:
        return (
            f"expected {layout.min_frames} to {layout.max_frames} frames for this clip "
            f"but 'clean' has {T}"
        )
    if tuple(perturbed.shape) != (P, K, T):
        return f"expected 'perturbed' codes of shape {(P, K, T)} but got {tuple(perturbed.shape)}"
    if tuple(tokens.shape) != (P,) or (P and not 1 <= int(tokens.min()) <= int(tokens.max()) <= T):
        return (
            f"expected 'tokens' of shape ({P},) with values in [1, {T}] but got {tokens.tolist()}"
        )
    for name, t in (("clean", clean), ("perturbed", perturbed)):
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= layout.cardinality):
            return (
                f"expected '{name}' codes in [0, {layout.cardinality}) but found "
                f"{int(t.min())} to {int(t.max())}"
            )
    if data["checksum"] != _entry_checksum(clean, perturbed, tokens):
        return "the checksum does not match the codes (the file was changed or damaged)"
    return None


def _load_cached(cache_dir: Path | None, key: str, layout: _EntryLayout) -> _CacheEntry | None:
    if key in _MEMORY_CACHE:
        return _MEMORY_CACHE[key]
    if cache_dir is None:
        return None
    path = cache_dir / f"{key}.pt"
    if not path.is_file():
        return None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a corrupt cache file is rebuilt, never trusted
        log.warning(
            "Ignoring unreadable probe cache file '%s' (%s: %s); it will be rebuilt.",
            path,
            type(err).__name__,
            err,
        )
        return None
    problem = _entry_problem(data, layout)
    if problem is not None:
        log.warning(
            "Ignoring invalid probe cache file '%s': %s; it will be rebuilt.", path, problem
        )
        return None
    entry = (data["clean"], data["perturbed"], data["tokens"])
    _remember(key, entry)
    return entry


def _remember(key: str, entry: _CacheEntry) -> None:
    if len(_MEMORY_CACHE) >= _MEMORY_CACHE_MAX:
        _MEMORY_CACHE.pop(next(iter(_MEMORY_CACHE)))
    _MEMORY_CACHE[key] = entry


def _store_cached(cache_dir: Path | None, key: str, entry: _CacheEntry) -> bool:
    """Remember ``entry`` and write it to ``cache_dir`` atomically.

    Returns ``False`` if the folder cannot be written (reported once per folder
    and process); the caller then stops writing to it.
    """
    _remember(key, entry)
    if cache_dir is None:
        return True
    from lightning_noiseprobe._io import atomic_path

    clean, perturbed, tokens = entry
    try:
        with atomic_path(cache_dir / f"{key}.pt") as tmp:
            torch.save(
                {
                    "clean": clean,
                    "perturbed": perturbed,
                    "tokens": tokens,
                    "checksum": _entry_checksum(clean, perturbed, tokens),
                },
                tmp,
            )
    except (OSError, RuntimeError) as err:  # torch.save reports a full disk as RuntimeError
        if str(cache_dir) not in _UNWRITABLE_WARNED:
            _UNWRITABLE_WARNED.add(str(cache_dir))
            log.warning(
                "Cannot write the probe token cache folder '%s' (%s: %s); running without "
                "writing to it (probe sets are encoded again in each run). Pass another "
                "cache folder (`cache_dir`, `--cache-dir`, $NOISEPROBE_CACHE) or 'none'.",
                cache_dir,
                type(err).__name__,
                err,
            )
        return False
    return True


def clear_memory_cache() -> None:
    """Forget the in-process tokenization cache (the disk cache stays)."""
    _MEMORY_CACHE.clear()
