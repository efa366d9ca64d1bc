"""Continuing audiocraft's transformer from kept keys and values (shared-prefix scoring).

:meth:`~lightning_noiseprobe.backends.audiocraft.AudiocraftBackend.token_nll_shared_prefix`
runs each clean sequence once, keeps its self-attention keys and values on
the shared prefix (:func:`self_attention_keys_values`), and runs every
variant only from there on (:func:`continuing`), with PyTorch's fused
attention under an offset causal mask. Covered attention modules:
:func:`continuable_attentions`. audiocraft is imported inside the functions.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

__all__ = ["continuable_attentions", "continuing", "self_attention_keys_values"]


def continuable_attentions(lm: Any) -> list[Any] | None:
    """The LM's causal self-attention modules, if :func:`continuing` can continue them.

    Covered: audiocraft's own attention (``custom``) with packed q/k/v
    projections (``kv_repeat == 1``), no RoPE, no q/k layer norm and no
    limited past context, as in every released MusicGen; else ``None``.
    """
    from audiocraft.modules.transformer import StreamingMultiheadAttention

    found = [
        m
        for m in lm.transformer.modules()
        if isinstance(m, StreamingMultiheadAttention) and not m.cross_attention
    ]
    if not found or not all(
        m.causal
        and m.custom
        and m.kv_repeat == 1
        and m.rope is None
        and not m.qk_layer_norm
        and m.past_context is None
        for m in found
    ):
        return None
    return found


def self_attention_keys_values(module: Any, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values ``[B, heads, S, head_dim]`` of audiocraft self-attention for input ``x`` ``[B, S, dim]``.

    The packed projection audiocraft applies (``b t (p h d)``, p = q, k, v).
    """
    projected = torch.nn.functional.linear(x, module.in_proj_weight, module.in_proj_bias)
    B, S, _ = projected.shape
    heads = module.num_heads
    packed = projected.view(B, S, 3, heads, projected.shape[-1] // (3 * heads))
    return packed[:, :, 1].transpose(1, 2), packed[:, :, 2].transpose(1, 2)


@contextlib.contextmanager
def continuing(
    transformer: Any,
    past: dict[Any, tuple[torch.Tensor, torch.Tensor]],
    index: torch.Tensor,
    split: int,
) -> Iterator[None]:
    """Run ``transformer`` on positions ``[split, ...)`` of rows whose earlier keys/values are ``past``.

    ``past[m]`` holds self-attention module ``m``'s keys and values at
    positions ``< split`` per clean sequence (transformer positions:
    conditions prepended to the sequence count); row ``r`` uses sequence
    ``index[r]``. Positions continue through the transformer's streaming
    offsets (sinusoidal embeddings); each self-attention module's ``forward``
    is replaced for the block by a continuation with PyTorch's fused attention
    and restored afterwards, with the streaming state.
    """
    rows = index.shape[0]
    try:
        for module, (keys, values) in past.items():
            module.forward = _continuation_forward(
                module, keys.index_select(0, index), values.index_select(0, index)
            )
        with transformer.streaming():
            transformer.set_streaming_state(
                {"offsets": torch.full((rows,), split, dtype=torch.long, device=index.device)}
            )
            yield
    finally:
        for module in past:
            module.__dict__.pop("forward", None)


def _continuation_forward(module: Any, past_keys: torch.Tensor, past_values: torch.Tensor) -> Any:
    """A ``forward`` for audiocraft self-attention that attends to ``past_*`` then causally to itself."""

    def forward(query: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, None]:
        projected = torch.nn.functional.linear(query, module.in_proj_weight, module.in_proj_bias)
        B, L, _ = projected.shape
        heads = module.num_heads
        q, k, v = projected.view(B, L, 3, heads, projected.shape[-1] // (3 * heads)).permute(
            2, 0, 3, 1, 4
        )
        k = torch.cat([past_keys.to(k.dtype), k], dim=2)
        v = torch.cat([past_values.to(v.dtype), v], dim=2)
        if module.attention_as_float32:
            q, k, v = q.float(), k.float(), v.float()
        S = k.shape[2]
        # query i sits at position S - L + i and sees keys 0 .. S - L + i
        mask = torch.ones(L, S, dtype=torch.bool, device=q.device).tril(diagonal=S - L)
        x = torch.nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=module.dropout if module.training else 0.0
        )
        x = x.to(query.dtype).transpose(1, 2).reshape(B, L, -1)
        return module.out_proj(x), None

    return forward
