"""Smoke test of ``benchmarks/bench_probe.py``: it runs, and its figures hang together.

No timing is asserted here (speed targets are read from the script's printed
figures, see ``benchmarks/README.md``); this guards the script itself.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "bench_probe.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_probe", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_benchmark_prints_consistent_figures(bench, tmp_path, capsys):
    out = tmp_path / "figures.json"
    argv = ["--quick", "--clips", "2", "--skip-epoch", "--skip-growth", "--json", str(out)]
    figures = bench.main([*argv, "--peak-tflops", "2.5"])
    printed = capsys.readouterr().out
    assert json.loads(out.read_text())["clips"] == 2
    for row in ("(a) optimized vs naive", "(b) prefix sharing on vs off", "achieved / MFU"):
        assert row in printed
    # prefix sharing is exact, and the naive loop (re-encoding, compute_predictions) agrees
    assert figures["prefix_vs_full_max_abs_diff"] < 1e-4
    # 2 clips x (1 + 2 perturbed) x 300 frames (6 s quick clips at 50 Hz) scored per probe
    assert figures["positions_per_s"] * figures["seconds_per_probe"] == pytest.approx(2 * 3 * 300)
    # prefix sharing does less work than full scoring, and MFU is achieved / peak
    assert 0 < figures["model_tflop_per_probe"] < figures["full_scoring_tflop"]
    assert figures["mfu"] == pytest.approx(figures["achieved_tflops"] / 2.5)


def test_flop_estimate_counts_the_prefix_once(bench, tiny_backend):
    """Nothing shared: the estimate is full scoring's; everything but the last frame shared:
    each copy costs one position (plus its attention over the prefix)."""
    from types import SimpleNamespace

    import torch

    N, P, K, T = 2, 3, 4, 100
    clean = torch.randint(0, 2048, (N, K, T), generator=torch.Generator().manual_seed(0))
    differ_at_0 = clean[:, None].repeat(1, P, 1, 1)
    differ_at_0[:, :, 0, 0] += 1
    work = bench.probe_work(
        tiny_backend, SimpleNamespace(clean_codes=clean, perturbed_codes=differ_at_0), 8
    )
    assert work["positions"] == N * (1 + P) * T and work["K"] == K
    assert work["flops"] == work["full_flops"]

    same = clean[:, None].repeat(1, P, 1, 1)  # first differing frame: T (none)
    shared = bench.probe_work(
        tiny_backend, SimpleNamespace(clean_codes=clean, perturbed_codes=same), 8
    )
    full = work["full_flops"]
    # clean clips in full, then each copy runs 1 position: far below full, above the clean share
    assert full / (1 + P) < shared["flops"] < full / (1 + P) * 1.1


def test_compare_backends_prints_both_ratios(bench, tmp_path, capsys):
    """``--compare-backends``: both backends on the same clips, build and score ratios."""
    out = tmp_path / "compare.json"
    argv = ["--quick", "--clips", "1", "--repeats", "1", "--compare-backends", "--json", str(out)]
    figures = bench.main(argv)
    printed = capsys.readouterr().out
    lines = printed.splitlines()
    assert "audiocraft vs transformers" in lines[0] and set(lines[1]) == {"-"}
    for row in (
        "build probe set: audiocraft | transformers",
        "build ratio transformers / audiocraft",
        "score probe set: audiocraft | transformers",
        "score ratio transformers / audiocraft",
    ):
        assert sum(line.startswith(row) for line in lines) == 1, row
    assert "(a) optimized vs naive" not in printed  # nothing else runs
    written = json.loads(out.read_text())
    for what in ("build", "score"):
        ratio = written[f"transformers_{what}_s"] / written[f"audiocraft_{what}_s"]
        assert written[f"{what}_ratio"] == pytest.approx(ratio)
        assert f"{written[f'{what}_ratio']:.2f}x" in printed
    # the transformers backend shares the prefix, exactly
    assert figures["transformers_prefix_sharing"] is True
    assert figures["transformers_prefix_vs_full_max_abs_diff"] < 1e-4
    assert figures["sequences"] == 1 * (1 + 2)  # quick: 2 lengths
