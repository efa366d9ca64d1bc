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
import torch
from audio_fixtures import write_audio

from lightning_noiseprobe.probe import ProbeSpec, build_probe_set, score_probe_set

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
    # exporting a sharded module is refused with advice, and nothing is written
    for r in ranks:
        assert (
            r["export_error"].startswith("NoiseProbeError") and "one process" in r["export_error"]
        )
    assert not list((tmp_path / "probe_on").glob("export_rank*"))
    # the probe ran every epoch without failing (fatal=True would have stopped the fit)
    h0, h1 = ranks[0]["history"], ranks[1]["history"]
    assert [h["epoch"] for h in h0] == [0, 1] and ranks[0]["failures"] == []
    for a, b in zip(h0, h1, strict=True):
        for key in ("peak_sharpness", "delta_loss", "peak_mean", "clean_loss", "length_pearson"):
            assert a[key] == pytest.approx(b[key], abs=1e-6), key
    # EarlyStopping read the same monitored value on both ranks, equal to the probe's
    assert ranks[0]["seen"] == pytest.approx(ranks[1]["seen"], abs=1e-6)
    assert ranks[0]["seen"] == pytest.approx([h["peak_sharpness"] for h in h0], abs=1e-6)
    assert ranks[0]["early_best"] == pytest.approx(ranks[1]["early_best"], abs=1e-6)
    # sharded probe set: 3 clips on 2 ranks -> 2 clips x 4 sequences per rank per probe,
    # the same forward passes on both ranks (every layer all-gathers in each)
    rows = [r["probe_forward_rows"] for r in ranks]
    assert rows[0] == rows[1] and sum(rows[0]) == 2 * 2 * (1 + 3)
    # per probe: one clean pass of both clips, then their 6 copies continued in passes of 4
    assert rows[0] == [2, 4, 2] * 2
    # gathering for the probe and resharding leaves training exactly as without the probe
    for with_probe, without in zip(ranks, plain, strict=True):
        assert len(with_probe["losses"]) == 4
        assert with_probe["losses"] == without["losses"]

    # one process, same final weights: the same metrics (threads as on the ranks,
    # where the codec's near-tied codebook choices round the same way)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _compare_single_process(probe_dir, tmp_path / "probe_on", h0)
    finally:
        torch.set_num_threads(threads)


def _compare_single_process(probe_dir, out, h0):
    from lightning_noiseprobe.backends.audiocraft import AudiocraftBackend
    from lightning_noiseprobe.probe.probeset import clear_memory_cache

    clear_memory_cache()
    backend = AudiocraftBackend("tiny", seed=0).load()
    backend.lm.load_state_dict(torch.load(out / "lm.pt", weights_only=True))
    spec = ProbeSpec(onset=60, lengths=(5, 20, 60), clip_seconds=4.0)
    result = score_probe_set(backend, build_probe_set(backend, probe_dir, spec), batch_size=4)
    for key in ("peak_sharpness", "delta_loss", "peak_mean", "clean_loss"):
        assert result.summary[key] == pytest.approx(h0[-1][key], abs=1e-5), key


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
