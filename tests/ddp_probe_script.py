"""Run by tests/test_ddp.py: a real 2-process DDP fit on CPU (gloo) with the probe.

Lightning's ``ddp`` strategy re-launches this script for rank 1, so it must be a
file, not a pytest function. Each rank writes what it saw to OUT/rank<r>.json.

Usage: python ddp_probe_script.py PROBE_DIR OUT_DIR
"""

from __future__ import annotations

import faulthandler
import json
import sys
import warnings
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping

sys.path.insert(0, str(Path(__file__).parent))
from lightning_helpers import SHARDED_SPEC, ProtocolModule, count_lm_passes

from lightning_noiseprobe.callback import NoiseProbeCallback


class Seen(Callback):
    """Records what EarlyStopping's monitor holds on this rank after each validation."""

    def __init__(self) -> None:
        self.values: list[float] = []

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.values.append(float(trainer.callback_metrics["noiseprobe/peak_sharpness"]))


def main() -> None:
    faulthandler.dump_traceback_later(240, exit=True)  # a hang fails with every stack
    probe_dir, out = Path(sys.argv[1]), Path(sys.argv[2])
    warnings.filterwarnings("ignore")
    pl.seed_everything(0)
    probe = NoiseProbeCallback(
        probe_audio=probe_dir,
        **SHARDED_SPEC,
        batch_size=4,
        cache_dir="none",
    )
    seen = Seen()
    early = EarlyStopping(monitor="noiseprobe/peak_sharpness", mode="max", patience=5)
    trainer = pl.Trainer(
        strategy="ddp",
        devices=2,
        accelerator="cpu",
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[probe, early, seen],
        num_sanity_val_steps=0,
    )
    model = ProtocolModule()
    calls = count_lm_passes(model.probe_backend)  # rows per LM pass of the probe on this rank
    trainer.fit(model)
    rank = trainer.global_rank
    record = {
        "rank": rank,
        "world_size": trainer.world_size,
        "history": probe.history,
        "seen": seen.values,
        "early_best": float(early.best_score),
        "probe_forward_rows": calls,
    }
    (out / f"rank{rank}.json").write_text(json.dumps(record))
    if rank == 0:
        torch.save(model.lm.state_dict(), out / "lm.pt")


if __name__ == "__main__":
    main()
