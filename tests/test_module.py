"""MusicGenLightningModule with the real tiny audiocraft model and a real CPU Trainer."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from codec_helpers import assert_codes_match
from torch.utils.data import DataLoader, Dataset

from lightning_noiseprobe._errors import NoiseProbeError
from lightning_noiseprobe.backends.audiocraft import AudiocraftBackend
from lightning_noiseprobe.functional.losses import codebook_cross_entropy
from lightning_noiseprobe.module import MusicGenLightningModule, warmup_cosine_factor

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*weight_norm.*:FutureWarning"),
    pytest.mark.filterwarnings("ignore::lightning.fabric.utilities.warnings.PossibleUserWarning"),
    pytest.mark.filterwarnings("ignore:.*does not have many workers.*"),
    pytest.mark.filterwarnings("ignore:.*GPU available but not used.*"),
    pytest.mark.filterwarnings("ignore:.*callbacks used to create the checkpoint.*"),
    pytest.mark.filterwarnings("ignore:.*LeafSpec.*"),
]

SECONDS = 3.0
TEXTS = ["calm piano", "fast drums", "warm strings", "bright synth"]


class _Clips(Dataset):
    """``n`` deterministic 3-second mono clips at 32 kHz with descriptions."""

    def __init__(self, n: int = 4, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        samples = int(SECONDS * 32000)
        t = torch.arange(samples) / 32000
        freqs = 110.0 * 2 ** torch.arange(n)
        self.wav = 0.3 * torch.sin(2 * math.pi * freqs[:, None] * t)[:, None] + 0.03 * torch.randn(
            n, 1, samples, generator=g
        )
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"wav": self.wav[i], "description": TEXTS[i % len(TEXTS)], "path": f"clip{i}.wav"}


def _loader(n: int = 4) -> DataLoader:
    # Its own generator: the DataLoader then draws nothing from the global RNG.
    return DataLoader(_Clips(n), batch_size=2, shuffle=False, generator=torch.Generator())


def _batch(n: int = 2) -> dict[str, Any]:
    return next(iter(DataLoader(_Clips(n), batch_size=n)))


def _trainer(max_steps: int, tmp_path: Path | None = None, **kw: Any) -> pl.Trainer:
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
        "default_root_dir": tmp_path,
    }
    return pl.Trainer(**{**defaults, **kw})


class _Record(pl.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []
        self.lrs: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
        self.losses.append(float(outputs["loss"]))


def _clone_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _states_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -- construction -------------------------------------------------------------------
def test_construction_probe_backend_and_frozen_codec() -> None:
    module = MusicGenLightningModule(cfg_dropout=0.0)
    backend = module.probe_backend
    assert isinstance(backend, AudiocraftBackend)
    assert backend.lm is module.lm and backend.musicgen.lm is module.lm
    assert backend.codec is module.codec
    assert module.lm.training and not module.codec.training
    module.train()
    assert not module.codec.training and not any(m.training for m in module.codec.modules())
    assert not any(p.requires_grad for p in module.codec.parameters())
    assert all(p.dtype == torch.float32 for p in module.lm.parameters())
    assert module.hparams["model"] == "tiny" and module.hparams["cfg_dropout"] == 0.0

    # The backend follows every move of the module; the codec stays float32.
    module.to(torch.float64)
    assert all(p.dtype == torch.float32 for p in module.codec.parameters())
    module.to("meta")
    assert module.probe_backend.device == torch.device("meta")
    assert module.probe_backend.musicgen.device == torch.device("meta")
    assert module.lm.condition_provider.device == torch.device("meta")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"lr": 0.0}, "`lr`"),
        ({"weight_decay": -1.0}, "`weight_decay`"),
        ({"betas": (0.9, 1.0)}, "`betas`"),
        ({"warmup_steps": -1}, "`warmup_steps`"),
        ({"max_steps": 0}, "`max_steps`"),
        ({"min_lr_ratio": 1.5}, "`min_lr_ratio`"),
        ({"cfg_dropout": -0.1}, "`cfg_dropout`"),
        ({"backend": "nope"}, "`backend`"),
    ],
)
def test_invalid_arguments(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):  # NoiseProbeError is a ValueError
        MusicGenLightningModule(**kwargs)


def test_unknown_freeze_prefix_lists_valid_names() -> None:
    with pytest.raises(NoiseProbeError, match=r"unknown \['embb', 'transformer.layers.7'\]") as err:
        MusicGenLightningModule(freeze=["emb", "embb", "transformer.layers.7"])
    for name in ("condition_provider", "emb", "linears", "out_norm", "transformer"):
        assert repr(name) in str(err.value)


# -- loss and training --------------------------------------------------------------
def test_loss_matches_backend_and_training_reduces_ce() -> None:
    module = MusicGenLightningModule(cfg_dropout=0.0, lr=3e-3, warmup_steps=0)
    batch = _batch(2)
    codes = module.batch_codes(batch)
    assert codes.shape == (2, 4, 150) and codes.dtype == torch.long

    reference = AudiocraftBackend(model="tiny", seed=0).load()
    # another instance with the same weights: equal up to quantizer near-ties
    assert_codes_match(
        codes, reference.encode(batch["wav"]), codec=reference.codec, wav=batch["wav"]
    )
    with torch.no_grad():
        want, want_q = codebook_cross_entropy(*reference.token_nll(codes, batch["description"]))
    trainer = _trainer(max_steps=1, limit_val_batches=1)
    (metrics,) = trainer.validate(module, DataLoader(_Clips(2), batch_size=2), verbose=False)
    torch.testing.assert_close(torch.tensor(metrics["val/ce"]), want, rtol=0, atol=1e-5)
    torch.testing.assert_close(torch.tensor(metrics["val/ppl"]), want.exp(), rtol=1e-5, atol=0)
    for k in range(4):
        torch.testing.assert_close(
            torch.tensor(metrics[f"val/ce_q{k}"]), want_q[k], rtol=0, atol=1e-5
        )
    # The same numbers come from a batch that already holds its codes.
    with torch.no_grad():
        ce, _ = module.cross_entropy(module.batch_codes({"codes": codes}), batch["description"])
    torch.testing.assert_close(ce, want, rtol=0, atol=1e-5)

    record = _Record()
    trainer = _trainer(max_steps=5, callbacks=[record], limit_val_batches=1, num_sanity_val_steps=1)
    trainer.fit(module, _loader(2), DataLoader(_Clips(2), batch_size=2))
    assert len(record.losses) == 5
    # max_steps=None: the cosine horizon is the trainer's estimate (5 steps).
    assert trainer.lr_scheduler_configs[0].scheduler.lr_lambdas[0].keywords["total_steps"] == 5
    assert record.losses[-1] < record.losses[0] - 0.05, record.losses
    assert {"train/ce_step", "train/ce_epoch", "train/ppl_step", "val/ce", "val/ce_q3"} <= set(
        trainer.callback_metrics
    )


# -- classifier-free-guidance dropout --------------------------------------------------
def test_cfg_dropout_is_seeded_whole_batch_and_spares_global_rng() -> None:
    texts = ["a", "b"]
    first = MusicGenLightningModule(cfg_dropout=0.5, seed=3)
    second = MusicGenLightningModule(cfg_dropout=0.5, seed=3)
    state = torch.random.get_rng_state()
    a = [first.drop_descriptions(texts) for _ in range(32)]
    b = [second.drop_descriptions(texts) for _ in range(32)]
    assert torch.equal(state, torch.random.get_rng_state())
    assert a == b  # same seed, same decisions
    assert all(d is None or d == texts for d in a)  # the whole batch or nothing
    assert 0 < sum(d is None for d in a) < 32
    g = torch.Generator().manual_seed(3)
    assert [d is None for d in a] == [torch.rand(1, generator=g).item() < 0.5 for _ in range(32)]
    # Never outside training steps, never with p = 0.
    assert MusicGenLightningModule(cfg_dropout=0.0).drop_descriptions(texts) == texts


def test_training_steps_draw_nothing_from_global_rng() -> None:
    module = MusicGenLightningModule(cfg_dropout=0.5, seed=1, warmup_steps=1)
    seen: list[Any] = []
    backend = module.probe_backend
    lm_logits = backend.lm_logits

    def spy(codes: torch.Tensor, descriptions: Any = None) -> Any:
        seen.append(None if descriptions is None else list(descriptions))
        return lm_logits(codes, descriptions)

    backend.lm_logits = spy  # type: ignore[method-assign]
    state = torch.random.get_rng_state()
    trainer = _trainer(max_steps=6, limit_val_batches=1)
    trainer.fit(module, _loader(4), _loader(2))
    assert torch.equal(state, torch.random.get_rng_state())
    assert len(seen) == 9  # 3 epochs of 2 training batches, each followed by 1 validation batch
    train_calls = [c for i, c in enumerate(seen) if i % 3 != 2]
    assert [seen[2], seen[5], seen[8]] == [TEXTS[:2]] * 3  # no dropout in validation
    g = torch.Generator().manual_seed(1)
    drops = [torch.rand(1, generator=g).item() < 0.5 for _ in range(6)]
    assert [c is None for c in train_calls] == drops
    assert any(drops) and not all(drops)


# -- frozen parts ---------------------------------------------------------------------
def test_codec_and_frozen_prefixes_stay_unchanged(tmp_path: Path) -> None:
    module = MusicGenLightningModule(
        cfg_dropout=0.0, lr=1e-2, warmup_steps=0, freeze=["emb", "transformer.layers.0"]
    )
    codec_before = _clone_state(module.codec)
    lm_before = _clone_state(module.lm)
    trainer = _trainer(max_steps=2, limit_val_batches=1)
    trainer.fit(module, _loader(2), _loader(2))
    assert not module.codec.training and not any(m.training for m in module.codec.modules())
    assert not any(p.requires_grad for p in module.codec.parameters())
    assert _states_equal(codec_before, _clone_state(module.codec))
    lm_after = _clone_state(module.lm)
    frozen = [k for k in lm_before if k.startswith(("emb.", "transformer.layers.0."))]
    assert len(frozen) == 4 + 12
    assert all(torch.equal(lm_before[k], lm_after[k]) for k in frozen)
    assert not torch.equal(
        lm_before["transformer.layers.1.linear1.weight"],
        lm_after["transformer.layers.1.linear1.weight"],
    )
    optimized = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    named = dict(module.named_parameters())
    assert not any(id(named[f"lm.{k}"]) in optimized for k in frozen)
    assert not any(id(p) in optimized for p in module.codec.parameters())

    # Export round trip of the fine-tuned model.
    from audiocraft.models import MusicGen

    folder = module.export(tmp_path / "export")
    assert sorted(p.name for p in folder.iterdir()) == [
        "compression_state_dict.bin",
        "state_dict.bin",
    ]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no leftover temp
    loaded = MusicGen.get_pretrained(str(folder), device="cpu")
    assert _states_equal(
        {k: v for k, v in _clone_state(loaded.lm).items()}, _clone_state(module.lm)
    )
    codes = module.batch_codes(_batch(2))
    module.eval()
    with torch.no_grad():
        want, want_mask = module.probe_backend.token_nll(codes, TEXTS[:2])
        got, got_mask = AudiocraftBackend(model=str(folder)).load().token_nll(codes, TEXTS[:2])
    assert torch.equal(got_mask, want_mask)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert module.export(folder) == folder  # an existing folder is overwritten in place


# -- optimisation -----------------------------------------------------------------------
def test_warmup_cosine_schedule_and_param_groups() -> None:
    module = MusicGenLightningModule(
        lr=1e-3, warmup_steps=3, max_steps=20, min_lr_ratio=0.1, weight_decay=0.05
    )
    config = module.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert config["lr_scheduler"]["interval"] == "step"
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in module.lm.named_parameters()}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    assert {
        "emb.0.weight",
        "out_norm.weight",
        "out_norm.bias",
        "condition_provider.conditioners.description.embed.weight",
        "condition_provider.conditioners.description.output_proj.bias",
    } <= no_decay_names
    assert all(p.ndim == 2 for p in decay["params"])
    assert "transformer.layers.0.linear1.weight" in {names[id(p)] for p in decay["params"]}

    lrs = []
    for _ in range(25):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(1e-3 / 3)
    assert max(lrs) == pytest.approx(1e-3) and lrs[2] == pytest.approx(1e-3)
    assert all(x >= y for x, y in itertools.pairwise(lrs[3:]))
    assert lrs[-1] == pytest.approx(1e-4) and min(lrs) == pytest.approx(1e-4)
    assert warmup_cosine_factor(10, 0, math.inf, 0.1) == 1.0


# -- checkpoints ------------------------------------------------------------------------
def test_resume_from_checkpoint_matches_straight_run(tmp_path: Path) -> None:
    # The cosine horizon is part of the run's settings: fixed, as when resuming for real.
    kwargs = {"cfg_dropout": 0.5, "lr": 3e-3, "warmup_steps": 2, "seed": 2, "max_steps": 4}
    checkpoint = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, save_top_k=-1)
    # Stop by epochs (2 steps each): Lightning 2.6 resuming a run that `max_steps` stopped
    # exactly at an epoch end replays a batch (the loop restarts the finished epoch).
    first = MusicGenLightningModule(**kwargs)
    _trainer(-1, tmp_path, max_epochs=1, callbacks=[checkpoint], enable_checkpointing=True).fit(
        first, _loader()
    )
    path = checkpoint.best_model_path
    assert path.endswith("step=2.ckpt")
    reloaded = MusicGenLightningModule.load_from_checkpoint(path)
    assert reloaded.hparams["max_steps"] == 4
    assert _states_equal(_clone_state(reloaded), _clone_state(first))

    resumed = MusicGenLightningModule(**kwargs)
    trainer = _trainer(-1, tmp_path, max_epochs=2)
    trainer.fit(resumed, _loader(), ckpt_path=path)
    assert trainer.global_step == 4
    straight = MusicGenLightningModule(**kwargs)
    straight_trainer = _trainer(-1, tmp_path, max_epochs=2)
    straight_trainer.fit(straight, _loader())
    assert _states_equal(_clone_state(resumed), _clone_state(straight))
    assert not _states_equal(_clone_state(first), _clone_state(straight))
    got = trainer.optimizers[0].state_dict()["state"]
    want = straight_trainer.optimizers[0].state_dict()["state"]
    assert all(torch.equal(got[i]["exp_avg_sq"], want[i]["exp_avg_sq"]) for i in want)


# -- gradient checkpointing ---------------------------------------------------------------
def test_gradient_checkpointing_same_loss_and_grads(monkeypatch: pytest.MonkeyPatch) -> None:
    import audiocraft.modules.transformer as transformer

    calls = []
    original = transformer.torch_checkpoint

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(transformer, "torch_checkpoint", counting)
    codes = MusicGenLightningModule().batch_codes(_batch(2))
    results = []
    for flag in (False, True):
        module = MusicGenLightningModule(gradient_checkpointing=flag)
        ce, _ = module.cross_entropy(codes, TEXTS[:2])
        ce.backward()
        grads = {n: p.grad.clone() for n, p in module.lm.named_parameters() if p.grad is not None}
        results.append((ce.detach(), grads))
    assert len(calls) == 2  # one per layer, only with checkpointing
    (ce0, g0), (ce1, g1) = results
    torch.testing.assert_close(ce1, ce0, rtol=0, atol=1e-5)
    assert g0.keys() == g1.keys() and len(g0) > 20
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], rtol=1e-5, atol=1e-5, msg=name)
