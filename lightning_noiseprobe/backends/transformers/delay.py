"""Teacher forcing through transformers' MusicGen decoders under the delay pattern.

transformers is never imported here: the decoder passed in brings its methods.
"""

from __future__ import annotations

from typing import Any

import torch

from lightning_noiseprobe._errors import NoiseProbeError

__all__ = ["codebook_delays", "delayed_lm_logits"]


def codebook_delays(config: Any) -> list[int]:
    """The delay of each codebook of a transformers MusicGen decoder (its config).

    Mono (``audio_channels=1``): ``[0, 1, ..., K - 1]``. Stereo (``audio_channels=2``):
    codebooks ``2c`` and ``2c + 1`` are the left and right codes of the codec's
    codebook ``c`` (interleaved, as transformers' ``build_delay_pattern_mask`` and
    audiocraft's ``InterleaveStereoCompressionModel`` order them) and share delay
    ``c``: ``[0, 0, 1, 1, ..., K/2 - 1, K/2 - 1]``.

    Example:
        >>> from types import SimpleNamespace
        >>> codebook_delays(SimpleNamespace(num_codebooks=8, audio_channels=2))
        [0, 0, 1, 1, 2, 2, 3, 3]
    """
    books, channels = int(config.num_codebooks), int(getattr(config, "audio_channels", 1))
    if channels not in (1, 2) or books % channels:
        raise NoiseProbeError(
            f"Expected a MusicGen decoder config with audio_channels 1 or 2 dividing "
            f"num_codebooks but got audio_channels={channels}, num_codebooks={books}."
        )
    return [k // channels for k in range(books)]


def delayed_input(decoder: Any, codes: torch.Tensor) -> torch.Tensor:
    """The decoder's input ``[B, K, T]`` for ``codes`` under MusicGen's delay pattern.

    As transformers builds it: BOS (``2048``) prepended, then
    ``decoder.build_delay_pattern_mask`` (which shifts codebook ``k`` right by its
    delay, :func:`codebook_delays`, and pads with ``2048``); the first ``T``
    positions. Position ``p`` of codebook ``k`` holds frame ``p - 1 - delay_k``,
    so it reads only frames ``< p``.
    """
    config = decoder.config
    batch, k_books, frames = codes.shape
    card = int(config.vocab_size)
    bos = config.bos_token_id if config.bos_token_id is not None else card
    pad = config.pad_token_id if config.pad_token_id is not None else card
    ids = torch.cat([codes.new_full((batch, k_books, 1), bos), codes.long()], dim=-1)
    groups = max(codebook_delays(config)) + 1  # the codec's codebooks (per channel)
    # transformers only delays when max_length >= 2 * groups - 1; positions >= T are not used anyway
    max_length = max(frames + groups, 2 * groups - 1)
    _, pattern = decoder.build_delay_pattern_mask(
        ids.reshape(batch * k_books, frames + 1), pad_token_id=pad, max_length=max_length
    )
    return pattern[:, :frames].reshape(batch, k_books, frames)


def delay_mask(delays: list[int], batch: int, frames: int, device: torch.device) -> torch.Tensor:
    """``[B, K, T]`` bool: frame ``t`` of codebook ``k`` is scored iff ``t + delays[k] < T``
    (as audiocraft's ``compute_predictions``: the last frames of a delayed codebook have
    no logits among the first ``T`` positions)."""
    limit = frames - torch.tensor(delays, device=device)
    return (torch.arange(frames, device=device) < limit[:, None])[None].expand(batch, -1, -1)


def delayed_lm_logits(
    decoder: torch.nn.Module,
    codes: torch.Tensor,
    encoder_hidden_states: torch.Tensor | None = None,
    encoder_attention_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of a transformers MusicGen decoder aligned with ``codes`` (teacher forcing).

    MusicGen's delay pattern, as transformers builds it (:func:`delayed_input`):
    position ``p`` of the delayed sequence predicts position ``p + 1``, so the
    logits of code ``(k, t)`` sit at position ``t + delay_k``
    (:func:`codebook_delays`: ``k`` for mono, ``k // 2`` for stereo). Only the first
    ``T`` positions are run (later ones predict only tokens that audiocraft masks).
    As in audiocraft's ``compute_predictions``, the last ``delay_k`` frames of
    codebook ``k`` are invalid: ``mask`` is ``False`` and the logits NaN there.

    Args:
        decoder: a ``MusicgenForCausalLM`` (mono or stereo; ``encoder_hidden_states``
            feed its cross-attention) or a ``MusicgenMelodyForCausalLM``
            (``encoder_hidden_states`` are *prepended* to the sequence, as in
            ``MusicgenMelodyForConditionalGeneration``; their logits are dropped).
        codes: ``[B, K, T]`` long codes in ``[0, card)``.
        encoder_hidden_states: ``[B, L, dim]`` condition states (already projected to
            the decoder width), or ``None`` (no condition).
        encoder_attention_mask: ``[B, L]`` 0/1 mask of ``encoder_hidden_states``
            (cross-attention; ``None`` for prepended states, which are all attended).

    Returns:
        ``(logits, mask)``: ``[B, K, T, card]`` in the decoder's dtype (with
        gradients) and ``[B, K, T]`` bool.

    Raises:
        NoiseProbeError: if the shapes do not fit the decoder.
    """
    dec: Any = decoder
    if codes.dim() != 3 or codes.shape[1] != dec.num_codebooks or codes.shape[-1] < 1:
        raise NoiseProbeError(
            f"Expected argument `codes` of shape [B, {dec.num_codebooks}, T] with T >= 1 "
            f"but got {tuple(codes.shape)}."
        )
    batch, k_books, frames = codes.shape
    delays = codebook_delays(dec.config)
    kwargs: dict[str, Any] = {"encoder_hidden_states": encoder_hidden_states}
    if encoder_attention_mask is not None:
        kwargs["encoder_attention_mask"] = encoder_attention_mask
    out = dec(
        input_ids=delayed_input(dec, codes).reshape(batch * k_books, frames),
        use_cache=False,
        return_dict=True,
        **kwargs,
    )
    # [B, K, L + T, card] for prepended conditions of length L: keep the codes' positions
    logits = out.logits.reshape(batch, k_books, -1, out.logits.shape[-1])[:, :, -frames:]
    pos = (
        torch.arange(frames, device=codes.device)[None, :]
        + torch.tensor(delays, device=codes.device)[:, None]
    )  # [K, T]: the position holding the logits of (k, t)
    index = pos.clamp(max=frames - 1)[None, :, :, None].expand(batch, -1, -1, logits.shape[-1])
    aligned = logits.gather(2, index)
    mask = delay_mask(delays, batch, frames, codes.device)
    aligned = aligned.masked_fill(~mask[..., None], float("nan"))
    return aligned, mask
