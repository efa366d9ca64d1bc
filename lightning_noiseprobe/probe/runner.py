"""Scoring a probe set with a backend's language model.

Every clean clip is scored once and every perturbed copy once, under a chosen
precision. A perturbed copy equals its clean clip up to its first differing
frame, so by default (``prefix_sharing=True``, for backends that support it)
that shared prefix runs once per clip and only the rest of each copy is
scored; other backends score every sequence in full, in packed batches.
Results stay on the device until one transfer at the end; per-token losses are
float32 before any curve maths (``functional.curves``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager as ContextManager
from typing import TYPE_CHECKING, Any

import torch

from lightning_noiseprobe._errors import NoiseProbeError
from lightning_noiseprobe.functional.align import align_deleted
from lightning_noiseprobe.functional.curves import (
    analyze_curves,
    codebook_average,
    first_differing_token,
)
from lightning_noiseprobe.probe.result import ProbeResult

if TYPE_CHECKING:
    from lightning_noiseprobe.backends.base import ProbeBackend
    from lightning_noiseprobe.probe.probeset import ProbeSet

__all__ = [
    "PRECISIONS",
    "pair_curves",
    "precision_context",
    "result_from_nll",
    "score_nll",
    "score_probe_set",
    "score_sequences",
    "score_shared_prefix",
]

#: Accepted ``precision`` values (Lightning's spelling) -> autocast dtype (None = fp32).
PRECISIONS: dict[str, torch.dtype | None] = {
    "32": None,
    "32-true": None,
    "bf16": torch.bfloat16,
    "bf16-mixed": torch.bfloat16,
    "16": torch.float16,
    "16-mixed": torch.float16,
}


def precision_context(
    precision: str | int, device: torch.device | str
) -> Callable[[], ContextManager[Any]]:
    """A factory of autocast contexts for ``precision`` on ``device``.

    Example:
        >>> with precision_context("bf16", "cpu")():
        ...     (torch.ones(2, 2) @ torch.ones(2, 2)).dtype
        torch.bfloat16
    """
    key = str(precision)
    if key not in PRECISIONS:
        raise NoiseProbeError(
            f"Expected argument `precision` to be one of {sorted(PRECISIONS)} but got {precision!r}."
        )
    dtype = PRECISIONS[key]
    device_type = torch.device(device).type
    if dtype is None:
        return contextlib.nullcontext
    if dtype == torch.float16 and device_type == "cpu":
        raise NoiseProbeError(
            "Expected `precision` 16 only on CUDA (fp16 autocast is not supported on CPU) but the device is cpu. Use bf16."
        )
    return lambda: torch.autocast(device_type=device_type, dtype=dtype)


def _batches(n: int, size: int) -> Iterable[slice]:
    for i in range(0, n, size):
        yield slice(i, min(i + size, n))


def score_sequences(
    backend: ProbeBackend,
    codes: torch.Tensor,
    descriptions: list[str | None] | None,
    *,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    forward_context: Callable[[], ContextManager[Any]] = contextlib.nullcontext,
    progress: Any = None,
    score_from: list[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token NLL of many sequences, batched (``backend.token_nll_fast``).

    No host-device synchronisation inside the loop: one transfer at the end.

    Args:
        codes: ``[M, K, T]`` codes.
        descriptions: one per sequence, or ``None``.
        score_from: per sequence, the first frame that needs a score (the
            caller fills earlier frames); a batch scores from its smallest value.

    Returns:
        ``(nll [M, K, T] float32 on CPU, mask [M, K, T] bool on CPU)``.
    """
    if batch_size <= 0:
        raise NoiseProbeError(
            f"Expected argument `batch_size` to be positive but got {batch_size}."
        )
    nll_out: list[torch.Tensor] = []
    mask_out: list[torch.Tensor] = []
    with torch.no_grad():
        for sl in _batches(codes.shape[0], batch_size):
            batch = codes[sl].to(device, non_blocking=True)
            desc = None if descriptions is None else descriptions[sl]
            start = 0 if score_from is None else min(score_from[sl])
            with forward_context():
                nll, mask = backend.token_nll_fast(batch, desc, score_from=start)
            nll_out.append(nll.float())
            mask_out.append(mask)
            if progress is not None:
                progress.update(sl.stop - sl.start)
    # one device->host copy at the end: no sync inside the loop
    return torch.cat(nll_out).cpu(), torch.cat(mask_out).cpu()


def score_shared_prefix(
    backend: ProbeBackend,
    clean: torch.Tensor,
    perturbed: torch.Tensor,
    descriptions: list[str | None] | None,
    *,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    forward_context: Callable[[], ContextManager[Any]] = contextlib.nullcontext,
    progress: Any = None,
    starts: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token NLL of clean clips and their perturbed copies, sharing each clip's prefix.

    Clips go in groups of ``batch_size``: one clean pass per group, then its
    perturbed copies continue in passes of at most ``batch_size`` rows, so
    memory follows ``batch_size`` (plus the group's prefix keys/values), not
    the number of clips. Each group shares the frames before its earliest
    differing frame (computed here on the CPU copies, so nothing waits on the
    device).

    Args:
        clean: ``[N, K, T]`` codes.
        perturbed: ``[N, P, K, T]`` codes, equal to ``clean`` before their first difference.
        descriptions: one per clip, or ``None``.
        starts: ``[N, P]`` frames each copy shares with its clean clip (at most its first
            differing frame); default: computed from the codes.

    Returns:
        ``(nll, mask)``, both ``[N, 1 + P, K, T]`` on CPU (index 0 along dim 1: clean).
    """
    if batch_size <= 0:
        raise NoiseProbeError(
            f"Expected argument `batch_size` to be positive but got {batch_size}."
        )
    N, P, _K, T = perturbed.shape
    clean_cpu, perturbed_cpu = clean.cpu(), perturbed.cpu()
    if starts is None:
        starts = first_differing_token(clean_cpu[:, None].expand_as(perturbed_cpu), perturbed_cpu)
    shared = starts.amin(-1).tolist() if P else [T] * N  # [N] python ints, before the loop
    group = batch_size  # clips per clean pass; their copies continue in passes of batch_size rows
    nll_out: list[torch.Tensor] = []
    mask_out: list[torch.Tensor] = []
    with torch.no_grad():
        for sl in _batches(N, group):
            desc = None if descriptions is None else descriptions[sl]
            with forward_context():
                nll, mask = backend.token_nll_shared_prefix(
                    clean[sl].to(device, non_blocking=True),
                    perturbed[sl].to(device, non_blocking=True),
                    desc,
                    shared_frames=int(min(shared[sl])),
                    batch_size=batch_size,
                )
            nll_out.append(nll.float())
            mask_out.append(mask)
            if progress is not None:
                progress.update((sl.stop - sl.start) * (1 + P))
    # one device->host copy at the end: no sync inside the loop
    return torch.cat(nll_out).cpu(), torch.cat(mask_out).cpu()


def score_nll(
    backend: ProbeBackend,
    probe_set: ProbeSet,
    *,
    batch_size: int = 8,
    precision: str | int = "32",
    device: torch.device | str | None = None,
    forward_context: Callable[[], ContextManager[Any]] | None = None,
    progress: bool = False,
    prefix_sharing: bool = True,
    skip_prefix_heads: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token NLL of every clean clip and perturbed copy of a probe set (no analysis).

    The LM's train/eval mode is left as it is (the caller decides; the callback
    switches to eval and restores). No global RNG is used.

    Args:
        backend: a loaded backend.
        probe_set: from :func:`~lightning_noiseprobe.probe.probeset.build_probe_set`.
        batch_size: sequences per forward pass.
        precision: ``"32"``, ``"bf16"`` or ``"16"`` (CUDA), Lightning spellings accepted.
        device: where the LM runs (default: the LM's device).
        forward_context: overrides ``precision`` with a context factory (the
            callback passes ``trainer.precision_plugin.forward_context``).
        progress: show a progress bar.
        prefix_sharing: (default) run each clip's prefix once, in its clean
            pass, and only the rest of each perturbed copy, attending to the
            clean pass's keys and values (same values as full scoring up to
            float rounding). Backends without
            :attr:`~lightning_noiseprobe.backends.base.ProbeBackend.supports_prefix_sharing`
            (or with ``False`` here) take the full-sequence path.
        skip_prefix_heads: (full-sequence path, default on) take a perturbed copy's
            per-token NLL before its first differing frame (minus K) from its clean
            clip instead of evaluating the output heads there; exact. The
            transformer still runs over the whole sequence. ``prefix_sharing=False,
            skip_prefix_heads=False`` scores every position of every sequence.

    Returns:
        ``(nll, mask)`` on CPU, ``[N, 1 + P, K, T]`` (index 0 of dim 1: the clean clip);
        ``mask`` also excludes tokens past each clip's (and each copy's) end.
    """
    if device is None:
        device = next(backend.lm.parameters()).device
    ctx = forward_context or precision_context(precision, device)
    N, P, K, T = probe_set.perturbed_codes.shape
    descs = [c.description for c in probe_set.clips]
    has_text = any(d is not None for d in descs)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=N * (1 + P), desc="scoring probe set", unit="seq")
    try:
        if prefix_sharing and backend.supports_prefix_sharing:
            nll_rows, mask_rows = score_shared_prefix(
                backend,
                probe_set.clean_codes,
                probe_set.perturbed_codes,
                descs if has_text else None,
                batch_size=batch_size,
                device=device,
                forward_context=ctx,
                progress=bar,
                starts=probe_set.shared_prefix_tokens(),
            )
            nll = torch.cat([nll_rows[:, 0], nll_rows[:, 1:].reshape(N * P, K, T)])
            mask = torch.cat([mask_rows[:, 0], mask_rows[:, 1:].reshape(N * P, K, T)])
        else:
            codes = torch.cat(
                [probe_set.clean_codes, probe_set.perturbed_codes.reshape(N * P, K, T)]
            )
            descriptions = descs + [d for d in descs for _ in range(P)] if has_text else None
            # A perturbed copy's NLL equals its clean clip's until a few frames before
            # the first differing frame f: frame t of codebook k sees codes up to
            # frame t + max delay - 1, and its own target at t. Frames < f - K are
            # taken from the clean score, so their output heads (most of a small
            # model's cost) are skipped. Computed on CPU before the loop: no sync.
            shared = (probe_set.shared_prefix_tokens() - K).clamp_min(0).reshape(N * P)
            if not skip_prefix_heads:
                shared.zero_()
            nll, mask = score_sequences(
                backend,
                codes,
                descriptions,
                batch_size=batch_size,
                device=device,
                forward_context=ctx,
                progress=bar,
                score_from=[0] * N + shared.tolist(),
            )
            pos = torch.arange(T)
            before = (pos < shared[:, None])[:, None, :]  # [N*P, 1, T]
            clean_rows = nll[:N].repeat_interleave(P, dim=0)
            nll[N:] = torch.where(before, clean_rows, nll[N:])
    finally:
        if bar is not None:
            bar.close()
    token_valid = probe_set.token_valid()  # [N, T]
    full_valid = torch.cat([token_valid, probe_set.perturbed_valid().reshape(N * P, T)])
    mask = mask & full_valid[:, None, :]
    rows = torch.cat([nll[:N, None], nll[N:].reshape(N, P, K, T)], dim=1)
    row_mask = torch.cat([mask[:N, None], mask[N:].reshape(N, P, K, T)], dim=1)
    return rows, row_mask


def result_from_nll(
    backend: ProbeBackend,
    probe_set: ProbeSet,
    nll: torch.Tensor,
    mask: torch.Tensor,
    *,
    model_name: str | None = None,
) -> ProbeResult:
    """Analyse per-token NLL ``[N, 1 + P, K, T]`` (from :func:`score_nll`) into a :class:`ProbeResult`."""
    N, P1, K, T = nll.shape
    P = P1 - 1
    flat_nll = torch.cat([nll[:, 0], nll[:, 1:].reshape(N * P, K, T)])
    flat_mask = torch.cat([mask[:, 0], mask[:, 1:].reshape(N * P, K, T)])
    curves, valid = codebook_average(flat_nll, flat_mask)  # [M, T]
    clean_curves, pert_curves = curves[:N], curves[N:].reshape(N, P, T)
    clean_cb, pert_cb = nll[:, 0], nll[:, 1:]
    valid_clean = valid[:N]
    pair_clean, pair_valid = pair_curves(
        probe_set, clean_curves, valid_clean, valid[N:].reshape(N, P, T)
    )
    analysis = analyze_from_curves(probe_set, pair_clean, pert_curves, pair_valid)
    return ProbeResult.build(
        probe_set=probe_set,
        clean=clean_curves,
        perturbed=pert_curves,
        clean_per_codebook=clean_cb,
        perturbed_per_codebook=pert_cb,
        valid=valid_clean,
        pair_clean=pair_clean,
        pair_valid=pair_valid,
        analysis=analysis,
        model_name=model_name,
        backend_info=backend.describe(),
    )


def score_probe_set(
    backend: ProbeBackend,
    probe_set: ProbeSet,
    *,
    batch_size: int = 8,
    precision: str | int = "32",
    device: torch.device | str | None = None,
    forward_context: Callable[[], ContextManager[Any]] | None = None,
    progress: bool = False,
    model_name: str | None = None,
    prefix_sharing: bool = True,
    skip_prefix_heads: bool = True,
) -> ProbeResult:
    """Score a probe set and analyse every clean / perturbed pair.

    :func:`score_nll` then :func:`result_from_nll`; the arguments are theirs.
    The LM's train/eval mode is left as it is (the caller decides; the callback
    switches to eval and restores). No global RNG is used.

    Returns:
        :class:`~lightning_noiseprobe.probe.result.ProbeResult`.
    """
    nll, mask = score_nll(
        backend,
        probe_set,
        batch_size=batch_size,
        precision=precision,
        device=device,
        forward_context=forward_context,
        progress=progress,
        prefix_sharing=prefix_sharing,
        skip_prefix_heads=skip_prefix_heads,
    )
    return result_from_nll(backend, probe_set, nll, mask, model_name=model_name)


def _onsets_removed(probe_set: ProbeSet, N: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``[N, P]`` onset and removed tokens of every clip x perturbation."""
    perts = probe_set.perturbations
    onsets = torch.tensor([p.onset for p in perts], dtype=torch.long).expand(N, len(perts))
    removed = torch.tensor([p.removed for p in perts], dtype=torch.long).expand(N, len(perts))
    return onsets, removed


def pair_curves(
    probe_set: ProbeSet,
    clean: torch.Tensor,
    valid_clean: torch.Tensor,
    valid_perturbed: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each perturbed copy's clean counterpart, on the copy's timeline.

    :func:`~lightning_noiseprobe.functional.align.align_deleted` re-indexes the clean
    curve for deletions (identity for the other perturbations).

    Args:
        clean: ``[N, T]`` clean curves; valid_clean: ``[N, T]``.
        valid_perturbed: ``[N, P, T]`` tokens valid in each perturbed copy.

    Returns:
        ``(pair_clean [N, P, T], pair_valid [N, P, T])``: tokens valid in both.
    """
    N, P, T = valid_perturbed.shape
    onsets, removed = _onsets_removed(probe_set, N)
    pair_clean, in_range = align_deleted(clean[:, None].expand(N, P, T), onsets, removed)
    aligned_valid, _ = align_deleted(valid_clean[:, None].expand(N, P, T), onsets, removed)
    return pair_clean, aligned_valid & in_range & valid_perturbed


def analyze_from_curves(
    probe_set: ProbeSet, clean: torch.Tensor, perturbed: torch.Tensor, valid: torch.Tensor
) -> Any:
    """Run :func:`~lightning_noiseprobe.functional.curves.analyze_curves` over ``[N, P, T]``.

    ``clean`` and ``valid`` are the pairs of :func:`pair_curves` (``[N, P, T]``; a clean
    ``[N, T]`` is broadcast). A deletion is analysed on its copy's timeline with the
    window ``[onset, onset + removed)`` after the cut.
    """
    N, P, T = perturbed.shape
    if clean.ndim == 2:
        clean = clean[:, None, :].expand(N, P, T)
    if valid.ndim == 2:
        valid = valid[:, None, :].expand(N, P, T)
    onsets, removed = _onsets_removed(probe_set, N)
    lengths = torch.tensor([p.length for p in probe_set.perturbations]).expand(N, P)
    analysis = analyze_curves(
        clean,
        perturbed,
        onsets,
        lengths,
        valid=valid,
        first_difference=probe_set.first_differences(),
        smoothing=probe_set.spec.smoothing,
        margin=probe_set.spec.margin,
        regions=probe_set.spec.regions,
    )
    if probe_set.spec.regions == "default":
        # Recovery ends at each copy's own last token, not at the padded length
        # (the authors' rule already ends each curve at its last valid token).
        end = torch.minimum(probe_set.perturbed_num_tokens, probe_set.num_tokens[:, None] - removed)
        analysis.regions[..., 2, 1] = end
    return analysis
