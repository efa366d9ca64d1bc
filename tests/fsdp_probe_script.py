"""Run by tests/test_fsdp.py: a real 2-process FSDP2 fit on CPU (gloo) with the probe.

``ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)`` shards
MusicGenLightningModule's LM with ``fully_shard`` (its ``configure_model``).
Lightning re-launches this script for rank 1, so it must be a file. Each rank
writes what it saw to OUT/rank<r>.json; rank 0 also writes the full final LM
weights to OUT/lm.pt.

Usage: python fsdp_probe_script.py PROBE_DIR OUT_DIR [--no-probe] [--transformers]
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
from lightning.pytorch.strategies import ModelParallelStrategy
from torch.utils.data import DataLoader

from lightning_noiseprobe.callback import NoiseProbeCallback
from lightning_noiseprobe.module import MusicGenLightningModule

sys.path.insert(0, str(Path(__file__).parent))
from lightning_helpers import SHARDED_SPEC, CodeDicts, count_lm_passes


class Record(Callback):
    """Training losses, and what EarlyStopping's monitor holds after each validation, on this rank."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.seen: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))

    def on_validation_end(self, trainer, pl_module):
        value = trainer.callback_metrics.get("noiseprobe/peak_sharpness")
        if not trainer.sanity_checking and value is not None:
            self.seen.append(float(value))


def main() -> None:
    faulthandler.dump_traceback_later(240, exit=True)  # a hang fails with every stack
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    probe_dir, out = Path(sys.argv[1]), Path(sys.argv[2])
    with_probe = "--no-probe" not in sys.argv
    backend = "transformers" if "--transformers" in sys.argv else "audiocraft"
    warnings.filterwarnings("ignore")
    pl.seed_everything(0)
    record = Record()
    callbacks: list[Callback] = [record]
    probe = NoiseProbeCallback(
        probe_audio=probe_dir,
        **SHARDED_SPEC,
        batch_size=4,
        cache_dir="none",
        fatal=True,
    )
    if with_probe:
        early = EarlyStopping(monitor="noiseprobe/peak_sharpness", mode="max", patience=5)
        callbacks = [probe, early, record]
    trainer = pl.Trainer(
        strategy=ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1),
        devices=2,
        accelerator="cpu",
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
        num_sanity_val_steps=0,
    )
    model = MusicGenLightningModule(
        backend=backend, model="tiny", lr=1e-3, warmup_steps=1, cfg_dropout=0.0
    )
    initial = {k: v.clone() for k, v in model.lm.state_dict().items()}
    calls = count_lm_passes(model.probe_backend)  # rows per LM pass of the probe on this rank
    trainer.fit(
        model,
        train_dataloaders=DataLoader(CodeDicts(n=8, seed=0), batch_size=2),
        val_dataloaders=DataLoader(CodeDicts(n=4, seed=1), batch_size=2),
    )
    from lightning_noiseprobe._sharding import fsdp2_modules

    groups = len(fsdp2_modules(model))
    model.configure_model()  # Lightning may call it again (fit, then validate): no re-sharding
    regroup = len(fsdp2_modules(model))
    try:  # a sharded module cannot export by itself: it must say so, and write nothing
        model.export(out / f"export_rank{trainer.global_rank}")
        export_error = ""
    except Exception as err:  # recorded for the test to check
        export_error = f"{type(err).__name__}: {err}"
    full = get_model_state_dict(
        model.lm, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )
    rank = trainer.global_rank
    if backend == "transformers":
        head, layer = model.lm.decoder.lm_heads[0], model.lm.decoder.model.decoder.layers[0]
    else:
        head, layer = model.lm.emb[0], model.lm.transformer.layers[0]
    record_out = {
        "rank": rank,
        "world_size": trainer.world_size,
        "sharded_weight_type": type(next(head.parameters())).__name__,
        "layer_weight_type": type(next(layer.parameters())).__name__,
        # the full weights are gathered on rank 0 only (cpu_offload)
        "weights_changed": any(not torch.equal(full[k], initial[k]) for k in full),
        "losses": record.losses,
        "history": probe.history,
        "failures": probe.failures,
        "seen": record.seen,
        "early_best": float(early.best_score) if with_probe else None,
        "probe_forward_rows": calls,
        "export_error": export_error,
        "fsdp_groups": [groups, regroup],
    }
    (out / f"rank{rank}.json").write_text(json.dumps(record_out))
    if rank == 0:
        torch.save(full, out / "lm.pt")


if __name__ == "__main__":
    main()
