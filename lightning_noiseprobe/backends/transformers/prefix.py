"""Fast scoring kernels for transformers' MusicGen decoders: fused heads, shared clean prefix.

The transformers twin of ``AudiocraftBackend.token_nll_fast`` and
``token_nll_shared_prefix``, for a stock ``MusicgenForCausalLM`` (mono or stereo)
or ``MusicgenMelodyForCausalLM``. Like :mod:`~lightning_noiseprobe.backends.audiocraft.prefix`,
the kernels take what they need explicitly (the decoder, the codes, the
:class:`~lightning_noiseprobe.backends.transformers.conditions.Conditions`) and
know nothing of the backend that calls them:

* :func:`token_nll_fast` runs the decoder (``MusicgenDecoder``, without its
  ``lm_heads``) on the delayed sequence and takes each of the K heads'
  cross-entropy only at the positions that score a frame (frame ``t`` of
  codebook ``k`` at delayed position ``t + delay_k``), in row chunks whose logits stay
  in cache (:func:`~lightning_noiseprobe.backends._common.delayed_heads_nll`,
  shared with the audiocraft backend); ``MusicgenForCausalLM.forward`` +
  :func:`~lightning_noiseprobe.backends.transformers.delay.delayed_lm_logits` would
  materialise, gather, NaN-fill and log-softmax the whole ``[B, K, T, card]``.
* :func:`token_nll_shared_prefix` runs each clean sequence once with
  ``use_cache=True`` and continues every perturbed copy from the clean
  ``DynamicCache`` cut to the shared prefix and expanded to the copies
  (``EncoderDecoderCache``: positions continue from the cache length, the
  causal mask is offset by transformers itself), so the copies' prefix is never
  computed, neither decoder nor heads. Prepended conditions (melody) are part of
  that prefix: they run once per clean sequence too.

Both give ``TransformersBackend.token_nll``'s values up to float rounding
(``tests/test_speed.py``). transformers is imported only inside functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from lightning_noiseprobe.backends._common import delayed_heads_nll
from lightning_noiseprobe.backends.transformers.conditions import Conditions
from lightning_noiseprobe.backends.transformers.delay import (
    codebook_delays,
    delay_mask,
    delayed_input,
)

__all__ = [
    "fast_path_supported",
    "heads_nll",
    "token_nll_fast",
    "token_nll_shared_prefix",
]


def fast_path_supported(model: Any) -> bool:
    """Whether the fused paths apply to ``model`` (a composite MusicGen): a stock decoder
    (``MusicgenForCausalLM`` or ``MusicgenMelodyForCausalLM``) with eager or SDPA attention.

    Anything else (a subclass overriding ``forward``, flash/flex attention, gradient
    checkpointing, LayerDrop) takes the slow path (``token_nll``).
    """
    from transformers import MusicgenForCausalLM, MusicgenMelodyForCausalLM
    from transformers.models.musicgen.modeling_musicgen import MusicgenDecoder
    from transformers.models.musicgen_melody.modeling_musicgen_melody import (
        MusicgenMelodyDecoder,
    )

    dec = model.decoder
    inner: Any = getattr(getattr(dec, "model", None), "decoder", None)
    config = dec.config
    stock = any(
        type(dec).forward is outer.forward and type(inner).forward is decoder.forward
        for outer, decoder in (
            (MusicgenForCausalLM, MusicgenDecoder),
            (MusicgenMelodyForCausalLM, MusicgenMelodyDecoder),
        )
    )
    return (
        stock
        and inner is not None
        and config._attn_implementation in ("eager", "sdpa")
        and not getattr(inner, "gradient_checkpointing", False)
        and not (inner.training and inner.layerdrop > 0)
        and all(head.weight.shape[0] == config.vocab_size for head in dec.lm_heads)
    )


def _decoder_states(
    decoder: Any,
    ids: torch.Tensor,
    conditions: Conditions | None,
    past: Any = None,
    keep_cache: bool = False,
) -> tuple[torch.Tensor, Any]:
    """Final hidden states ``[B, L, dim]`` of the decoder (layer norm included) at the
    positions of ``ids`` ``[B, K, L]`` (prepended conditions dropped), and its cache."""
    from lightning_noiseprobe.backends.transformers.compat import cache_kwargs, output_cache

    batch, k_books, length = ids.shape
    kwargs: dict[str, Any] = {}
    if conditions is not None:
        kwargs["encoder_hidden_states"] = conditions.states
        if conditions.mask is not None:
            kwargs["encoder_attention_mask"] = conditions.mask
    out = decoder.model.decoder(
        input_ids=ids.reshape(batch * k_books, length),
        use_cache=keep_cache or past is not None,
        return_dict=True,
        **kwargs,
        **cache_kwargs(past),
    )
    return out.last_hidden_state[:, -length:], output_cache(out)


def heads_nll(
    hidden: torch.Tensor,
    heads: Sequence[torch.nn.Module],
    codes: torch.Tensor,
    delays: Sequence[int],
    start: int,
    first_frame: int = 0,
) -> torch.Tensor:
    """Per-token NLL ``[B, K, T]`` from decoder states at delayed positions ``[start, start + L)``:
    :func:`~lightning_noiseprobe.backends._common.delayed_heads_nll` with MusicGen's delays
    (:func:`~lightning_noiseprobe.backends.transformers.delay.codebook_delays`)."""
    return delayed_heads_nll(hidden, heads, codes, delays, start, first_frame)


def token_nll_fast(
    decoder: Any,
    codes: torch.Tensor,
    conditions: Conditions,
    score_from: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``token_nll`` of ``codes`` ``[B, K, T]`` under ``conditions``, without the full logits.

    Same values (float32 rounding) and mask as teacher forcing through
    :func:`~lightning_noiseprobe.backends.transformers.delay.delayed_lm_logits` on
    frames from ``score_from`` on; earlier frames hold 0 (their heads are skipped).
    Meant for ``torch.no_grad()``.
    """
    B, _, T = codes.shape
    delays = codebook_delays(decoder.config)
    states, _ = _decoder_states(decoder, delayed_input(decoder, codes), conditions)
    nll = heads_nll(states, decoder.lm_heads, codes, delays, 0, max(0, int(score_from)))
    return nll, delay_mask(delays, B, T, codes.device)


def _prefix_cache(cache: Any, split: int, index: torch.Tensor) -> Any:
    """The self-attention keys/values of ``cache`` at positions ``< split``, rows ``index``.

    A fresh ``EncoderDecoderCache`` (its cross-attention part empty: the
    continuation projects its own text states).
    """
    from transformers import DynamicCache, EncoderDecoderCache

    kept = [
        (
            layer.keys[:, :, :split].index_select(0, index),
            layer.values[:, :, :split].index_select(0, index),
        )
        for layer in cache.self_attention_cache.layers
    ]
    return EncoderDecoderCache(DynamicCache(kept), DynamicCache())


def token_nll_shared_prefix(
    decoder: Any,
    codes: torch.Tensor,
    variants: torch.Tensor,
    conditions: Conditions,
    *,
    shared_frames: int = 0,
    batch_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token NLL of clean sequences and their variants, running each shared prefix once.

    The argument and result contract of
    :meth:`~lightning_noiseprobe.backends.base.ProbeBackend.token_nll_shared_prefix`
    (``conditions`` of the ``B`` clean sequences, shared by their variants).
    Delayed position ``p`` reads frames ``< p`` and scores frame ``p - delay_k``,
    so positions ``< shared_frames`` are the same for a clean sequence and its
    variants. With one position of margin, ``split = shared_frames - 1``: each
    clean sequence runs in full once with ``use_cache=True``; its cache, cut to
    positions ``< split`` (after the prepended conditions, if any) and expanded to
    the variants, continues each variant from position ``split``. Frame ``t`` of
    codebook ``k`` comes from the clean pass when ``t + delay_k < split``, else from
    the continuation. One clean pass and ``ceil(B * P / batch_size)`` continuation
    passes per call, whatever the data.
    """
    B, P, K, T = variants.shape
    device = codes.device
    delays = codebook_delays(decoder.config)
    rows = variants.to(device, torch.long).reshape(B * P, K, T)
    owner = torch.arange(B, device=device).repeat_interleave(P)
    size = rows.shape[0] if batch_size is None else max(1, int(batch_size))
    split = max(0, min(int(shared_frames) - 1, T - 1))
    cached = conditions.prepended or split > 0
    states, cache = _decoder_states(
        decoder, delayed_input(decoder, codes), conditions, keep_cache=cached
    )
    clean_nll = heads_nll(states, decoder.lm_heads, codes, delays, 0)
    del states
    lag = torch.tensor(delays, device=device)
    before = torch.arange(T, device=device) < (split - lag)[:, None]
    prefix_nll = clean_nll * before  # frames scored at positions < split
    sequence = delayed_input(decoder, rows)[..., split:]
    kept = conditions.prefix_length + split  # cached positions every continuation reads
    parts: list[torch.Tensor] = []
    for i in range(0, rows.shape[0], size):
        index = owner[i : i + size]
        past = _prefix_cache(cache, kept, index) if kept > 0 else None
        # cross-attended text goes with every pass; prepended conditions are in the cache
        own = None if conditions.prepended else conditions.rows(index)
        suffix, _ = _decoder_states(decoder, sequence[i : i + size], own, past)
        suffix_nll = heads_nll(suffix, decoder.lm_heads, rows[i : i + size], delays, split)
        # frames of the continuation all have t + delay_k >= split: disjoint, so the sum is exact
        parts.append(prefix_nll.index_select(0, index) + suffix_nll)
    nll = torch.cat([clean_nll[:, None], torch.cat(parts).reshape(B, P, K, T)], dim=1)
    mask = delay_mask(delays, B * (1 + P), T, device).reshape(B, 1 + P, K, T)
    return nll, mask
