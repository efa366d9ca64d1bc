"""Run by tests/test_metric.py: PeakShape synced across two real CPU processes (gloo).

Each rank updates a PeakShape with its share of the clips (``clip_shard``: rank 0
gets clips 0 and 2, rank 1 clip 1, so the ``"cat"`` states have different sizes),
and a second PeakShape with every clip on rank 0 and none on rank 1 (a rank that
saw nothing); both compute() on both ranks, for each curves file. ``gather_clips`` puts the ranks'
per-clip rows back in clip order. Each rank writes what it got to OUT/rank<r>.json.

The ranks are forked from this process after it imported torchmetrics (which imports
transformers, the slow part), so they do not import it again.

Usage: python metric_ddp_script.py OUT_DIR CURVES.pt [CURVES.pt ...]
(CURVES.pt: the keyword arguments of ``PeakShape.update`` for all clips, ``[N, P, ...]``,
plus ``"regions"``; OUT_DIR/rank<r>.json holds one record per file.)
"""

from __future__ import annotations

import faulthandler
import json
import os
import socket
import sys
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from dist_helpers import leave_process_group

from lightning_noiseprobe.metrics import PeakShape, clip_shard, gather_clips


def _floats(out: dict[str, torch.Tensor]) -> dict[str, float]:
    return {k: float(v) for k, v in out.items()}


def one_file(curves_path: str, rank: int, world: int) -> dict:
    data = torch.load(curves_path, weights_only=True)
    regions = data.pop("regions")
    N = data["clean"].shape[0]
    own = clip_shard(N, world, rank)
    sharded = PeakShape(regions=regions)
    sharded.update(**{k: v[own] for k, v in data.items()})
    one_sided = PeakShape(regions=regions)
    if rank == 0:
        one_sided.update(**data)
    return {
        "clips": own,
        "sharded": _floats(sharded.compute()),
        "one_sided": _floats(one_sided.compute()),
        "gathered_clean": gather_clips(data["clean"][own], N).tolist(),
    }


def run(rank: int, world: int, port: int, out_dir: str, curves: list[str]) -> None:
    faulthandler.dump_traceback_later(240, exit=True)  # a hang fails with every stack
    warnings.filterwarnings("ignore")
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    record = {
        "rank": rank,
        "world_size": dist.get_world_size(),
        "files": [one_file(path, rank, world) for path in curves],
    }
    (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(record))
    leave_process_group()  # both ranks together; no gloo teardown (see there)


def main() -> None:
    out_dir, curves = sys.argv[1], sys.argv[2:]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(
        run, args=(2, port, out_dir, curves), nprocs=2, join=True, start_method="fork"
    )


if __name__ == "__main__":
    main()
