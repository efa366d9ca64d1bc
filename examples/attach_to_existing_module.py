"""Attach NoiseProbeCallback to an existing fine-tune script.

Your LightningModule only needs a `probe_backend` property: a loaded backend whose
`.lm` is the language model you train (registered as a submodule). Here the LM is
the tiny offline model; swap in `AudiocraftBackend("facebook/musicgen-small")` or a
local export folder for real weights.

    python examples/attach_to_existing_module.py --probe-audio my_probe_clips/
    python examples/attach_to_existing_module.py            # renders 2 chorales as probe clips
"""

from __future__ import annotations

import argparse
import tempfile

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_noiseprobe import NoiseProbeCallback
from lightning_noiseprobe.backends.audiocraft import AudiocraftBackend
from lightning_noiseprobe.functional.losses import codebook_cross_entropy, token_nll_from_logits


class MyFineTune(pl.LightningModule):
    """Stands for your existing module: trains the LM on pre-tokenized codes."""

    def __init__(self, model: str = "tiny", lr: float = 1e-3):
        super().__init__()
        self.backend = AudiocraftBackend(model).load()
        self.lm = self.backend.lm  # registered: optimised, moved to device, checkpointed
        self.lr = lr

    # --- the whole probe protocol -------------------------------------------
    @property
    def probe_backend(self) -> AudiocraftBackend:
        return self.backend

    # --- your training code, unchanged ---------------------------------------
    def _ce(self, codes: torch.Tensor) -> torch.Tensor:
        logits, mask = self.backend.lm_logits(codes)
        return codebook_cross_entropy(*token_nll_from_logits(logits, codes, mask))[0]

    def training_step(self, batch, batch_idx):
        loss = self._ce(batch[0])
        self.log("train/ce", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val/ce", self._ce(batch[0]))

    def configure_optimizers(self):
        return torch.optim.AdamW(self.lm.parameters(), lr=self.lr)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--probe-audio", help="folder of clean probe clips (>= 15 s each)")
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()

    probe_audio = args.probe_audio
    if probe_audio is None:
        from lightning_noiseprobe.data.chorales import write_chorale_dataset

        probe_audio = tempfile.mkdtemp(prefix="probe_")
        write_chorale_dataset(probe_audio, num_clips=2, seconds=15.0)

    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 2048, (16, 4, 100), generator=g)
    train = DataLoader(TensorDataset(codes[:12]), batch_size=4)
    val = DataLoader(TensorDataset(codes[12:]), batch_size=4)

    trainer = pl.Trainer(
        max_epochs=args.epochs,
        accelerator="auto",
        logger=False,
        enable_checkpointing=False,
        callbacks=[
            NoiseProbeCallback(probe_audio=probe_audio, lengths=(5, 50, 200))
        ],  # one line to add
    )
    trainer.fit(MyFineTune(), train, val)
    for name, value in sorted(trainer.callback_metrics.items()):
        if name.startswith("noiseprobe/") and name.count("/") == 1:
            print(f"{name:32s} {float(value): .4f}")


if __name__ == "__main__":
    main()
