"""Where transformers 4 and 5 differ for this package, in one place.

The package runs on transformers 4 (the pinned 4.57.1) and 5 (read against 5.25,
its ``MIGRATION_GUIDE_V5.md`` and ``models/musicgen``). The differences it meets:

* **Composite configs**: 5 removed ``MusicgenConfig.from_sub_models_config`` (the
  guide: "methods to init a nested config such as ``from_xxx_config`` are deleted").
  Both majors take the sub-configs as dicts in the constructor:
  :func:`musicgen_config`.
* **The decoder's cache argument**: 5.x renamed ``past_key_values`` to ``cache`` (5.25 has it)
  (in ``forward`` and in the outputs; the old name warns and goes in 5.40):
  :func:`cache_kwargs`, :func:`output_cache`.
* **A folder without tokenizer files**: 4's ``AutoTokenizer.from_pretrained`` fails
  on it; 5 builds an empty, untrained tokenizer of the config's class (the guide:
  tokenizers "trained or empty"), which would silently turn every text into
  ``<unk>``. :func:`load_tokenizer` returns ``None`` for such a source in both.
* **Activation checkpointing**: a 5.x release renamed ``gradient_checkpointing_enable``
  to ``activation_checkpointing_enable`` (the old name warns, goes in 6):
  :func:`enable_activation_checkpointing`.
* **Saved processors**: 4 writes the feature extractor to ``preprocessor_config.json``,
  5 nests it in ``processor_config.json``; each reads its own (and 5 the old file), so
  :mod:`.hf_folder` lets ``save_pretrained`` pick.
* **Composites built from parts**: 5.25's ``MusicgenForConditionalGeneration(text_encoder=,
  audio_encoder=, decoder=)`` (the way transformers' own conversion script builds one)
  leaves the decoder's ``config._attn_implementation`` ``None``; the decoder then
  attends without its causal mask (transformers' own forward too: logits off by 0.045 on
  ``tiny-stereo``, per-token NLL by up to 1.6 nats, measured). 4.57 keeps ``"sdpa"``.
  :func:`unset_attention` finds such parts, and the backend refuses the model, saying
  how to set it (fixing it in place would change the user's training).
* **Tokenizer classes**: 5 keeps one class per model, ``T5TokenizerFast`` is an alias
  of ``T5Tokenizer`` (backed by ``tokenizers``): check ``isinstance(tok,
  T5TokenizerFast)``, never the class name.

What stayed the same and is used as is: ``MusicgenForConditionalGeneration``'s
``text_encoder``/``audio_encoder``/``decoder``/``enc_to_dec_proj``,
``build_delay_pattern_mask``, ``DynamicCache``/``EncoderDecoderCache`` and their
``layers[i].keys``/``values``, ``from_pretrained(..., dtype=...)``,
``T5TokenizerFast(tokenizer_object=...)``, ``MusicgenProcessor``, and the Trainer's
callback events (``processing_class=`` from 4.46 on; 5 removed ``Trainer(tokenizer=)``).

transformers is imported inside the functions.
"""

from __future__ import annotations

import inspect
from functools import lru_cache
from typing import Any

__all__ = [
    "cache_kwargs",
    "enable_activation_checkpointing",
    "load_tokenizer",
    "musicgen_config",
    "output_cache",
    "unset_attention",
]


def musicgen_config(text_encoder: Any, audio_encoder: Any, decoder: Any, **extra: Any) -> Any:
    """A ``MusicgenConfig`` from its three sub-configs (``T5Config``, ``EncodecConfig``,
    ``MusicgenDecoderConfig``), as 4's ``from_sub_models_config`` made it; a
    ``MusicgenMelodyConfig`` for a ``MusicgenMelodyDecoderConfig`` (``extra``: its
    ``num_chroma``, ``chroma_length``).

    The sub-configs go in as dicts with their ``model_type``, which both majors' constructors
    accept (4's accepts only dicts, 5's dicts or config objects).
    """
    from transformers import MusicgenConfig, MusicgenMelodyConfig

    melody = decoder.model_type == "musicgen_melody_decoder"
    return (MusicgenMelodyConfig if melody else MusicgenConfig)(
        text_encoder=text_encoder.to_dict(),
        audio_encoder=audio_encoder.to_dict(),
        decoder=decoder.to_dict(),
        **extra,
    )


@lru_cache(maxsize=1)
def _cache_name() -> str:
    from transformers.models.musicgen.modeling_musicgen import MusicgenDecoder

    params = inspect.signature(MusicgenDecoder.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def cache_kwargs(cache: Any) -> dict[str, Any]:
    """The keyword that passes a key/value ``cache`` to ``MusicgenDecoder.forward``:
    ``{"cache": cache}`` where ``forward`` has that parameter, else ``{"past_key_values": cache}``."""
    return {_cache_name(): cache}


def output_cache(outputs: Any) -> Any:
    """The key/value cache a decoder call returned (``outputs.cache`` or
    ``outputs.past_key_values``, by the installed transformers), ``None`` if none."""
    return getattr(outputs, _cache_name(), None)


def load_tokenizer(source: str, local_only: bool) -> Any:
    """``AutoTokenizer.from_pretrained(source)``, or ``None`` when ``source`` has no tokenizer.

    A source has a tokenizer when it holds ``tokenizer_config.json`` (every
    ``save_pretrained`` of a tokenizer or processor writes it, in both majors, and
    the MusicGen hub repositories have it). Without it transformers 5 would build an
    empty tokenizer instead of failing, so the file is checked first.
    """
    from transformers import AutoTokenizer
    from transformers.models.auto.tokenization_auto import get_tokenizer_config

    try:
        if not get_tokenizer_config(source, local_files_only=local_only):
            return None
        return AutoTokenizer.from_pretrained(source, local_files_only=local_only)
    except (OSError, ValueError, TypeError):
        return None  # unreadable tokenizer files: unconditional scoring only


def enable_activation_checkpointing(model: Any) -> None:
    """Non-reentrant activation checkpointing on a transformers ``PreTrainedModel``.

    ``activation_checkpointing_enable`` where it exists (transformers 5 deprecates
    ``gradient_checkpointing_enable``), else ``gradient_checkpointing_enable``. Both set
    each layer's ``gradient_checkpointing`` flag.
    """
    kwargs = {"use_reentrant": False}
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def unset_attention(model: Any) -> list[str]:
    """The parts of a composite MusicGen (``decoder``, ``text_encoder``) whose attention
    implementation is unset (``config._attn_implementation`` is ``None``), in that order.

    transformers 5 leaves the decoder's unset in a composite built from its parts, and the
    decoder then attends without its causal mask. Empty for any model ``from_pretrained``
    loaded and for 4.57's composites.
    """
    return [
        name
        for name in ("decoder", "text_encoder")
        if getattr(getattr(getattr(model, name, None), "config", None), "_attn_implementation", "")
        is None
    ]
