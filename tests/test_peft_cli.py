"""PEFT adapter folders in the CLI: `noiseprobe probe --backend transformers --model ADAPTER --base BASE`.

A tiny transformers MusicGen is saved, wrapped with a LoRA on the decoder's attention
projections (B weights perturbed so the adapter changes the outputs), and its adapter
folder saved; the merged model is saved too. The CLI runs as a subprocess, offline.
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

from lightning_noiseprobe.cli import main

SPEC = ["--onset", "60", "--lengths", "5,20", "--clip-seconds", "3.0"]
METRICS = ("clean_loss", "delta_loss", "peak_sharpness", "peak_height")
pytestmark = pytest.mark.latest  # also in the newest-release environment (make test-latest)


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """base (save_pretrained), adapter (PEFT LoRA folder), merged (save_pretrained), audio."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from peft import LoraConfig, get_peft_model

    from lightning_noiseprobe.backends.transformers import TransformersBackend

    root = tmp_path_factory.mktemp("peft")
    backend = TransformersBackend(model="tiny", seed=0).load()
    base = backend.save(root / "base")
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    with torch.random.fork_rng():  # lora_A is drawn from the global RNG: fix it here, so the
        torch.manual_seed(0)  # adapter does not depend on which tests ran before in this process
        peft_model = get_peft_model(backend.musicgen, config)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:  # zero at init: perturb so the adapter changes the outputs
                param.copy_(4.0 * torch.randn(param.shape, generator=gen))
    adapter = root / "adapter"
    peft_model.save_pretrained(adapter)
    merged = root / "merged"
    peft_model.merge_and_unload().save_pretrained(merged)
    backend.tokenizer.save_pretrained(merged)
    (root / "clips").mkdir()
    write_audio(root / "clips" / "a.wav", 32000, 1, seconds=3.2)
    return {"base": base, "adapter": adapter, "merged": merged, "audio": root / "clips"}


def _cli(*argv) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "lightning_noiseprobe.cli", *map(str, argv)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def _probe(folders, out: Path, *model_args) -> dict[str, float]:
    proc = _cli(
        "probe",
        "--backend",
        "transformers",
        *model_args,
        "--audio",
        folders["audio"],
        "--out",
        out,
        "--device",
        "cpu",
        "--cache-dir",
        "none",
        "--no-figures",
        "--quiet",
        *SPEC,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "metrics.json").read_text())["summary"]
    return {k: summary[k] for k in METRICS}


def test_adapter_on_its_base_equals_the_merged_model(folders, tmp_path):
    adapter = folders["adapter"]
    assert (adapter / "adapter_config.json").is_file()
    assert (adapter / "adapter_model.safetensors").is_file()
    on_base = _probe(folders, tmp_path / "a", "--model", adapter, "--base", folders["base"])
    merged = _probe(folders, tmp_path / "m", "--model", folders["merged"])
    base = _probe(folders, tmp_path / "b", "--model", folders["base"])
    assert on_base == pytest.approx(merged, abs=1e-4)
    recorded = json.loads((tmp_path / "a" / "metrics.json").read_text())["model"]
    assert recorded == f"{adapter} (PEFT adapter on {folders['base']})"
    # the adapter is active: the curve changes (measured: peak_sharpness 0.82 vs 1.40,
    # delta_loss 0.0019 vs 0.0059; the adapter is seeded, so these do not vary by test order)
    assert abs(on_base["peak_sharpness"] - base["peak_sharpness"]) > 0.1
    assert abs(on_base["delta_loss"] - base["delta_loss"]) > 1e-3


def test_adapter_folder_without_base_says_what_it_is(folders, tmp_path):
    proc = _cli(
        "probe",
        "--backend",
        "transformers",
        "--model",
        folders["adapter"],
        "--audio",
        folders["audio"],
        "--out",
        tmp_path / "o",
        "--quiet",
        *SPEC,
    )
    assert proc.returncode != 0
    err = " ".join(proc.stderr.split())
    assert "is a PEFT adapter folder (adapter_config.json, base" in err, proc.stderr[-2000:]
    assert "--base" in err and str(folders["adapter"]) in err
    assert "Traceback" not in proc.stderr.split("xFormers")[-1]
    assert not (tmp_path / "o").exists()


def _main(argv, capsys):
    code = main([str(a) for a in argv])
    return code, " ".join(capsys.readouterr().err.split())


def test_base_misuse_names_the_flag_and_value(folders, tmp_path, capsys):
    common = ["probe", "--audio", folders["audio"], "--out", tmp_path / "o", "--quiet", *SPEC]
    # with the audiocraft backend
    code, err = _main([*common, "--model", folders["adapter"], "--base", "some/base"], capsys)
    assert code != 0 and "--base" in err and "'some/base'" in err and "--backend" in err, err
    # without an adapter folder
    argv = [*common, "--backend", "transformers", "--model", folders["merged"], "--base", "x/y"]
    code, err = _main(argv, capsys)
    assert code != 0 and "--base" in err and "'x/y'" in err and "adapter folder" in err, err
    # an adapter folder given to the audiocraft backend says what it is, too
    code, err = _main([*common, "--model", folders["adapter"]], capsys)
    assert code != 0 and "is a PEFT adapter folder" in err and "--backend transformers" in err, err
    assert not (tmp_path / "o").exists()


class _Payload:
    """Unpickling this runs ``touch <marker>``: what ``weights_only=True`` must refuse."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _damaged(folders, root: Path, how: str) -> Path:
    """A copy of the adapter folder with its weights damaged ``how``."""
    import shutil

    folder = root / f"adapter-{how}"
    shutil.copytree(folders["adapter"], folder)
    weights = folder / "adapter_model.safetensors"
    data = weights.read_bytes()
    if how == "truncated":
        weights.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        weights.write_bytes(b"")
    elif how == "garbage":  # a header length far past the end: "header too large"
        weights.write_bytes(b"\xff" * 64)
    elif how == "pickle":
        weights.unlink()
        torch.save({"base_model.model.x": _Payload(root / "ran")}, folder / "adapter_model.bin")
    elif how == "none":
        weights.unlink()
    return folder


@pytest.mark.parametrize("how", ["truncated", "pickle"])
def test_damaged_adapter_file_is_one_error_line_exit_2(folders, tmp_path, how):
    """Through the CLI as a subprocess: one `noiseprobe: error:` line naming the file, exit 2,
    no output, and a pickled payload never runs."""
    adapter = _damaged(folders, tmp_path, how)
    out = tmp_path / "o"
    proc = _cli(
        *["probe", "--backend", "transformers", "--model", adapter, "--base", folders["base"]],
        *["--audio", folders["audio"], "--out", out, "--quiet", "--cache-dir", "none", *SPEC],
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("noiseprobe: error:")]
    assert len(lines) == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    name = "adapter_model.bin" if how == "pickle" else "adapter_model.safetensors"
    assert str(adapter / name) in lines[0], lines[0]
    assert ("weights_only" if how == "pickle" else "truncated or not a safetensors") in lines[0]
    assert not out.exists()
    assert not (tmp_path / "ran").exists()  # the payload never ran


@pytest.mark.parametrize("how", ["empty", "garbage", "none"])
def test_damaged_adapter_through_the_prober_is_a_noiseprobe_error(folders, tmp_path, how):
    """The same guarantee in Python: a NoiseProbeError naming the file (or the folder)."""
    from lightning_noiseprobe import NoiseProber
    from lightning_noiseprobe._errors import NoiseProbeError
    from lightning_noiseprobe.backends.transformers import TransformersBackend

    adapter = _damaged(folders, tmp_path, how)
    prober = NoiseProber(folders["audio"], onset=60, lengths=(5, 20), clip_seconds=3.0)
    backend = TransformersBackend(model=str(adapter), base=str(folders["base"]))
    with pytest.raises(NoiseProbeError) as info:
        prober.probe(backend.load())
    message = str(info.value)
    named = str(adapter) if how == "none" else str(adapter / "adapter_model.safetensors")
    assert named in message, message
    assert {"empty": "is empty", "garbage": "reading it failed", "none": "neither"}[how] in message
