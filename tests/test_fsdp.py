"""Real FSDP2: two CPU processes (gloo) shard the LM with ``fully_shard`` in a Lightning Trainer.

``ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)`` runs
MusicGenLightningModule's ``configure_model``; the probe gathers the LM's own
parameter group (embeddings, heads, condition provider) and lets each layer
gather itself. Lightning refuses FSDP1 (``FSDPStrategy``) without a GPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from audio_fixtures import write_audio
from lightning_helpers import assert_ranks_agree, assert_single_process_agrees

SCRIPT = Path(__file__).parent / "fsdp_probe_script.py"


def _run(probe_dir: Path, out: Path, *extra: str) -> list[dict]:
    out.mkdir()
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(probe_dir), str(out), *extra],
        cwd=out,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


def test_two_process_fsdp2_probe_matches_single_process(tmp_path):
    probe_dir = tmp_path / "probe"
    probe_dir.mkdir()
    write_audio(probe_dir / "a.wav", 32000, 1, seconds=4.2)
    write_audio(probe_dir / "b.ogg", 44100, 2, seconds=4.2)
    write_audio(probe_dir / "c.flac", 48000, 1, seconds=4.2)
    ranks = _run(probe_dir, tmp_path / "probe_on")
    plain = _run(probe_dir, tmp_path / "probe_off", "--no-probe")

    # really sharded, really trained
    for r in ranks:
        assert r["world_size"] == 2
        assert r["sharded_weight_type"] == "DTensor" and r["layer_weight_type"] == "DTensor"
    assert ranks[0]["weights_changed"]
    # 2 layers + the LM; configure_model run again leaves them as they are
    assert ranks[0]["fsdp_groups"] == [3, 3]
    # exporting a sharded module is refused with advice, and nothing is written
    for r in ranks:
        assert (
            r["export_error"].startswith("NoiseProbeError") and "one process" in r["export_error"]
        )
    assert not list((tmp_path / "probe_on").glob("export_rank*"))
    # the probe ran every epoch without failing (fatal=True would have stopped the fit)
    assert ranks[0]["failures"] == ranks[1]["failures"] == []
    assert_ranks_agree(ranks)
    # gathering for the probe and resharding leaves training exactly as without the probe
    for with_probe, without in zip(ranks, plain, strict=True):
        assert len(with_probe["losses"]) == 4
        assert with_probe["losses"] == without["losses"]
    assert_single_process_agrees(
        probe_dir, tmp_path / "probe_on" / "lm.pt", ranks[0]["history"][-1]
    )


def test_two_process_fsdp2_probe_of_the_transformers_backend(tmp_path):
    """The transformers backend shards its decoder (layers, then the rest) and text
    projection; the probe calls them through their own forward, so nothing is gathered
    by hand, and the ranks still agree with each other and with one process."""
    probe_dir = tmp_path / "probe"
    probe_dir.mkdir()
    write_audio(probe_dir / "a.wav", 32000, 1, seconds=4.2)
    write_audio(probe_dir / "b.ogg", 44100, 2, seconds=4.2)
    write_audio(probe_dir / "c.flac", 48000, 1, seconds=4.2)
    ranks = _run(probe_dir, tmp_path / "out", "--transformers")
    for r in ranks:
        assert r["sharded_weight_type"] == "DTensor" and r["layer_weight_type"] == "DTensor"
        assert r["failures"] == [] and r["export_error"].startswith("NoiseProbeError")
    assert ranks[0]["weights_changed"]
    assert ranks[0]["fsdp_groups"] == [4, 4]  # 2 decoder layers, the decoder, the projection
    assert_ranks_agree(ranks)  # prefix sharing as in audiocraft: a clean pass, then the copies
    assert_single_process_agrees(
        probe_dir, tmp_path / "out" / "lm.pt", ranks[0]["history"][-1], backend="transformers"
    )


def test_tensor_parallelism_is_refused_with_a_clear_message():
    from types import SimpleNamespace

    from lightning.pytorch.strategies import ModelParallelStrategy

    from lightning_noiseprobe import NoiseProbeError
    from lightning_noiseprobe.callback import NoiseProbeCallback

    strategy = ModelParallelStrategy(data_parallel_size=1, tensor_parallel_size=2)
    with pytest.raises(
        NoiseProbeError, match=r"tensor_parallel_size is 2.*tensor_parallel_size=1\)"
    ):
        NoiseProbeCallback._check_strategy(SimpleNamespace(strategy=strategy))  # type: ignore[arg-type]
    NoiseProbeCallback._check_strategy(  # FSDP2 data parallelism passes
        SimpleNamespace(
            strategy=ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)
        )  # type: ignore[arg-type]
    )


def test_fsdp2_on_a_torch_without_fully_shard_says_what_to_do(monkeypatch):
    """torch 2.4/2.5 (allowed by the declared minimum) have no public fully_shard."""
    import torch.distributed.fsdp

    from lightning_noiseprobe import MusicGenLightningModule, NoiseProbeError

    module = MusicGenLightningModule(model="tiny")
    module._device_mesh = object()  # what ModelParallelStrategy sets before configure_model
    monkeypatch.delattr(torch.distributed.fsdp, "fully_shard")
    with pytest.raises(NoiseProbeError, match=r"public from torch 2\.6.*strategy='ddp'"):
        module.configure_model()
