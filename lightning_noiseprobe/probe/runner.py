"""Scoring a probe set with a backend's language model.

Every clean clip is scored once and every perturbed copy once, in batches of
sequences of equal length, under a chosen precision. Per-token losses come back
to float32 before any curve maths (``functional.curves``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager as ContextManager
from typing import TYPE_CHECKING, Any

import torch

from lightning_noiseprobe._errors import NoiseProbeError
from lightning_noiseprobe.functional.curves import analyze_curves, codebook_average
from lightning_noiseprobe.probe.result import ProbeResult

if TYPE_CHECKING:
    from lightning_noiseprobe.backends.base import ProbeBackend
    from lightning_noiseprobe.probe.probeset import ProbeSet

__all__ = ["PRECISIONS", "precision_context", "score_probe_set", "score_sequences"]

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
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token NLL of many sequences, batched.

    Args:
        codes: ``[M, K, T]`` codes.
        descriptions: one per sequence, or ``None``.

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
            with forward_context():
                nll, mask = backend.token_nll(batch, desc)
            nll_out.append(nll.float())
            mask_out.append(mask)
            if progress is not None:
                progress.update(sl.stop - sl.start)
    # one device->host copy at the end: no sync inside the loop
    return torch.cat(nll_out).cpu(), torch.cat(mask_out).cpu()


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
) -> ProbeResult:
    """Score a probe set and analyse every clean / perturbed pair.

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
        model_name: recorded in the result.

    Returns:
        :class:`~lightning_noiseprobe.probe.result.ProbeResult`.
    """
    if device is None:
        device = next(backend.lm.parameters()).device
    ctx = forward_context or precision_context(precision, device)
    N, P, K, T = probe_set.perturbed_codes.shape
    codes = torch.cat([probe_set.clean_codes, probe_set.perturbed_codes.reshape(N * P, K, T)])
    descs = [c.description for c in probe_set.clips]
    descriptions: list[str | None] | None = None
    if any(d is not None for d in descs):
        descriptions = descs + [d for d in descs for _ in range(P)]
    # equal-length batches: sort sequences by clip length so padding rarely mixes
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=codes.shape[0], desc="scoring probe set", unit="seq")
    try:
        nll, mask = score_sequences(
            backend,
            codes,
            descriptions,
            batch_size=batch_size,
            device=device,
            forward_context=ctx,
            progress=bar,
        )
    finally:
        if bar is not None:
            bar.close()
    token_valid = probe_set.token_valid()  # [N, T]
    full_valid = torch.cat([token_valid, token_valid.repeat_interleave(P, dim=0)])
    mask = mask & full_valid[:, None, :]
    curves, valid = codebook_average(nll, mask)  # [M, T]
    clean_curves, pert_curves = curves[:N], curves[N:].reshape(N, P, T)
    clean_cb, pert_cb = nll[:N], nll[N:].reshape(N, P, K, T)
    valid_clean = valid[:N]
    analysis = analyze_from_curves(probe_set, clean_curves, pert_curves, valid_clean)
    return ProbeResult.build(
        probe_set=probe_set,
        clean=clean_curves,
        perturbed=pert_curves,
        clean_per_codebook=clean_cb,
        perturbed_per_codebook=pert_cb,
        valid=valid_clean,
        analysis=analysis,
        model_name=model_name,
        backend_info=backend.describe(),
    )


def analyze_from_curves(
    probe_set: ProbeSet, clean: torch.Tensor, perturbed: torch.Tensor, valid: torch.Tensor
) -> Any:
    """Run :func:`~lightning_noiseprobe.functional.curves.analyze_curves` over ``[N, P, T]``."""
    N, P, T = perturbed.shape
    onsets = torch.tensor([p.onset for p in probe_set.perturbations]).expand(N, P)
    lengths = torch.tensor([p.length for p in probe_set.perturbations]).expand(N, P)
    analysis = analyze_curves(
        clean[:, None, :].expand(N, P, T),
        perturbed,
        onsets,
        lengths,
        valid=valid[:, None, :].expand(N, P, T),
        clean_codes=probe_set.clean_codes[:, None].expand_as(probe_set.perturbed_codes),
        perturbed_codes=probe_set.perturbed_codes,
        smoothing=probe_set.spec.smoothing,
        margin=probe_set.spec.margin,
    )
    # Recovery ends at each clip's own last token, not at the padded length.
    analysis.regions[..., 2, 1] = probe_set.num_tokens[:, None].expand(N, P)
    return analysis
