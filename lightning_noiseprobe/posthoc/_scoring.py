"""What ``sweep`` and ``compare`` share: one probe set per codec, and scoring as ``probe`` scores."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lightning_noiseprobe.backends.base import ProbeBackend
    from lightning_noiseprobe.probe.probeset import ProbeSet
    from lightning_noiseprobe.probe.result import ProbeResult
    from lightning_noiseprobe.probe.spec import ProbeSpec

__all__ = ["ProbeSets"]


@dataclass
class ProbeSets:
    """The probe set of each codec, tokenized when a model with that codec first needs it
    (:func:`~lightning_noiseprobe.probe.build_probe_set`), and the scoring settings
    (:func:`~lightning_noiseprobe.probe.score_probe_set`), as ``noiseprobe probe`` uses them.

    Attributes:
        note: called with what a user should see (a codec tokenized in addition).
        seconds: wall time spent tokenizing and scoring.
    """

    audio: Sequence[str]
    spec: ProbeSpec
    descriptions: str | None = None
    unconditional: bool = False
    batch_size: int = 8
    precision: str = "32"
    device: str = "cpu"
    cache_dir: Path | None = None
    strict: bool = False
    progress: bool = False
    note: Callable[[str], None] = print
    seconds: dict[str, float] = field(default_factory=lambda: {"tokenize": 0.0, "score": 0.0})
    _sets: dict[str, ProbeSet] = field(default_factory=dict)

    @property
    def tokenized(self) -> int:
        """How many probe sets were tokenized (one per codec)."""
        return len(self._sets)

    def probe_set(self, backend: ProbeBackend, new_codec: str = "") -> tuple[ProbeSet, str]:
        """The probe set of ``backend``'s codec and the codec's hash; before a codec other than
        the first is tokenized, ``new_codec`` goes to :attr:`note`."""
        from lightning_noiseprobe.probe import build_probe_set

        codec = backend.codec_fingerprint()
        if codec not in self._sets:
            if self._sets and new_codec:
                self.note(new_codec)
            started = time.perf_counter()
            self._sets[codec] = build_probe_set(
                backend,
                list(self.audio),
                self.spec,
                descriptions=self.descriptions,
                unconditional=self.unconditional,
                cache_dir=self.cache_dir,
                strict=self.strict,
                progress=self.progress and not self._sets,
            )
            self.seconds["tokenize"] += time.perf_counter() - started
        return self._sets[codec], codec

    def score(self, backend: ProbeBackend, probe_set: ProbeSet, name: str) -> ProbeResult:
        """``probe_set`` scored by ``backend`` (``name``: the model's name in the result)."""
        from lightning_noiseprobe.probe import score_probe_set

        started = time.perf_counter()
        result = score_probe_set(
            backend,
            probe_set,
            batch_size=self.batch_size,
            precision=self.precision,
            device=self.device,
            model_name=name,
        )
        self.seconds["score"] += time.perf_counter() - started
        return result

    @staticmethod
    def fields(result: ProbeResult, codec: str) -> dict[str, Any]:
        """A result's entry in ``sweep.json`` / ``compare.json``: ``codec`` (short hash),
        ``summary`` and ``by_length``, as ``metrics.json`` writes them."""
        scored = result.to_json()
        return {"codec": codec[:16], "summary": scored["summary"], "by_length": scored["by_length"]}
