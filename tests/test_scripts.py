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


def test_readme_install_steps_are_the_script_ci_builds_the_newest_env_with():
    """The README's "Install without make" commands are scripts/install_without_make.sh's,
    which scripts/latest_env.sh (CI's newest-release environment) runs."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Install without make\n", 1)[1].split("\n## ", 1)[0]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    shown = [line for line in block.splitlines() if line.strip()]
    script = (ROOT / "scripts" / "install_without_make.sh").read_text()
    run = [
        line.replace('"${PIP[@]}"', "pip")
        for line in script.splitlines()
        if line.startswith('"${PIP[@]}" ')
    ]
    assert shown == run and len(run) == 3
    assert "scripts/install_without_make.sh" in (ROOT / "scripts" / "latest_env.sh").read_text()
