"""Region detection and curve metrics on curves with known answers."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_noiseprobe._errors import NoiseProbeError
from lightning_noiseprobe.functional.aggregate import group_stats, length_correlation, summarize
from lightning_noiseprobe.functional.curves import (
    analyze_curves,
    codebook_average,
    detect_regions,
    first_differing_token,
    moving_average,
    moving_median,
)


def _paper_shaped_delta(T: int = 750, onset: int = 250, length: int = 100) -> torch.Tensor:
    """A Peak of 5 tokens, a plateau below zero inside the window, then noise around zero."""
    g = torch.Generator().manual_seed(0)
    delta = 0.02 * torch.randn(T, generator=g)
    delta[onset : onset + 5] += 2.0
    delta[onset + 5 : onset + length] -= 1.5
    return delta


def test_paper_shape_regions_and_metrics():
    T, onset, length = 750, 250, 100
    g = torch.Generator().manual_seed(1)
    clean = 3.0 + 0.5 * torch.randn(T, generator=g)
    delta = _paper_shaped_delta(T, onset, length)
    a = analyze_curves(clean, clean + delta, onset, length)
    (ps, pe), (as_, ae), (rs, re) = a.regions.tolist()
    assert ps == onset
    # the smoothing window (5) blurs the 5-token peak by at most 2 tokens either side
    assert 5 <= pe - ps <= 7
    assert as_ == pe
    # Assimilation is the rest of the window: it ends, and Recovery starts, at the
    # window end + the 5-token margin (the previous rule ended it where the curve
    # came back above zero, within 3 tokens of the window end on this curve)
    assert ae == onset + length + 5
    assert (rs, re) == (ae, T)
    assert float(a.peak_mean) > 1.0
    assert float(a.assimilation_mean) < -1.0
    assert abs(float(a.recovery_mean)) < 0.05
    assert float(a.peak_width) == pe - ps
    assert float(a.peak_sharpness) == pytest.approx(
        float(a.peak_height) / float(clean[:onset].std(unbiased=False)), rel=1e-5
    )
    expected_area = float(delta[ps:pe].clamp_min(0).sum())
    assert float(a.peak_area) == pytest.approx(expected_area, rel=1e-5)
    assert float(a.delta_loss) == pytest.approx(float(delta.mean()), abs=1e-6)
    assert float(a.clean_loss) == pytest.approx(float(clean.mean()), rel=1e-6)


def test_boundary_is_first_of_five_consecutive_tokens():
    s = torch.tensor([1.0, 1, -1, -1, -1, -1, 1, -1, -1, -1, -1, -1, 1, 1, 1, 1, 1, 1, 1, 1])
    # the 4-token dip at 2..5 is not enough; the 5-token dip starts at 7 (smoothing=1:
    # the curve is used as it is). The return above zero at 12 no longer ends the
    # Assimilation: it runs to the window end + margin (10 + 5), where Recovery starts.
    regions = detect_regions(s, start=0, onset=0, window_end=10, margin=5, smoothing=1)
    assert regions.tolist() == [[0, 7], [7, 15], [15, 20]]


def test_empty_peak_when_curve_drops_immediately():
    s = torch.tensor([0.0] * 5 + [-1.0] * 10 + [1.0] * 10)
    regions = detect_regions(s, start=5, onset=5, window_end=15, margin=0, smoothing=1)
    assert regions.tolist() == [[5, 5], [5, 15], [15, 25]]
    clean = torch.linspace(1, 2, 25)
    a = analyze_curves(clean, clean + s, onset=5, length=10, smoothing=1)
    assert a.regions[0].tolist() == [5, 5]
    assert float(a.peak_width) == 0 and float(a.peak_height) == 0 and float(a.peak_sharpness) == 0
    assert math.isnan(float(a.peak_mean))
    record = a.to_records()[0]
    assert record["peak_mean"] is None and record["regions"]["peak"] == [5, 5]


def test_empty_assimilation_and_cap_for_short_injection():
    # a short injection whose loss never dips: the Peak stops at window end + margin
    s = torch.tensor([0.0] * 10 + [2.0] * 30)
    regions = detect_regions(s, start=10, onset=10, window_end=15, margin=5)
    assert regions.tolist() == [[10, 20], [20, 20], [20, 40]]


def test_window_at_clip_end_gives_empty_recovery():
    s = torch.tensor([0.0] * 10 + [2.0] * 3 + [-1.0] * 7)
    regions = detect_regions(s, start=10, onset=10, window_end=20, margin=5, smoothing=1)
    assert regions.tolist() == [[10, 13], [13, 20], [20, 20]]


def test_single_outlier_after_start_cannot_end_a_positive_peak():
    # the demo's case: codes change 4 tokens before the onset (lead-in of small values
    # of either sign, exact zeros before it), the difference stays near +1 for the whole
    # window, and one token right after the onset is far below zero
    T, onset, length, start = 120, 40, 50, 36
    g = torch.Generator().manual_seed(5)
    delta = torch.zeros(T)
    delta[start:onset] = torch.tensor([-1.0, 0.4, -1.2, 0.2])
    delta[onset : onset + length + 4] = 1.0 + 0.3 * torch.randn(length + 4, generator=g)
    delta[onset + 1] = -9.0
    smoothed = moving_average(delta, 5)
    assert (smoothed[start : onset + 4] <= 0).all()  # 8 tokens: the previous rule's empty Peak
    clean = torch.full((T,), 3.0) + 0.1 * torch.randn(T, generator=g)
    a = analyze_curves(clean, clean + delta, onset, length, start=torch.tensor(start))
    assert a.regions.tolist() == [[36, 95], [95, 95], [95, 120]]
    assert float(a.peak_mean) > 0.7 and math.isnan(float(a.assimilation_mean))
    assert a.empty_counts() == {"peak_empty": 0, "assimilation_empty": 1, "recovery_empty": 0}
    # a dip of 5 tokens does not end it either: the loss climbs back above the clean curve
    delta[onset + 2 : onset + 6] = -0.5
    b = analyze_curves(clean, clean + delta, onset, length, start=torch.tensor(start))
    assert b.regions[0].tolist() == [36, 95]
    # the loss settling below the clean curve for the rest of the window does
    delta[onset + 2 : onset + length] = -0.5
    c = analyze_curves(clean, clean + delta, onset, length, start=torch.tensor(start))
    assert c.regions.tolist() == [[36, onset], [onset, 95], [95, 120]]


def test_assimilation_runs_to_window_end_through_positive_excursions():
    # MusicGen-like: a 5-token Peak, then a plateau below zero that comes back above
    # zero for 8 tokens inside the noise; those tokens are Assimilation, not Recovery
    T, onset, length = 300, 60, 100
    g = torch.Generator().manual_seed(6)
    delta = torch.zeros(T)
    delta[onset : onset + 5] = 2.0
    delta[onset + 5 : onset + length] = -1.5 + 0.5 * torch.randn(length - 5, generator=g)
    delta[onset + 40 : onset + 48] = 0.8
    delta[onset + length :] = 0.2 * torch.randn(T - onset - length, generator=g)
    regions = detect_regions(delta, start=onset - 3, onset=onset, window_end=onset + length)
    (ps, pe), (as_, ae), (rs, re) = regions.tolist()
    assert ps == onset - 3 and onset + 4 <= pe <= onset + 7
    assert (as_, ae, rs, re) == (pe, onset + length + 5, onset + length + 5, T)


def test_moving_median_ignores_outliers_and_invalid_tokens():
    x = torch.tensor([1.0, 1.0, -9.0, 1.0, 1.0, -9.0, -9.0])
    assert moving_median(x, 3).tolist() == [1.0, 1.0, 1.0, 1.0, 1.0, -9.0, -9.0]
    valid = torch.tensor([True, True, False, True, True, True, True])
    assert moving_median(x, 5, valid).tolist()[:3] == [1.0, 1.0, 1.0]
    with pytest.raises(NoiseProbeError, match="positive odd"):
        moving_median(x, 4)


def test_batched_matches_loop():
    T = 120
    g = torch.Generator().manual_seed(3)
    clean = 2 + torch.randn(6, T, generator=g)
    pert = clean + torch.randn(6, T, generator=g)
    onsets = torch.tensor([20, 30, 40, 50, 60, 20])
    lengths = torch.tensor([5, 10, 20, 30, 40, 50])
    batch = analyze_curves(clean, pert, onsets, lengths)
    for i in range(6):
        single = analyze_curves(clean[i], pert[i], int(onsets[i]), int(lengths[i]))
        assert torch.equal(single.regions, batch.regions[i])
        for name, value in single.metrics().items():
            torch.testing.assert_close(value, batch.metrics()[name][i], equal_nan=True)


def test_start_from_codes_and_explicit_start():
    T = 60
    clean = torch.ones(T)
    pert = clean.clone()
    pert[18:22] += 3
    codes = torch.zeros(1, 4, T, dtype=torch.long)
    codes_p = codes.clone()
    codes_p[0, 1, 18:] = 7
    a = analyze_curves(clean[None], pert[None], 20, 10, clean_codes=codes, perturbed_codes=codes_p)
    assert int(a.start[0]) == 18 and int(a.regions[0, 0, 0]) == 18
    b = analyze_curves(clean, pert, 20, 10, start=torch.tensor(19))
    assert int(b.start) == 19


def test_identical_codes_cap_start_at_window_end():
    codes = torch.zeros(4, 50, dtype=torch.long)
    assert int(first_differing_token(codes, codes)) == 50
    a = analyze_curves(
        torch.rand(50), torch.rand(50), 10, 10, clean_codes=codes, perturbed_codes=codes
    )
    assert int(a.start) == 20


def test_valid_mask_excludes_tokens():
    clean = torch.zeros(30)
    pert = torch.zeros(30)
    pert[-3:] = 100.0  # invalid tail
    valid = torch.ones(30, dtype=torch.bool)
    valid[-3:] = False
    clean[:10] = torch.arange(10.0)
    a = analyze_curves(clean, pert + clean, 10, 5, valid=valid)
    assert float(a.delta_loss) == 0.0


def test_codebook_average_with_delay_mask():
    K, T = 4, 8
    nll = torch.arange(K * T, dtype=torch.float32).reshape(K, T)
    mask = torch.ones(K, T, dtype=torch.bool)
    for k in range(K):
        if k:
            mask[k, T - k :] = False
    nll = torch.where(mask, nll, torch.nan)  # audiocraft's invalid logits are NaN
    loss, valid = codebook_average(nll, mask)
    assert valid.all()
    assert float(loss[0]) == pytest.approx(float(nll[:, 0].mean()))
    assert float(loss[-1]) == pytest.approx(float(nll[0, -1]))  # only codebook 0 valid at the end


def test_moving_average_edges():
    x = torch.tensor([3.0, 0.0, 0.0, 0.0, 3.0])
    assert moving_average(x, 5).tolist() == pytest.approx([1.0, 0.75, 1.2, 0.75, 1.0])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"perturbed": torch.zeros(20)}, "same shape"),
        ({"clean": torch.full((30,), float("nan"))}, "finite"),
        ({"length": 0}, "`length` to be positive"),
        ({"length": -3}, "`length` to be positive"),
        ({"onset": 25, "length": 10}, "inside the 30-token curve"),
        ({"clean": torch.zeros(0), "perturbed": torch.zeros(0)}, "non-empty"),
        ({"smoothing": 4}, "`smoothing` to be a positive odd"),
        ({"smoothing": 31}, "`smoothing` to be at most the curve length"),
        ({"margin": -100}, "`margin` to be a number of tokens >= 0"),
    ],
)
def test_bad_inputs_raise_clear_errors(kwargs, match):
    args = {"clean": torch.zeros(30), "perturbed": torch.ones(30), "onset": 10, "length": 5}
    args.update(kwargs)
    with pytest.raises(NoiseProbeError, match=match):
        analyze_curves(
            args.pop("clean"), args.pop("perturbed"), args.pop("onset"), args.pop("length"), **args
        )


def test_sharpness_needs_tokens_before_start():
    with pytest.raises(NoiseProbeError, match="before the perturbation start"):
        analyze_curves(torch.zeros(20), torch.ones(20), 0, 5)


def test_no_nan_in_aggregates_and_correlation():
    lengths = torch.tensor([5, 10, 50, 100, 150, 200] * 3)
    g = torch.Generator().manual_seed(0)
    delta = -0.0025 * lengths + 0.01 * torch.randn(18, generator=g)
    corr = length_correlation(lengths, delta)
    assert corr is not None
    assert corr["length_pearson"] < -0.95 and corr["length_spearman"] < -0.9
    assert corr["length_pearson_p"] < 1e-3
    assert corr["length_slope"] == pytest.approx(-0.0025, rel=0.1)
    assert length_correlation(torch.tensor([5, 5, 5]), torch.tensor([0.1, 0.2, 0.3])) is None
    s = summarize(
        {"delta_loss": delta, "assimilation_mean": torch.full((18,), float("nan"))}, lengths
    )
    assert "assimilation_mean" not in s and all(math.isfinite(v) for v in s.values())
    stats = group_stats({"delta_loss": delta}, [("white", int(n)) for n in lengths])
    assert set(stats["white"]) == {5, 10, 50, 100, 150, 200}
    assert stats["white"][200]["delta_loss"]["n"] == 3


def test_analyze_curves_takes_an_already_computed_first_difference():
    """The scorer's first differing token gives the same analysis as the codes it came
    from (capped at the window end), so the codes need not be compared twice."""
    T, onset, length = 120, 40, 30
    g = torch.Generator().manual_seed(1)
    clean = 2.0 + 0.1 * torch.rand(3, T, generator=g)
    delta = torch.zeros(3, T)
    delta[:, onset - 2 : onset + 8] = 1.5
    codes = torch.zeros(3, 4, T, dtype=torch.long)
    pert = codes.clone()
    pert[0, 1, onset - 3 :] = 1  # differs before the onset
    pert[1, 0, onset + 5 :] = 1  # inside the window
    # clip 2: codes never differ, so the start is capped at onset + length
    from_codes = analyze_curves(
        clean, clean + delta, onset, length, clean_codes=codes, perturbed_codes=pert
    )
    first = first_differing_token(codes, pert)
    given = analyze_curves(clean, clean + delta, onset, length, first_difference=first)
    assert from_codes.start.tolist() == [onset - 3, onset + 5, onset + length]
    assert given.start.tolist() == from_codes.start.tolist()
    assert torch.equal(given.regions, from_codes.regions)
    assert torch.equal(given.peak_mean.nan_to_num(-1), from_codes.peak_mean.nan_to_num(-1))
