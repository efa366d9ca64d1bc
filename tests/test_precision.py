"""Mixed precision: bf16 scoring moves the probe metrics only a little from fp32 (curve maths stays fp32)."""

from __future__ import annotations

import pytest
import torch
from audio_fixtures import write_audio

from lightning_noiseprobe._errors import NoiseProbeError
from lightning_noiseprobe.probe import (
    ProbeSpec,
    build_probe_set,
    precision_context,
    score_probe_set,
)

SPEC = ProbeSpec(onset=60, lengths=(5, 20, 60), clip_seconds=4.0)

# Measured on the tiny model (README, "Precision"): bf16 autocast moved per-token clean
# losses by at most 0.006 nats (mean 0.0016); clean_loss by 1e-4, delta_loss by 4e-5,
# peak_height by 1e-4, and peak_mean by 0.04 (a region boundary can shift by a token).
# The bounds leave 2.5x or more headroom.
BOUNDS = {"clean_loss": 0.03, "delta_loss": 0.02, "peak_mean": 0.1, "peak_height": 0.1}


@pytest.fixture(scope="module")
def probe_set(tiny_backend, tmp_path_factory):
    d = tmp_path_factory.mktemp("precision")
    write_audio(d / "a.wav", 32000, 1, seconds=4.2)
    write_audio(d / "b.wav", 48000, 2, seconds=4.2)
    return build_probe_set(tiny_backend, d, SPEC)


def test_bf16_metrics_close_to_fp32(tiny_backend, probe_set):
    fp32 = score_probe_set(tiny_backend, probe_set, precision="32")
    bf16 = score_probe_set(tiny_backend, probe_set, precision="bf16-mixed")
    assert bf16.clean.dtype == torch.float32  # curves come back in fp32
    diff = (bf16.clean - fp32.clean)[fp32.valid].abs()
    print(f"bf16 vs fp32 per-token clean loss: max {diff.max():.4f}, mean {diff.mean():.5f} nats")
    assert 0 < float(diff.max()) < 0.1  # bf16 really ran, and stayed close
    for name, bound in BOUNDS.items():
        moved = abs(bf16.summary[name] - fp32.summary[name])
        print(
            f"{name}: fp32 {fp32.summary[name]:.5f} bf16 {bf16.summary[name]:.5f} |diff| {moved:.5f}"
        )
        assert moved < bound, name


def test_fp16_on_cpu_is_refused_with_advice():
    with pytest.raises(NoiseProbeError, match="Use bf16"):
        precision_context("16-mixed", "cpu")
