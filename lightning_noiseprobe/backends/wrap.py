"""A backend for a model the user already holds (:func:`as_backend`).

Apart from :mod:`._common` (which every backend imports) so that no backend module
imports another: this one imports both, inside the function.
"""

from __future__ import annotations

from typing import Any

from lightning_noiseprobe.backends._common import unwrap_model

__all__ = ["as_backend"]


def as_backend(model: Any) -> Any:
    """A :class:`~lightning_noiseprobe.backends.base.ProbeBackend` for ``model``, wrapped in place.

    ``model`` may be a backend (returned as is), an audiocraft ``MusicGen`` or a transformers
    ``MusicgenForConditionalGeneration``, each possibly inside DDP/accelerate/PEFT wrappers
    (:func:`unwrap_model`). Nothing is copied and no flag or config changes.

    Raises:
        NoiseProbeError: for an LM without its codec (audiocraft ``LMModel``, transformers
            ``MusicgenForCausalLM``), or anything else; the message says what to pass.
    """
    from lightning_noiseprobe._errors import NoiseProbeError
    from lightning_noiseprobe.backends.base import ProbeBackend

    if isinstance(model, ProbeBackend):
        return model
    inner = unwrap_model(model)
    kind = type(inner).__name__
    if hasattr(inner, "lm") and hasattr(inner, "compression_model"):
        from lightning_noiseprobe.backends.audiocraft import AudiocraftBackend

        return AudiocraftBackend.from_model(inner)
    if hasattr(inner, "audio_encoder") and hasattr(inner, "decoder"):
        from lightning_noiseprobe.backends.transformers import TransformersBackend

        return TransformersBackend.from_model(inner)
    if kind == "LMModel":
        raise NoiseProbeError(
            "Expected a model with its audio codec but got an audiocraft LMModel (the LM alone:"
            " the probe must tokenize audio). Pass the MusicGen that holds it (`musicgen`, whose"
            " `.lm` it is), or AudiocraftBackend.from_model(musicgen)."
        )
    if kind == "MusicgenForCausalLM":
        raise NoiseProbeError(
            "Expected a model with its audio codec but got a transformers MusicgenForCausalLM (the"
            " decoder alone: the probe must tokenize audio). Pass the"
            " MusicgenForConditionalGeneration that holds it (its `.decoder`), or"
            " TransformersBackend.from_model(model)."
        )
    raise NoiseProbeError(
        "Expected a ProbeBackend, an audiocraft MusicGen or a transformers"
        f" MusicgenForConditionalGeneration (wrapped or not) but got {type(model).__name__}"
        + (f" (inside it: {kind})" if inner is not model else "")
        + "."
    )
