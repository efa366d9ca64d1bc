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

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*weight_norm.*:FutureWarning"),
    pytest.mark.latest,  # also in the newest-release environment (make test-latest)
]

ROOT = Path(__file__).resolve().parents[1]
#: A short probe: 1 clip, onset 60, two lengths.
SPEC: dict[str, Any] = {"onset": 60, "lengths": (5, 20), "clip_seconds": 4.0}
CLI_SPEC = ["--onset", "60", "--lengths", "5,20", "--clip-seconds", "4"]


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def hf_model() -> Any:
    """A tiny transformers MusicGen shared by the tests that only read it."""
    return _tiny()[0]


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

    # the same numbers as the CLI on the saved weights of the last evaluation
    summary = _cli_probe(tmp_path / "run" / "checkpoint-4", probe_dir, tmp_path / "cli")
    diffs = {
        name: abs(evals[1][f"eval_noiseprobe/{name}"] - value)
        for name, value in summary.items()
        if f"eval_noiseprobe/{name}" in evals[1] and math.isfinite(value)
    }
    print(f"callback vs CLI: max |diff| {max(diffs.values()):.2e} over {len(diffs)} metrics")
    assert len(diffs) >= 8 and max(diffs.values()) <= 1e-4, diffs

    # no change to training: the same losses, bitwise, without the callback
    _, plain = _train(tmp_path / "plain")
    losses = [(h["step"], h["loss"]) for h in history if "loss" in h]
    assert len(losses) == 4
    assert losses == [(h["step"], h["loss"]) for h in plain if "loss" in h]
    assert [h["eval_loss"] for h in evals] == [h["eval_loss"] for h in plain if "eval_loss" in h]


def test_trainer_callback_failure_warns_and_logs_nan_with_probe_ok_0(
    probe_dir: Path, monkeypatch: pytest.MonkeyPatch, hf_model: Any
) -> None:
    """A probe failing at an evaluation: warned, probe_ok 0, every other key NaN (the same keys
    as a success, no made-up value); on_evaluate reuses the evaluation's probe; fatal=True
    re-raises. (The Trainer's handling of the NaN: tests/test_trainer_script.py.)"""
    from types import SimpleNamespace

    model = hf_model
    args = SimpleNamespace(
        metric_for_best_model="noiseprobe/peak_sharpness", greater_is_better=True
    )
    for fatal in (False, True):
        cb = lnp.NoiseProbeTrainerCallback(
            probe_audio=probe_dir, cache_dir="none", fatal=fatal, **SPEC
        )
        calls: list[int] = []

        def broken(*a: Any, calls: list[int] = calls, **k: Any) -> Any:
            calls.append(1)
            raise RuntimeError("out of memory (simulated)")

        monkeypatch.setattr(cb.engine, "run", broken)
        metrics: dict[str, Any] = {"eval_loss": 7.0, "eval_runtime": 0.1}
        state = SimpleNamespace(global_step=2, log_history=[{**metrics, "step": 2}])
        if fatal:
            with pytest.raises(RuntimeError, match="simulated"):
                cb.on_log(args, state, None, logs=metrics, model=model)
            continue
        with pytest.warns(UserWarning, match=r"probe failed at step 2 .*RuntimeError.*fatal=True"):
            cb.on_log(args, state, None, logs=metrics, model=model)
        cb.on_evaluate(args, state, None, metrics=metrics, model=model)
        assert len(calls) == 1  # one probe per evaluation
        logged = state.log_history[-1]
        assert logged["eval_noiseprobe/probe_ok"] == 0.0
        assert math.isnan(logged["eval_noiseprobe/peak_sharpness"])
        assert math.isnan(metrics["eval_noiseprobe/peak_sharpness"])
        names = {f"eval_{n}" for n in cb.engine.metric_names()} | {"eval_noiseprobe/probe_ok"}
        assert {k for k in metrics if k.startswith("eval_noiseprobe/")} == names
        assert cb.failures[0]["step"] == 2


def test_trainer_callback_refuses_bad_arguments(probe_dir: Path) -> None:
    with pytest.raises(NoiseProbeError, match="probe_audio"):
        lnp.NoiseProbeTrainerCallback()
    with pytest.raises(NoiseProbeError, match="every_n_evals"):
        lnp.NoiseProbeTrainerCallback(probe_dir, every_n_evals=0)
    with pytest.raises(NoiseProbeError, match="onsett"):
        lnp.NoiseProbeTrainerCallback(probe_dir, onsett=5)


# -- NoiseProber with models the user holds ---------------------------------------------
def test_from_model_wraps_in_place_and_raw_models_probe_the_same(probe_dir: Path) -> None:
    model, tokenizer = _tiny()
    model.train()
    config = model.config.to_dict()
    flags = {n: m.training for n, m in model.named_modules()}
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    backend = TransformersBackend.from_model(model, tokenizer)
    assert backend.lm is model and backend.codec is model.audio_encoder
    assert backend.tokenizer is tokenizer and backend.load() is backend
    prober = lnp.NoiseProber(probe_dir, cache_dir="none", **SPEC)
    metrics, result = prober.probe(torch.nn.DataParallel(model))  # a `.module` wrapper
    assert model.config.to_dict() == config
    assert {n: m.training for n, m in model.named_modules()} == flags
    assert {n: p.requires_grad for n, p in model.named_parameters()} == grads
    again = prober(backend)
    torch.testing.assert_close(again.clean, result.clean, rtol=0, atol=0)
    assert metrics == prober.metrics(result)
    assert metrics["noiseprobe/peak_sharpness"] == result.summary["peak_sharpness"]


def test_models_without_codec_are_refused_with_what_to_pass(
    probe_dir: Path, tiny_backend: Any, hf_model: Any
) -> None:
    prober = lnp.NoiseProber(probe_dir, cache_dir="none", **SPEC)
    model = hf_model
    with pytest.raises(NoiseProbeError, match=r"MusicgenForCausalLM.*Pass the MusicgenForCond"):
        prober(model.decoder)
    with pytest.raises(NoiseProbeError, match=r"LMModel.*Pass the MusicGen"):
        prober(tiny_backend.lm)
    with pytest.raises(NoiseProbeError, match="got Linear"):
        prober(torch.nn.Linear(2, 2))


def test_audiocraft_musicgen_probes_as_its_backend(probe_dir: Path, tiny_backend: Any) -> None:
    prober = lnp.NoiseProber(probe_dir, cache_dir="none", **SPEC)
    metrics, result = prober.probe(tiny_backend._musicgen)
    assert result.clean.equal(prober(tiny_backend).clean)
    assert math.isfinite(metrics["noiseprobe/peak_sharpness"])


def test_peft_lora_model_probes_with_adapters_active(probe_dir: Path) -> None:
    from peft import LoraConfig, get_peft_model

    base, _ = _tiny()
    lora_model, _ = _tiny()
    config = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=r".*decoder\.layers\.\d+\.self_attn\.(q_proj|v_proj)",
        init_lora_weights=False,  # nonzero adapters, so they change the outputs
    )
    peft_model = get_peft_model(lora_model, config)
    prober = lnp.NoiseProber(probe_dir, cache_dir="none", **SPEC)
    with_lora = prober(peft_model)
    without = prober(base)
    merged = prober(peft_model.merge_and_unload())
    print(f"LoRA vs base: max |clean NLL diff| {(with_lora.clean - without.clean).abs().max():.3e}")
    assert (with_lora.clean - without.clean).abs().max() > 1e-3
    torch.testing.assert_close(with_lora.clean, merged.clean, rtol=0, atol=1e-5)
    torch.testing.assert_close(with_lora.perturbed, merged.perturbed, rtol=0, atol=1e-5)


# -- the examples, as a user runs them ----------------------------------------------------
EXAMPLES = {
    "transformers_trainer.py": r"step 4: eval_loss=\S+ eval_noiseprobe/peak_sharpness=\d",
    "plain_loop.py": r"epoch 1: train_loss=\S+ noiseprobe/peak_sharpness=\d",
    "peft_lora.py": r"adapters active: True",
}


@pytest.mark.parametrize("script", sorted(EXAMPLES))
def test_example_runs(script: str, probe_dir: Path, tmp_path: Path) -> None:
    import re

    argv = [sys.executable, str(ROOT / "examples" / script), "--probe-audio", str(probe_dir)]
    if script == "transformers_trainer.py":
        argv += ["--out", str(tmp_path / "trainer")]
    proc = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(EXAMPLES[script], proc.stdout), proc.stdout


def _free_port() -> int:
    import socket

    with socket.socket() as sock:  # torchrun hangs with --master_port 0
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_trainer_callback_under_two_processes_every_rank_gets_the_same_value(
    probe_dir: Path, tmp_path: Path
) -> None:
    """torchrun, 2 CPU processes (gloo): the clips are sharded, every rank logs the same
    values, equal to one process probing the saved weights."""
    clips = tmp_path / "clips"
    clips.mkdir()
    for i, seconds in enumerate((4.2, 4.6, 5.0)):  # 3 clips over 2 ranks: one rank pads
        write_audio(clips / f"clip{i}.wav", 32000, 1, seconds=seconds)
    out = tmp_path / "out"
    out.mkdir()
    script = Path(__file__).parent / "trainer_ddp_script.py"
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"),
            *("--master_port", str(_free_port()), str(script), str(clips), str(out)),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert ranks[0]["evals"] == ranks[1]["evals"] and len(ranks[0]["evals"]) == 1
    logged = ranks[0]["evals"][0]
    assert logged["eval_noiseprobe/probe_ok"] == 1.0
    # one process on the saved weights, computed by rank 0 with the same thread count and
    # batch shapes (trainer_ddp_script.py): only the sharding differs
    metrics = json.loads((out / "reference.json").read_text())
    diffs = {name: abs(logged[f"eval_{name}"] - value) for name, value in metrics.items()}
    worst = max(diffs, key=lambda k: diffs[k])
    print(
        f"2 ranks vs 1 process: max |diff| {diffs[worst]:.2e} ({worst}) over {len(diffs)} metrics"
    )
    assert len(diffs) >= 20
    # Measured 0.0 on every metric (AMD EPYC, OMP_NUM_THREADS=1): the gather only moves
    # rows. 1e-6 leaves room for nothing but the float sums of the analysis.
    assert diffs[worst] <= 1e-6, diffs
