"""Run by tests/test_integrations.py under torchrun (2 CPU processes, gloo): a real
``transformers.Trainer`` with ``NoiseProbeTrainerCallback``. Each rank writes the probe
metrics it logged to OUT/rank<r>.json; rank 0 saves the final weights to OUT/model and
writes OUT/reference.json: one process (world size 1) probing those saved weights.

The reference runs in this same process, so both sides have the same thread count
(torchrun's OMP_NUM_THREADS) and the same batch shapes (``batch_size=1``: every clip
and copy is scored alone, so sharding the clips over ranks changes no batch); float
kernels and codec near-ties are then the same on both sides, on any CPU.

Usage: torchrun --nproc_per_node 2 trainer_ddp_script.py PROBE_DIR OUT_DIR
"""

from __future__ import annotations

import faulthandler
import json
import sys
from pathlib import Path

import torch
from dist_helpers import leave_process_group
from transformers import Trainer, TrainingArguments

from lightning_noiseprobe import NoiseProber, NoiseProbeTrainerCallback
from lightning_noiseprobe.backends.transformers import (
    TransformersBackend,
    build_tiny_transformers_musicgen,
)

SPEC = {"onset": 60, "lengths": (5, 20), "clip_seconds": 4.0}


def main() -> None:
    # A hang anywhere prints every thread's stack and exits 1 (torchrun then stops the other
    # rank), so the test fails with the place instead of waiting out its timeout. The
    # script needs about 10 s (3 times that with the CPUs taken by other work).
    faulthandler.dump_traceback_later(240, exit=True)
    probe_dir, out = sys.argv[1], Path(sys.argv[2])
    model, tokenizer = build_tiny_transformers_musicgen(0)
    model.config.decoder.decoder_start_token_id = model.config.decoder.bos_token_id
    g = torch.Generator().manual_seed(0)
    text = tokenizer(["a chorale"], return_tensors="pt")
    data = [
        {
            "input_ids": text["input_ids"][0],
            "attention_mask": text["attention_mask"][0],
            "labels": torch.randint(0, 2048, (20, 4), generator=g),
        }
        for _ in range(8)
    ]
    args = TrainingArguments(
        output_dir=str(out / "trainer"),
        max_steps=2,
        per_device_train_batch_size=2,
        learning_rate=3e-3,
        eval_strategy="steps",
        eval_steps=2,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        ddp_backend="gloo",
    )
    trainer = Trainer(model=model, args=args, train_dataset=data, eval_dataset=data[:2])
    trainer.add_callback(
        NoiseProbeTrainerCallback(probe_audio=probe_dir, cache_dir="none", batch_size=1, **SPEC)
    )
    trainer.train()
    rank = torch.distributed.get_rank()
    logged = [
        {k: v for k, v in h.items() if k.startswith("eval_noiseprobe/") or k == "step"}
        for h in trainer.state.log_history
        if "eval_loss" in h
    ]
    info = {"world_size": torch.distributed.get_world_size(), "evals": logged}
    (out / f"rank{rank}.json").write_text(json.dumps(info))
    if rank == 0:
        trainer.save_model(str(out / "model"))
        backend = TransformersBackend(model=out / "model").load()
        prober = NoiseProber(probe_dir, cache_dir="none", batch_size=1, **SPEC)
        metrics, _ = prober.probe(backend)  # world size 1
        (out / "reference.json").write_text(json.dumps(metrics))
    leave_process_group()  # both ranks together; no gloo teardown (see there)


if __name__ == "__main__":
    main()
