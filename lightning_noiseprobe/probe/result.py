"""The result of one probe: per-token curves, regions and metrics.

A plain data class: :func:`lightning_noiseprobe.report.save_result` writes it to a
folder (with the figures of :mod:`lightning_noiseprobe.plots`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from lightning_noiseprobe.functional.aggregate import group_stats, summarize
from lightning_noiseprobe.functional.curves import EMPTY_COUNT_NAMES, METRIC_NAMES, CurveAnalysis

if TYPE_CHECKING:
    from lightning_noiseprobe.probe.probeset import ProbeSet

__all__ = ["SUMMARY_METRICS", "ProbeResult"]

#: The headline metrics (``summary`` of ``metrics.json``; logged as ``noiseprobe/<name>``).
SUMMARY_METRICS = (
    "clean_loss",
    "delta_loss",
    "peak_mean",
    "peak_sharpness",
    "peak_area",
    "peak_height",
    "peak_width",
    "assimilation_mean",
    "recovery_mean",
    "recovery_std",
    "peak_empty",
    "assimilation_empty",
    "recovery_empty",
    "length_pearson",
    "length_spearman",
    "length_slope",
)


@dataclass
class ProbeResult:
    """Curves and metrics of a probe set scored by one model.

    Tensors are on the CPU, float32; ``N`` clips, ``P`` perturbations,
    ``K`` codebooks, ``T`` tokens.

    Attributes:
        clean: ``[N, T]`` codebook-averaged clean per-token loss.
        perturbed: ``[N, P, T]`` codebook-averaged perturbed per-token loss.
        clean_per_codebook: ``[N, K, T]``; perturbed_per_codebook: ``[N, P, K, T]``.
        valid: ``[N, T]`` bool.
        pair_clean: ``[N, P, T]`` each copy's clean counterpart on the copy's timeline
            (:func:`~lightning_noiseprobe.functional.align.align_deleted`: re-indexed
            for deletions, else ``clean``); pair_valid: ``[N, P, T]`` tokens compared.
        analysis: :class:`CurveAnalysis` of batch shape ``[N, P]``.
        summary: headline metrics (finite values only): means over clips x
            perturbations, which leave out empty regions, and next to them the
            number of clips x perturbations whose region was empty
            (``peak_empty``, ``assimilation_empty``, ``recovery_empty``).
        by_length: ``{group: {length: {metric: {"mean", "std", "n"}}}}``.
    """

    clip_names: list[str]
    perturbations: list[Any]
    clean: torch.Tensor
    perturbed: torch.Tensor
    clean_per_codebook: torch.Tensor
    perturbed_per_codebook: torch.Tensor
    valid: torch.Tensor
    analysis: CurveAnalysis
    summary: dict[str, float]
    by_length: dict[str, Any]
    spec: dict[str, Any]
    skipped: list[dict[str, str]] = field(default_factory=list)
    model_name: str | None = None
    backend_info: dict[str, Any] = field(default_factory=dict)
    pair_clean: torch.Tensor | None = None
    pair_valid: torch.Tensor | None = None
    #: per clip: ``{"conditioning": one of CONDITIONINGS, "description": text or None}``
    conditioning: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def build(
        cls,
        *,
        probe_set: ProbeSet,
        clean: torch.Tensor,
        perturbed: torch.Tensor,
        clean_per_codebook: torch.Tensor,
        perturbed_per_codebook: torch.Tensor,
        valid: torch.Tensor,
        analysis: CurveAnalysis,
        model_name: str | None = None,
        backend_info: dict[str, Any] | None = None,
        pair_clean: torch.Tensor | None = None,
        pair_valid: torch.Tensor | None = None,
    ) -> ProbeResult:
        metrics = analysis.metrics()
        keys = [(p.group, p.length) for _ in probe_set.clips for p in probe_set.perturbations]
        flat = {k: v.reshape(-1) for k, v in metrics.items()}
        lengths = torch.tensor([length for _, length in keys], dtype=torch.float32)
        noise_items = torch.tensor(
            [p.kind == "noise" for _ in probe_set.clips for p in probe_set.perturbations]
        )
        summary = summarize(flat)
        # region means skip empty regions (NaN): say how many were skipped
        summary.update({k: float(v) for k, v in analysis.empty_counts().items()})
        # Fig. 2's length test is about noise injections, not shuffles
        if bool(noise_items.any()):
            corr = summarize({"delta_loss": flat["delta_loss"][noise_items]}, lengths[noise_items])
            summary.update({k: v for k, v in corr.items() if k.startswith("length_")})
        return cls(
            clip_names=[c.name for c in probe_set.clips],
            perturbations=list(probe_set.perturbations),
            clean=clean,
            perturbed=perturbed,
            clean_per_codebook=clean_per_codebook,
            perturbed_per_codebook=perturbed_per_codebook,
            valid=valid,
            analysis=analysis,
            summary=summary,
            by_length=group_stats(flat, keys),
            spec=probe_set.spec.to_dict(),
            skipped=list(probe_set.skipped),
            model_name=model_name,
            backend_info=dict(backend_info or {}),
            pair_clean=pair_clean,
            pair_valid=pair_valid,
            conditioning=[
                {"conditioning": c.conditioning, "description": c.description}
                for c in probe_set.clips
            ],
        )

    # ------------------------------------------------------------------ views
    def clip_records(self) -> list[dict[str, Any]]:
        """One record per clip x perturbation, as in ``metrics.json``'s ``clips``."""
        records = self.analysis.to_records()
        out: list[dict[str, Any]] = []
        P = len(self.perturbations)
        for i, rec in enumerate(records):
            clip, pert = self.clip_names[i // P], self.perturbations[i % P]
            entry: dict[str, Any] = {
                "path": clip,
                "kind": pert.kind,
                "noise": pert.group,
                "length": pert.length,
                "onset": pert.onset,
            }
            if pert.kind == "shuffle":
                entry["segment"] = pert.segment
            elif pert.kind == "reorder":
                entry["segment_range"] = list(pert.segment_range)
            elif pert.kind == "bandstop":
                entry["band_hz"] = list(pert.band)
            if self.conditioning:
                entry.update(self.conditioning[i // P])
            entry.update(rec)
            out.append(entry)
        return out

    def to_json(self) -> dict[str, Any]:
        """The ``metrics.json`` document (no NaN: missing values are ``null`` or left out)."""
        return {
            "model": self.model_name,
            "backend": self.backend_info,
            "spec": self.spec,
            "num_clips": len(self.clip_names),
            "conditioning": {
                how: sum(c["conditioning"] == how for c in self.conditioning)
                for how in sorted({c["conditioning"] for c in self.conditioning})
            },
            "summary": {k: self.summary[k] for k in SUMMARY_METRICS if k in self.summary}
            | {k: v for k, v in self.summary.items() if k.endswith("_p")},
            "by_length": {
                g: {str(length): v for length, v in d.items()} for g, d in self.by_length.items()
            },
            "clips": self.clip_records(),
            "skipped": self.skipped,
        }

    def mean_curves(self) -> dict[str, torch.Tensor]:
        """Means over clips: ``clean [T]`` and ``valid [T]``; per perturbation, on its own
        timeline, ``pair_clean [P, T]`` (the aligned clean curve), ``perturbed [P, T]``,
        ``delta [P, T]`` and ``pair_valid [P, T]``."""
        v = self.valid.float()
        clean = (self.clean * v).sum(0) / v.sum(0).clamp_min(1)
        if self.pair_clean is None or self.pair_valid is None:
            pair_clean = self.clean[:, None].expand_as(self.perturbed)
            pv = v[:, None].expand_as(self.perturbed)
        else:
            pair_clean, pv = self.pair_clean, self.pair_valid.float()
        count = pv.sum(0).clamp_min(1)
        mean_pair = (pair_clean * pv).sum(0) / count
        pert = (self.perturbed * pv).sum(0) / count
        return {
            "clean": clean,
            "valid": v.sum(0) > 0,
            "pair_clean": mean_pair,
            "perturbed": pert,
            "delta": pert - mean_pair,
            "pair_valid": pv.sum(0) > 0,
        }

    def to_arrays(self) -> dict[str, Any]:
        """The ``curves.npz`` arrays by name (numpy): curves, masks, the analysis and
        its per-clip metrics (``metric_<name>``)."""
        import numpy as np

        arrays: dict[str, Any] = {
            "clips": np.array(self.clip_names),
            "perturbations": np.array([p.key for p in self.perturbations]),
            "clean": self.clean.numpy(),
            "perturbed": self.perturbed.numpy(),
            "clean_per_codebook": self.clean_per_codebook.numpy(),
            "perturbed_per_codebook": self.perturbed_per_codebook.numpy(),
            "valid": self.valid.numpy(),
            "delta": self.analysis.delta.numpy(),
            "smoothed": self.analysis.smoothed.numpy(),
            "start": self.analysis.start.numpy(),
            "regions": self.analysis.regions.numpy(),
        }
        if self.pair_clean is not None and self.pair_valid is not None:
            arrays["pair_clean"] = self.pair_clean.numpy()
            arrays["pair_valid"] = self.pair_valid.numpy()
        arrays.update({f"metric_{k}": v.numpy() for k, v in self.analysis.metrics().items()})
        return arrays


assert set(SUMMARY_METRICS) - {"length_pearson", "length_spearman", "length_slope"} <= set(
    METRIC_NAMES
) | set(EMPTY_COUNT_NAMES)
