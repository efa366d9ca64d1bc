"""The probe beyond Lightning: a real ``transformers.Trainer`` with ``NoiseProbeTrainerCallback``,
already-loaded and PEFT-wrapped models through ``NoiseProber``, and the ``examples/`` scripts.

Tiny transformers MusicGen on CPU, offline (``HF_HUB_OFFLINE=1``).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from audio_fixtures import write_audio

import lightning_noiseprobe as lnp
from lightning_noiseprobe._errors import NoiseProbeError
from lightning_noiseprobe.backends.transformers import (
    TransformersBackend,
    build_tiny_transformers_musicgen,
)

pytestmark = pytest.mark.filterwarnings("ignore:.*weight_norm.*:FutureWarning")

ROOT = Path(__file__).resolve().parents[1]
#: A short probe: 1 clip, onset 60, two lengths.
SPEC: dict[str, Any] = {"onset": 60, "lengths": (5, 20), "clip_seconds": 4.0}
CLI_SPEC = ["--onset", "60", "--lengths", "5,20", "--clip-seconds", "4"]


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def probe_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("probe_audio")
    write_audio(folder / "clip.wav", 32000, 1, seconds=4.2)
    return folder


def _tiny() -> tuple[Any, Any]:
    model, tokenizer = build_tiny_transformers_musicgen(0)
    # what `labels` need to build the decoder inputs (hub configs have it)
    model.config.decoder.decoder_start_token_id = model.config.decoder.bos_token_id
    return model, tokenizer


def _dataset(tokenizer: Any, n: int = 8, frames: int = 20) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    text = tokenizer(["a chorale"], return_tensors="pt")
    return [
        {
            "input_ids": text["input_ids"][0],
            "attention_mask": text["attention_mask"][0],
            "labels": torch.randint(0, 2048, (frames, 4), generator=g),
        }
        for _ in range(n)
    ]


def _train(tmp: Path, callback: Any = None, **overrides: Any) -> tuple[Any, list[dict[str, Any]]]:
    from transformers import Trainer, TrainingArguments

    model, tokenizer = _tiny()
    data = _dataset(tokenizer)
    kwargs: dict[str, Any] = {
        "output_dir": str(tmp),
        "max_steps": 4,
        "per_device_train_batch_size": 2,
        "per_device_eval_batch_size": 2,
        "learning_rate": 3e-3,
        "eval_strategy": "steps",
        "eval_steps": 2,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": [],
        "seed": 0,
        "use_cpu": True,
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        **overrides,
    }
    trainer = Trainer(
        model=model, args=TrainingArguments(**kwargs), train_dataset=data, eval_dataset=data[:2]
    )
    if callback is not None:
        trainer.add_callback(callback)
    trainer.train()
    return trainer, trainer.state.log_history


def _cli_probe(model_dir: Path, probe_dir: Path, out: Path) -> dict[str, float]:
    argv = ["probe", "--backend", "transformers", "--model", str(model_dir)]
    argv += ["--audio", str(probe_dir), "--out", str(out), *CLI_SPEC, "--quiet"]
    proc = subprocess.run(
        [sys.executable, "-m", "lightning_noiseprobe.cli", *argv, "--cache-dir", "none"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "metrics.json").read_text())["summary"]


# -- the Trainer callback --------------------------------------------------------------
def test_trainer_callback_logs_matches_cli_and_leaves_training_unchanged(
    probe_dir: Path, tmp_path: Path
) -> None:
    callback = lnp.NoiseProbeTrainerCallback(probe_audio=probe_dir, cache_dir="none", **SPEC)
    trainer, history = _train(
        tmp_path / "run",
        callback,
        save_strategy="steps",
        save_steps=2,
        load_best_model_at_end=True,
        metric_for_best_model="noiseprobe/peak_sharpness",
        greater_is_better=True,
    )
    evals = [h for h in history if "eval_loss" in h]
    assert [h["step"] for h in evals] == [2, 4]
    for entry in evals:
        assert entry["eval_noiseprobe/probe_ok"] == 1.0
        assert math.isfinite(entry["eval_noiseprobe/peak_sharpness"])
        assert "eval_noiseprobe/white/len20/delta_loss" in entry
    # the weights moved between the evaluations, and the probe saw it
    assert evals[0]["eval_noiseprobe/clean_loss"] != evals[1]["eval_noiseprobe/clean_loss"]

    # metric_for_best_model on a probe metric: the Trainer ranks checkpoints by it
    sharp = [h["eval_noiseprobe/peak_sharpness"] for h in evals]
    best = max(range(2), key=lambda i: sharp[i])
    assert trainer.state.best_metric == pytest.approx(sharp[best], abs=0)
    best_dir = Path(trainer.state.best_model_checkpoint)
    assert best_dir.name == f"checkpoint-{evals[best]['step']}"

    # the same number as the CLI on the saved weights (every checkpoint, every summary metric)
    for entry in evals:
        summary = _cli_probe(
            tmp_path / "run" / f"checkpoint-{entry['step']}",
            probe_dir,
            tmp_path / f"cli{entry['step']}",
        )
        compared = 0
        for name, value in summary.items():
            key = f"eval_noiseprobe/{name}"
            if key in entry and math.isfinite(value):
                assert entry[key] == pytest.approx(value, abs=1e-4), name
                compared += 1
        assert compared >= 8

    # no change to training: the same losses, bitwise, without the callback
    _, plain = _train(tmp_path / "plain")
    losses = [(h["step"], h["loss"]) for h in history if "loss" in h]
    assert len(losses) == 4
    assert losses == [(h["step"], h["loss"]) for h in plain if "loss" in h]
    assert [h["eval_loss"] for h in evals] == [h["eval_loss"] for h in plain if "eval_loss" in h]
