"""Which clips each rank probes, and how gathered rows go back into clip order.

One assignment for everything that splits a probe set over processes: the
engine (:meth:`~lightning_noiseprobe.probe.engine.NoiseProber.score`, equal-shape
gathers padded with repeats of clip 0) and :class:`~lightning_noiseprobe.metrics.PeakShape`
(torchmetrics ``"cat"`` states, uneven gathers). Clip ``j`` goes to rank ``j % W``.
"""

from __future__ import annotations

from lightning_noiseprobe._errors import NoiseProbeError

__all__ = ["clip_shard", "padded_shard", "unpad_index"]


def clip_shard(num_clips: int, world_size: int, rank: int) -> list[int]:
    """The clips rank ``rank`` of ``world_size`` handles: ``rank, rank + world_size, ...``.

    Example:
        >>> clip_shard(5, 2, 0), clip_shard(5, 2, 1)
        ([0, 2, 4], [1, 3])
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise NoiseProbeError(
            f"Expected 0 <= `rank` < `world_size` but got rank={rank}, world_size={world_size}."
        )
    return list(range(rank, num_clips, world_size))


def padded_shard(num_clips: int, world_size: int, rank: int) -> list[int]:
    """:func:`clip_shard` padded with clip 0 to ``ceil(num_clips / world_size)`` entries, so
    every rank runs the same forward passes and gathers tensors of the same shape.

    Example:
        >>> padded_shard(5, 2, 0), padded_shard(5, 2, 1)
        ([0, 2, 4], [1, 3, 0])
    """
    own = clip_shard(num_clips, world_size, rank)
    return own + [0] * (-(-num_clips // world_size) - len(own))


def unpad_index(num_clips: int, world_size: int) -> tuple[list[int], list[int]]:
    """``(ranks, slots)``: clip ``j`` is row ``slots[j]`` of rank ``ranks[j]`` in a
    ``[W, per_rank, ...]`` gather of :func:`padded_shard` rows (padding dropped).

    Example:
        >>> unpad_index(5, 2)
        ([0, 1, 0, 1, 0], [0, 0, 1, 1, 2])
    """
    return [j % world_size for j in range(num_clips)], [j // world_size for j in range(num_clips)]
