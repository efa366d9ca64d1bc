"""Fast scoring for the transformers MusicGen backend: fused heads, shared clean prefix.

The transformers twin of ``AudiocraftBackend.token_nll_fast`` and
``token_nll_shared_prefix``, for a stock ``MusicgenForConditionalGeneration``
(mono, delay pattern ``[0, 1, ..., K - 1]``):

* :func:`token_nll_fast` runs the decoder (``MusicgenDecoder``, without its
  ``lm_heads``) on the delayed sequence and takes each of the K heads'
  cross-entropy only at the positions that score a frame (frame ``t`` of
  codebook ``k`` at delayed position ``t + k``), in row chunks whose logits stay
  in cache (:func:`~lightning_noiseprobe.backends._common.delayed_heads_nll`,
  shared with the audiocraft backend); ``MusicgenForCausalLM.forward`` +
  :func:`~lightning_noiseprobe.backends.transformers.delayed_lm_logits` would
  materialise, gather, NaN-fill and log-softmax the whole ``[B, K, T, card]``.
* :func:`token_nll_shared_prefix` runs each clean sequence once with
  ``use_cache=True`` and continues every perturbed copy from the clean
  ``DynamicCache`` cut to the shared prefix and expanded to the copies
  (``EncoderDecoderCache``: positions continue from the cache length, the
  causal mask is offset by transformers itself), so the copies' prefix is never
  computed, neither decoder nor heads.

Both give :meth:`TransformersBackend.token_nll`'s values up to float rounding
(``tests/test_speed.py``). transformers is imported only inside functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from lightning_noiseprobe._errors import NoiseProbeError
from lightning_noiseprobe.backends._common import delayed_heads_nll, outside_inference_mode

if TYPE_CHECKING:
    from lightning_noiseprobe.backends.transformers.backend import TransformersBackend

__all__ = [
    "FastScoringMixin",
    "delayed_input",
    "fast_path_supported",
    "heads_nll",
    "token_nll_fast",
    "token_nll_shared_prefix",
]


def fast_path_supported(backend: TransformersBackend) -> bool:
    """Whether the fused paths apply: a stock mono MusicGen decoder with eager or SDPA attention.

    Anything else (a subclass overriding ``forward``, stereo, flash/flex
    attention, gradient checkpointing, LayerDrop) takes the slow path
    (:meth:`~lightning_noiseprobe.backends.base.ProbeBackend.token_nll`).
    """
    from transformers import MusicgenForCausalLM
    from transformers.models.musicgen.modeling_musicgen import MusicgenDecoder

    model: Any = backend.musicgen
    dec = model.decoder
    inner = getattr(getattr(dec, "model", None), "decoder", None)
    config = dec.config
    return (
        type(dec).forward is MusicgenForCausalLM.forward
        and inner is not None
        and type(inner).forward is MusicgenDecoder.forward
        and config.audio_channels == 1
        and config._attn_implementation in ("eager", "sdpa")
        and not getattr(inner, "gradient_checkpointing", False)
        and not (inner.training and inner.layerdrop > 0)
        and all(head.weight.shape[0] == config.vocab_size for head in dec.lm_heads)
    )


def delayed_input(decoder: Any, codes: torch.Tensor) -> torch.Tensor:
    """The decoder's input ``[B, K, T]`` for ``codes`` under MusicGen's delay pattern.

    Exactly the first ``T`` positions that
    :func:`~lightning_noiseprobe.backends.transformers.delayed_lm_logits` feeds
    (BOS prepended, ``build_delay_pattern_mask``); position ``p`` of codebook
    ``q`` holds frame ``p - 1 - q``, so it reads only frames ``< p``.
    """
    config = decoder.config
    batch, k_books, frames = codes.shape
    card = int(config.vocab_size)
    bos = config.bos_token_id if config.bos_token_id is not None else card
    pad = config.pad_token_id if config.pad_token_id is not None else card
    ids = torch.cat([codes.new_full((batch, k_books, 1), bos), codes.long()], dim=-1)
    max_length = max(frames + k_books, 2 * k_books - 1)
    _, pattern = decoder.build_delay_pattern_mask(
        ids.reshape(batch * k_books, frames + 1), pad_token_id=pad, max_length=max_length
    )
    return pattern[:, :frames].reshape(batch, k_books, frames)


def _decoder_states(
    decoder: Any,
    ids: torch.Tensor,
    text: torch.Tensor,
    text_mask: torch.Tensor,
    past: Any = None,
    keep_cache: bool = False,
) -> tuple[torch.Tensor, Any]:
    """Final hidden states ``[B, L, dim]`` of ``MusicgenDecoder`` (layer norm included) and its cache."""
    from lightning_noiseprobe.backends.transformers.compat import cache_kwargs, output_cache

    batch, k_books, length = ids.shape
    out = decoder.model.decoder(
        input_ids=ids.reshape(batch * k_books, length),
        encoder_hidden_states=text,
        encoder_attention_mask=text_mask,
        use_cache=keep_cache or past is not None,
        return_dict=True,
        **cache_kwargs(past),
    )
    return out.last_hidden_state, output_cache(out)


def heads_nll(
    hidden: torch.Tensor,
    heads: Sequence[torch.nn.Module],
    codes: torch.Tensor,
    start: int,
    first_frame: int = 0,
) -> torch.Tensor:
    """Per-token NLL ``[B, K, T]`` from decoder states at delayed positions ``[start, start + L)``:
    :func:`~lightning_noiseprobe.backends._common.delayed_heads_nll` with MusicGen's delays
    ``[0, 1, ..., K - 1]`` (position ``p`` of codebook ``k`` scores frame ``p - k``)."""
    return delayed_heads_nll(hidden, heads, codes, range(codes.shape[1]), start, first_frame)


def _delay_mask(batch: int, k_books: int, frames: int, device: torch.device) -> torch.Tensor:
    """``[B, K, T]`` bool: frame ``t`` of codebook ``k`` is scored iff ``t < T - k``."""
    limit = frames - torch.arange(k_books, device=device)
    return (torch.arange(frames, device=device) < limit[:, None])[None].expand(batch, -1, -1)


def token_nll_fast(
    backend: TransformersBackend,
    codes: torch.Tensor,
    descriptions: Sequence[str | None] | None = None,
    score_from: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:meth:`TransformersBackend.token_nll` without the full logits, for scoring.

    Same values (float32 rounding) and mask on frames from ``score_from`` on;
    earlier frames hold 0 (their heads are skipped). Meant for ``torch.no_grad()``.
    """
    model: Any = backend.musicgen
    codes = codes.to(backend.device, torch.long)
    B, K, T = codes.shape
    with outside_inference_mode():
        text, text_mask = backend._encoder_states(B, descriptions)
        states, _ = _decoder_states(
            model.decoder, delayed_input(model.decoder, codes), text, text_mask
        )
        nll = heads_nll(states, model.decoder.lm_heads, codes, 0, max(0, int(score_from)))
    return nll, _delay_mask(B, K, T, codes.device)


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
    backend: TransformersBackend,
    codes: torch.Tensor,
    variants: torch.Tensor,
    descriptions: Sequence[str | None] | None = None,
    *,
    shared_frames: int = 0,
    batch_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token NLL of clean sequences and their variants, running each shared prefix once.

    The argument and result contract of
    :meth:`~lightning_noiseprobe.backends.base.ProbeBackend.token_nll_shared_prefix`.
    Delayed position ``p`` reads frames ``< p`` and scores frame ``p - k``,
    so positions ``< shared_frames`` are the same for a clean sequence and its
    variants. With one position of margin, ``split = shared_frames - 1``: each
    clean sequence runs in full once with ``use_cache=True``; its cache, cut to
    positions ``< split`` and expanded to the variants, continues each variant
    from position ``split``. Frame ``t`` of codebook ``k`` comes from the clean
    pass when ``t + k < split``, else from the continuation. One clean pass and
    ``ceil(B * P / batch_size)`` continuation passes per call, whatever the data.
    """
    model: Any = backend.musicgen
    decoder = model.decoder
    B, P, K, T = variants.shape
    device = backend.device
    codes = codes.to(device, torch.long)
    rows = variants.to(device, torch.long).reshape(B * P, K, T)
    owner = torch.arange(B, device=device).repeat_interleave(P)
    size = rows.shape[0] if batch_size is None else max(1, int(batch_size))
    split = max(0, min(int(shared_frames) - 1, T - 1))
    with outside_inference_mode():
        text, text_mask = backend._encoder_states(B, descriptions)
        states, cache = _decoder_states(
            decoder, delayed_input(decoder, codes), text, text_mask, keep_cache=split > 0
        )
        clean_nll = heads_nll(states, decoder.lm_heads, codes, 0)
        del states
        before = torch.arange(T, device=device) < (split - torch.arange(K, device=device))[:, None]
        prefix_nll = clean_nll * before  # frames scored at positions < split
        sequence = delayed_input(decoder, rows)[..., split:]
        parts: list[torch.Tensor] = []
        for i in range(0, rows.shape[0], size):
            index = owner[i : i + size]
            past = _prefix_cache(cache, split, index) if split > 0 else None
            suffix, _ = _decoder_states(
                decoder, sequence[i : i + size], text[index], text_mask[index], past
            )
            suffix_nll = heads_nll(suffix, decoder.lm_heads, rows[i : i + size], split)
            # frames of the continuation all have t + k >= split: disjoint, so the sum is exact
            parts.append(prefix_nll.index_select(0, index) + suffix_nll)
    nll = torch.cat([clean_nll[:, None], torch.cat(parts).reshape(B, P, K, T)], dim=1)
    mask = _delay_mask(B * (1 + P), K, T, device).reshape(B, 1 + P, K, T)
    return nll, mask


class FastScoringMixin:
    """The fast scoring members of :class:`~lightning_noiseprobe.backends.transformers.TransformersBackend`.

    Mixed in before :class:`~lightning_noiseprobe.backends.base.ProbeBackend`:
    they override its defaults, and fall back to them (full scoring through
    ``token_nll``) when :func:`fast_path_supported` says no.
    """

    def token_nll_fast(
        self,
        codes: torch.Tensor,
        descriptions: Sequence[str | None] | None = None,
        score_from: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``token_nll`` with fused heads, for scoring (:func:`token_nll_fast`)."""
        backend: Any = self
        backend._require_loaded()
        if not fast_path_supported(backend):
            return backend.token_nll(codes, descriptions)  # type: ignore[no-any-return]
        _check_codes(backend, codes)
        return token_nll_fast(backend, codes, descriptions, score_from)

    @property
    def supports_prefix_sharing(self) -> bool:
        """``True`` when the fused, cache-continuing path covers the loaded model."""
        backend: Any = self
        return backend._model is not None and fast_path_supported(backend)

    def token_nll_shared_prefix(
        self,
        codes: torch.Tensor,
        variants: torch.Tensor,
        descriptions: Sequence[str | None] | None = None,
        *,
        shared_frames: int = 0,
        batch_size: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each clean sequence once, its variants continued from the shared prefix.

        See :func:`token_nll_shared_prefix`; falls back to full scoring of every
        sequence when the model is not covered.
        """
        backend: Any = self
        backend._require_loaded()
        _check_codes(backend, codes)
        B, P, K, T = variants.shape
        if codes.shape != (B, K, T):
            raise NoiseProbeError(
                f"Expected argument `variants` of shape [{codes.shape[0]}, P, {codes.shape[1]}, "
                f"{codes.shape[2]}] (P variants of each clean sequence) but got "
                f"{tuple(variants.shape)}."
            )
        if P == 0 or not fast_path_supported(backend):
            return super().token_nll_shared_prefix(  # type: ignore[misc,no-any-return]
                codes, variants, descriptions, shared_frames=0, batch_size=batch_size
            )
        return token_nll_shared_prefix(
            backend,
            codes,
            variants,
            descriptions,
            shared_frames=shared_frames,
            batch_size=batch_size,
        )


def _check_codes(backend: Any, codes: torch.Tensor) -> None:
    if codes.dim() != 3 or codes.shape[1] != backend.num_codebooks:
        raise NoiseProbeError(
            f"Expected argument `codes` of shape [B, {backend.num_codebooks}, T] "
            f"but got {tuple(codes.shape)}."
        )
