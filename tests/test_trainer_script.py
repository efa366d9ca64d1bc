"""``NoiseProbeTrainerCallback`` in a real fine-tune script (``musicgen_finetune_script.py``,
shaped like ylacombe/musicgen-dreamboothing): what users read after training is the truth.

- the final ``trainer.evaluate()`` after ``load_best_model_at_end`` probes the loaded best
  checkpoint (equal to ``noiseprobe probe`` on it), not the last evaluation's weights;
- probe clips with ``.json`` sidecars need no ``processor=``: the Trainer's
  ``processing_class`` or the tokenizer saved beside the model is used; with none, the run
  stops before the first step naming ``processor=``;
- a failed probe writes NaN, never a made-up number, into ``log_history``,
  ``eval_results.json``, ``all_results.json`` and ``trainer_state.json``'s ``best_metric``,
  and is never a new best nor an improvement for ``EarlyStoppingCallback``, for both
  directions of ``greater_is_better``;
- every evaluation logs the same keys.

Tiny transformers MusicGen on CPU, offline.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from audio_fixtures import write_audio

from lightning_noiseprobe._errors import NoiseProbeError

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*weight_norm.*:FutureWarning"),
    pytest.mark.latest,  # also in the newest-release environment (make test-latest)
]

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "musicgen_finetune_script.py"
CLI_SPEC = ["--onset", "60", "--lengths", "5,20", "--clip-seconds", "4"]
METRIC = "eval_noiseprobe/peak_sharpness"


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _sidecar(path: Path, description: str) -> None:
    path.with_suffix(".json").write_text(json.dumps({"description": description}))


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny MusicGen saved as a real HF folder (model, tokenizer, feature extractor), 4
    training clips and 1 probe clip, each with a ``.json`` sidecar description."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from lightning_noiseprobe.backends.transformers import TransformersBackend

    root = tmp_path_factory.mktemp("finetune")
    model = TransformersBackend(model="tiny", seed=0).load().save(root / "model")
    (root / "train").mkdir()
    for i in range(4):
        path = write_audio(root / "train" / f"clip{i}.wav", 32000, 1, seconds=1.6 + 0.1 * i)
        _sidecar(path, f"a chorale, take {i}")
    (root / "probe").mkdir()
    _sidecar(write_audio(root / "probe" / "probe.wav", 32000, 1, seconds=4.2), "an organ chorale")
    return {"model": model, "train": root / "train", "probe": root / "probe"}


def _argv(folders: dict[str, Path], out: Path, greater: bool, *extra: str) -> list[str]:
    return [
        *("--model_name_or_path", str(folders["model"]), "--train_dir", str(folders["train"])),
        *("--probe_dir", str(folders["probe"]), "--output_dir", str(out)),
        *("--max_steps", "4", "--per_device_train_batch_size", "2"),
        *("--per_device_eval_batch_size", "2", "--learning_rate", "3e-3"),
        *("--eval_strategy", "steps", "--eval_steps", "1", "--logging_steps", "1"),
        *("--save_strategy", "steps", "--save_steps", "1", "--load_best_model_at_end", "true"),
        *("--metric_for_best_model", "noiseprobe/peak_sharpness"),
        *("--greater_is_better", str(greater).lower(), "--report_to", "none"),
        *("--use_cpu", "true", "--seed", "0", "--disable_tqdm", "true"),
        *("--dataloader_num_workers", "0"),
        *extra,
    ]


def _run_in_process(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The script's ``main()`` in this process (what a subprocess runs, without its start-up)."""
    spec = importlib.util.spec_from_file_location("musicgen_finetune_script", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # its dataclasses look themselves up
    spec.loader.exec_module(module)
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), *argv])
    module.main()


def _numbers(value: Any) -> list[float]:
    if isinstance(value, bool):
        return []
    if isinstance(value, (int, float)):
        return [float(value)]
    if isinstance(value, dict):
        return [x for v in value.values() for x in _numbers(v)]
    if isinstance(value, list):
        return [x for v in value for x in _numbers(v)]
    return []


def _assert_no_made_up_numbers(out: Path) -> list[Path]:
    """Every JSON file the run wrote parses, and holds no ±inf and no ±3.4e38-like value."""
    files = sorted(out.rglob("*.json"))
    names = {p.name for p in files}
    assert {"eval_results.json", "all_results.json", "trainer_state.json"} <= names, names
    for path in files:
        for x in _numbers(json.loads(path.read_text())):
            assert math.isnan(x) or abs(x) < 1e30, (path, x)  # NaN: "no value"; never ±inf
    return files


def _evals(log_history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [h for h in log_history if "eval_loss" in h]


def _probe_keys(entry: dict[str, Any]) -> set[str]:
    return {k for k in entry if k.startswith("eval_noiseprobe/")}


def _cli_probe(model_dir: Path, probe_dir: Path, out: Path) -> dict[str, float]:
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "lightning_noiseprobe.cli", "probe"),
            *("--backend", "transformers", "--model", str(model_dir)),
            *("--audio", str(probe_dir), "--out", str(out), *CLI_SPEC),
            *("--cache-dir", "none", "--no-figures", "--quiet"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((out / "metrics.json").read_text())
    assert {c["conditioning"] for c in data["clips"]} == {"sidecar"}
    return data["summary"]


def test_final_evaluate_probes_the_loaded_best_checkpoint(
    folders: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both directions of greater_is_better, so that in at least one the best checkpoint is
    not the last: there the final evaluate() must not repeat the last evaluation's probe."""
    best_not_last = 0
    for greater in (True, False):
        out = tmp_path / f"run-{greater}"
        if greater:  # as a user runs it
            proc = subprocess.run(
                [sys.executable, str(SCRIPT), *_argv(folders, out, greater)],
                capture_output=True,
                text=True,
                timeout=900,
                env={**os.environ, "HF_HUB_OFFLINE": "1"},
            )
            assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
        else:  # the same main(), without a second interpreter start-up
            _run_in_process(_argv(folders, out, greater), monkeypatch)
        _assert_no_made_up_numbers(out)
        state = json.loads((out / "trainer_state.json").read_text())
        evals = _evals(state["log_history"])
        assert [e["step"] for e in evals] == [1, 2, 3, 4]
        # sidecar texts with no processor=: the Trainer's processing_class (transformers 4)
        # or the tokenizer beside the model (5) was used
        assert all(e["eval_noiseprobe/probe_ok"] == 1.0 for e in evals)
        final = json.loads((out / "eval_results.json").read_text())
        keys = _probe_keys(evals[0])
        assert len(keys) > 20 and all(_probe_keys(e) == keys for e in evals)
        assert _probe_keys(final) == keys

        values = [e[METRIC] for e in evals]
        best = (max if greater else min)(range(4), key=lambda i: values[i])
        best_dir = out / f"checkpoint-{evals[best]['step']}"
        assert Path(state["best_model_checkpoint"]).resolve() == best_dir.resolve()
        assert state["best_metric"] == pytest.approx(values[best], abs=0)

        if not (best_dir / "tokenizer_config.json").is_file():
            # transformers 5: the script gives the Trainer only the feature extractor
            # (musicgen_finetune_script.trainer_processing_class), so checkpoints hold no
            # tokenizer; probe them with the model's own, as the callback did
            for name in folders["model"].glob("*token*"):
                shutil.copy(name, best_dir / name.name)
        cli = _cli_probe(best_dir, folders["probe"], tmp_path / f"cli-{greater}")
        diffs = {
            k: abs(final[f"eval_noiseprobe/{k}"] - v)
            for k, v in cli.items()
            if f"eval_noiseprobe/{k}" in final and math.isfinite(v)
        }
        print(
            f"greater_is_better={greater}: best checkpoint-{evals[best]['step']};"
            f" final evaluate vs CLI on it: max |diff| {max(diffs.values()):.1e} over {len(diffs)}"
        )
        # same weights, same process settings and batch shapes on both sides: equal to rounding
        assert len(diffs) >= 10 and max(diffs.values()) <= 1e-5, diffs
        if best != 3:
            best_not_last += 1
            assert abs(final[METRIC] - values[3]) > 1e-6, "the final evaluate reused step 4's probe"
            assert final[METRIC] == pytest.approx(values[best], abs=1e-5)
    assert best_not_last >= 1


@pytest.mark.parametrize("greater", [True, False], ids=["greater", "less"])
def test_failed_probes_are_nan_never_best_and_count_as_no_improvement(
    folders: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, greater: bool
) -> None:
    """Evaluations 1 and 3 fail: NaN (not ±3.4e38) everywhere, checkpoint-1 and -3 never best,
    and EarlyStoppingCallback(patience=1) stops at the failed evaluation 3."""
    out = tmp_path / "run"
    argv = _argv(folders, out, greater, "--fail_probe_at_evals", "1,3")
    with pytest.warns(UserWarning, match=r"probe failed at step 1 .*simulated"):
        _run_in_process([*argv, "--early_stopping_patience", "1"], monkeypatch)
    files = _assert_no_made_up_numbers(out)
    state = json.loads((out / "trainer_state.json").read_text())
    evals = _evals(state["log_history"])
    assert [e["step"] for e in evals] == [1, 2, 3]  # the failed evaluation 3 stopped training
    assert [e["eval_noiseprobe/probe_ok"] for e in evals] == [0.0, 1.0, 0.0]
    assert math.isnan(evals[0][METRIC]) and math.isnan(evals[2][METRIC])
    assert all(_probe_keys(e) == _probe_keys(evals[1]) for e in evals)
    assert Path(state["best_model_checkpoint"]).name == "checkpoint-2"
    assert state["best_metric"] == pytest.approx(evals[1][METRIC], abs=0)
    # the checkpoint saved before any success says there is no best yet
    first = json.loads((out / "checkpoint-1" / "trainer_state.json").read_text())
    assert first["best_metric"] is None and first["best_model_checkpoint"] is None
    final = json.loads((out / "eval_results.json").read_text())
    assert final["eval_noiseprobe/probe_ok"] == 1.0  # the loaded best model, probed
    assert final[METRIC] == pytest.approx(evals[1][METRIC], abs=1e-5)
    assert len(files) >= 6


def test_every_probe_failing_leaves_no_best_metric(
    folders: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    argv = _argv(folders, out, True, "--fail_probe_at_evals", "1,2,3,4,5", "--max_steps", "2")
    with pytest.warns(UserWarning, match="probe failed"):
        _run_in_process(argv, monkeypatch)
    _assert_no_made_up_numbers(out)
    for path in [out / "trainer_state.json", *out.glob("checkpoint-*/trainer_state.json")]:
        state = json.loads(path.read_text())
        assert state["best_metric"] is None and state["best_model_checkpoint"] is None, path
    final = json.loads((out / "eval_results.json").read_text())
    assert final["eval_noiseprobe/probe_ok"] == 0.0 and math.isnan(final[METRIC])
    assert math.isfinite(final["eval_loss"])


# -- the tokenizer for sidecar texts -----------------------------------------------------
def _trainer(model: Any, out: Path, callback: Any, **kwargs: Any) -> Any:
    from transformers import Trainer, TrainingArguments

    args = TrainingArguments(
        output_dir=str(out),
        max_steps=1,
        per_device_train_batch_size=1,
        eval_strategy="no",
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
    )
    g = torch.Generator().manual_seed(0)
    data = [
        {"input_ids": torch.tensor([1, 2]), "labels": torch.randint(0, 2048, (10, 4), generator=g)}
    ]
    trainer = Trainer(model=model, args=args, train_dataset=data, **kwargs)
    trainer.add_callback(callback)
    return trainer


def test_sidecar_texts_without_any_tokenizer_fail_before_training(
    folders: dict[str, Path], tmp_path: Path
) -> None:
    from lightning_noiseprobe import NoiseProbeTrainerCallback
    from lightning_noiseprobe.backends.transformers import build_tiny_transformers_musicgen

    model, _ = build_tiny_transformers_musicgen(0)  # built in memory: no folder to read one from
    model.config.decoder.decoder_start_token_id = model.config.decoder.bos_token_id
    callback = NoiseProbeTrainerCallback(
        probe_audio=folders["probe"], cache_dir="none", onset=60, lengths=(5, 20), clip_seconds=4.0
    )
    trainer = _trainer(model, tmp_path / "run", callback)
    with pytest.raises(NoiseProbeError) as info:
        trainer.train()
    message = " ".join(str(info.value).split())
    assert "processor=" in message and "probe.wav" in message and "an organ chorale" in message
    assert "no local folder" in message and "unconditional=True" in message
    assert trainer.state.global_step == 0  # before the first step


def test_sidecar_texts_use_the_tokenizer_saved_beside_the_model(
    folders: dict[str, Path], tmp_path: Path
) -> None:
    """No processor= and no processing_class: the model's own folder has tokenizer.json."""
    from transformers import MusicgenForConditionalGeneration

    from lightning_noiseprobe import NoiseProbeTrainerCallback

    model = MusicgenForConditionalGeneration.from_pretrained(folders["model"])
    model.config.decoder.decoder_start_token_id = model.config.decoder.bos_token_id
    callback = NoiseProbeTrainerCallback(
        probe_audio=folders["probe"], cache_dir="none", onset=60, lengths=(5, 20), clip_seconds=4.0
    )
    trainer = _trainer(model, tmp_path / "run", callback)
    trainer.train()
    metrics = trainer.evaluate(eval_dataset=trainer.train_dataset)
    assert metrics["eval_noiseprobe/probe_ok"] == 1.0, callback.failures
    assert callback._tokenizer_source == str(folders["model"])
