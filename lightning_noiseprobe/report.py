"""Writing a probe's result to a folder: ``metrics.json``, ``curves.npz`` and the paper's figures.

The one module that knows both the data (:class:`~lightning_noiseprobe.probe.result.ProbeResult`)
and the figures (:mod:`lightning_noiseprobe.plots`), so neither imports the other.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lightning_noiseprobe.probe.result import ProbeResult

__all__ = ["DATA_FILES", "FIGURE_FILES", "OUTPUT_FILES", "save_result"]

#: The data files of a saved result.
DATA_FILES = ("metrics.json", "curves.npz")
#: The figures :func:`save_result` draws (paper Figs. 2-4), with the :mod:`~lightning_noiseprobe.plots`
#: function that draws each one.
_FIGURES = (
    ("fig2_loss_vs_length.png", "loss_vs_length"),
    ("fig3_loss_curves.png", "loss_curves"),
    ("fig4_regions.png", "region_distributions"),
)
FIGURE_FILES = tuple(name for name, _ in _FIGURES)
#: Every file :func:`save_result` writes; a new save replaces all of them.
OUTPUT_FILES = (*DATA_FILES, *FIGURE_FILES)


def save_result(
    result: ProbeResult, out_dir: str | os.PathLike[str], figures: bool = True
) -> list[Path]:
    """Write ``metrics.json``, ``curves.npz`` and (optionally) the three figures of ``result``.

    All or nothing: the set is written into a temporary folder and moved into
    ``out_dir`` at the end (see :func:`lightning_noiseprobe._io.atomic_dir`).
    On a failure ``out_dir`` keeps its previous contents; on success the new
    set replaces the files of :data:`OUTPUT_FILES` there (figures of an
    earlier run are deleted when ``figures=False``), and other files in
    ``out_dir`` are left alone. Returns the written paths.
    """
    from lightning_noiseprobe._io import atomic_dir

    out = Path(out_dir)
    with atomic_dir(out, owned=OUTPUT_FILES) as tmp:
        names = _write(result, tmp, figures)
    return [out / name for name in names]


def _write(result: ProbeResult, folder: Path, figures: bool) -> list[str]:
    import numpy as np

    from lightning_noiseprobe._io import atomic_write_json

    atomic_write_json(folder / "metrics.json", result.to_json())
    with open(folder / "curves.npz", "wb") as fh:  # inside atomic_dir's temporary folder
        np.savez_compressed(fh, **result.to_arrays())
    names = list(DATA_FILES)
    if figures:
        from lightning_noiseprobe import plots

        for name, function in _FIGURES:
            fig = getattr(plots, function)(result)
            try:
                fig.savefig(folder / name, dpi=110, bbox_inches="tight", format="png")
            finally:
                plots.close(fig)
            names.append(name)
    return names
