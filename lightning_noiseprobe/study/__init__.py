"""Controlled studies of what the probe measures, run on the demo's tiny model and chorales.

* :func:`run_contamination_study` (``noiseprobe study contamination``): train on
  chorales of which a known fraction carry white-noise bursts; compare how
  validation CE (own and clean validation sets) and the probe's metrics follow
  the contamination level, with effect sizes across seeds.
* :func:`run_overfit_study` (``noiseprobe study overfit``): train a small subset
  past its best validation CE; compare the epochs that ``val/ce``,
  ``peak_sharpness`` and ``delta_loss`` monitors would keep.

Importing this package is cheap; the names below load their modules on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "run_contamination_study": "lightning_noiseprobe.study.contamination",
    "run_overfit_study": "lightning_noiseprobe.study.overfit",
    "summarize_runs": "lightning_noiseprobe.study.stats",
    "summarize_overfit": "lightning_noiseprobe.study.stats",
}

__all__ = ["run_contamination_study", "run_overfit_study", "summarize_overfit", "summarize_runs"]

if TYPE_CHECKING:
    from lightning_noiseprobe.study.contamination import run_contamination_study
    from lightning_noiseprobe.study.overfit import run_overfit_study
    from lightning_noiseprobe.study.stats import summarize_overfit, summarize_runs


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lightning_noiseprobe.study' has no attribute {name!r}")
