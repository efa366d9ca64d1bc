"""scripts/gpu-check.sh: a machine without CUDA gets a clear refusal, not a half run."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine the script really runs")
def test_gpu_check_refuses_without_cuda(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path / "out"), "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu-check.sh")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "torch sees no CUDA device; run this on a GPU machine" in proc.stderr
    assert not (tmp_path / "out" / "tests.txt").exists()  # nothing ran
