"""Early stopping and checkpoint selection on the probe's peak sharpness.

Fine-tunes MusicGenLightningModule on an audio folder (default: rendered Bach
chorales) and stops when `noiseprobe/peak_sharpness` has not improved for
`--patience` probed epochs; the best checkpoint is the sharpest-Peak epoch.

    python examples/early_stopping_on_peak_sharpness.py --epochs 20 --patience 2
    python examples/early_stopping_on_peak_sharpness.py --train-dir data/train --probe-dir data/probe \\
        --model /models/musicgen-small --accelerator gpu --precision bf16-mixed
"""

from __future__ import annotations

import argparse

import lightning.pytorch as pl
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

from lightning_noiseprobe import (
    AudioFolderDataModule,
    ChoraleDataModule,
    MusicGenLightningModule,
    NoiseProbeCallback,
)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--train-dir", help="training audio folder (default: rendered chorales)")
    parser.add_argument(
        "--probe-dir", help="held-out probe clips (default: the chorales' probe split)"
    )
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--patience", type=int, default=2)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--out", default="runs/early_stopping")
    args = parser.parse_args()

    if args.train_dir:
        data = AudioFolderDataModule(
            train_dir=args.train_dir, probe_dir=args.probe_dir, segment_seconds=15.0
        )
    else:
        data = ChoraleDataModule(root="data/chorales", num_clips=24, probe_fraction=0.17)
    model = MusicGenLightningModule(
        model=args.model, lr=3e-3 if args.model == "tiny" else 1e-5, warmup_steps=10
    )
    early = EarlyStopping(monitor="noiseprobe/peak_sharpness", mode="max", patience=args.patience)
    best = ModelCheckpoint(
        dirpath=f"{args.out}/checkpoints", monitor="noiseprobe/peak_sharpness", mode="max"
    )
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        accelerator=args.accelerator,
        precision=args.precision,
        default_root_dir=args.out,
        callbacks=[NoiseProbeCallback(probe_audio=args.probe_dir), early, best],
    )
    trainer.fit(model, data)
    print(
        f"stopped after epoch {trainer.current_epoch - 1}; best peak_sharpness {float(best.best_model_score):.3f}"
        f" in {best.best_model_path}"
    )


if __name__ == "__main__":
    main()
