"""The default region rule on real curves: the demo's chorale-trained model (tests/fixtures).

The fixture holds the per-token losses of the 4 held-out chorales of ``make demo``
(clean, and white noise at token 250 for 5 ... 200 tokens); tests/fixtures/README.md
says how it was made. On these curves the previous default rule emptied the Peak of
two clips whose difference stays near +1 for the whole window, started Recovery
inside the noise, and moved its boundaries by up to 159 tokens under small noise.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_noiseprobe.functional.aggregate import nan_mean_std
from lightning_noiseprobe.functional.curves import analyze_curves, moving_average

FIXTURE = Path(__file__).parent / "fixtures" / "demo_curves.npz"
MARGIN = 5  # the default margin of analyze_curves and ProbeSpec


@pytest.fixture(scope="module")
def demo():
    z = np.load(FIXTURE)
    curves = {
        "clean": torch.from_numpy(z["clean"]),  # [N, T]
        "perturbed": torch.from_numpy(z["perturbed"]),  # [N, P, T]
        "start": torch.from_numpy(z["start"]).long(),  # [N, P] first differing token
        "onset": int(z["onset"]),
        "lengths": torch.from_numpy(z["lengths"]).long(),  # [P]
        "clips": [str(c) for c in z["clips"]],
    }
    assert curves["perturbed"].shape == (4, 6, 750)
    return curves


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
    window_end = demo["onset"] + demo["lengths"]
    # Assimilation ends, and Recovery starts, at the window end + margin on every curve
    assert torch.equal(a.regions[..., 1, 1], (window_end + MARGIN).expand(4, 6))
    assert torch.equal(a.regions[..., 2, 0], (window_end + MARGIN).expand(4, 6))
    assert (a.regions[..., 2, 1] == 750).all()
    # ... and the response really is over there: the difference is ~0 in Recovery
    assert float(a.recovery_mean.abs().max()) < 0.02


def test_lead_in_cannot_empty_the_peak(demo):
    a = _analyze(demo)
    onset, start = demo["onset"], demo["start"]
    delta = demo["perturbed"] - demo["clean"][:, None]
    # the trap is in the data: for clip 0 at 10 tokens and clip 2 at 150 tokens, the
    # 5-token average is below zero from the first differing token for 5 tokens
    # (the codes change before the noise; there the previous rule ended the Peak)
    for i, j in ((0, 1), (2, 4)):
        s = int(start[i, j])
        assert s < onset
        assert (moving_average(delta[i, j], 5)[s : s + 5] <= 0).all()
        window_end = onset + int(demo["lengths"][j])
        assert float(delta[i, j, onset + 2 : window_end].mean()) > 0.5  # clearly positive after
        # now the Peak spans the whole window, as the difference does
        assert a.regions[i, j, 0].tolist() == [s, window_end + MARGIN]
    # on every curve the Peak holds the onset and at least 5 tokens of noise
    assert (a.regions[..., 0, 0] == start).all()
    assert (a.regions[..., 0, 1] >= onset + 5).all()
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
    assert (
        moved[..., 0, 0].max() == 0 and moved[..., 1, 1].max() == 0 and moved[..., 2, 0].max() == 0
    )
    peak_end = moved[..., 0, 1]
    print(
        f"Peak end moved: max {int(peak_end.max())} tokens; >2 tokens in"
        f" {float((peak_end > 2).float().mean()):.1%} of curve x trials;"
        f" curves that ever move: {int((peak_end.amax(0) > 0).sum())} of 24"
    )
    # a near-tie at the end of a response (the difference crossing zero just before the
    # window closes) moves it at most run + margin = 10 tokens; almost all stay put
    assert int(peak_end.max()) <= 10
    assert float((peak_end > 2).float().mean()) < 0.05
    assert int((peak_end.amax(0) > 0).sum()) <= 6


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
