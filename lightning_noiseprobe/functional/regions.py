r"""The region rules: Peak, Assimilation and Recovery around a perturbation (paper Sec. 4.2).

Pure tensor functions, batched over any leading dimensions ``[...]`` and the
token axis ``T`` last. :func:`~lightning_noiseprobe.functional.curves.analyze_curves`
calls them and computes each region's metrics.

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

import numbers

import torch

from lightning_noiseprobe._errors import NoiseProbeError
from lightning_noiseprobe.functional.smoothing import moving_average, moving_median

__all__ = [
    "AUTHORS_MIN_ONSET",
    "AUTHORS_SOURCE",
    "REGION_NAMES",
    "REGION_RULES",
    "authors_regions",
    "check_region_settings",
    "detect_regions",
]

REGION_NAMES = ("peak", "assimilation", "recovery")

#: Region rules of :func:`analyze_curves`: this project's, and the paper authors' own.
REGION_RULES = ("default", "authors")

#: Where the authors' rule is taken from (:func:`authors_regions`).
AUTHORS_SOURCE = (
    "github.com/YoEv/noiseloss experiments/phase5/phase5_region_analysis_boxplot_3areas.py"
    " (detect_regions_ma, analyze_single_file)"
)
#: The smallest onset the authors' rule accepts: its baseline is the first onset - 50 tokens.
AUTHORS_MIN_ONSET = 51


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
