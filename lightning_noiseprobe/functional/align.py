r"""How a perturbed copy's tokens line up with its clean clip's: the one place that decides it.

Most perturbations keep the clip's length, so perturbed token :math:`t` is compared
with clean token :math:`t`. A deletion of :math:`N` tokens at onset :math:`o` makes
the copy :math:`N` tokens shorter, and from :math:`o` on it holds the music the clean
clip holds :math:`N` tokens later. Its curve is compared with the clean clip's on
the same music:

.. math:: \text{clean}'_t = \begin{cases} l_t(x) & t < o \\ l_{t+N}(x) & t \ge o \end{cases}

so :math:`\Delta_t = l_t(x') - \text{clean}'_t` measures what the missing context
costs the model on each token it hears. Tokens where :math:`t + N` falls past the
clean clip are not compared (the copy's own end is :math:`N` tokens earlier anyway).
The region analysis then runs on the copy's timeline with the window
:math:`[o, o + N)`: the :math:`N` tokens after the cut, the same window (and so the
same region bounds) as an injection of :math:`N` tokens at :math:`o`.
"""

from __future__ import annotations

import torch

__all__ = ["align_deleted", "deletion_index"]


def deletion_index(
    T: int, onset: int | torch.Tensor, removed: int | torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clean token index of each perturbed token, and whether it lies inside ``T``.

    Args:
        T: tokens of the (padded) clean curve.
        onset: ``[...]`` (or int) first removed token.
        removed: ``[...]`` (or int) tokens removed; 0 for perturbations that keep the length.

    Returns:
        ``(index [..., T] long, in_range [..., T] bool)``: ``index = t + removed * (t >= onset)``,
        clamped to ``T - 1`` where it is out of range.

    Example:
        >>> index, ok = deletion_index(8, 3, 2)
        >>> index.tolist(), ok.tolist()
        ([0, 1, 2, 5, 6, 7, 7, 7], [True, True, True, True, True, True, False, False])
    """
    onset_t = torch.as_tensor(onset).long()
    removed_t = torch.as_tensor(removed).long()
    pos = torch.arange(T, device=onset_t.device)
    index = pos + removed_t[..., None] * (pos >= onset_t[..., None])
    return index.clamp_max(T - 1), index < T


def align_deleted(
    clean: torch.Tensor, onset: int | torch.Tensor, removed: int | torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Re-index a clean curve (or codes) onto a deletion copy's timeline (see the module doc).

    Args:
        clean: ``[..., T]`` clean per-token values (losses, a validity mask, or codes
            ``[..., K, T]`` with ``onset`` / ``removed`` shaped ``[..., 1]``).
        onset: first removed token, an int or broadcastable to ``clean.shape[:-1]``.
        removed: tokens removed, likewise (0 leaves the row as it is).

    Returns:
        ``(aligned [..., T], in_range [..., T] bool)``; ``aligned`` repeats the last
        clean token where ``in_range`` is ``False`` (mask those out).

    Example:
        >>> clean = torch.tensor([[0.0, 1.0, 2.0, 3.0, 4.0, 5.0], [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]])
        >>> aligned, ok = align_deleted(clean, 2, torch.tensor([2, 0]))
        >>> aligned.tolist()
        [[0.0, 1.0, 4.0, 5.0, 5.0, 5.0], [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]]
        >>> ok.tolist()
        [[True, True, True, True, False, False], [True, True, True, True, True, True]]
    """
    T = clean.shape[-1]
    batch = clean.shape[:-1]
    onset_t = torch.as_tensor(onset, device=clean.device).long().expand(batch)
    removed_t = torch.as_tensor(removed, device=clean.device).long().expand(batch)
    index, in_range = deletion_index(T, onset_t, removed_t)
    return clean.gather(-1, index.to(clean.device)), in_range.to(clean.device)
