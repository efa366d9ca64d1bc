"""Real DDP: two CPU processes (gloo) in a Lightning Trainer give the single-process probe metrics."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

from audio_fixtures import write_audio
from lightning_helpers import assert_ranks_agree, assert_single_process_agrees


def test_two_process_ddp_matches_single_process(tmp_path):
    probe_dir = tmp_path / "probe"
    probe_dir.mkdir()
    write_audio(probe_dir / "a.wav", 32000, 1, seconds=4.2)
    write_audio(probe_dir / "b.mp3", 44100, 2, seconds=4.2)
    write_audio(probe_dir / "c.flac", 48000, 1, seconds=4.2)
    out = tmp_path / "out"
    out.mkdir()
    script = Path(__file__).parent / "ddp_probe_script.py"
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(script), str(probe_dir), str(out)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert_ranks_agree(ranks)
    assert_single_process_agrees(probe_dir, out / "lm.pt", ranks[0]["history"][-1])


def test_two_node_torchrun_launch_through_the_cli(tmp_path):
    """What a multi-node job does (README, "Multi-node"): one ``torchrun`` per node
    (here two single-process "nodes" on this machine) running ``noiseprobe fit`` with
    ``trainer.num_nodes 2``; the probe's metrics reach rank 0's TensorBoard."""
    import socket

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = Path(__file__).parents[1]
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    procs = []
    for node in (0, 1):
        override = tmp_path / f"node{node}.yaml"
        override.write_text(
            f"""
trainer:
  max_epochs: 2
  logger:
    class_path: lightning.pytorch.loggers.TensorBoardLogger
    init_args: {{save_dir: {tmp_path}/runs{node}, name: tiny}}
  callbacks:
    - class_path: lightning_noiseprobe.callback.NoiseProbeCallback
      init_args: {{onset: 60, lengths: [5, 60], batch_size: 8, cache_dir: none, clip_seconds: 4.0}}
data:
  class_path: lightning_noiseprobe.data.datamodule.ChoraleDataModule
  init_args: {{root: {tmp_path}/chorales{node}, num_clips: 6, clip_seconds: 4.0, segment_seconds: 3.0, probe_fraction: 0.34, val_fraction: 0.2}}
"""
        )
        cmd = [
            str(torchrun),
            "--nnodes", "2", "--nproc-per-node", "1", "--node-rank", str(node),
            "--master-addr", "127.0.0.1", "--master-port", str(port),
            "-m", "lightning_noiseprobe.cli", "fit",
            "--config", str(root / "configs" / "tiny.yaml"), "--config", str(override),
            "--trainer.num_nodes", "2", "--trainer.devices", "1", "--trainer.strategy", "ddp",
        ]  # fmt: skip
        procs.append(
            subprocess.Popen(
                cmd,
                cwd=tmp_path,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in logs[0] and "GLOBAL_RANK: 1, MEMBER: 2/2" in logs[1]
    (events,) = (tmp_path / "runs0").rglob("events.out.tfevents.*")
    acc = EventAccumulator(str(events))
    acc.Reload()
    sharpness = [e.value for e in acc.Scalars("noiseprobe/peak_sharpness")]
    assert len(sharpness) == 2 and all(math.isfinite(v) for v in sharpness)
    assert not list((tmp_path / "runs1").rglob("events.out.tfevents.*"))  # rank 1 does not log
