"""MusicGenLightningModule on the transformers backend: the tiny model, a real CPU Trainer."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import yaml
from audio_fixtures import write_audio
from torch.utils.data import DataLoader, Dataset

from lightning_noiseprobe._errors import NoiseProbeError
from lightning_noiseprobe.backends.base import get_backend
from lightning_noiseprobe.backends.transformers import TransformersBackend
from lightning_noiseprobe.callback import NoiseProbeCallback
from lightning_noiseprobe.module import MusicGenLightningModule

pytestmark = [
    pytest.mark.latest,  # also in the newest-release environment (make test-latest)
    pytest.mark.filterwarnings("ignore:.*weight_norm.*:FutureWarning"),
    pytest.mark.filterwarnings("ignore::lightning.fabric.utilities.warnings.PossibleUserWarning"),
    pytest.mark.filterwarnings("ignore:.*does not have many workers.*"),
    pytest.mark.filterwarnings("ignore:.*GPU available but not used.*"),
    pytest.mark.filterwarnings("ignore:.*LeafSpec.*"),
]

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "transformers-tiny.yaml"
SECONDS = 3.0
TEXTS = ["calm piano", "fast drums", "warm strings", "bright synth"]


class _Clips(Dataset):
    """``n`` deterministic 3-second mono clips at 32 kHz with descriptions."""

    def __init__(self, n: int = 2, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        samples = int(SECONDS * 32000)
        t = torch.arange(samples) / 32000
        freqs = 110.0 * 2 ** torch.arange(n)
        self.wav = 0.3 * torch.sin(2 * math.pi * freqs[:, None] * t)[:, None] + 0.03 * torch.randn(
            n, 1, samples, generator=g
        )

    def __len__(self) -> int:
        return len(self.wav)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"wav": self.wav[i], "description": TEXTS[i % len(TEXTS)], "path": f"clip{i}.wav"}


def _loader(n: int = 2) -> DataLoader:
    # Its own generator: the DataLoader then draws nothing from the global RNG.
    return DataLoader(_Clips(n), batch_size=2, shuffle=False, generator=torch.Generator())


def _trainer(max_steps: int, **kw: Any) -> pl.Trainer:
    defaults: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "max_steps": max_steps,
        "limit_val_batches": 0,
        "num_sanity_val_steps": 0,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    return pl.Trainer(**{**defaults, **kw})


def _module(**kw: Any) -> MusicGenLightningModule:
    return MusicGenLightningModule(backend="transformers", **kw)


def _clone_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _states_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class _Record(pl.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
        self.losses.append(float(outputs["loss"]))


@pytest.fixture(scope="module")
def probe_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("probe_audio")
    write_audio(folder / "clip.wav", 32000, 1, seconds=4.2)
    return folder


# -- construction -------------------------------------------------------------------
def test_construction_frozen_parts_optimizer_and_device() -> None:
    module = _module(cfg_dropout=0.0, max_steps=10)
    backend = module.probe_backend
    assert isinstance(backend, TransformersBackend)
    assert backend.lm is module.lm and backend.codec is module.codec
    assert module.codec is module.lm.audio_encoder
    module.train()
    assert module.lm.training and module.lm.decoder.training
    for frozen in (module.codec, module.lm.text_encoder):
        assert not any(m.training for m in frozen.modules())
        assert not any(p.requires_grad for p in frozen.parameters())

    # Only the decoder and the text projection are optimised.
    optimizer = module.configure_optimizers()["optimizer"]
    optimized = {id(p) for g in optimizer.param_groups for p in g["params"]}
    trainable = [*module.lm.decoder.parameters(), *module.lm.enc_to_dec_proj.parameters()]
    assert optimized == {id(p) for p in trainable}

    # Frozen parts stay float32; the backend follows every move of the module.
    module.to(torch.float64)
    assert module.lm.decoder.model.decoder.layers[0].fc1.weight.dtype == torch.float64
    for frozen in (module.codec, module.lm.text_encoder):
        assert all(p.dtype == torch.float32 for p in frozen.parameters())
    module.to("meta")
    assert module.probe_backend.device == torch.device("meta")


def test_freeze_uses_decoder_names() -> None:
    module = _module(freeze=["model.decoder.embed_tokens", "enc_to_dec_proj"])
    decoder = module.lm.decoder
    assert not any(p.requires_grad for p in decoder.model.decoder.embed_tokens.parameters())
    assert not any(p.requires_grad for p in module.lm.enc_to_dec_proj.parameters())
    assert all(p.requires_grad for p in decoder.lm_heads.parameters())
    with pytest.raises(NoiseProbeError, match=r"unknown \['text_encoder', 'emb'\]") as err:
        _module(freeze=["model.decoder.layers.1", "text_encoder", "emb"])
    assert "['enc_to_dec_proj', 'lm_heads', 'model']" in str(err.value)
    assert "'model.decoder.layers.0'" in str(err.value)


# -- training, probe and export -------------------------------------------------------------
def test_fit_with_probe_then_export_round_trip(probe_dir: Path, tmp_path: Path) -> None:
    module = _module(cfg_dropout=0.0, lr=3e-3, warmup_steps=0, freeze=["model.decoder.layers.0"])
    frozen_before = {
        "codec": _clone_state(module.codec),
        "text_encoder": _clone_state(module.lm.text_encoder),
        "layer0": _clone_state(module.lm.decoder.model.decoder.layers[0]),
    }
    decoder_before = _clone_state(module.lm.decoder)
    proj_before = _clone_state(module.lm.enc_to_dec_proj)
    record = _Record()
    probe = NoiseProbeCallback(
        probe_audio=probe_dir,
        onset=60,
        lengths=(5, 20, 60),
        clip_seconds=4.0,
        cache_dir=tmp_path / "cache",
        log_figures=False,
    )
    trainer = _trainer(
        max_steps=5, callbacks=[record, probe], limit_val_batches=1, check_val_every_n_epoch=5
    )
    trainer.fit(module, _loader(), _loader())

    # The repeated batch is learned.
    assert len(record.losses) == 5 and all(math.isfinite(x) for x in record.losses)
    assert record.losses[-1] < record.losses[0] - 0.05, record.losses
    # The probe ran on the model being trained.
    metrics = trainer.callback_metrics
    assert math.isfinite(float(metrics["noiseprobe/peak_sharpness"]))
    assert math.isfinite(float(metrics["val/ce"]))
    # Frozen parts unchanged, trained parts changed.
    assert not module.codec.training and not module.lm.text_encoder.training
    assert _states_equal(frozen_before["codec"], _clone_state(module.codec))
    assert _states_equal(frozen_before["text_encoder"], _clone_state(module.lm.text_encoder))
    assert _states_equal(
        frozen_before["layer0"], _clone_state(module.lm.decoder.model.decoder.layers[0])
    )
    decoder_after = _clone_state(module.lm.decoder)
    assert not torch.equal(
        decoder_before["model.decoder.layers.1.fc1.weight"],
        decoder_after["model.decoder.layers.1.fc1.weight"],
    )
    assert not _states_equal(proj_before, _clone_state(module.lm.enc_to_dec_proj))

    # Export: the native save_pretrained folder, written atomically, reloads with the same NLL.
    export = tmp_path / "export"
    assert module.export(export) == export
    assert (export / "config.json").is_file() and (export / "model.safetensors").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no leftover temp
    codes = module.batch_codes(next(iter(_loader())))
    module.eval()
    loaded = get_backend("transformers", model=str(export)).load()
    with torch.no_grad():
        want, want_mask = module.probe_backend.token_nll(codes, TEXTS[:2])
        got, got_mask = loaded.token_nll(codes, TEXTS[:2])
    assert torch.equal(got_mask, want_mask)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert module.export(export) == export  # an earlier export is replaced
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_cfg_dropout_reaches_the_backend_and_spares_global_rng() -> None:
    module = _module(cfg_dropout=0.5, seed=1, warmup_steps=1)
    seen: list[Any] = []
    backend: Any = module.probe_backend
    lm_logits = backend.lm_logits

    def spy(codes: torch.Tensor, descriptions: Any = None) -> Any:
        seen.append(None if descriptions is None else list(descriptions))
        return lm_logits(codes, descriptions)

    backend.lm_logits = spy
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 2048, (2, 4, 20), generator=g)
    batch = {"codes": codes, "description": TEXTS[:2]}
    state = torch.random.get_rng_state()
    _trainer(max_steps=6).fit(
        module, DataLoader([batch], batch_size=None, generator=torch.Generator())
    )
    assert torch.equal(state, torch.random.get_rng_state())
    g = torch.Generator().manual_seed(1)
    drops = [torch.rand(1, generator=g).item() < 0.5 for _ in range(6)]
    assert [c is None for c in seen] == drops
    assert all(c == TEXTS[:2] for c in seen if c is not None)
    assert any(drops) and not all(drops)


def test_gradient_checkpointing_same_loss_and_grads() -> None:
    codes = torch.randint(0, 2048, (2, 4, 30), generator=torch.Generator().manual_seed(0))
    results = []
    for flag in (False, True):
        module = _module(gradient_checkpointing=flag)
        # the flag transformers' layers read (4 and 5; 5 deprecates `is_gradient_checkpointing`)
        assert module.lm.decoder.model.decoder.gradient_checkpointing is flag
        ce, _ = module.cross_entropy(codes, TEXTS[:2])
        ce.backward()
        grads = {n: p.grad.clone() for n, p in module.lm.named_parameters() if p.grad is not None}
        results.append((ce.detach(), grads))
    (ce0, g0), (ce1, g1) = results
    torch.testing.assert_close(ce1, ce0, rtol=0, atol=1e-6)
    assert g0.keys() == g1.keys() and len(g0) > 20
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], rtol=1e-5, atol=1e-6, msg=name)


# -- config and CLI ---------------------------------------------------------------------------
def test_config_builds_the_transformers_module() -> None:
    config = yaml.safe_load(CONFIG.read_text())
    assert config["model"]["backend"] == "transformers"
    module = MusicGenLightningModule(**config["model"])
    assert isinstance(module.probe_backend, TransformersBackend)


def test_cli_probe_with_transformers_backend(probe_dir: Path, tmp_path: Path) -> None:
    from lightning_noiseprobe.cli import main

    out = tmp_path / "out"
    argv = ["probe", "--backend", "transformers", "--model", "tiny", "--audio", str(probe_dir)]
    argv += ["--out", str(out), "--onset", "60", "--lengths", "5,20", "--clip-seconds", "4"]
    assert main([*argv, "--quiet", "--cache-dir", "none"]) == 0
    summary = json.loads((out / "metrics.json").read_text())["summary"]
    assert math.isfinite(float(summary["peak_sharpness"]))
