"""The real T5 text path offline: a checkpoint whose `xp.cfg` asks for `t5-base`.

Every released MusicGen conditions on text with audiocraft's `T5Conditioner` on `t5-base`,
which transformers loads from the Hugging Face cache (or the hub). Here a random `t5-base`
(tiny T5 encoder of t5-base's width, a sentencepiece tokenizer trained offline) is written
into a private cache, and audiocraft's unchanged conditioner loads it with
`HF_HUB_OFFLINE=1`: through `noiseprobe probe` and `noiseprobe fit` as subprocesses, whose
hub settings are read at import. Without it in the cache: one line that says so.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from audio_fixtures import write_audio
from proc_helpers import our_tracebacks

from lightning_noiseprobe.backends.audiocraft import EXPORT_FILES
from lightning_noiseprobe.backends.audiocraft.builders import save_random_t5

pytestmark = pytest.mark.filterwarnings("ignore:.*weight_norm.*:FutureWarning")

SPEC_FLAGS = ["--onset", "60", "--lengths", "5,20,60", "--clip-seconds", "4"]


@pytest.fixture(scope="module")
def t5_checkpoint(tiny_export_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny export with the hub's text conditioner: audiocraft's `t5` on `t5-base`
    (frozen, so only its 768 -> dim projection is in the checkpoint), as in every hub MusicGen."""
    from omegaconf import OmegaConf

    folder = tmp_path_factory.mktemp("t5_checkpoint")
    shutil.copy(tiny_export_dir / EXPORT_FILES[1], folder / EXPORT_FILES[1])
    package = torch.load(tiny_export_dir / EXPORT_FILES[0], weights_only=True)
    cfg = OmegaConf.create(package["xp.cfg"])
    t5 = {"name": "t5-base", "finetune": False, "word_dropout": 0.0, "normalize_text": False}
    cfg.conditioners.description = {"model": "t5", "t5": t5}
    prefix = "condition_provider.conditioners.description."
    state = {k: v for k, v in package["best_state"].items() if not k.startswith(prefix)}
    dim = int(cfg.transformer_lm.dim)
    g = torch.Generator().manual_seed(0)
    state[prefix + "output_proj.weight"] = torch.randn(dim, 768, generator=g) / math.sqrt(768)
    state[prefix + "output_proj.bias"] = torch.zeros(dim)
    package.update({"xp.cfg": OmegaConf.to_yaml(cfg), "best_state": state})
    torch.save(package, folder / EXPORT_FILES[0])
    return folder


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private Hugging Face hub cache holding a random `t5-base`."""
    cache = tmp_path_factory.mktemp("hf_hub_cache")
    save_random_t5(cache, "t5-base", seed=0)
    return cache


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same music twice: `a.wav` described by its sidecar, `b.wav` not."""
    folder = tmp_path_factory.mktemp("t5_clips")
    write_audio(folder / "a.wav", 32000, 1, seconds=4.2)
    shutil.copy(folder / "a.wav", folder / "b.wav")
    (folder / "a.json").write_text(json.dumps({"description": "calm piano with a choir"}))
    return folder


def _run(code: list[str], cache: Path, home: Path) -> subprocess.CompletedProcess[str]:
    """``python CODE...`` with the hub cache ``cache``, offline (read at import: a new process)."""
    env = {**os.environ, "HF_HOME": str(home), "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    env.pop("TRANSFORMERS_CACHE", None)
    return subprocess.run(
        [sys.executable, *code], capture_output=True, text=True, timeout=900, env=env
    )


def _fit_config(tmp_path: Path, t5_checkpoint: Path, clips: Path) -> Path:
    """A LightningCLI config: MusicGenLightningModule on the T5 checkpoint, probed each epoch."""
    train = tmp_path / "train"
    train.mkdir()
    for i in range(2):
        write_audio(train / f"{i}.wav", 32000, 1, seconds=2.5)
    probe = {
        "probe_audio": str(clips),
        "onset": 60,
        "lengths": [5, 20, 60],
        "clip_seconds": 4.0,
        "batch_size": 4,
        "fatal": True,
        "cache_dir": str(tmp_path / "tokens"),
    }
    config = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "max_epochs": 2,
            "num_sanity_val_steps": 0,
            "enable_checkpointing": False,
            "enable_progress_bar": False,
            "logger": {
                "class_path": "lightning.pytorch.loggers.CSVLogger",
                "init_args": {"save_dir": str(tmp_path / "logs"), "name": "t5", "version": 0},
            },
            "callbacks": [
                {
                    "class_path": "lightning_noiseprobe.callback.NoiseProbeCallback",
                    "init_args": probe,
                }
            ],
        },
        "model": {"backend": "audiocraft", "model": str(t5_checkpoint), "lr": 0.003},
        "data": {
            "class_path": "lightning_noiseprobe.data.datamodule.AudioFolderDataModule",
            "init_args": {
                "train_dir": str(train),
                "val_dir": str(clips),
                "segment_seconds": 2.0,
                "batch_size": 2,
                "default_description": "soft organ",
            },
        },
    }
    path = tmp_path / "fit.json"  # JSON is YAML
    path.write_text(json.dumps(config))
    return path


def test_probe_and_fit_condition_on_t5_from_the_cache(
    t5_checkpoint: Path, hub_cache: Path, clips: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    probe = ["probe", "--quiet", "--no-figures", "--cache-dir", "none", *SPEC_FLAGS]
    probe += ["--model", str(t5_checkpoint), "--audio", str(clips), "--out", str(out)]
    fit = ["fit", "--config", str(_fit_config(tmp_path, t5_checkpoint, clips))]
    # `noiseprobe probe ...` then `noiseprobe fit ...`: the console script's `main`, in one
    # process to import audiocraft once
    script = f"import sys; from lightning_noiseprobe.cli import main; sys.exit(main({probe!r}) or main({fit!r}))"
    proc = _run(["-c", script], hub_cache, tmp_path / "home")
    assert proc.returncode == 0, proc.stderr
    assert not our_tracebacks(proc.stderr), proc.stderr

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["conditioning"] == {"sidecar": 1, "unconditional": 1}
    described = {Path(c["path"]).name: c.get("description") for c in metrics["clips"]}
    assert described == {"a.wav": "calm piano with a choir", "b.wav": None}
    curves = np.load(out / "curves.npz")
    assert [Path(str(c)).name for c in curves["clips"]] == ["a.wav", "b.wav"]
    valid, clean = curves["valid"][0], curves["clean"]
    # the same music: only the T5 embedding of the description tells the two apart
    assert np.isfinite(clean[:, valid]).all()
    assert np.abs(clean[0, valid] - clean[1, valid]).max() > 1e-3

    with open(tmp_path / "logs" / "t5" / "version_0" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    sharpness = [
        float(r["noiseprobe/peak_sharpness"]) for r in rows if r.get("noiseprobe/peak_sharpness")
    ]
    ok = [float(r["noiseprobe/probe_ok"]) for r in rows if r.get("noiseprobe/probe_ok")]
    assert len(sharpness) == 2 and all(math.isfinite(v) for v in sharpness)
    assert ok == [1.0, 1.0]
    assert [r for r in rows if r.get("train/ce_epoch")]  # it trained


def test_without_t5_in_the_cache_one_line_says_how_to_get_it(
    t5_checkpoint: Path, clips: Path, tmp_path: Path
) -> None:
    empty = tmp_path / "empty_cache"
    empty.mkdir()
    out = tmp_path / "out"
    command = ["-m", "lightning_noiseprobe.cli", "probe", "--quiet", *SPEC_FLAGS]
    proc = _run(
        [*command, "--model", str(t5_checkpoint), "--audio", str(clips), "--out", str(out)],
        empty,
        tmp_path / "home",
    )
    assert proc.returncode == 2, proc.stderr
    assert not our_tracebacks(proc.stderr), proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("noiseprobe")]
    assert len(lines) == 1, proc.stderr
    line = lines[0]
    assert line.startswith("noiseprobe: error: Expected the T5 text encoder 't5-base'")
    for words in (str(empty), "not there", "HF_HUB_OFFLINE is set", "download t5-base"):
        assert words in line, line
    assert "Re-export" not in line and "model_file" not in line
    assert not out.exists()
