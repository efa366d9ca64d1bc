"""Tiny Lightning pieces shared by the callback and DDP tests."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset

from lightning_noiseprobe.backends.audiocraft import AudiocraftBackend
from lightning_noiseprobe.functional.losses import codebook_cross_entropy, token_nll_from_logits


class CodesDataset(Dataset):
    """Fixed random code sequences (no audio needed to train the LM)."""

    def __init__(self, n: int = 8, T: int = 60, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.codes = torch.randint(0, 2048, (n, 4, T), generator=g)

    def __len__(self) -> int:
        return len(self.codes)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.codes[i]


def make_protocol_module(base: type) -> type:
    """A user's own module following the documented probe protocol, on ``base``
    (``lightning.pytorch.LightningModule`` or ``pytorch_lightning.LightningModule``)."""

    class ProtocolModule(base):  # type: ignore[misc, valid-type]
        def __init__(self, lr: float = 1e-3, dropout: float = 0.1):
            super().__init__()
            self._backend = AudiocraftBackend("tiny", seed=0).load()
            self.lm = self._backend.lm
            self.codec = self._backend.codec
            self.lr = lr
            self.dropout = torch.nn.Dropout(dropout)  # uses the global RNG: any RNG leak shows up
            self.train_losses: list[float] = []

        @property
        def probe_backend(self) -> AudiocraftBackend:
            return self._backend

        def _loss(self, codes: torch.Tensor) -> torch.Tensor:
            logits, mask = self._backend.lm_logits(codes)
            logits = self.dropout(logits)
            nll, mask = token_nll_from_logits(logits, codes, mask)
            return codebook_cross_entropy(nll, mask)[0]

        def training_step(self, batch, batch_idx):
            loss = self._loss(batch)
            self.train_losses.append(float(loss))
            self.log("train/ce", loss, batch_size=batch.shape[0])
            return loss

        def validation_step(self, batch, batch_idx):
            self.log("val/ce", self._loss(batch), batch_size=batch.shape[0])

        def train_dataloader(self):
            return DataLoader(CodesDataset(), batch_size=4, shuffle=True)

        def val_dataloader(self):
            return DataLoader(CodesDataset(n=4, seed=1), batch_size=4)

        def configure_optimizers(self):
            return torch.optim.AdamW(self.lm.parameters(), lr=self.lr)

    return ProtocolModule


ProtocolModule = make_protocol_module(pl.LightningModule)


class CodeDicts(CodesDataset):
    """The same codes as batches of ``{"codes": ...}`` (MusicGenLightningModule's input)."""

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:  # type: ignore[override]
        return {"codes": self.codes[i]}


def count_lm_passes(backend) -> list[int]:
    """Record the rows of every LM pass the probe makes: clean passes and continuations
    (audiocraft: each ``_nll_at_positions``; transformers: each decoder run of its fused
    and shared-prefix paths)."""
    calls: list[int] = []
    if hasattr(backend, "_nll_at_positions"):  # (sequence, ...)
        owner, name, at = backend, "_nll_at_positions", 0
    else:  # (decoder, ids, ...)
        from lightning_noiseprobe.backends.transformers import prefix as owner

        name, at = "_decoder_states", 1
    lm_pass = getattr(owner, name)

    def counted(*args, **kwargs):
        calls.append(int(args[at].shape[0]))
        return lm_pass(*args, **kwargs)

    setattr(owner, name, counted)
    return calls


# The spec of the callback and multi-process tests, and what each rank of them checks.
SHARDED_SPEC = {"onset": 60, "lengths": (5, 20, 60), "clip_seconds": 4.0}


def cpu_trainer(root, callbacks, max_epochs=2, logger=False, **kw) -> pl.Trainer:
    """A quiet single-CPU Trainer for the callback tests (checkpoints only with a ModelCheckpoint)."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    options = {
        "default_root_dir": root,
        "max_epochs": max_epochs,
        "accelerator": "cpu",
        "devices": 1,
        "logger": logger,
        "callbacks": callbacks,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": any(isinstance(c, ModelCheckpoint) for c in callbacks),
        "num_sanity_val_steps": 1,
        "deterministic": True,
    }
    return pl.Trainer(**{**options, **kw})


def tiny_probe(probe_dir, tmp_path, **kw):
    """A NoiseProbeCallback on ``probe_dir`` with the tests' short spec (``kw`` overrides it)."""
    from lightning_noiseprobe.callback import NoiseProbeCallback

    return NoiseProbeCallback(
        probe_audio=probe_dir,
        cache_dir=tmp_path / "cache",
        batch_size=4,
        **{**SHARDED_SPEC, **kw},
    )


def assert_ranks_agree(ranks: list[dict], passes: list[int] | None = None) -> None:
    """Two ranks that probed 3 clips (batch 4) twice: same metrics, same monitor, same passes.

    ``passes``: the rows of each LM pass per probe (default: audiocraft's prefix sharing).
    """
    import pytest

    h0, h1 = ranks[0]["history"], ranks[1]["history"]
    assert [h["epoch"] for h in h0] == [h["epoch"] for h in h1] == [0, 1]
    for a, b in zip(h0, h1, strict=True):
        for key in ("peak_sharpness", "delta_loss", "peak_mean", "clean_loss", "length_pearson"):
            assert a[key] == pytest.approx(b[key], abs=1e-6), key
    # EarlyStopping read the same monitored value on both ranks, equal to the probe's
    assert ranks[0]["seen"] == pytest.approx(ranks[1]["seen"], abs=1e-6)
    assert ranks[0]["seen"] == pytest.approx([h["peak_sharpness"] for h in h0], abs=1e-6)
    assert ranks[0]["early_best"] == pytest.approx(ranks[1]["early_best"], abs=1e-6)
    # sharded: 3 clips on 2 ranks -> 2 clips (one a padding repeat) x 4 sequences per rank per
    # probe, the same passes on both ranks (FSDP layers all-gather in each): one clean pass
    # of both clips, then their 6 copies continued in passes of 4
    rows = [r["probe_forward_rows"] for r in ranks]
    assert rows[0] == rows[1] == (passes or [2, 4, 2]) * 2, rows


def assert_single_process_agrees(
    probe_dir, weights, last: dict, backend: str = "audiocraft", world_size: int = 2
) -> None:
    """One process scoring each rank's shard of the probe set with the ranks' final LM weights
    gives their last metrics: the multi-process gather and unpadding change nothing.

    Every cause of float differences is held equal on both sides: one thread (the ranks ran
    with OMP_NUM_THREADS=1; other thread counts pick other kernels, which flip near-tied
    codec codes), and the same batches (each rank's padded shard of clips, scored with
    the ranks' batch size 4: prefix sharing shares each batch's earliest differing frame,
    so another grouping of clips rounds differently).
    """
    import pytest

    from lightning_noiseprobe.backends import get_backend
    from lightning_noiseprobe.probe import ProbeSpec, build_probe_set
    from lightning_noiseprobe.probe.probeset import clear_memory_cache
    from lightning_noiseprobe.probe.runner import result_from_nll, score_nll
    from lightning_noiseprobe.probe.shards import padded_shard, unpad_index

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        clear_memory_cache()  # codes cached by other tests came from other thread counts
        loaded = get_backend(backend, model="tiny", seed=0).load()
        loaded.lm.load_state_dict(torch.load(weights, weights_only=True))
        ps = build_probe_set(loaded, probe_dir, ProbeSpec(**SHARDED_SPEC))
        shards = [
            score_nll(loaded, ps.subset(padded_shard(len(ps), world_size, r)), batch_size=4)
            for r in range(world_size)
        ]
        ranks, slots = unpad_index(len(ps), world_size)
        nll = torch.stack([n for n, _ in shards])[ranks, slots]
        mask = torch.stack([m for _, m in shards])[ranks, slots]
        result = result_from_nll(loaded, ps, nll, mask)
    finally:
        torch.set_num_threads(threads)
    for key in ("peak_sharpness", "delta_loss", "peak_mean", "clean_loss", "length_pearson"):
        # measured: equal (0.0) on an AMD EPYC; the bound leaves room for summation order only
        assert result.summary[key] == pytest.approx(last[key], abs=1e-6), key
