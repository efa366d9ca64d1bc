"""Several models on one probe set, side by side (``noiseprobe compare``).

The same clips, spec and noise draws for every model (the perturbations' seeds come from
the clips and the spec, not the model), each tokenized by the model's own codec: models
that share a codec share one tokenization. One model is held at a time, loaded as
``noiseprobe probe`` loads it, and scored as it scores, so each model's numbers are its own
``probe``'s.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lightning_noiseprobe._errors import NoiseProbeError

if TYPE_CHECKING:
    from lightning_noiseprobe.backends.base import ProbeBackend
    from lightning_noiseprobe.posthoc.checkpoints import CheckpointLoader
    from lightning_noiseprobe.probe.spec import ProbeSpec

__all__ = ["Comparison", "ModelSource", "parse_model", "run_compare"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSource:
    """One ``--model``: ``[BACKEND:]MODEL``.

    Attributes:
        text: as given (the model's name in the outputs).
        model: ``"tiny"``, a hub id, a model or checkpoint folder, or a Lightning ``.ckpt``.
        backend: the backend named by the prefix, ``None`` without one (then: a checkpoint's
            own kind, else the default backend).
    """

    text: str
    model: str
    backend: str | None = None

    @property
    def is_adapter(self) -> bool:
        from lightning_noiseprobe.backends.adapters import is_adapter_folder

        return os.path.isdir(self.model) and is_adapter_folder(self.model)


def parse_model(text: str, backends: Sequence[str]) -> ModelSource:
    """``transformers:runs/x`` -> backend ``transformers``, model ``runs/x``; a text without a
    known backend before its first ``:`` is a model as it stands.

    >>> parse_model("transformers:tiny", ["audiocraft", "transformers"])
    ModelSource(text='transformers:tiny', model='tiny', backend='transformers')
    >>> parse_model("facebook/musicgen-small", ["audiocraft", "transformers"]).backend is None
    True
    """
    prefix, sep, rest = text.partition(":")
    if sep and prefix in backends:
        if not rest:
            raise NoiseProbeError(
                f"Expected --model {prefix}:MODEL with a model after the ':' but got {text!r}."
            )
        return ModelSource(text, rest, prefix)
    return ModelSource(text, text)


@dataclass
class Comparison:
    """The outcome of :func:`run_compare`.

    Attributes:
        models: per model: ``model`` (as given), ``backend``, ``codec`` (hash of its codec
            weights), ``summary``, ``by_length``, and ``regions`` (each region's per-item mean
            loss difference, for the figures; NaN where a region is empty).
        clips, skipped_clips: the probe set's clips and those left out (``{"path", "reason"}``).
        tokenized: how many tokenizations were needed (one per distinct codec).
    """

    models: list[dict[str, Any]] = field(default_factory=list)
    clips: list[str] = field(default_factory=list)
    skipped_clips: list[dict[str, str]] = field(default_factory=list)
    tokenized: int = 0


def _load(
    source: ModelSource,
    default_backend: str,
    base: str | None,
    device: str,
    loader: CheckpointLoader,
) -> tuple[ProbeBackend, str]:
    """The model of ``source`` and its backend's name: a file is a Lightning checkpoint, a
    checkpoint folder loads with its kind's backend, anything else as ``probe --model`` does."""
    from lightning_noiseprobe.backends.base import get_backend
    from lightning_noiseprobe.posthoc.checkpoints import (
        CHECKPOINT_KINDS,
        checkpoint_kind,
        read_checkpoint,
    )

    if os.path.isfile(source.model):
        ckpt = read_checkpoint(Path(source.model), "lightning")
        name = str(ckpt.hparams["backend"])
        if source.backend not in (None, name):
            raise NoiseProbeError(
                f"Expected --model {source.text!r} to name the backend its checkpoint was trained with"
                f" but the checkpoint's hyper_parameters say {name!r}. Write --model {source.model}."
            )
        return loader.load(ckpt), name
    kind = checkpoint_kind(source.model) if os.path.isdir(source.model) else None
    name = source.backend or (CHECKPOINT_KINDS[kind] if kind else None) or default_backend
    extra = {"base": base} if source.is_adapter and base is not None else {}
    backend = get_backend(name, model=source.model, device=device, **extra).load()
    backend.lm.eval()
    return backend, name


def run_compare(
    sources: Sequence[ModelSource],
    audio: Sequence[str | os.PathLike[str]],
    spec: ProbeSpec,
    *,
    default_backend: str = "audiocraft",
    base: str | None = None,
    descriptions: str | None = None,
    unconditional: bool = False,
    batch_size: int = 8,
    precision: str = "32",
    device: str = "cpu",
    cache_dir: Path | None = None,
    strict: bool = False,
    progress: bool = False,
    note: Callable[[str], None] = log.info,
) -> Comparison:
    """Score every model of ``sources`` on one probe set, one model in memory at a time.

    Args:
        sources: the models (:func:`parse_model`).
        audio: the probe clips (files).
        spec: the probe set.
        default_backend: the backend of a model given without one that is no checkpoint.
        base: the base model of PEFT adapter folders among the models.
        descriptions, unconditional, batch_size, precision, device, cache_dir, strict: as
            ``noiseprobe probe``.
        progress: show a progress bar over the models.
        note: called with what a user should see (a model that needs its own tokenization).

    Raises:
        NoiseProbeError: a model that cannot be loaded; no usable clip.
    """
    from lightning_noiseprobe.posthoc._scoring import ProbeSets
    from lightning_noiseprobe.posthoc.checkpoints import CheckpointLoader

    out = Comparison()
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
    loader = CheckpointLoader(device, base)
    bar: Any = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(sources), desc="comparing models", unit="model")
    try:
        for source in sources:
            loader.release()  # one model at a time
            backend, name = _load(source, default_backend, base, device, loader)
            probe_set, codec = sets.probe_set(
                backend, f"{source.text} has its own codec: tokenizing the probe set with it."
            )
            result = sets.score(backend, probe_set, source.text)
            del backend
            out.models.append(
                {
                    "model": source.text,
                    "backend": name,
                    "num_clips": len(result.clip_names),
                    **sets.fields(result, codec),
                    "regions": {
                        region: getattr(result.analysis, f"{region}_mean").reshape(-1).tolist()
                        for region in ("peak", "assimilation", "recovery")
                    },
                }
            )
            if not out.clips:
                out.clips, out.skipped_clips = list(result.clip_names), list(result.skipped)
            if bar is not None:
                bar.update(1)
    finally:
        loader.release()
        if bar is not None:
            bar.close()
    out.tokenized = sets.tokenized
    return out
