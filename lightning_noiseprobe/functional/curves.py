r"""Loss-curve analysis around a perturbation: the maths of the paper's Sections 3-4.

Pure tensor functions, batched over any leading dimensions ``[...]`` and the
token axis ``T`` last. No I/O, no Lightning: the probe runner, the callback
and the CLI all call these same functions.

Notation (per clip): clean per-token loss :math:`l_t(x)`, perturbed per-token
loss :math:`l_t(x')` (both averaged over codebooks), token-wise difference

.. math:: \Delta_t = l_t(x') - l_t(x)

and its centred moving average :math:`\bar\Delta_t` and running median
:math:`\tilde\Delta_t` (both over :math:`w = 5` tokens). Given the perturbation
start :math:`s` (the first token whose codes differ, or the nominal onset), the
injection onset :math:`o` and length :math:`L`, and the window's end plus a
margin :math:`c = \min(T, o + L + m)` (default :math:`m = 5`), the regions are
half-open token intervals:

* Peak :math:`[s, p)`: :math:`p` is the first :math:`t \ge \max(o, s)` with
  :math:`t + 5 \le c` where the difference is back at (or below) the clean
  curve for ``run`` = 5 tokens, :math:`\bar\Delta_u \le 0` **and**
  :math:`\tilde\Delta_u \le 0` for every :math:`u \in [t, t + 5)`, and stays
  there: :math:`\sum_{u=t}^{c-1} \Delta_u \le 0`. :math:`p = c` if there is none.
* Assimilation :math:`[p, c)`: the rest of the injection window.
* Recovery :math:`[c, T)`: everything after the window and the margin.

Why each part (measured on the real curves of the demo's chorale model, whose
difference stays near +1 for the whole window, kept as test fixtures):

* The paper's rule is the 5-token zero crossing of the moving average; it is
  kept, with guards. The Peak end is searched from the onset, not from
  :math:`s`: the codes change a few tokens before the noise (the codec's
  receptive field), and in that lead-in :math:`\Delta_t` is small and of either
  sign. Next to the exact zeros before :math:`s`, the average dipped below zero
  for 5 tokens there and emptied the Peak of clips whose difference is +1 for
  the whole window (2 of 24 demo items under the previous rule). The lead-in
  always belongs to the Peak.
* The running median: one outlier of any size moves the 5-token average of 5
  consecutive tokens, so the average alone can be dragged below zero for a
  whole run by a single token. The median of 5 goes to zero or below only where
  3 of the 5 tokens do, so one token among positive ones cannot end the Peak.
* "And stays there": a real 5-token dip in the middle of a window whose
  difference is +1 before and after it met the zero crossing by a hair (an
  average of -0.0006 on one token), so noise of std 0.02 moved the Peak end
  between the dip and the window end, 62 tokens apart. The Peak ends where the
  loss has gone below the clean curve for good, not where it dips; for curves
  like the paper's (a short spike, then a plateau below zero) the two agree.
* The run must end by :math:`c`: after the window the difference of a model
  that has recovered is ~0 (rounding-level values of either sign), and whether
  5 of them fall at or below zero is a coin flip; it must not move the Peak end.
* Assimilation always runs to :math:`c` and Recovery always starts there: the
  paper's definitions (Assimilation is the part of the noise after the Peak,
  Recovery what follows the noise; the authors' code ends Assimilation at the
  window end too). The previous rule ended Assimilation at the first return
  above zero, which moved noise tokens into Recovery.
* The margin :math:`m` (5 tokens: the smoothing window, which also covers the
  codec's receptive field and MusicGen's 3-frame codebook delay) keeps the tail
  of the response, which lasts ~4 tokens past the window, out of Recovery.
* Boundaries are stable: :math:`s`, :math:`c` and the Recovery start do not
  depend on the loss at all. On the demo's curves with Gaussian noise of std
  0.02-0.05 added, :math:`p` moves in 2 of 24 curves, by more than 2 tokens in
  ~2 % of the trials and by at most 6 (a near-tie where a short response ends
  just before its window closes); the previous rule's boundaries moved by up
  to 62 tokens (159 on another draw of the noise injections).

A model whose difference never returns to zero inside the window has a Peak
that spans it (:math:`p = c`) and an empty Assimilation; a window at the clip's
end has an empty Recovery. Empty regions are allowed (``start == end``): their
means are NaN and the probe's summary counts them (``peak_empty``,
``assimilation_empty``, ``recovery_empty``), so a mean over the non-empty items
never hides how many there were.

``regions="authors"`` replaces this rule by the one of the paper's own Fig. 4 code,
bit for bit (see :func:`authors_regions`).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch

from lightning_noiseprobe._errors import NoiseProbeError, NonFiniteLossError

__all__ = [
    "AUTHORS_SOURCE",
    "EMPTY_COUNT_NAMES",
    "METRIC_NAMES",
    "REGION_NAMES",
    "REGION_RULES",
    "CurveAnalysis",
    "analyze_curves",
    "authors_regions",
    "check_region_settings",
    "codebook_average",
    "detect_regions",
    "first_differing_token",
    "moving_average",
    "moving_median",
    "region_metrics",
]

REGION_NAMES = ("peak", "assimilation", "recovery")

#: Per-clip metrics, in the order of :class:`CurveAnalysis`' metric fields.
METRIC_NAMES = (
    "delta_loss",
    "clean_loss",
    "peak_mean",
    "assimilation_mean",
    "recovery_mean",
    "recovery_std",
    "peak_height",
    "peak_width",
    "peak_area",
    "peak_sharpness",
)

#: Summary counts of curves whose region is empty (``end <= start``), one per region.
EMPTY_COUNT_NAMES = tuple(f"{name}_empty" for name in REGION_NAMES)

#: Region rules of :func:`analyze_curves`: this project's, and the paper authors' own.
REGION_RULES = ("default", "authors")

#: Where the authors' rule is taken from (:func:`authors_regions`).
AUTHORS_SOURCE = (
    "github.com/YoEv/noiseloss experiments/phase5/phase5_region_analysis_boxplot_3areas.py"
    " (detect_regions_ma, analyze_single_file)"
)
#: The smallest onset the authors' rule accepts: its baseline is the first onset - 50 tokens.
AUTHORS_MIN_ONSET = 51

_SHARPNESS_EPS = 1e-6


def _check_finite(name: str, t: torch.Tensor, mask: torch.Tensor | None = None) -> None:
    values = t if mask is None else t[mask]
    if not torch.isfinite(values).all():
        bad = int((~torch.isfinite(values)).sum())
        raise NonFiniteLossError(
            f"Expected argument `{name}` to hold finite values but got {bad} NaN/inf entries at valid"
            " positions: the model's outputs are not finite (diverged weights or activations, an fp16"
            " overflow). Check the model; lower the learning rate or train in bf16/fp32."
        )


def codebook_average(nll: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Average per-codebook losses into one loss per frame (the paper's ``tokens_avg``).

    Args:
        nll: ``[..., K, T]`` per-codebook per-token losses.
        mask: ``[..., K, T]`` bool, ``True`` where the loss is valid.

    Returns:
        ``(loss [..., T], valid [..., T])``: the mean over the valid codebooks
        of each frame, and whether any codebook was valid there (``loss`` is 0
        where not valid).

    Example:
        >>> nll = torch.tensor([[1.0, 2.0, 3.0], [3.0, 4.0, 0.0]])
        >>> mask = torch.tensor([[True, True, True], [True, True, False]])
        >>> loss, valid = codebook_average(nll, mask)
        >>> loss
        tensor([2., 3., 3.])
        >>> valid
        tensor([True, True, True])
    """
    if nll.shape != mask.shape:
        raise NoiseProbeError(
            f"Expected `nll` and `mask` to have the same shape but got {tuple(nll.shape)}"
            f" and {tuple(mask.shape)}."
        )
    mask = mask.bool()
    _check_finite("nll", nll, mask)
    weights = mask.to(torch.float32)
    total = torch.where(mask, nll.float(), 0.0).sum(-2)
    count = weights.sum(-2)
    valid = count > 0
    return torch.where(valid, total / count.clamp_min(1.0), 0.0), valid


def first_differing_token(clean_codes: torch.Tensor, perturbed_codes: torch.Tensor) -> torch.Tensor:
    """Index of the first frame where any codebook's code differs.

    Because the codec's convolutions see a few frames around each sample, the
    codes usually change a few frames before the nominal onset; this is the
    true start of the perturbation.

    Args:
        clean_codes: ``[..., K, T]`` codes of the clean clip.
        perturbed_codes: ``[..., K, T]`` codes of the perturbed clip.

    Returns:
        ``[...]`` long tensor; ``T`` where no code differs.

    Example:
        >>> clean = torch.zeros(2, 4, 10, dtype=torch.long)
        >>> pert = clean.clone(); pert[0, 2, 6] = 5
        >>> first_differing_token(clean, pert)
        tensor([ 6, 10])
    """
    if clean_codes.shape != perturbed_codes.shape:
        raise NoiseProbeError(
            f"Expected clean and perturbed codes of the same shape but got"
            f" {tuple(clean_codes.shape)} and {tuple(perturbed_codes.shape)}."
        )
    differs = (clean_codes != perturbed_codes).any(-2)  # [..., T]
    T = differs.shape[-1]
    pos = torch.arange(T, device=differs.device)
    return torch.where(differs, pos, T).amin(-1)


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


def check_region_settings(smoothing: object, margin: object) -> None:
    """Raise unless ``smoothing`` is a positive odd integer and ``margin`` an integer >= 0.

    These are the region-detection settings of :func:`analyze_curves` (and of
    ``ProbeSpec``); a negative margin would start Recovery inside the injection
    window.

    Example:
        >>> check_region_settings(5, 0)
        >>> check_region_settings(4, 5)
        Traceback (most recent call last):
        ...
        lightning_noiseprobe._errors.NoiseProbeError: Expected argument `smoothing` to be a positive odd number of tokens but got 4.
    """
    if (
        isinstance(smoothing, bool)
        or not isinstance(smoothing, numbers.Integral)
        or smoothing < 1
        or smoothing % 2 == 0
    ):
        raise NoiseProbeError(
            f"Expected argument `smoothing` to be a positive odd number of tokens but got {smoothing!r}."
        )
    if isinstance(margin, bool) or not isinstance(margin, numbers.Integral) or margin < 0:
        raise NoiseProbeError(
            f"Expected argument `margin` to be a number of tokens >= 0 but got {margin!r}."
        )


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


def _first_quiet_run(
    quiet: torch.Tensor, settled: torch.Tensor, run: int, start: torch.Tensor, stop: torch.Tensor
) -> torch.Tensor:
    """First ``t >= start`` with ``quiet[t:t+run]`` all true, ``settled[t]`` true and
    ``t + run <= stop``; else ``stop``."""
    T = quiet.shape[-1]
    if run <= T:
        windows = quiet.float().unfold(-1, run, 1).amin(-1) > 0  # [..., T - run + 1]
    else:
        windows = quiet[..., :0]
    pos = torch.arange(windows.shape[-1], device=quiet.device)
    ok = windows & settled[..., : windows.shape[-1]]
    ok = ok & (pos >= start.unsqueeze(-1)) & (pos + run <= stop.unsqueeze(-1))
    found = torch.where(ok, pos, T).amin(-1)
    return torch.where(found < T, found, stop)


def detect_regions(
    delta: torch.Tensor,
    start: torch.Tensor | int,
    onset: torch.Tensor | int,
    window_end: torch.Tensor | int,
    *,
    smoothing: int = 5,
    margin: int = 5,
    run: int = 5,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Detect the Peak, Assimilation and Recovery regions (Section 4.2, made robust).

    The rule, and the reason for each of its parts, is in the module docstring.

    Args:
        delta: ``[..., T]`` raw loss difference.
        start: ``[...]`` (or int) perturbation start token.
        onset: ``[...]`` (or int) injection onset token: the Peak end is searched from here.
        window_end: ``[...]`` (or int) end of the injection window, ``onset + length``.
        smoothing: window (odd) of the moving average and the running median.
        margin: tokens after ``window_end`` where Assimilation ends and Recovery starts.
        run: consecutive tokens at or below zero (both smoothers) that end the Peak;
            the paper uses 5.
        valid: optional ``[..., T]`` bool; invalid tokens are left out of the smoothers.

    Returns:
        ``[..., 3, 2]`` long tensor of half-open ``[start, end)`` intervals for
        peak, assimilation and recovery.

    Example:
        >>> d = torch.tensor([0., 0., 3., 2., -1., -1., -1., -1., -1., -1., 0., 0., 1., 1., 1., 0.])
        >>> detect_regions(d, start=2, onset=2, window_end=9, margin=2, smoothing=1)
        tensor([[ 2,  4],
                [ 4, 11],
                [11, 16]])
        >>> d[9:11] = 3.0  # the loss climbs back above the clean curve: the dip was not the end
        >>> detect_regions(d, start=2, onset=2, window_end=9, margin=2, smoothing=1)[0]
        tensor([ 2, 11])

        One outlier drags the 5-token average below zero over tokens 2..6, yet the
        Peak does not end there (the previous rule emptied it):

        >>> d = torch.ones(16); d[:2] = 0.0; d[4] = -9.0
        >>> (moving_average(d, 5)[2:7] <= 0).all()
        tensor(True)
        >>> detect_regions(d, start=2, onset=2, window_end=9, margin=2)[0]
        tensor([ 2, 11])
    """
    if run < 1:
        raise NoiseProbeError(f"Expected argument `run` to be a positive integer but got {run}.")
    check_region_settings(smoothing, margin)
    T = delta.shape[-1]
    batch = delta.shape[:-1]
    device = delta.device
    start_t = torch.as_tensor(start, device=device).long().expand(batch).clamp(0, T)
    onset_t = torch.as_tensor(onset, device=device).long().expand(batch)
    cap = (torch.as_tensor(window_end, device=device).long().expand(batch) + margin).clamp(max=T)
    cap = torch.maximum(cap, start_t)
    if valid is not None:
        delta = torch.where(valid.bool(), delta.float(), 0.0)
    quiet = (moving_average(delta, smoothing, valid) <= 0) & (
        moving_median(delta, smoothing, valid) <= 0
    )
    # the rest of the window from each token on, [t, cap): <= 0 once the loss has settled
    # at or below the clean curve, > 0 where it climbs back above it
    pos = torch.arange(T, device=device)
    in_window = torch.where(pos < cap.unsqueeze(-1), delta.float(), 0.0)
    settled = in_window.flip(-1).cumsum(-1).flip(-1) <= 0
    peak_end = _first_quiet_run(quiet, settled, run, torch.maximum(onset_t, start_t), cap)
    end_t = torch.full_like(start_t, T)
    bounds = torch.stack([start_t, peak_end, peak_end, cap, cap, end_t], dim=-1)
    return bounds.reshape(*batch, 3, 2)


def authors_regions(
    delta: torch.Tensor,
    onset: torch.Tensor | int,
    length: torch.Tensor | int,
    num_tokens: torch.Tensor | int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""The paper authors' region rule and region means, exactly as their Fig. 4 code.

    Source: :data:`AUTHORS_SOURCE`. Their code fixes the onset at token 250; here
    every constant tied to it is written relative to the onset :math:`o`
    (theirs in brackets). On the raw difference :math:`d` (no smoothing, float64)
    of a curve of :math:`n` tokens and an injection of :math:`L` tokens:

    * baseline :math:`b` = mean of :math:`d` over the first :math:`o - 50` tokens [200];
    * Peak :math:`[o - 5, p)` [245]: :math:`p` is the first :math:`k \ge o - 5` with
      :math:`d_j \le b` for the 5 tokens :math:`j \in [k, k + 5)` and
      :math:`k + 5 \le n - 1` (their loop never looks at the last token);
      :math:`p = o + 45` [295] if there is none, even past the end of the curve;
    * Assimilation :math:`[p, a)` with :math:`a = \min(o - 1 + L + 4, n - 1)`
      [249 + L + 4]; when :math:`p \ge a` it is empty, and the interval is
      reported as is (start after end when the Peak ran past it);
    * Recovery :math:`[a, n - 1)`: the last token is never in it;
    * each region's mean is numpy's float64 mean of :math:`d` over the slice
      (so bit-identical to theirs), and 0 for an empty region (not NaN).

    Each curve's :math:`n` is its own length (``num_tokens``), so padded curves
    work; their code has no masks.

    Args:
        delta: ``[..., T]`` raw difference perturbed - clean (cast to float64).
        onset: injection onset token, int or ``[...]``, at least 51.
        length: injection length, int or ``[...]``.
        num_tokens: tokens of each curve, int or ``[...]`` (default ``T``).

    Returns:
        ``(regions [..., 3, 2] long, means [..., 3] float64, baseline [...] float64)``:
        peak / assimilation / recovery ``[start, end)`` as they report them, their
        means, and the baseline.

    A quirk worth knowing: the first window examined is :math:`[o - 5, o)`, before
    the injection; when :math:`d \le b` there (e.g. :math:`d = 0` exactly because
    the codes only change at the onset) the Peak is empty and the whole noise
    response is counted as Assimilation.

    Example:
        >>> d = torch.zeros(400, dtype=torch.float64); d[248:300] = 2.0; d[300:320] = -1.0
        >>> regions, means, baseline = authors_regions(d, onset=250, length=50)
        >>> regions.tolist()
        [[245, 300], [300, 303], [303, 399]]
        >>> means.tolist()
        [1.8909090909090909, -1.0, -0.17708333333333334]
        >>> d[248:250] = 0.0  # nothing above the baseline before the onset: empty Peak
        >>> authors_regions(d, onset=250, length=50)[0].tolist()
        [[245, 245], [245, 303], [303, 399]]
    """
    import numpy as np

    T = delta.shape[-1]
    batch = delta.shape[:-1]
    flat = delta.detach().to("cpu", torch.float64).reshape(-1, T).numpy()
    M = flat.shape[0]

    def per_curve(x: torch.Tensor | int | None, default: int) -> list[int]:
        t = torch.as_tensor(default if x is None else x).long().expand(batch).reshape(M)
        return [int(v) for v in t.tolist()]

    onsets, lengths, ns = per_curve(onset, 0), per_curve(length, 0), per_curve(num_tokens, T)
    if min(onsets) < AUTHORS_MIN_ONSET:
        raise NoiseProbeError(
            f"Expected the onset to be at least {AUTHORS_MIN_ONSET} tokens for regions='authors'"
            f" (their baseline is the mean difference over the first onset - 50 tokens) but got"
            f" {min(onsets)}."
        )
    if min(ns) < 1 or max(ns) > T:
        raise NoiseProbeError(f"Expected `num_tokens` in [1, {T}] but got {min(ns)}..{max(ns)}.")
    run = 5  # their STABLE_LEN
    bounds: list[list[int]] = []
    means: list[list[float]] = []
    baselines: list[float] = []
    for i in range(M):
        o, n = onsets[i], ns[i]
        d = np.ascontiguousarray(flat[i, :n])
        baseline = d[: o - 50].mean()
        start = o - 5
        low = np.asarray(d[: n - 1] <= baseline, dtype=bool)  # the last token is never examined
        peak_end = start + 50
        if low.size >= run:
            quiet = np.asarray(np.lib.stride_tricks.sliding_window_view(low, run).all(axis=-1))
            hits = np.flatnonzero(quiet[start:])
            if hits.size:
                peak_end = start + int(hits[0])
        assim_end = min(o - 1 + lengths[i] + 4, n - 1)
        curve = [(start, peak_end), (peak_end, assim_end), (assim_end, n - 1)]
        bounds.append([v for pair in curve for v in pair])
        means.append([float(d[lo:hi].mean()) if hi > lo else 0.0 for lo, hi in curve])
        baselines.append(float(baseline))
    return (
        torch.tensor(bounds, dtype=torch.long).reshape(*batch, 3, 2),
        torch.tensor(means, dtype=torch.float64).reshape(*batch, 3),
        torch.tensor(baselines, dtype=torch.float64).reshape(batch),
    )


def _region_mask(regions: torch.Tensor, index: int, T: int) -> torch.Tensor:
    pos = torch.arange(T, device=regions.device)
    lo = regions[..., index, 0].unsqueeze(-1)
    hi = regions[..., index, 1].unsqueeze(-1)
    return (pos >= lo) & (pos < hi)


def _masked_mean(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    n = m.sum(-1)
    s = torch.where(m, x, 0.0).sum(-1)
    return torch.where(n > 0, s / n.clamp_min(1), torch.nan)


def _masked_std(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    mean = _masked_mean(x, m)
    n = m.sum(-1)
    var = torch.where(m, (x - mean.unsqueeze(-1)) ** 2, 0.0).sum(-1) / n.clamp_min(1)
    return torch.where(n > 0, var.sqrt(), torch.nan)


@dataclass
class CurveAnalysis:
    """Result of :func:`analyze_curves`; every field has the batch shape ``[...]``
    unless stated otherwise.

    Region means over an empty region are NaN (the region is reported empty in
    :attr:`regions`); the peak-shape metrics of an empty Peak are 0 (no peak).
    """

    delta: torch.Tensor  #: ``[..., T]`` token-wise difference (0 where invalid)
    smoothed: torch.Tensor  #: ``[..., T]`` moving average of ``delta``
    start: torch.Tensor  #: perturbation start token
    regions: torch.Tensor  #: ``[..., 3, 2]`` peak / assimilation / recovery intervals
    delta_loss: torch.Tensor
    clean_loss: torch.Tensor
    peak_mean: torch.Tensor
    assimilation_mean: torch.Tensor
    recovery_mean: torch.Tensor
    recovery_std: torch.Tensor
    peak_height: torch.Tensor
    peak_width: torch.Tensor
    peak_area: torch.Tensor
    peak_sharpness: torch.Tensor
    #: ``[...]`` float64 baseline of the authors' rule (``regions="authors"``), else ``None``
    baseline: torch.Tensor | None = None

    def metrics(self) -> dict[str, torch.Tensor]:
        """The per-clip metrics by name (see :data:`METRIC_NAMES`)."""
        return {name: getattr(self, name) for name in METRIC_NAMES}

    def empty_counts(self) -> dict[str, int]:
        """How many curves have each region empty (``end <= start``; with
        ``regions="authors"`` that includes their start-after-end Assimilation),
        named as in :data:`EMPTY_COUNT_NAMES`.

        The means of :mod:`~lightning_noiseprobe.functional.aggregate` leave empty
        regions out (NaN); these counts say how many were left out.
        """
        empty = self.regions[..., 1] <= self.regions[..., 0]  # [..., 3]
        return {name: int(empty[..., k].sum()) for k, name in enumerate(EMPTY_COUNT_NAMES)}

    def to_records(self) -> list[dict[str, object]]:
        """One JSON-able dict per clip (batch flattened), NaN written as ``None``."""
        batch = self.start.shape
        n = int(torch.tensor(batch).prod()) if len(batch) else 1
        regions = self.regions.reshape(n, 3, 2).tolist()
        starts = self.start.reshape(n).tolist()
        metrics = {k: v.reshape(n).tolist() for k, v in self.metrics().items()}
        baseline = None if self.baseline is None else self.baseline.reshape(n).tolist()
        out: list[dict[str, object]] = []
        for i in range(n):
            rec: dict[str, object] = {
                "start": int(starts[i]),
                "regions": {
                    name: [int(a), int(b)]
                    for name, (a, b) in zip(REGION_NAMES, regions[i], strict=False)
                },
            }
            for k, v in metrics.items():
                fv = float(v[i])
                rec[k] = None if math.isnan(fv) else (int(fv) if k == "peak_width" else fv)
            if baseline is not None:
                rec["baseline"] = float(baseline[i])
            out.append(rec)
        return out


def region_metrics(
    delta: torch.Tensor,
    smoothed: torch.Tensor,
    clean: torch.Tensor,
    valid: torch.Tensor,
    regions: torch.Tensor,
) -> dict[str, torch.Tensor]:
    r"""Peak-shape and per-region metrics for detected regions.

    * ``peak_mean``, ``assimilation_mean``, ``recovery_mean``: mean of
      :math:`\Delta_t` over the region's valid tokens (NaN if empty);
    * ``recovery_std``: population standard deviation of :math:`\Delta_t` in Recovery;
    * ``peak_height`` :math:`= \max_{t \in \text{Peak}} \bar\Delta_t` (0 if empty);
    * ``peak_width``: Peak length in tokens;
    * ``peak_area`` :math:`= \sum_{t \in \text{Peak}} \max(\Delta_t, 0)`;
    * ``peak_sharpness`` :math:`= h / \max(\sigma_{pre}, 10^{-6})`, the Peak height
      as a z-score of the clean loss's standard deviation before the start.

    Args:
        delta: ``[..., T]`` token-wise difference.
        smoothed: ``[..., T]`` its moving average.
        clean: ``[..., T]`` clean per-token loss.
        valid: ``[..., T]`` bool.
        regions: ``[..., 3, 2]`` from :func:`detect_regions`.

    Returns:
        dict of ``[...]`` float32 tensors named as in :data:`METRIC_NAMES` (minus
        ``delta_loss`` and ``clean_loss``).

    Example:
        >>> d = torch.tensor([0., 0., 3., 1., -2., -2.])
        >>> clean = torch.tensor([1., 3., 2., 2., 2., 2.])
        >>> regions = torch.tensor([[2, 4], [4, 6], [6, 6]])
        >>> m = region_metrics(d, d, clean, torch.ones(6, dtype=torch.bool), regions)
        >>> m["peak_mean"], m["peak_area"], m["peak_sharpness"], m["recovery_mean"]
        (tensor(2.), tensor(4.), tensor(3.), tensor(nan))
    """
    T = delta.shape[-1]
    masks = [_region_mask(regions, i, T) & valid for i in range(3)]
    peak, assim, recov = masks
    width = (regions[..., 0, 1] - regions[..., 0, 0]).to(torch.float32)
    has_peak = peak.any(-1)
    height = torch.where(peak, smoothed, -torch.inf).amax(-1)
    height = torch.where(has_peak, height, 0.0)
    area = torch.where(peak, delta.clamp_min(0.0), 0.0).sum(-1)
    pos = torch.arange(T, device=delta.device)
    pre = (pos < regions[..., 0, 0].unsqueeze(-1)) & valid
    pre_std = _masked_std(clean, pre)
    if torch.isnan(torch.where(has_peak, pre_std, 0.0)).any():
        raise NoiseProbeError(
            "Expected at least one valid clean token before the perturbation start to compute"
            " `peak_sharpness` but got none. Use a later `onset`."
        )
    sharpness = torch.where(
        has_peak, height / pre_std.nan_to_num(1.0).clamp_min(_SHARPNESS_EPS), 0.0
    )
    return {
        "peak_mean": _masked_mean(delta, peak),
        "assimilation_mean": _masked_mean(delta, assim),
        "recovery_mean": _masked_mean(delta, recov),
        "recovery_std": _masked_std(delta, recov),
        "peak_height": height,
        "peak_width": width,
        "peak_area": area,
        "peak_sharpness": sharpness,
    }


def analyze_curves(
    clean: torch.Tensor,
    perturbed: torch.Tensor,
    onset: int | torch.Tensor,
    length: int | torch.Tensor,
    *,
    valid: torch.Tensor | None = None,
    clean_codes: torch.Tensor | None = None,
    perturbed_codes: torch.Tensor | None = None,
    start: torch.Tensor | None = None,
    smoothing: int = 5,
    margin: int = 5,
    run: int = 5,
    regions: str = "default",
) -> CurveAnalysis:
    r"""Analyse clean vs perturbed per-token loss curves around an injection.

    ``delta_loss`` is the mean of :math:`\Delta_t` over valid tokens and
    ``clean_loss`` the mean clean loss; the regions and their metrics are
    described in the module docstring and :func:`region_metrics`.

    With ``regions="authors"`` the regions, ``start`` (onset - 5), the three
    region means (float64, 0 when empty) and ``baseline`` are those of
    :func:`authors_regions`, on each curve up to its last valid token (invalid
    tokens inside count as a difference of 0); ``start``, the codes, ``margin``
    and ``run`` are then not used. The other metrics (peak height, width, area,
    sharpness, ``recovery_std``) are this module's, computed over their regions,
    with ``peak_width`` their Peak length (even when the Peak runs past the curve).

    Args:
        clean: ``[..., T]`` clean per-token loss (codebook-averaged).
        perturbed: ``[..., T]`` perturbed per-token loss.
        onset: injection onset token (int or ``[...]``).
        length: injection length in tokens (int or ``[...]``).
        valid: optional ``[..., T]`` bool mask of tokens to use.
        clean_codes, perturbed_codes: optional ``[..., K, T]`` codes; when both are
            given, the start is :func:`first_differing_token` (capped at the onset
            + length, since codes that never differ mean the model saw nothing).
        start: optional explicit ``[...]`` start token (wins over codes).
        smoothing: window (odd) of the moving average and the running median.
        margin: tokens after the window end where Assimilation ends and Recovery starts.
        run: consecutive tokens at or below zero that end the Peak.
        regions: ``"default"`` (this module's rule) or ``"authors"`` (the paper's code).

    Returns:
        :class:`CurveAnalysis`.

    Raises:
        NoiseProbeError: on shape mismatch, NaN/inf losses, empty curves,
            a non-positive length, a window outside the clip, or bad
            ``smoothing``/``margin`` (:func:`check_region_settings`).

    Example:
        >>> T = 40
        >>> clean = torch.full((T,), 2.0); clean[::2] += 0.5
        >>> delta = torch.zeros(T); delta[10:13] = 3.0; delta[13:20] = -1.0
        >>> a = analyze_curves(clean, clean + delta, onset=10, length=10)
        >>> a.regions.tolist()  # Recovery starts after the window (token 20) and the 5-token margin
        [[10, 14], [14, 25], [25, 40]]
        >>> round(float(a.peak_mean), 3), round(float(a.assimilation_mean), 3)
        (2.0, -0.545)
        >>> round(float(a.peak_height), 3), round(float(a.peak_sharpness), 3)
        (1.8, 7.2)
    """
    if regions not in REGION_RULES:
        raise NoiseProbeError(
            f"Expected argument `regions` to be one of {list(REGION_RULES)} but got {regions!r}."
        )
    check_region_settings(smoothing, margin)
    if clean.shape != perturbed.shape:
        raise NoiseProbeError(
            f"Expected clean and perturbed curves of the same shape but got {tuple(clean.shape)}"
            f" and {tuple(perturbed.shape)}."
        )
    if clean.ndim == 0 or clean.shape[-1] == 0:
        raise NoiseProbeError(f"Expected non-empty loss curves but got shape {tuple(clean.shape)}.")
    T = clean.shape[-1]
    if smoothing > T:
        raise NoiseProbeError(
            f"Expected argument `smoothing` to be at most the curve length ({T} tokens) but got {smoothing}."
        )
    batch = clean.shape[:-1]
    device = clean.device
    if valid is None:
        valid = torch.ones_like(clean, dtype=torch.bool)
    elif valid.shape != clean.shape:
        raise NoiseProbeError(
            f"Expected `valid` of shape {tuple(clean.shape)} but got {tuple(valid.shape)}."
        )
    valid = valid.bool()
    if not valid.any(-1).all():
        raise NoiseProbeError(
            "Expected at least one valid token per curve but got a curve with none."
        )
    _check_finite("clean", clean, valid)
    _check_finite("perturbed", perturbed, valid)
    onset_t = torch.as_tensor(onset, device=device).long().expand(batch)
    length_t = torch.as_tensor(length, device=device).long().expand(batch)
    if (length_t <= 0).any():
        raise NoiseProbeError(
            f"Expected argument `length` to be positive but got {length_t.min().item()}."
        )
    if (onset_t < 0).any() or (onset_t + length_t > T).any():
        raise NoiseProbeError(
            f"Expected the window [onset, onset + length) inside the {T}-token curve but got"
            f" onset={onset_t.max().item()}, length={length_t.max().item()}."
        )
    window_end = onset_t + length_t
    if regions == "authors":
        return _analyze_authors(clean, perturbed, onset_t, length_t, valid, smoothing)
    if start is not None:
        start_t = torch.as_tensor(start, device=device).long().expand(batch)
    elif clean_codes is not None and perturbed_codes is not None:
        start_t = torch.minimum(first_differing_token(clean_codes, perturbed_codes), window_end)
    else:
        start_t = onset_t

    clean32 = clean.float()
    delta = torch.where(valid, perturbed.float() - clean32, 0.0)
    smoothed = moving_average(delta, smoothing, valid)
    bounds = detect_regions(
        delta,
        start_t,
        onset_t,
        window_end,
        smoothing=smoothing,
        margin=margin,
        run=run,
        valid=valid,
    )
    metrics = region_metrics(delta, smoothed, clean32, valid, bounds)
    return CurveAnalysis(
        delta=delta,
        smoothed=smoothed,
        start=start_t,
        regions=bounds,
        delta_loss=_masked_mean(delta, valid),
        clean_loss=_masked_mean(clean32, valid),
        **metrics,
    )


def _analyze_authors(
    clean: torch.Tensor,
    perturbed: torch.Tensor,
    onset: torch.Tensor,
    length: torch.Tensor,
    valid: torch.Tensor,
    smoothing: int,
) -> CurveAnalysis:
    """:func:`analyze_curves` with ``regions="authors"`` (inputs already checked)."""
    T = clean.shape[-1]
    pos = torch.arange(T, device=clean.device)
    num_tokens = torch.where(valid, pos + 1, 0).amax(-1)  # each curve ends at its last valid token
    # float64 on the CPU, as their numpy code (and MPS has no float64)
    raw = perturbed.detach().cpu().double() - clean.detach().cpu().double()
    raw = torch.where(valid.cpu(), raw, 0.0)
    bounds, means, baseline = authors_regions(raw, onset, length, num_tokens)
    bounds = bounds.to(clean.device)
    clean32 = clean.float()
    delta = torch.where(valid, perturbed.float() - clean32, 0.0)
    smoothed = moving_average(delta, smoothing, valid)
    metrics = region_metrics(delta, smoothed, clean32, valid, bounds)
    for k, name in enumerate(REGION_NAMES):
        metrics[f"{name}_mean"] = means[..., k].to(clean.device)
    return CurveAnalysis(
        delta=delta,
        smoothed=smoothed,
        start=bounds[..., 0, 0],
        regions=bounds,
        delta_loss=_masked_mean(delta, valid),
        clean_loss=_masked_mean(clean32, valid),
        baseline=baseline.to(clean.device),
        **metrics,
    )
