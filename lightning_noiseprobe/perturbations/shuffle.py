"""Order shuffling (Section 5.1 of the paper): permute token-aligned segments of a window."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import torch

from lightning_noiseprobe._errors import NoiseProbeError
from lightning_noiseprobe.perturbations.inject import (
    _check_real,
    _check_sample_rate,
    _check_waveform,
    _cpu_generator,
    _window,
    token_window_to_samples,
)

__all__ = ["shuffle_segments"]


def shuffle_segments(
    wav: torch.Tensor,
    sample_rate: int,
    *,
    onset: float,
    length: float,
    segment: float,
    frame_rate: float = 50.0,
    seed: int = 0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut a token window into segments and put them in a random order.

    The window ``[onset, onset + length)`` (tokens) holds
    ``K = floor(length / segment)`` full segments; segment ``k`` spans tokens
    ``[onset + k * segment, onset + (k + 1) * segment)`` and its samples come from
    :func:`token_window_to_samples`, so boundaries fall on token frames. The ``K``
    segments are permuted with ``torch.randperm`` drawn from a CPU generator; if
    that draw is the identity, the cyclic shift ``[1, 2, ..., K-1, 0]`` is used
    instead, so the order always changes. A trailing partial segment (when
    ``length`` is not a multiple of ``segment``) stays in place. Every channel and
    batch item gets the same permutation. Outside the permuted span the result
    equals ``wav`` bit for bit; ``wav`` itself is never modified.

    When a token is not a whole number of samples, segments can differ in length
    by one sample; the permuted segments are then laid end to end, which keeps
    the span's total length.

    Args:
        wav: Waveform of shape ``[C, S]`` or ``[B, C, S]``, floating point.
        sample_rate: Samples per second of ``wav``.
        onset: First token of the window, ``>= 0``.
        length: Window length in tokens; must hold at least 2 segments.
        segment: Segment length in tokens, ``> 0``.
        frame_rate: Tokens per second (50 for MusicGen).
        seed: Seed of the CPU generator used when ``generator`` is ``None``.
        generator: A CPU :class:`torch.Generator` to draw from (it is advanced).

    Returns:
        ``(shuffled, permutation)``: a new tensor shaped like ``wav``, and an int64
        tensor of shape ``[K]`` where output segment ``i`` holds input segment
        ``permutation[i]``.

    Raises:
        NoiseProbeError: On empty, NaN or infinite audio; ``onset < 0``;
            ``length <= 0``; ``segment <= 0``; fewer than 2 full segments; a window
            past the end of the clip.

    Example:
        >>> x = torch.arange(10.0).repeat_interleave(640)[None]  # 10 tokens at 32 kHz
        >>> y, perm = shuffle_segments(x, 32000, onset=2, length=6, segment=2, seed=0)
        >>> perm.tolist() != [0, 1, 2], sorted(perm.tolist())
        (True, [0, 1, 2])
        >>> y[0, ::640].tolist()[:2], y[0, ::640].tolist()[8:]
        ([0.0, 1.0], [8.0, 9.0])
        >>> torch.equal(y, shuffle_segments(x, 32000, onset=2, length=6, segment=2, seed=0)[0])
        True
    """
    _check_waveform(wav)
    _check_sample_rate(sample_rate)
    _check_real("length", length, sign="positive", what="number of tokens")
    _check_real("segment", segment, sign="positive", what="number of tokens")
    _check_real("frame_rate", frame_rate, sign="positive", what="number of tokens per second")
    num_segments = math.floor(Fraction(length) / Fraction(segment))
    if num_segments < 2:
        raise NoiseProbeError(
            f"Expected the window of `length`={length!r} tokens to hold at least 2 segments of "
            f"`segment`={segment!r} tokens but it holds {num_segments}; shuffling would change "
            "nothing. Use a smaller `segment` or a longer `length`."
        )
    # Checks that the whole window (partial tail included) lies inside the clip.
    _window(wav, sample_rate, onset, length, frame_rate, "tokens")
    gen = _cpu_generator(seed, generator)

    edges = _token_edges(onset, [Fraction(segment)] * num_segments, frame_rate, sample_rate)
    if any(b <= a for a, b in itertools.pairwise(edges)):
        raise NoiseProbeError(
            f"Expected each segment of `segment`={segment!r} tokens to cover at least one sample at "
            f"{sample_rate} Hz and `frame_rate`={frame_rate!r}, but the segment edges are {edges}. "
            "Use a longer `segment`."
        )
    permutation = _changing_permutation(num_segments, gen)
    return _permute_spans(wav, edges, permutation), permutation


def _token_edges(
    onset: float, sizes: list[Fraction], frame_rate: float, sample_rate: int
) -> list[int]:
    """Sample edges of consecutive token spans of ``sizes`` tokens from ``onset``.

    Edge ``k`` is the end sample of the first ``k`` spans (:func:`token_window_to_samples`),
    so every boundary falls where that token boundary maps, whatever the split.
    """
    edges = [token_window_to_samples(onset, 1, frame_rate, sample_rate)[0]]
    total = Fraction(0)
    for size in sizes:
        total += size
        edges.append(token_window_to_samples(onset, total, frame_rate, sample_rate)[1])
    return edges


def _changing_permutation(n: int, gen: torch.Generator) -> torch.Tensor:
    """``torch.randperm(n)`` from ``gen``; the identity is replaced by the cyclic shift ``[1, ..., n-1, 0]``."""
    permutation = torch.randperm(n, generator=gen)
    if torch.equal(permutation, torch.arange(n)):
        permutation = torch.roll(torch.arange(n), -1)
    return permutation


def _permute_spans(wav: torch.Tensor, edges: list[int], permutation: torch.Tensor) -> torch.Tensor:
    """A copy of ``wav`` whose spans ``[edges[k], edges[k+1])`` are laid end to end in
    the order ``permutation`` (output span ``i`` holds input span ``permutation[i]``)."""
    pieces = [wav[..., edges[k] : edges[k + 1]] for k in range(len(edges) - 1)]
    out = wav.clone()
    out[..., edges[0] : edges[-1]] = torch.cat([pieces[int(i)] for i in permutation], dim=-1)
    return out
