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


class ProtocolModule(pl.LightningModule):
    """A user's own module following the documented probe protocol."""

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
