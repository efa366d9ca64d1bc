"""The demo pipeline and LightningCLI config end to end: module + chorale data + callback + export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lightning_noiseprobe.cli import main


def test_demo_pipeline_small(tmp_path, capsys):
    from lightning_noiseprobe.demo import run_demo

    out = run_demo(
        tmp_path / "demo",
        epochs=2,
        num_clips=6,
        probe_clips=1,
        batch_size=2,
        lr=3e-3,
        clip_seconds=4.0,
        onset=60,
        lengths=(5, 20, 60),
    )
    printed = capsys.readouterr().out
    assert "tensorboard --logdir" in printed and "sharpness" in printed
    assert [int(r["epoch"]) for r in out["rows"]] == [0, 1]
    assert all("val/ce" in r and "noiseprobe/peak_sharpness" in r for r in out["rows"])
    # the exported fine-tune loads with audiocraft's own loader and scores like the trained LM
    from audiocraft.models import MusicGen

    from lightning_noiseprobe.backends.audiocraft import AudiocraftBackend

    MusicGen.get_pretrained(out["export"], device="cpu")
    exported = AudiocraftBackend(model=out["export"]).load()
    codes = torch.randint(0, 2048, (1, 4, 50), generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(exported.token_nll(codes)[0]).all()
    # the rendered chorales carry descriptions the module trained on
    sidecars = list((tmp_path / "demo" / "chorales").glob("*.json"))
    assert any("Bach chorale" in json.loads(p.read_text()).get("description", "") for p in sidecars)
    # the printed sweep command scores every epoch's checkpoint again: the callback's numbers
    import shlex

    assert f"  {out['sweep_command']}" in printed
    assert main([*shlex.split(out["sweep_command"])[1:], "--quiet"]) == 0
    sweep = json.loads((tmp_path / "demo" / "sweep" / "sweep.json").read_text())["checkpoints"]
    assert [(e["epoch"], e["step"]) for e in sweep] == [
        (h["epoch"], h["step"]) for h in out["history"]
    ]
    for entry, logged in zip(sweep, out["history"], strict=True):
        assert entry["summary"]["peak_sharpness"] == pytest.approx(
            logged["peak_sharpness"], abs=1e-6
        )
        assert entry["logged"]["max_abs_diff"] <= 1e-6


@pytest.mark.latest
def test_lightning_cli_fit_with_config(tmp_path):
    override = tmp_path / "override.yaml"
    override.write_text(
        f"""
trainer:
  max_epochs: 1
  logger:
    class_path: lightning.pytorch.loggers.TensorBoardLogger
    init_args: {{save_dir: {tmp_path}/runs, name: tiny}}
  callbacks:
    - class_path: lightning_noiseprobe.callback.NoiseProbeCallback
      init_args: {{onset: 60, lengths: [5, 60], batch_size: 8, cache_dir: none, clip_seconds: 4.0}}
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {{dirpath: {tmp_path}/ckpt, monitor: noiseprobe/peak_sharpness, mode: max}}
data:
  class_path: lightning_noiseprobe.data.datamodule.ChoraleDataModule
  init_args: {{root: {tmp_path}/chorales, num_clips: 6, clip_seconds: 4.0, segment_seconds: 3.0, probe_fraction: 0.2, val_fraction: 0.2}}
"""
    )
    code = main(["fit", "--config", "configs/tiny.yaml", "--config", str(override)])
    assert code == 0
    ckpts = [p for p in (tmp_path / "ckpt").glob("*.ckpt") if p.name != "last.ckpt"]
    assert len(ckpts) == 1
    state = torch.load(ckpts[0], map_location="cpu", weights_only=False)
    (key,) = [k for k in state["callbacks"] if "NoiseProbeCallback" in k]
    assert len(state["callbacks"][key]["history"]) == 1


def test_lightning_cli_rejects_bad_config(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["fit", "--config", "configs/tiny.yaml", "--model.lr", "not-a-number"])
    assert info.value.code == 2


@pytest.mark.parametrize(
    "config", sorted(p.name for p in (Path(__file__).parents[1] / "configs").glob("*.yaml"))
)
def test_every_shipped_config_parses(config, capsys):
    """Class paths resolve and every init_args key exists (a misspelled key exits 2)."""
    root = Path(__file__).parents[1]
    with pytest.raises(SystemExit) as info:
        main(["fit", "--config", str(root / "configs" / config), "--print_config"])
    captured = capsys.readouterr()
    assert info.value.code in (0, None), captured.err[-2000:]
    assert "class_path: lightning_noiseprobe.callback.NoiseProbeCallback" in captured.out
