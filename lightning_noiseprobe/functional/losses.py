r"""Per-token losses of a multi-codebook LM (audiocraft's training-loss contract).

Pure tensor functions. Shapes follow audiocraft: logits ``[B, K, T, card]``,
codes and masks ``[B, K, T]`` aligned with the codes (no shift). Positions
where ``mask`` is ``False`` (delay-pattern padding, audio padding) carry NaN
logits in audiocraft; here they are neutralised before any reduction, so
neither the values nor the gradients ever turn NaN.
"""

from __future__ import annotations

import torch

from lightning_noiseprobe._errors import NoiseProbeError

__all__ = ["codebook_cross_entropy", "token_nll_from_logits"]


def token_nll_from_logits(
    logits: torch.Tensor,
    codes: torch.Tensor,
    mask: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token negative log-likelihood ``-log p(codes[b, k, t])``.

    The log-softmax runs in float32 whatever the dtype of ``logits`` (bf16,
    fp16, autocast). Invalid logits (NaN in audiocraft) and invalid codes
    (e.g. the special token ``card``) are replaced where ``mask`` is ``False``
    before the log-softmax, and ``nll`` holds 0 there. Differentiable.

    Args:
        logits: ``[B, K, T, card]`` float logits aligned with ``codes``.
        codes: ``[B, K, T]`` integer targets in ``[0, card)`` where ``mask`` is ``True``.
        mask: ``[B, K, T]`` validity mask (bool or 0/1).

    Returns:
        ``(nll, mask)``: ``nll`` ``[B, K, T]`` float32 (0 where invalid) and
        ``mask`` ``[B, K, T]`` bool.

    Raises:
        NoiseProbeError: if the shapes do not match.

    Example:
        >>> logits = torch.zeros(1, 2, 3, 4)
        >>> logits[0, 1, 2] = float("nan")  # an invalid delay-pattern position
        >>> codes = torch.tensor([[[0, 1, 2], [3, 0, 4]]])  # 4 == card: the special token
        >>> mask = torch.tensor([[[True, True, True], [True, True, False]]])
        >>> nll, mask = token_nll_from_logits(logits, codes, mask)
        >>> nll  # log(4) = 1.3863 where valid
        tensor([[[1.3863, 1.3863, 1.3863],
                 [1.3863, 1.3863, 0.0000]]])
        >>> mask.dtype
        torch.bool
    """
    if logits.dim() != 4 or logits.shape[:-1] != codes.shape or mask.shape != codes.shape:
        raise NoiseProbeError(
            "Expected `logits` of shape [B, K, T, card] and `codes`, `mask` of shape [B, K, T] "
            f"but got {tuple(logits.shape)}, {tuple(codes.shape)} and {tuple(mask.shape)}."
        )
    mask = mask.to(device=logits.device, dtype=torch.bool)
    codes = codes.to(device=logits.device, dtype=torch.long)
    logits = logits.float().masked_fill(~mask.unsqueeze(-1), 0.0)
    safe_codes = codes.masked_fill(~mask, 0)
    log_probs = torch.log_softmax(logits, dim=-1)
    nll = -log_probs.gather(-1, safe_codes.unsqueeze(-1)).squeeze(-1)
    return nll.masked_fill(~mask, 0.0), mask


def codebook_cross_entropy(
    nll: torch.Tensor,
    mask: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy with audiocraft's MusicGen solver semantics.

    As in ``MusicGenSolver._compute_cross_entropy``: for each codebook ``k``
    the mean NLL over its valid tokens (all items and frames pooled), then
    the mean over codebooks. Entries of ``nll`` where ``mask`` is ``False``
    are ignored (even if NaN). A codebook without any valid token
    contributes 0 (audiocraft would give NaN). Differentiable: this is the
    training loss.

    Args:
        nll: ``[B, K, T]`` per-token NLL (e.g. from :func:`token_nll_from_logits`).
        mask: ``[B, K, T]`` validity mask.

    Returns:
        ``(ce, ce_per_codebook)``: a scalar and a ``[K]`` tensor, float32, not detached.

    Raises:
        NoiseProbeError: if the shapes differ or are not ``[B, K, T]``.

    Example:
        >>> nll = torch.tensor([[[1.0, 3.0, 0.0], [2.0, 0.0, 0.0]]])
        >>> mask = torch.tensor([[[True, True, False], [True, False, False]]])
        >>> ce, per_codebook = codebook_cross_entropy(nll, mask)
        >>> per_codebook
        tensor([2., 2.])
        >>> ce
        tensor(2.)
    """
    if nll.dim() != 3 or nll.shape != mask.shape:
        raise NoiseProbeError(
            "Expected `nll` and `mask` of the same shape [B, K, T] "
            f"but got {tuple(nll.shape)} and {tuple(mask.shape)}."
        )
    mask = mask.to(device=nll.device, dtype=torch.bool)
    nll = torch.where(mask, nll.float(), torch.zeros((), device=nll.device))
    total = nll.sum(dim=(0, 2))
    count = mask.sum(dim=(0, 2)).clamp_min(1)
    ce_per_codebook = total / count
    return ce_per_codebook.mean(), ce_per_codebook
