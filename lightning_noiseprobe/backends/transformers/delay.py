"""Teacher forcing through transformers' MusicGen decoder under the delay pattern.

transformers is never imported here: the decoder passed in brings its methods.
"""

from __future__ import annotations

from typing import Any

import torch

from lightning_noiseprobe._errors import NoiseProbeError

__all__ = ["delayed_lm_logits"]


def delayed_lm_logits(
    decoder: torch.nn.Module,
    codes: torch.Tensor,
    encoder_hidden_states: torch.Tensor | None = None,
    encoder_attention_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of a transformers ``MusicgenForCausalLM`` aligned with ``codes`` (teacher forcing).

    MusicGen's delay pattern, as transformers builds it: BOS (``2048``) is
    prepended, ``decoder.build_delay_pattern_mask(ids, 2048, max_length=T + K)``
    shifts codebook ``k`` right by ``k``, and position ``p`` of the delayed
    sequence predicts position ``p + 1``; so the logits of code ``(k, t)``
    sit at position ``t + k``. Only the first ``T`` positions are run (later
    ones predict only tokens that audiocraft masks). As in audiocraft's
    ``compute_predictions``, the last ``d_k = k`` frames of codebook ``k``
    are invalid: ``mask`` is ``False`` and the logits NaN there.

    Args:
        decoder: a ``MusicgenForCausalLM`` (mono: ``audio_channels == 1``).
        codes: ``[B, K, T]`` long codes in ``[0, card)``.
        encoder_hidden_states: ``[B, L, dim]`` text states for cross-attention
            (already projected to the decoder width), or ``None`` (no cross-attention).
        encoder_attention_mask: ``[B, L]`` 0/1 mask of ``encoder_hidden_states``.

    Returns:
        ``(logits, mask)``: ``[B, K, T, card]`` in the decoder's dtype (with
        gradients) and ``[B, K, T]`` bool.

    Raises:
        NoiseProbeError: if the shapes do not fit the decoder.
    """
    dec: Any = decoder  # a MusicgenForCausalLM
    config = dec.config
    if codes.dim() != 3 or codes.shape[1] != dec.num_codebooks or codes.shape[-1] < 1:
        raise NoiseProbeError(
            f"Expected argument `codes` of shape [B, {dec.num_codebooks}, T] with T >= 1 "
            f"but got {tuple(codes.shape)}."
        )
    if config.audio_channels != 1:
        raise NoiseProbeError(
            f"Expected a mono MusicGen decoder (audio_channels=1) but got "
            f"audio_channels={config.audio_channels}; stereo interleaves codebooks differently."
        )
    batch, k_books, frames = codes.shape
    card = int(config.vocab_size)
    bos = config.bos_token_id if config.bos_token_id is not None else card
    pad = config.pad_token_id if config.pad_token_id is not None else card
    codes = codes.long()
    ids = torch.cat([codes.new_full((batch, k_books, 1), bos), codes], dim=-1)
    # transformers only delays when max_length >= 2K - 1; positions >= T are not used anyway.
    max_length = max(frames + k_books, 2 * k_books - 1)
    _, pattern = dec.build_delay_pattern_mask(
        ids.reshape(batch * k_books, frames + 1), pad_token_id=pad, max_length=max_length
    )
    out = dec(
        input_ids=pattern[:, :frames],
        encoder_hidden_states=encoder_hidden_states,
        encoder_attention_mask=encoder_attention_mask,
        use_cache=False,
        return_dict=True,
    )
    logits = out.logits.reshape(batch, k_books, frames, -1)
    pos = (
        torch.arange(frames, device=codes.device)[None, :]
        + torch.arange(k_books, device=codes.device)[:, None]
    )  # [K, T]: the position holding the logits of (k, t)
    valid = pos < frames
    index = pos.clamp(max=frames - 1)[None, :, :, None].expand(batch, -1, -1, logits.shape[-1])
    aligned = logits.gather(2, index)
    mask = valid[None].expand(batch, -1, -1)
    aligned = aligned.masked_fill(~mask[..., None], float("nan"))
    return aligned, mask
