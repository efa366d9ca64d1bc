"""Scoring a run's checkpoints on one probe set, after training (``noiseprobe sweep``).

The codec is frozen while the LM fine-tunes, so the probe set is tokenized once (with the
first checkpoint's codec) and every checkpoint costs one load and one scoring. Each
checkpoint's codec weights are checked against those the probe set was tokenized with (a
hash of the weights): a checkpoint with another codec gets the probe set tokenized by its
own too (once per codec), with a note saying so.
One model is held at a time (:class:`~lightning_noiseprobe.posthoc.checkpoints.CheckpointLoader`).

Each checkpoint's result is kept in the cache folder (``<cache_dir>/sweep/``), keyed by the
checkpoint's files (real path, size, modification time), the audio files and every setting,
so a rerun, after an interruption or once training has written more checkpoints, scores only
the others.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lightning_noiseprobe._errors import NoiseProbeError
from lightning_noiseprobe.posthoc.checkpoints import Checkpoint, CheckpointLoader

if TYPE_CHECKING:
    from lightning_noiseprobe.probe.spec import ProbeSpec

__all__ = ["Sweep", "logged_values", "run_sweep", "settings_identity"]

log = logging.getLogger(__name__)

#: Version of the cached per-checkpoint records.
_RECORD_FORMAT = 1


@dataclass
class Sweep:
    """The outcome of :func:`run_sweep`.

    Attributes:
        entries: one per scored checkpoint, in training order: ``path``, ``kind``, ``step``,
            ``epoch``, ``origin`` (where step and epoch come from), ``codec`` (hash of its
            codec weights), ``summary``, ``by_length``, and ``logged`` when the checkpoint
            holds what the live callback measured at its step with the same spec.
        skipped: ``{"path", "reason"}`` per checkpoint not scored.
        clips: the probe set's clips; skipped_clips: ``{"path", "reason"}`` per clip left out.
        tokenized: how many times the probe set was tokenized: once per codec (``0``: every
            result reused).
        reused: how many results came from the cache.
        seconds: ``{"tokenize", "load", "score"}`` wall time of this run.
    """

    entries: list[dict[str, Any]]
    skipped: list[dict[str, str]]
    clips: list[str] = field(default_factory=list)
    skipped_clips: list[dict[str, str]] = field(default_factory=list)
    tokenized: int = 0
    reused: int = 0
    seconds: dict[str, float] = field(default_factory=dict)


def settings_identity(
    audio: Sequence[str | os.PathLike[str]],
    spec: ProbeSpec,
    **settings: Any,
) -> dict[str, Any]:
    """What a sweep's results depend on besides the checkpoint: the audio files (and their
    ``.json`` sidecars) by real path, size and modification time, the spec and ``settings``."""
    files = []
    for f in audio:
        for p in (Path(f), Path(f).with_suffix(".json")):
            if p.is_file():
                st = p.stat()
                files.append([os.path.realpath(p), st.st_size, st.st_mtime_ns])
    from lightning_noiseprobe import __version__

    return {"audio": files, "spec": spec.to_dict(), "version": __version__, **settings}


class _ResultCache:
    """Per-checkpoint results as JSON files in ``folder`` (``None``: nothing kept)."""

    def __init__(self, folder: Path | None, settings: dict[str, Any]) -> None:
        self.folder = folder
        self.settings = settings
        self._warned = False

    def key(self, ckpt: Checkpoint, base: str | None) -> str:
        from lightning_noiseprobe._hashing import hash_json

        base_id: Any = base
        if base is not None and os.path.isdir(base):
            base_id = Checkpoint(Path(base), "transformers").identity()
        return hash_json(
            {
                "format": _RECORD_FORMAT,
                "settings": self.settings,
                "checkpoint": ckpt.identity(),
                "base": base_id if ckpt.kind == "peft" else None,
            }
        )

    def get(self, key: str) -> dict[str, Any] | None:
        import json

        if self.folder is None:
            return None
        path = self.folder / f"{key}.json"
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(record, dict) or record.get("key") != key:
            return None
        return record

    def put(self, key: str, record: dict[str, Any]) -> None:
        from lightning_noiseprobe._io import atomic_write_json

        if self.folder is None:
            return
        try:
            atomic_write_json(self.folder / f"{key}.json", {**record, "key": key})
        except OSError as err:
            if not self._warned:
                self._warned = True
                log.warning(
                    "Cannot write the sweep results to '%s' (%s); a rerun scores every checkpoint again.",
                    self.folder,
                    err,
                )


def logged_values(ckpt: Checkpoint, spec_hash: str) -> dict[str, float] | None:
    """The summary the live callback logged at ``ckpt``'s step with the spec of ``spec_hash``,
    from the callback state saved in a Lightning checkpoint; ``None`` if it holds none."""
    from lightning_noiseprobe.probe.result import SUMMARY_METRICS

    for history in ckpt.logged.values():
        for entry in history:
            if (
                entry.get("step") == ckpt.step
                and entry.get("probe_ok") == 1
                and entry.get("spec_hash") == spec_hash
            ):
                return {k: float(entry[k]) for k in SUMMARY_METRICS if k in entry}
    return None


def _max_abs_diff(a: dict[str, float], b: dict[str, float]) -> float | None:
    diffs = [
        abs(a[k] - b[k]) for k in a.keys() & b.keys() if math.isfinite(a[k]) and math.isfinite(b[k])
    ]
    return max(diffs) if diffs else None


def run_sweep(
    checkpoints: Sequence[Checkpoint],
    audio: Sequence[str | os.PathLike[str]],
    spec: ProbeSpec,
    *,
    base: str | None = None,
    descriptions: str | None = None,
    unconditional: bool = False,
    batch_size: int = 8,
    precision: str = "32",
    device: str = "cpu",
    cache_dir: Path | None = None,
    strict: bool = False,
    progress: bool = False,
    note: Callable[[str], None] = log.warning,
) -> Sweep:
    """Score every checkpoint on one probe set, in the order given.

    Args:
        checkpoints: from :func:`~lightning_noiseprobe.posthoc.checkpoints.find_checkpoints`.
        audio: the probe clips (files).
        spec: the probe set.
        base: the base model of PEFT adapter folders.
        descriptions, unconditional, batch_size, precision, device: as ``noiseprobe probe``.
        cache_dir: the token cache folder; results are kept in its ``sweep/`` folder
            (``None``: neither tokens nor results are kept on disk).
        strict: raise on a checkpoint that cannot be loaded or scored (and on a bad clip)
            instead of skipping it.
        progress: show a progress bar over the checkpoints.
        note: called with each message a user should see (another codec, a skipped checkpoint).

    Returns:
        :class:`Sweep`.

    Raises:
        NoiseProbeError: no usable clip; with ``strict``, a checkpoint that fails.
    """
    from lightning_noiseprobe.posthoc._scoring import ProbeSets

    settings = settings_identity(
        audio,
        spec,
        descriptions=descriptions,
        unconditional=unconditional,
        batch_size=batch_size,
        precision=precision,
        device=str(device),
    )
    cache = _ResultCache(None if cache_dir is None else Path(cache_dir) / "sweep", settings)
    sets = ProbeSets(
        [str(f) for f in audio],
        spec,
        descriptions,
        unconditional,
        batch_size,
        precision,
        device,
        cache_dir,
        strict,
        progress,
        note,
    )
    spec_hash = spec.hash()
    loader = CheckpointLoader(device, base)
    out = Sweep([], [])
    loading = 0.0
    bar: Any = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(checkpoints), desc="sweeping checkpoints", unit="ckpt")

    def skip(ckpt: Checkpoint, err: NoiseProbeError) -> None:
        if strict:
            raise err
        out.skipped.append({"path": str(ckpt.path), "reason": str(err)})
        note(f"skipped checkpoint {ckpt.path}: {err}")
        if bar is not None:
            bar.update(1)

    try:
        for ckpt in checkpoints:
            key = cache.key(ckpt, base)
            record = cache.get(key)
            if record is None:
                started = time.perf_counter()
                try:
                    backend = loader.load(ckpt)
                except NoiseProbeError as err:
                    skip(ckpt, err)
                    continue
                loading += time.perf_counter() - started
                probe_set, codec = sets.probe_set(
                    backend,
                    f"{ckpt.path} holds other codec weights than the checkpoints before it (a"
                    " frozen codec does not change in training); tokenizing the probe set with"
                    " its codec too.",
                )
                try:
                    result = sets.score(backend, probe_set, str(ckpt.path))
                except NoiseProbeError as err:  # e.g. NaN/inf outputs of a diverged checkpoint
                    skip(ckpt, err)
                    continue
                place = {"step": ckpt.step, "epoch": ckpt.epoch, "origin": ckpt.origin}
                record = {
                    "entry": {
                        "path": str(ckpt.path),
                        "kind": ckpt.kind,
                        **place,
                        **sets.fields(result, codec),
                    },
                    "clips": list(result.clip_names),
                    "skipped_clips": list(result.skipped),
                }
                cache.put(key, record)
            else:
                out.reused += 1
            entry = {**record["entry"], "path": str(ckpt.path)}  # as named in this run
            logged = logged_values(ckpt, spec_hash)
            if logged is not None:
                entry["logged"] = {
                    "summary": logged,
                    "max_abs_diff": _max_abs_diff(entry["summary"], logged),
                }
            out.entries.append(entry)
            if not out.clips:
                out.clips, out.skipped_clips = record["clips"], record["skipped_clips"]
            if bar is not None:
                bar.set_postfix(step=ckpt.step)
                bar.update(1)
    finally:
        loader.release()
        if bar is not None:
            bar.close()
    out.tokenized = sets.tokenized
    out.seconds = {
        "tokenize": sets.seconds["tokenize"],
        "load": loading,
        "score": sets.seconds["score"],
    }
    return out
