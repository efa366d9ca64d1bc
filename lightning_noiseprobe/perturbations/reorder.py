"""Random variable-length reordering: cut a token window into segments of random
lengths and put them in a random order (the paper authors' ``reorder.py``, in a window)."""

from __future__ import annotations

import itertools
import numbers
from fractions import Fraction
from typing import Any

import torch

from lightning_noiseprobe._defaults import DEFAULT_ONSET
from lightning_noiseprobe._errors import NoiseProbeError
from lightning_noiseprobe.perturbations.inject import (
    _check_real,
    _check_sample_rate,
    _check_waveform,
    _cpu_generator,
    _window,
)
from lightning_noiseprobe.perturbations.shuffle import (
    _changing_permutation,
    _permute_spans,
    _token_edges,
)

__all__ = ["random_segment_lengths", "reorder_segments"]


def _check_tokens(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise NoiseProbeError(
            f"Expected argument `{name}` to be a positive whole number of tokens but got {value!r}."
        )
    return int(value)


def random_segment_lengths(
    length: int, min_segment: int, max_segment: int, generator: torch.Generator
) -> list[int]:
    """Split ``length`` tokens into segments of random whole lengths.

    Lengths are drawn uniformly from ``min_segment .. max_segment`` (inclusive) with
    ``generator`` until the window is covered; the last segment is what is left, so
    it can be shorter than ``min_segment`` (the authors' segments end at the clip end
    the same way).

    Example:
        >>> random_segment_lengths(20, 3, 6, torch.Generator().manual_seed(0))
        [3, 6, 4, 3, 4]
    """
    sizes: list[int] = []
    left = length
    while left > 0:
        draw = int(torch.randint(min_segment, max_segment + 1, (1,), generator=generator))
        sizes.append(min(draw, left))
        left -= sizes[-1]
    return sizes


def reorder_segments(
    wav: torch.Tensor,
    sample_rate: int,
    *,
    onset: int = DEFAULT_ONSET,
    length: int = 200,
    min_segment: int = 5,
    max_segment: int = 50,
    frame_rate: float = 50.0,
    seed: int = 0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, list[int], torch.Tensor]:
    """Cut the token window ``[onset, onset + length)`` into random-length segments and permute them.

    Segment lengths come from :func:`random_segment_lengths`, then the order from
    ``torch.randperm`` (an identity draw is replaced by the cyclic shift, so the
    order always changes), both from one CPU generator: the same seed gives the same
    cut and order on every machine. Segment boundaries fall on token frames
    (:func:`~lightning_noiseprobe.perturbations.inject.token_window_to_samples`); the
    permuted segments are laid end to end, so the window keeps its length and every
    sample outside it is returned bit for bit. All channels and batch items get the
    same cut and order; ``wav`` itself is never modified.

    The paper authors cut whole clips into 3-5 s segments and shuffled a fraction
    of them; here the cut is confined to a window, like the other probes, so the
    region analysis can follow the response to it.

    Args:
        wav: Waveform of shape ``[C, S]`` or ``[B, C, S]``, floating point.
        sample_rate: Samples per second of ``wav``.
        onset: First token of the window, ``>= 0``.
        length: Window length in tokens; longer than ``max_segment``, so there are
            at least two segments.
        min_segment, max_segment: Range of the segment lengths, in whole tokens.
        frame_rate: Tokens per second (50 for MusicGen).
        seed: Seed of the CPU generator used when ``generator`` is ``None``.
        generator: A CPU :class:`torch.Generator` to draw from (it is advanced).

    Returns:
        ``(reordered, sizes, permutation)``: a new tensor shaped like ``wav``, the
        segment lengths in tokens (input order), and the order: output segment ``i``
        holds input segment ``permutation[i]``.

    Raises:
        NoiseProbeError: On empty, NaN or infinite audio; non-integer or non-positive
            token counts; ``min_segment > max_segment``; ``length <= max_segment``; a
            window past the end of the clip; a segment shorter than one sample.

    Example:
        >>> x = torch.arange(30.0).repeat_interleave(640)[None]  # 30 tokens at 32 kHz
        >>> y, sizes, perm = reorder_segments(x, 32000, onset=5, length=20, min_segment=3, max_segment=6)
        >>> sum(sizes), y.shape == x.shape, torch.equal(y[:, :3200], x[:, :3200])
        (20, True, True)
        >>> sorted(y[0, 3200:16000:640].tolist()) == list(range(5, 25))
        True
    """
    _check_waveform(wav)
    _check_sample_rate(sample_rate)
    length = _check_tokens("length", length)
    min_segment = _check_tokens("min_segment", min_segment)
    max_segment = _check_tokens("max_segment", max_segment)
    _check_real("frame_rate", frame_rate, sign="positive", what="number of tokens per second")
    if min_segment > max_segment:
        raise NoiseProbeError(
            f"Expected `min_segment`={min_segment} to be at most `max_segment`={max_segment}."
        )
    if length <= max_segment:
        raise NoiseProbeError(
            f"Expected the window of `length`={length} tokens to be longer than `max_segment`="
            f"{max_segment}, so that it holds at least 2 segments. Use a longer `length` or a"
            " smaller `max_segment`."
        )
    _window(wav, sample_rate, onset, length, frame_rate, "tokens")
    gen = _cpu_generator(seed, generator)
    sizes = random_segment_lengths(length, min_segment, max_segment, gen)
    edges = _token_edges(onset, [Fraction(s) for s in sizes], frame_rate, sample_rate)
    if any(b <= a for a, b in itertools.pairwise(edges)):
        raise NoiseProbeError(
            f"Expected each segment to cover at least one sample at {sample_rate} Hz and"
            f" `frame_rate`={frame_rate!r}, but the segment edges are {edges}. Use a longer `min_segment`."
        )
    permutation = _changing_permutation(len(sizes), gen)
    return _permute_spans(wav, edges, permutation), sizes, permutation
