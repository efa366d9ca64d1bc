"""Real MusicGen shapes on this machine: loading (time, peak memory), encoding, probing, FLOP/s.

Run from the repository root (see ``benchmarks/README.md``)::

    .venv/bin/python benchmarks/bench_shapes.py                       # small, medium, large
    .venv/bin/python benchmarks/bench_shapes.py --shapes small --before  # also audiocraft's loaders

Each shape is a random-weight export written as the hub lays it out
(``write_real_shape_export``: the real configuration, the LM in float16, the
EnCodec in float32), built once into ``--fixtures`` and reused. Every
measurement runs in a fresh subprocess, so peak memory is that process's own
(``VmHWM``, the peak resident set: the interpreter and its imports included,
and what they alone hold is shown as ``base``):

* load: ``AudiocraftBackend(model=folder, dtype=...).load()``, seconds and peak
  memory, against the files' size and the weights' size in memory; with
  ``--before`` also the previous loading (audiocraft's ``load_lm_model`` and
  ``load_compression_model``, then ``.to(dtype)``), measured the same way;
* encode: the first tokenization of the probe set (codec), seconds;
* probe: ``score_probe_set`` (defaults: fused NLL, prefix sharing) of one 15 s
  clip with the paper's protocol (onset 250, white noise over 5 to 200
  tokens: 1 clean + 6 perturbed sequences), seconds per clip, scored positions
  per second, model FLOP/s (``bench_probe.probe_work``) against this CPU's
  matmul peak in the LM's dtype, measured in the same process just before.

Before a run that needs more than a few GiB, the script waits until the
machine has that much available plus ``--headroom`` GiB (the machine is shared).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

warnings.filterwarnings("ignore")
os.environ.setdefault("XFORMERS_MORE_DETAILS", "0")

GIB = 2**30
#: The LM dtype each shape is probed in by default: MusicGen-large's float32
#: weights (13 GB) do not fit beside the rest on a 24 GB machine; bf16 (6.5 GB) do.
DEFAULT_DTYPES = {"large": "bfloat16"}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
#: GiB a process holds besides the weights: interpreter, torch and audiocraft
#: imports, the codec, activations (measured: about 1.0 + 0.35 + 0.9 for small).
OVERHEAD_GIB = 3.0


def _status(*keys: str) -> dict[str, float]:
    """Fields of ``/proc/self/status`` in GiB (``VmRSS``, ``VmHWM``)."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in keys:
            out[name] = int(value.split()[0]) * 1024 / GIB
    return out


def _meminfo_gib(field: str) -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024 / GIB
    return 0.0


def _available_gib() -> float:
    return _meminfo_gib("MemAvailable")


#: What was not run, and why (printed under the table).
NOTES: list[str] = []


def wait_for_memory(need_gib: float, headroom_gib: float, wait_minutes: float, what: str) -> bool:
    """Wait until ``need + headroom`` GiB are available; ``False`` if they never were."""
    total = _meminfo_gib("MemTotal")
    if need_gib + headroom_gib > total:
        NOTES.append(
            f"skipped {what}: needs {need_gib:.1f} GiB + {headroom_gib:g} GiB headroom, "
            f"more than this machine's {total:.1f} GiB"
        )
        return False
    deadline = time.time() + 60 * wait_minutes
    while True:
        available = _available_gib()
        if available >= need_gib + headroom_gib:
            return True
        if time.time() >= deadline:
            NOTES.append(
                f"skipped {what}: needs {need_gib:.1f} GiB + {headroom_gib:g} GiB headroom, "
                f"{available:.1f} GiB available"
            )
            return False
        print(
            f"waiting for memory for {what}: {available:.1f} of {need_gib + headroom_gib:.1f} GiB available",
            file=sys.stderr,
        )
        time.sleep(120)


def matmul_peak_tflops(dtype: torch.dtype, size: int = 2048, repeats: int = 5) -> float:
    """Best TFLOP/s of a ``[size, size] @ [size, 4 size]`` matmul in ``dtype`` (this process's threads)."""
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, 4 * size).to(dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * size * size * 4 * size / best / 1e12


def _files_bytes(folder: Path) -> tuple[int, int]:
    from lightning_noiseprobe.backends.audiocraft import EXPORT_FILES

    lm, codec = (os.path.getsize(folder / name) for name in EXPORT_FILES)
    return lm, codec


# -- the subprocesses ------------------------------------------------------------------
def child_build(name: str, folder: Path, file_dtype: str) -> dict[str, Any]:
    from lightning_noiseprobe.backends.audiocraft.shapes import write_real_shape_export

    t0 = time.perf_counter()
    write_real_shape_export(name, folder, lm_dtype=DTYPES[file_dtype])
    return {"build_s": time.perf_counter() - t0, "peak_gib": _status("VmHWM")["VmHWM"]}


def child_run(
    folder: Path, dtype_name: str, loader: str, audio: Path | None, batch_size: int
) -> dict[str, Any]:
    import audiocraft.models  # noqa: F401  (imported by any load: part of the base)

    from lightning_noiseprobe.backends.audiocraft import AudiocraftBackend
    from lightning_noiseprobe.backends.audiocraft.export import EXPORT_FILES, export_file_problem

    dtype = DTYPES[dtype_name]
    base = _status("VmRSS")["VmRSS"]
    t0 = time.perf_counter()
    if loader == "before":  # load_pretrained before the lean loader: audiocraft's loaders
        from audiocraft.models import loaders

        from lightning_noiseprobe.backends.audiocraft.conditioners import building_lms

        for filename in EXPORT_FILES:
            assert export_file_problem(folder / filename) is None
        with building_lms():  # as load_pretrained ran them (melody: no demucs)
            lm = loaders.load_lm_model(str(folder), device="cpu")
        codec = loaders.load_compression_model(str(folder), device="cpu")
        lm = lm.to(dtype)
        modules = (lm, codec)
    else:
        backend = AudiocraftBackend(model=str(folder), dtype=dtype).load()
        modules = (backend.lm, backend.codec)
    load_s = time.perf_counter() - t0
    out: dict[str, Any] = {
        "base_gib": base,
        "load_s": load_s,
        "load_peak_gib": _status("VmHWM")["VmHWM"],
        "weights_gib": sum(
            t.numel() * t.element_size() for m in modules for t in [*m.parameters(), *m.buffers()]
        )
        / GIB,
        "lm_params": sum(p.numel() for p in modules[0].parameters()),
    }
    if loader == "before" or audio is None:
        return out

    from bench_probe import probe_work

    from lightning_noiseprobe.probe import ProbeSpec, build_probe_set, score_probe_set

    spec = ProbeSpec()  # the paper's protocol, 15 s clips
    t0 = time.perf_counter()
    ps = build_probe_set(backend, [audio], spec, cache_dir=None)
    out["encode_s"] = time.perf_counter() - t0
    out["peak_tflops"] = matmul_peak_tflops(dtype)
    t0 = time.perf_counter()
    result = score_probe_set(backend, ps, batch_size=batch_size)
    probe_s = time.perf_counter() - t0
    work = probe_work(backend, ps, batch_size)
    out.update(
        probe_s=probe_s,
        clips=len(ps),
        sequences=len(ps) * (1 + ps.perturbed_codes.shape[1]),
        positions_per_s=work["positions"] / probe_s,
        tflop=work["flops"] / 1e12,
        tflops=work["flops"] / probe_s / 1e12,
        peak_gib=_status("VmHWM")["VmHWM"],
        clean_loss=float(result.summary["clean_loss"]),
    )
    return out


def _run_child(args: list[str], headroom_gib: float) -> dict[str, Any]:
    """Run this script's ``args`` in a fresh process; its ``RESULT`` line, parsed.

    The child's data segment (``RLIMIT_DATA``: its heap and anonymous memory,
    where every tensor lives) is capped at what the machine has available now
    less ``headroom_gib``, so a child that needs more than estimated fails with
    a MemoryError of its own instead of driving the shared machine out of memory.
    """
    import resource

    limit = int((_available_gib() - headroom_gib) * GIB)
    if limit <= 0:
        raise RuntimeError(f"{' '.join(args[:2])} not started: no memory to spare")

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    proc = subprocess.run(
        [sys.executable, __file__, *args],
        capture_output=True,
        text=True,
        env=env,
        preexec_fn=cap,
    )
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    last = proc.stderr.strip().splitlines()[-1:] or ["no output"]
    raise RuntimeError(f"{' '.join(args[:2])} failed: {last[0]}")


# -- the table --------------------------------------------------------------------------
def _row(
    name: str, file_dtype: str, dtype: str, loader: str, files: float, r: dict[str, Any]
) -> list[str]:
    peak, weights = r["load_peak_gib"], r["weights_gib"]
    cells = [
        name,
        f"{r['lm_params'] / 1e9:.2f} G",
        f"{file_dtype} -> {dtype}" + ("" if loader == "lean" else " (before)"),
        f"{files:.2f}",
        f"{weights:.2f}",
        f"{r['load_s']:.1f}",
        f"{peak:.2f}",
        f"{peak / files:.2f}x",
        f"{peak / weights:.2f}x",
        f"{(peak - r['base_gib']) / weights:.2f}x",
    ]
    if "probe_s" in r:
        cells += [
            f"{r['encode_s']:.1f}",
            f"{r['probe_s'] / r['clips']:.1f}",
            f"{r['positions_per_s']:.0f}",
            f"{r['tflops']:.3f} / {r['peak_tflops']:.3f} = {100 * r['tflops'] / r['peak_tflops']:.0f} %",
            f"{r['peak_gib']:.2f}",
        ]
    else:
        cells += [""] * 5
    return cells


HEADER = [
    "shape",
    "LM weights",
    "LM dtype (files -> memory)",
    "files GiB",
    "in memory GiB",
    "load s",
    "load peak GiB",
    "peak / files",
    "peak / in memory",
    "(peak - base) / in memory",
    "encode s",
    "probe s/clip",
    "positions/s",
    "TFLOP/s / matmul peak",
    "peak GiB (probing)",
]


def format_table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + " --- |" * len(HEADER)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from lightning_noiseprobe.backends.audiocraft.configs import REAL_MODELS

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--shapes", nargs="+", default=["small", "medium", "large"], choices=sorted(REAL_MODELS)
    )
    parser.add_argument(
        "--fixtures",
        type=Path,
        default=Path(tempfile.gettempdir()) / "noiseprobe_shapes",
        help="where the random-weight exports are built once and kept",
    )
    parser.add_argument(
        "--dtype",
        choices=sorted(DTYPES),
        default=None,
        help="LM dtype for every shape (default float32, bfloat16 for large)",
    )
    parser.add_argument(
        "--file-dtype",
        choices=("float16", "float32"),
        default="float16",
        help="dtype of the LM weights in the files (default float16, as the hub's)",
    )
    parser.add_argument("--before", action="store_true", help="also time the previous loading")
    parser.add_argument("--load-only", action="store_true", help="no encoding, no probing")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--headroom", type=float, default=4.0, help="GiB to leave free")
    parser.add_argument("--wait-minutes", type=float, default=60.0)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)

    from lightning_noiseprobe.data.chorales import write_chorale_dataset

    audio_dir = args.fixtures / "audio"
    if not audio_dir.is_dir():
        write_chorale_dataset(audio_dir, num_clips=1, seconds=15)
    audio = sorted(audio_dir.glob("*.wav"))[0]
    figures: dict[str, Any] = {
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "load_average_start": os.getloadavg(),
        "shapes": {},
    }
    rows = []
    for name in args.shapes:
        folder = args.fixtures / f"{name}-seed0-{args.file_dtype}"
        entry: dict[str, Any] = {}
        if not (folder / "state_dict.bin").is_file():
            from lightning_noiseprobe._errors import NoiseProbeError
            from lightning_noiseprobe.backends.audiocraft.shapes import lm_parameter_count

            try:  # on the meta device; fails as the build would
                stored = lm_parameter_count(name) * DTYPES[args.file_dtype].itemsize / GIB
            except NoiseProbeError as err:
                NOTES.append(f"skipped {name}: {err}")
                continue
            what = f"build {name}"
            if not wait_for_memory(1.3 * stored + 2.0, args.headroom, args.wait_minutes, what):
                continue
            build = ["--_build", name, str(folder), args.file_dtype]
            try:
                entry["build"] = _run_child(build, args.headroom)
            except RuntimeError as err:
                NOTES.append(f"skipped {name}: {err}")
                continue
        lm_bytes, codec_bytes = _files_bytes(folder)
        files = (lm_bytes + codec_bytes) / GIB
        dtype = args.dtype or DEFAULT_DTYPES.get(name, "float32")
        stored_size = DTYPES[args.file_dtype].itemsize
        in_memory = lm_bytes / stored_size * DTYPES[dtype].itemsize / GIB
        float32 = lm_bytes / stored_size * 4 / GIB
        loaders = (["before"] if args.before else []) + ["lean"]
        for loader in loaders:
            need = in_memory + OVERHEAD_GIB
            if loader == "before":  # audiocraft's loader: the file, a float32 LM, then `.to`
                need += lm_bytes / GIB + (float32 if dtype != "float32" else 0)
            if not wait_for_memory(need, args.headroom, args.wait_minutes, f"{loader} {name}"):
                continue
            clip = "none" if args.load_only else str(audio)
            run = [str(folder), dtype, loader, clip, str(args.batch_size)]
            try:
                result = _run_child(["--_run", *run], args.headroom)
            except RuntimeError as err:
                NOTES.append(f"skipped {loader} {name}: {err}")
                continue
            entry[loader] = {**result, "files_gib": files, "dtype": dtype}
            rows.append(_row(name, args.file_dtype, dtype, loader, files, result))
            print(format_table(rows[-1:]).splitlines()[-1], file=sys.stderr)
        figures["shapes"][name] = entry
    figures["load_average_end"] = os.getloadavg()
    print(
        f"real MusicGen shapes, random weights; {torch.get_num_threads()} threads, torch "
        f"{torch.__version__}; load average {figures['load_average_start'][0]:.1f} at the start, "
        f"{figures['load_average_end'][0]:.1f} at the end"
    )
    print(format_table(rows))
    for note in NOTES:
        print(note)
    figures["notes"] = NOTES
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2))
    return figures


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in ("--_build", "--_run"):
        if sys.argv[1] == "--_build":
            result = child_build(sys.argv[2], Path(sys.argv[3]), sys.argv[4])
        else:
            folder, dtype, loader, audio, batch = sys.argv[2:7]
            clip = None if audio == "none" else Path(audio)
            result = child_run(Path(folder), dtype, loader, clip, int(batch))
        print("RESULT " + json.dumps(result))
    else:
        main()
