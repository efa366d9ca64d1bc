"""The default region rule on real curves: the demo's chorale-trained model (tests/fixtures).

Each fixture holds the per-token losses of the 4 held-out chorales of ``make demo``
(clean, and white noise at token 250 for 5 ... 200 tokens), once with the probe's
default nested noise and once with ``--independent-noise``; tests/fixtures/README.md
says how they were made. On these curves the previous default rule emptied the Peak
of clips whose difference stays near +1 for the whole window (2 of 24 with independent
noise), started Recovery inside the noise (2-3 of 24), and its boundaries moved by up
to 62 tokens under noise of std 0.02-0.05.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_noiseprobe.functional.aggregate import nan_mean_std
from lightning_noiseprobe.functional.curves import (
    analyze_curves,
    moving_average,
    moving_median,
)

FIXTURES = Path(__file__).parent / "fixtures"
MARGIN = 5  # the default margin of analyze_curves and ProbeSpec


def _load(name):
    z = np.load(FIXTURES / f"demo_curves_{name}.npz")
    curves = {
        "clean": torch.from_numpy(z["clean"]),  # [N, T]
        "perturbed": torch.from_numpy(z["perturbed"]),  # [N, P, T]
        "start": torch.from_numpy(z["start"]).long(),  # [N, P] first differing token
        "onset": int(z["onset"]),
        "lengths": torch.from_numpy(z["lengths"]).long(),  # [P]
    }
    assert curves["perturbed"].shape == (4, 6, 750)
    return curves


@pytest.fixture(scope="module", params=["nested", "independent"])
def demo(request):
    return _load(request.param)


def _analyze(demo, perturbed=None, keep=None, regions="default"):
    pert, lengths, start = demo["perturbed"], demo["lengths"], demo["start"]
    if keep is not None:
        pert, lengths, start = pert[:, keep], lengths[keep], start[:, keep]
    if perturbed is not None:
        pert = perturbed
    *batch, T = pert.shape
    return analyze_curves(
        demo["clean"][:, None].expand(*batch, T),
        pert,
        demo["onset"],
        lengths.expand(*batch),
        start=start.expand(*batch),
        regions=regions,
    )


def test_recovery_never_starts_inside_the_window(demo):
    a = _analyze(demo)
    cap = (demo["onset"] + demo["lengths"] + MARGIN).expand(4, 6)
    # Assimilation ends, and Recovery starts, at the window end + margin on every curve
    assert torch.equal(a.regions[..., 1, 1], cap) and torch.equal(a.regions[..., 2, 0], cap)
    assert (a.regions[..., 2, 1] == 750).all()
    # ... and the response really is over there: the difference is ~0 in Recovery
    assert float(a.recovery_mean.abs().max()) < 0.02


def test_lead_in_and_short_dips_do_not_end_the_peak(demo):
    a = _analyze(demo)
    onset, start, lengths = demo["onset"], demo["start"], demo["lengths"]
    delta = demo["perturbed"] - demo["clean"][:, None]
    smoothed = moving_average(delta, 5)
    quiet = (smoothed <= 0) & (moving_median(delta, 5) <= 0)
    lead_in_traps = dips = 0
    for i in range(4):
        for j in range(6):
            s, end = int(start[i, j]), onset + int(lengths[j])
            mean_after = float(delta[i, j, onset + 2 : end].mean())
            # where the codes change before the noise, the 5-token average is below zero
            # for 5 tokens from the start: the previous rule ended the Peak there
            if s < onset and (smoothed[i, j, s : s + 5] <= 0).all() and mean_after > 0.5:
                lead_in_traps += 1
                assert a.regions[i, j, 0].tolist() == [s, end + MARGIN], (i, j)
            # a 5-token dip inside a window whose difference stays clearly positive
            runs = quiet[i, j].float().unfold(-1, 5, 1).amin(-1) > 0
            mid = runs[onset + 10 : end - 40]
            if mid.numel() and mid.any() and mean_after > 0.5:
                dips += 1
                assert a.regions[i, j, 0].tolist() == [s, end + MARGIN], (i, j)
    assert lead_in_traps + dips >= 1  # the fixture holds the cases this test is about
    # on every curve the Peak holds the start and the first 4 tokens of noise
    assert (a.regions[..., 0, 0] == start).all()
    assert (a.regions[..., 0, 1] >= onset + 4).all()
    assert a.empty_counts()["peak_empty"] == 0


@pytest.mark.parametrize("size", [-3.0, -10.0])
def test_single_token_outlier_after_the_start_changes_nothing(demo, size):
    """One token far below zero anywhere from the start to 12 tokens after the onset."""
    keep = demo["lengths"] >= 50  # windows long enough for a Peak to be cut short
    base = _analyze(demo, keep=keep)
    pert = demo["perturbed"][:, keep]  # [N, P', T]
    onset = demo["onset"]
    positions = torch.arange(int(demo["start"].min()), onset + 12)
    B = len(positions)
    hit = pert[None].repeat(B, 1, 1, 1)
    hit[torch.arange(B), :, :, positions] += size
    a = _analyze(demo, perturbed=hit, keep=keep)
    assert torch.equal(a.regions, base.regions[None].expand_as(a.regions))


def test_boundaries_stable_under_small_noise(demo):
    base = _analyze(demo)
    T = demo["perturbed"].shape[-1]
    after_start = torch.arange(T) >= demo["start"][..., None]  # codes (and start) unchanged
    g = torch.Generator().manual_seed(0)
    trials = []
    for std in (0.02, 0.05):
        noise = std * torch.randn(25, 4, 6, T, generator=g)
        trials.append(_analyze(demo, perturbed=demo["perturbed"] + noise * after_start).regions)
    regions = torch.cat(trials)  # [50, 4, 6, 3, 2]
    moved = (regions - base.regions).abs()
    # only the Peak end depends on the loss: the start, the Assimilation end and the
    # Recovery start never move
    assert moved[..., 0, 0].max() == 0 and moved[..., 1, 1].max() == 0
    assert moved[..., 2, 0].max() == 0
    peak_end = moved[..., 0, 1]
    print(
        f"Peak end moved: max {int(peak_end.max())} tokens; >2 tokens in"
        f" {float((peak_end > 2).float().mean()):.1%} of curve x trials;"
        f" curves that ever move: {int((peak_end.amax(0) > 0).sum())} of 24"
    )
    # a near-tie where a short response ends just before its window closes moves it a few
    # tokens (at most run + margin = 10); the other curves do not move at all
    assert int(peak_end.max()) <= 10
    assert float((peak_end > 2).float().mean()) < 0.05
    assert int((peak_end.amax(0) > 0).sum()) <= 4


def test_empty_regions_are_counted_next_to_the_means(demo):
    a = _analyze(demo)
    counts = a.empty_counts()
    # this model's difference stays above zero through the window: no Assimilation in
    # most curves, and that is reported, not hidden in a mean over the few others
    assert counts["assimilation_empty"] >= 20
    for name in ("peak", "assimilation", "recovery"):
        mean, _, n = nan_mean_std(getattr(a, f"{name}_mean"))
        assert n == 24 - counts[f"{name}_empty"]
        assert math.isfinite(mean) == (n > 0)
    # the authors' rule on the same curves: their start-after-end Assimilation counts as empty
    authors = _analyze(demo, regions="authors")
    empty = authors.regions[..., 1, 1] <= authors.regions[..., 1, 0]
    assert authors.empty_counts()["assimilation_empty"] == int(empty.sum()) > 0


def test_readme_figure_script_prints_the_readme_table(tmp_path):
    """scripts/plot_region_rules.py on the fixture: the figure, and the table in README.md."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    out = tmp_path / "rules.png"
    proc = subprocess.run(
        [sys.executable, str(root / "scripts" / "plot_region_rules.py"), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    assert [r.split("|")[1].strip() for r in rows[2:]] == ["default", "authors"]
    readme = (root / "README.md").read_text()
    for row in rows:
        assert row in readme, f"README.md's region-rule table is out of date: {row}"
