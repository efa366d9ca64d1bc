"""What ``sweep`` and ``compare`` write: their JSON documents, text tables, figures and, for a
sweep, TensorBoard scalars.

Every set of files is written all or nothing (:func:`lightning_noiseprobe._io.atomic_dir`):
after a failure the folder holds what it held before; after success the new set replaces
the command's own files there and other files stay.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from lightning_noiseprobe.posthoc.sweep import Sweep

__all__ = [
    "CODEC_NOTE",
    "COMPARE_FILES",
    "SWEEP_FILES",
    "TENSORBOARD_FILE",
    "compare_document",
    "format_compare_table",
    "format_sweep_table",
    "short_labels",
    "sweep_document",
    "tensorboard_tags",
    "write_compare",
    "write_sweep",
    "write_tensorboard",
]

#: The files ``noiseprobe sweep`` writes into ``--out`` (a new sweep replaces all of them).
SWEEP_FILES = ("sweep.json", "sweep.txt", "sweep_metrics.png")
#: The files ``noiseprobe compare`` writes into ``--out``.
COMPARE_FILES = ("compare.json", "compare.txt", "compare_loss_vs_length.png", "compare_regions.png")
#: The event file a sweep writes into ``--tensorboard`` (a new sweep replaces it; TensorBoard
#: reads every file whose name holds ``tfevents``).
TENSORBOARD_FILE = "events.out.tfevents.0.noiseprobe-sweep"

#: What ``compare`` says about comparing models (in its table and ``compare.json``).
CODEC_NOTE = (
    "Absolute losses (clean_loss) of models with different codecs are not comparable: each"
    " model scores its own codec's tokens. The peak-shape metrics (delta_loss, peak_*,"
    " assimilation_*, recovery_*, length_*) are differences within one model (perturbed minus"
    " clean) and can be compared across models."
)
_SAME_CODEC_NOTE = "All models here share one codec (the same tokens), so their absolute losses are comparable too."

#: The sweep table's columns: (summary metric, header).
_SWEEP_COLUMNS = (
    ("clean_loss", "clean_loss"),
    ("delta_loss", "delta_loss"),
    ("peak_sharpness", "sharpness"),
    ("peak_mean", "peak_mean"),
    ("assimilation_mean", "assim_mean"),
    ("assimilation_empty", "assim_empty"),
    ("recovery_mean", "recov_mean"),
    ("length_pearson", "len_r"),
)


def _cell(value: Any, name: str, width: int) -> str:
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return f"{'-':>{width}}"
    return f"{value:>{width}.0f}" if name.endswith("_empty") else f"{value:>{width}.4f}"


def _save_figure(fig: Figure, path: Path) -> None:
    from lightning_noiseprobe.plots import close

    try:
        fig.savefig(path, dpi=110, bbox_inches="tight", format="png")
    finally:
        close(fig)


def _epoch_text(epoch: Any) -> str:
    if epoch is None:
        return "-"
    return f"{epoch:.0f}" if float(epoch).is_integer() else f"{epoch:.2f}"


# ----------------------------------------------------------------------------- sweep
def format_sweep_table(entries: Sequence[Mapping[str, Any]]) -> str:
    """One row per checkpoint: step, epoch, the headline metrics, and (where the checkpoint
    holds it) the largest difference from what the live callback logged at that step."""
    with_logged = any("logged" in e for e in entries)
    head = ["step", "epoch", *(h for _, h in _SWEEP_COLUMNS)]
    if with_logged:
        head.append("vs_logged")
    widths = [max(10, len(h)) for h in head]
    lines = ["  ".join(f"{h:>{w}}" for h, w in zip(head, widths, strict=True))]
    for e in entries:
        step = "-" if e.get("step") is None else str(e["step"])
        cells = [f"{step:>{widths[0]}}", f"{_epoch_text(e.get('epoch')):>{widths[1]}}"]
        for (name, _), w in zip(_SWEEP_COLUMNS, widths[2:], strict=False):
            cells.append(_cell(e["summary"].get(name), name, w))
        if with_logged:
            diff = e.get("logged", {}).get("max_abs_diff")
            cells.append(f"{'-' if diff is None else f'{diff:.1e}':>{widths[-1]}}")
        lines.append("  ".join(cells) + f"  {Path(e['path']).name}")
    return "\n".join(lines)


def sweep_document(
    sweep: Sweep, spec: Mapping[str, Any], settings: Mapping[str, Any]
) -> dict[str, Any]:
    """The ``sweep.json`` document."""
    from lightning_noiseprobe.posthoc.figures import sweep_axis

    return {
        "spec": dict(spec),
        "settings": dict(settings),
        "num_clips": len(sweep.clips),
        "clips": list(sweep.clips),
        "skipped_clips": list(sweep.skipped_clips),
        "x_axis": sweep_axis(sweep.entries)[0],
        "checkpoints": list(sweep.entries),
        "skipped": list(sweep.skipped),
        "tokenized": sweep.tokenized,
        "reused": sweep.reused,
        "seconds": {k: round(v, 3) for k, v in sweep.seconds.items()},
    }


def write_sweep(
    document: Mapping[str, Any], out: str | os.PathLike[str], figures: bool = True
) -> list[Path]:
    """Write ``sweep.json``, ``sweep.txt`` and (with ``figures``) ``sweep_metrics.png`` into
    ``out``, all or nothing; returns the paths written."""
    from lightning_noiseprobe._io import atomic_dir, atomic_write_json, atomic_write_text
    from lightning_noiseprobe.posthoc.figures import sweep_metrics

    out = Path(out)
    names = ["sweep.json", "sweep.txt"]
    with atomic_dir(out, owned=SWEEP_FILES) as tmp:
        atomic_write_json(tmp / "sweep.json", document)
        atomic_write_text(tmp / "sweep.txt", format_sweep_table(document["checkpoints"]) + "\n")
        if figures:
            _save_figure(sweep_metrics(document["checkpoints"]), tmp / "sweep_metrics.png")
            names.append("sweep_metrics.png")
    return [out / n for n in names]


def tensorboard_tags(entry: Mapping[str, Any], prefix: str = "noiseprobe") -> dict[str, float]:
    """The scalars of one checkpoint, named as its live callback logs them: ``<prefix>/...``
    (Lightning's ``NoiseProbeCallback``), or ``eval/<prefix>/...`` for transformers and PEFT
    checkpoints (the ``Trainer`` logs ``eval_<prefix>/...``, which its TensorBoard writer files
    under ``eval/``)."""
    from lightning_noiseprobe.probe.engine import flat_metrics

    metrics = flat_metrics(entry["summary"], entry["by_length"], prefix)
    if entry["kind"] in ("transformers", "peft"):
        return {f"eval/{k}": v for k, v in metrics.items()}
    return metrics


def write_tensorboard(
    entries: Sequence[Mapping[str, Any]], folder: str | os.PathLike[str], prefix: str = "noiseprobe"
) -> Path:
    """Write each checkpoint's scalars (:func:`tensorboard_tags`) at its global step into one
    event file in ``folder`` (:data:`TENSORBOARD_FILE`, replaced as a whole; other files stay)."""
    from torch.utils.tensorboard import SummaryWriter

    from lightning_noiseprobe._io import atomic_dir

    folder = Path(folder)
    with atomic_dir(folder, owned=[TENSORBOARD_FILE]) as tmp:
        writer = SummaryWriter(log_dir=str(tmp / "events"))
        try:
            for entry in entries:
                for tag, value in tensorboard_tags(entry, prefix).items():
                    writer.add_scalar(tag, value, global_step=int(entry["step"]))
        finally:
            writer.close()
        (written,) = (tmp / "events").iterdir()
        written.rename(tmp / TENSORBOARD_FILE)
        (tmp / "events").rmdir()
    return folder / TENSORBOARD_FILE


# ----------------------------------------------------------------------------- compare
def format_compare_table(models: Sequence[Mapping[str, Any]], same_codec: bool) -> str:
    """The models as columns ``[1]``, ``[2]``, ... (named above the table), the summary
    metrics as rows, then what may be compared."""
    from lightning_noiseprobe.probe.result import SUMMARY_METRICS

    lines = [
        f"  [{i}] {m['model']} ({m['backend']}, codec {m['codec']})"
        for i, m in enumerate(models, 1)
    ]
    heads = [f"[{i}]" for i in range(1, len(models) + 1)]
    lines.append(f"  {'metric':<20}" + "".join(f"{h:>12}" for h in heads))
    for name in SUMMARY_METRICS:
        if any(name in m["summary"] for m in models):
            lines.append(
                f"  {name:<20}" + "".join(_cell(m["summary"].get(name), name, 12) for m in models)
            )
    lines.append(CODEC_NOTE)
    if same_codec:
        lines.append(_SAME_CODEC_NOTE)
    else:
        groups: dict[str, list[str]] = {}
        for head, m in zip(heads, models, strict=True):
            groups.setdefault(m["codec"], []).append(head)
        for group in (g for g in groups.values() if len(g) > 1):
            lines.append(
                f"{' and '.join(group)} share one codec: their absolute losses are comparable with each other."
            )
    return "\n".join(lines)


def compare_document(
    models: Sequence[Mapping[str, Any]],
    spec: Mapping[str, Any],
    clips: Sequence[str],
    skipped_clips: Sequence[Mapping[str, str]],
) -> dict[str, Any]:
    """The ``compare.json`` document (``models``: one entry per model)."""
    same = len({m["codec"] for m in models}) == 1
    return {
        "spec": dict(spec),
        "num_clips": len(clips),
        "clips": list(clips),
        "skipped_clips": list(skipped_clips),
        "same_codec": same,
        "note": CODEC_NOTE + (" " + _SAME_CODEC_NOTE if same else ""),
        "models": [{k: v for k, v in m.items() if k != "regions"} for m in models],
    }


def write_compare(
    document: Mapping[str, Any],
    regions: Sequence[Mapping[str, Sequence[float]]],
    out: str | os.PathLike[str],
    figures: bool = True,
    labels: Callable[[Sequence[str]], list[str]] | None = None,
) -> list[Path]:
    """Write ``compare.json``, ``compare.txt`` and (with ``figures``) the two figures into
    ``out``, all or nothing; ``regions``: per model, each region's per-item means."""
    from lightning_noiseprobe._io import atomic_dir, atomic_write_json, atomic_write_text
    from lightning_noiseprobe.posthoc.figures import compare_loss_vs_length, compare_regions

    out = Path(out)
    models = document["models"]
    names = ["compare.json", "compare.txt"]
    shown = (labels or short_labels)([m["model"] for m in models])
    with atomic_dir(out, owned=COMPARE_FILES) as tmp:
        atomic_write_json(tmp / "compare.json", document)
        atomic_write_text(
            tmp / "compare.txt", format_compare_table(models, document["same_codec"]) + "\n"
        )
        if figures:
            _save_figure(compare_loss_vs_length(models, shown), tmp / "compare_loss_vs_length.png")
            _save_figure(compare_regions(regions, shown), tmp / "compare_regions.png")
            names += ["compare_loss_vs_length.png", "compare_regions.png"]
    return [out / n for n in names]


def short_labels(models: Sequence[str]) -> list[str]:
    """Legend labels: each model's last path part, with more parts where two would collide.

    >>> short_labels(["tiny", "runs/a/checkpoint-4", "runs/b/checkpoint-4"])
    ['tiny', 'a/checkpoint-4', 'b/checkpoint-4']
    """
    parts = [Path(m.rstrip("/")).parts or (m,) for m in models]
    depth = [1] * len(models)
    while True:
        labels = ["/".join(p[-d:]) for p, d in zip(parts, depth, strict=True)]
        clash = [
            i for i, lab in enumerate(labels) if labels.count(lab) > 1 and depth[i] < len(parts[i])
        ]
        if not clash:
            return labels
        for i in clash:
            depth[i] += 1
