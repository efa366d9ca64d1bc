"""What ``noiseprobe sweep`` over N checkpoints costs against N separate ``noiseprobe probe`` calls.

Run from the repository root (see ``benchmarks/README.md``)::

    .venv/bin/python benchmarks/bench_sweep.py            # 10 checkpoints, 4 chorales x 15 s, the paper's lengths
    .venv/bin/python benchmarks/bench_sweep.py --quick    # 3 checkpoints, 2 clips x 6 s, two lengths

Set-up (not timed): renders the probe chorales, then fine-tunes the tiny audiocraft model
(``MusicGenLightningModule``, random code batches, no probe callback) for N epochs, keeping
every epoch twice: the ``.ckpt`` of ``ModelCheckpoint(save_top_k=-1)`` and an audiocraft
export folder ``step-<global step>`` (what ``probe --model`` reads).

Timed, as a user runs them (one subprocess each, fresh cache folders):

* ``sweep`` over the N export folders;
* N ``probe`` calls, one per export folder, sharing one token cache folder (the default: the
  first call tokenizes, the others read the codes from disk);
* ``sweep`` over the N ``.ckpt`` files (loaded into one model in place).

Wall time and CPU time (user + system of the subprocesses) for each; CPU time is less
sensitive to other load on the machine. Every row also prints the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

warnings.filterwarnings("ignore")
os.environ.setdefault("XFORMERS_MORE_DETAILS", "0")


def _train(root: Path, epochs: int) -> tuple[Path, Path]:
    """``epochs`` epochs of the tiny model; returns the ``.ckpt`` folder and the exports folder."""
    import lightning.pytorch as pl
    import torch
    from lightning.pytorch.callbacks import Callback, ModelCheckpoint
    from torch.utils.data import DataLoader

    from lightning_noiseprobe.module import MusicGenLightningModule

    class Export(Callback):
        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            pl_module.export(root / "exports" / f"step-{trainer.global_step}")

    g = torch.Generator().manual_seed(0)
    codes = [{"codes": torch.randint(0, 2048, (4, 250), generator=g)} for _ in range(8)]
    pl.seed_everything(0, verbose=False)
    model = MusicGenLightningModule(model="tiny", lr=3e-3, warmup_steps=1)
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        callbacks=[ModelCheckpoint(dirpath=root / "checkpoints", save_top_k=-1), Export()],
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(model, train_dataloaders=DataLoader(codes, batch_size=4))
    return root / "checkpoints", root / "exports"


def _run(argv: list[str]) -> tuple[float, float, str]:
    """Wall and CPU seconds of one ``noiseprobe`` subprocess, and its stdout."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "lightning_noiseprobe.cli", *argv],
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"noiseprobe {argv[0]} failed:\n{proc.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, proc.stdout


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--checkpoints", type=int, default=10, help="checkpoints (epochs), default 10"
    )
    parser.add_argument("--clips", type=int, default=4, help="probe chorales, default 4")
    parser.add_argument(
        "--quick", action="store_true", help="3 checkpoints, 2 clips x 6 s, lengths 5,50"
    )
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args(argv)
    n = 3 if args.quick else args.checkpoints
    clips = 2 if args.quick else args.clips
    seconds = 6.0 if args.quick else 15.0
    spec = ["--clip-seconds", f"{seconds:g}", "--batch-size", "8", "--quiet", "--no-figures"]
    if args.quick:
        spec += ["--onset", "100", "--lengths", "5,50"]

    from lightning_noiseprobe.data.chorales import write_chorale_dataset

    with tempfile.TemporaryDirectory(prefix="bench_sweep_") as tmp:
        root = Path(tmp)
        print(f"set-up: rendering {clips} chorales, training {n} epochs ...", flush=True)
        write_chorale_dataset(root / "clips", num_clips=clips, seconds=seconds)
        audio = ["--audio", str(root / "clips")]
        ckpts, exports = _train(root, n)
        folders = sorted(exports.iterdir(), key=lambda p: int(p.name.split("-")[1]))
        rows: dict[str, dict[str, float]] = {}

        load = os.getloadavg()[0]
        wall, cpu, out = _run(
            [
                "sweep",
                str(exports),
                *audio,
                "--out",
                str(root / "sw"),
                *spec,
                "--cache-dir",
                str(root / "c1"),
            ]
        )
        phases = json.loads((root / "sw" / "sweep.json").read_text())["seconds"]
        rows["sweep, export folders"] = {"wall": wall, "cpu": cpu, "loadavg": load, **phases}
        print(out.splitlines()[0])

        load = os.getloadavg()[0]
        walls, cpus = [], []
        for i, folder in enumerate(folders):
            w, c, _ = _run(
                [
                    "probe",
                    "--model",
                    str(folder),
                    *audio,
                    "--out",
                    str(root / f"p{i}"),
                    *spec,
                    "--cache-dir",
                    str(root / "c2"),
                ]
            )
            walls.append(w)
            cpus.append(c)
        rows[f"{n} x probe, export folders"] = {
            "wall": sum(walls),
            "cpu": sum(cpus),
            "loadavg": load,
            "first_wall": walls[0],
            "mean_wall_rest": sum(walls[1:]) / max(1, len(walls) - 1),
        }

        load = os.getloadavg()[0]
        wall, cpu, out = _run(
            [
                "sweep",
                str(ckpts),
                *audio,
                "--out",
                str(root / "sc"),
                *spec,
                "--cache-dir",
                str(root / "c3"),
            ]
        )
        phases = json.loads((root / "sc" / "sweep.json").read_text())["seconds"]
        rows["sweep, .ckpt files"] = {"wall": wall, "cpu": cpu, "loadavg": load, **phases}

    sweep, probes = rows["sweep, export folders"], rows[f"{n} x probe, export folders"]
    print(
        f"\n{n} checkpoints, {clips} chorales x {seconds:g} s, tiny audiocraft model, CPU ({os.cpu_count()} cores)"
    )
    print(f"{'':<28}{'wall s':>9}{'cpu s':>9}{'load':>7}   phases (s, from sweep.json)")
    for name, row in rows.items():
        extra = (
            f"tokenize {row['tokenize']:.1f}, load {row['load']:.1f}, score {row['score']:.1f}"
            if "tokenize" in row
            else f"first call {row['first_wall']:.1f}, then {row['mean_wall_rest']:.1f} each"
        )
        print(f"{name:<28}{row['wall']:>9.1f}{row['cpu']:>9.1f}{row['loadavg']:>7.2f}   {extra}")
    print(
        f"{n} x probe / sweep: {probes['wall'] / sweep['wall']:.1f}x wall, {probes['cpu'] / sweep['cpu']:.1f}x cpu"
    )
    result = {"checkpoints": n, "clips": clips, "seconds_per_clip": seconds, "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
