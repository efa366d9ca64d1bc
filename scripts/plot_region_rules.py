"""Default vs the authors' region rule on the demo's real curves: a figure and a table.

    .venv/bin/python scripts/plot_region_rules.py                       # the test fixture
    .venv/bin/python scripts/plot_region_rules.py --curves runs/probe/curves.npz

Reads per-token curves (``tests/fixtures/demo_curves_nested.npz``, or the ``curves.npz`` that
``noiseprobe probe`` writes), detects the regions with both rules of
``lightning_noiseprobe.functional.curves.analyze_curves``, writes the side-by-side
figure (``docs/region_rules.png``) and prints the region means as a Markdown table.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch

from lightning_noiseprobe.functional.aggregate import nan_mean_std
from lightning_noiseprobe.functional.curves import REGION_NAMES, analyze_curves, moving_average

ROOT = Path(__file__).resolve().parent.parent
COLORS = {"peak": "#d62728", "assimilation": "#1f77b4", "recovery": "#2ca02c"}
RULES = ("default", "authors")


def load(path: Path) -> dict:
    z = np.load(path)
    if "lengths" in z:  # the fixture
        lengths = torch.from_numpy(z["lengths"]).long()
        onset = int(z["onset"])
        valid = torch.ones(z["clean"].shape, dtype=torch.bool)
    else:  # a probe's curves.npz: perturbation keys "noise:white:250:100"
        keys = [str(k).split(":") for k in z["perturbations"]]
        if any(k[0] != "noise" for k in keys) or len({k[2] for k in keys}) != 1:
            raise SystemExit(f"{path}: expected noise injections at one onset, got {keys}")
        lengths = torch.tensor([int(k[3]) for k in keys])
        onset = int(keys[0][2])
        valid = torch.from_numpy(z["valid"])
    return {
        "clips": [Path(str(c)).stem for c in z["clips"]],
        "clean": torch.from_numpy(z["clean"]).float(),
        "perturbed": torch.from_numpy(z["perturbed"]).float(),
        "valid": valid,
        "start": torch.from_numpy(z["start"]).long(),
        "onset": onset,
        "lengths": lengths,
    }


def analyze(c: dict, rule: str):
    N, P, T = c["perturbed"].shape
    return analyze_curves(
        c["clean"][:, None].expand(N, P, T),
        c["perturbed"],
        c["onset"],
        c["lengths"].expand(N, P),
        valid=c["valid"][:, None].expand(N, P, T),
        start=c["start"],
        regions=rule,
    )


def table(c: dict, results: dict) -> str:
    n_items = c["perturbed"].shape[0] * c["perturbed"].shape[1]
    lines = [
        f"| rule ({n_items} clips x lengths) | Peak mean | Assimilation mean | Recovery mean"
        " | Peak width | empty Peak / Assim. / Recov. |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for rule, a in results.items():
        cells = []
        for name in REGION_NAMES:
            mean, std, n = nan_mean_std(getattr(a, f"{name}_mean"))
            text = "n/a" if math.isnan(mean) else f"{mean:+.3f} ± {std:.3f}"
            cells.append(text + ("" if n == n_items else f" (n = {n})"))
        width = float(a.peak_width.float().mean())
        empty = a.empty_counts()
        counts = " / ".join(str(empty[f"{name}_empty"]) for name in REGION_NAMES)
        lines.append(f"| {rule} | " + " | ".join(cells) + f" | {width:.1f} | {counts} |")
    return "\n".join(lines)


def figure(c: dict, results: dict, cases: list[tuple[int, int]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 2.6 * len(cases)), layout="constrained")
    axes = fig.subplots(len(cases), 2, squeeze=False, sharey="row")
    onset = c["onset"]
    for row, (i, j) in enumerate(cases):
        length = int(c["lengths"][j])
        delta = (c["perturbed"][i, j] - c["clean"][i]) * c["valid"][i]
        lo, hi = onset - 20, min(delta.shape[-1], onset + length + 80)
        t = np.arange(lo, hi)
        for col, rule in enumerate(RULES):
            a = results[rule]
            ax = axes[row, col]
            regions = a.regions[i, j].tolist()
            for name, (r0, r1) in zip(REGION_NAMES, regions, strict=True):
                if r1 > r0:
                    ax.axvspan(max(r0, lo), min(r1, hi), color=COLORS[name], alpha=0.18, lw=0)
            ax.plot(t, delta[lo:hi], color="0.6", lw=0.6, label="Δ per token")
            ax.plot(t, moving_average(delta, 5)[lo:hi], color="k", lw=1.1, label="5-token average")
            ax.axhline(0, color="k", lw=0.5)
            for x in (onset, onset + length):
                ax.axvline(x, color="k", lw=0.6, ls=":")
            ax.set_xlim(lo, hi - 1)
            means = []
            for k, name in enumerate(REGION_NAMES):
                v = float(getattr(a, f"{name}_mean")[i, j])
                r0, r1 = regions[k]
                means.append(
                    f"{name[0].upper()} [{r0},{r1}) " + ("-" if math.isnan(v) else f"{v:+.2f}")
                )
            ax.set_title(
                f"{rule}: {c['clips'][i]}, {length} tokens\n" + "   ".join(means), fontsize=8
            )
            if row == len(cases) - 1:
                ax.set_xlabel("token")
            if col == 0:
                ax.set_ylabel("Δ loss (nats)")
    from matplotlib.patches import Patch

    handles = [Patch(color=COLORS[n], alpha=0.3, label=n.capitalize()) for n in REGION_NAMES]
    line_handles, _ = axes[0, 0].get_legend_handles_labels()
    axes[0, 1].legend(handles=line_handles + handles, fontsize=7, loc="upper right")
    fig.suptitle(
        "Regions on the demo model's curves: this project's default rule (left) vs the authors'"
        " Fig. 4 code (right); dotted: injection window; brown: their Peak running into their"
        " Recovery",
        fontsize=10,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--curves", type=Path, default=ROOT / "tests/fixtures/demo_curves_nested.npz"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "docs/region_rules.png")
    parser.add_argument(
        "--cases",
        default="3:5,0:10,0:100,2:200",
        help="clip:length pairs to draw, one row each (default 3:5,0:10,0:100,2:200)",
    )
    args = parser.parse_args()
    c = load(args.curves)
    results = {rule: analyze(c, rule) for rule in RULES}
    lengths = c["lengths"].tolist()
    cases = []
    for item in args.cases.split(","):
        clip, length = (int(v) for v in item.split(":"))
        cases.append((clip, lengths.index(length)))
    figure(c, results, cases, args.out)
    print(table(c, results))


if __name__ == "__main__":
    main()
