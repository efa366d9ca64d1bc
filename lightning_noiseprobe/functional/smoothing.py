"""Smoothers of per-token curves: the centred moving average and running median.

Pure tensor functions along the last axis, with an optional ``valid`` mask; the
region rules (:mod:`~lightning_noiseprobe.functional.regions`) and the curve
analysis (:mod:`~lightning_noiseprobe.functional.curves`) both use them.
"""

from __future__ import annotations

import torch

from lightning_noiseprobe._errors import NoiseProbeError

__all__ = ["moving_average", "moving_median"]


def moving_average(
    x: torch.Tensor, window: int = 5, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Centred moving average along the last axis.

    Near the edges (and next to invalid tokens) the average is taken over the
    tokens that exist, so the curve is not pulled towards zero.

    Args:
        x: ``[..., T]``.
        window: odd window length in tokens.
        valid: optional ``[..., T]`` bool; invalid tokens are left out.

    Returns:
        ``[..., T]`` smoothed curve (float32).

    Example:
        >>> moving_average(torch.tensor([0.0, 0.0, 5.0, 0.0, 0.0]), window=3)
        tensor([0.0000, 1.6667, 1.6667, 1.6667, 0.0000])
    """
    if window < 1 or window % 2 == 0:
        raise NoiseProbeError(
            f"Expected argument `window` to be a positive odd integer but got {window}."
        )
    x = x.float()
    w = torch.ones_like(x) if valid is None else valid.to(torch.float32)
    flat_x = (x * w).reshape(-1, 1, x.shape[-1])
    flat_w = w.reshape(-1, 1, x.shape[-1])
    kernel = torch.ones(1, 1, window, dtype=torch.float32, device=x.device)
    pad = window // 2
    num = torch.nn.functional.conv1d(flat_x, kernel, padding=pad)
    den = torch.nn.functional.conv1d(flat_w, kernel, padding=pad)
    out = torch.where(den > 0, num / den.clamp_min(1.0), 0.0)
    return out.reshape(x.shape)


def moving_median(
    x: torch.Tensor, window: int = 5, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Centred running median along the last axis.

    Near the edges (and next to invalid tokens) the median is taken over the
    tokens that exist; with an even count it is the lower of the two middle
    values. Unlike the moving average, one outlier cannot flip its sign unless
    the window's other values are already split around zero.

    Args:
        x: ``[..., T]``.
        window: odd window length in tokens.
        valid: optional ``[..., T]`` bool; invalid tokens are left out.

    Returns:
        ``[..., T]`` float32 (0 where the window holds no valid token).

    Example:
        >>> moving_median(torch.tensor([1.0, 1.0, -9.0, 1.0, 1.0]), window=3)
        tensor([1., 1., 1., 1., 1.])
    """
    if window < 1 or window % 2 == 0:
        raise NoiseProbeError(
            f"Expected argument `window` to be a positive odd integer but got {window}."
        )
    x = x.float()
    if valid is not None:
        x = torch.where(valid.bool(), x, torch.nan)
    pad = window // 2
    padded = torch.nn.functional.pad(x.reshape(-1, x.shape[-1]), (pad, pad), value=torch.nan)
    out = padded.unfold(-1, window, 1).nanmedian(-1).values.reshape(x.shape)
    return out.nan_to_num(0.0)
