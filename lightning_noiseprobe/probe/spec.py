"""What a probe set is made of: the perturbations applied to every clip."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from lightning_noiseprobe._errors import NoiseProbeError
from lightning_noiseprobe._hashing import hash_json

__all__ = ["PAPER_LENGTHS", "Perturbation", "ProbeSpec"]

#: Injection lengths of the paper's protocol, in tokens (0.1 ... 4.0 s at 50 Hz).
PAPER_LENGTHS = (5, 10, 50, 100, 150, 200)


@dataclass(frozen=True)
class Perturbation:
    """One perturbation of a clip: noise injection or order shuffling.

    ``group`` names the family it is aggregated in: the noise colour, or
    ``shuffle<segment>`` for order shuffling.
    """

    kind: str  # "noise" | "shuffle"
    onset: int
    length: int
    noise: str = "white"
    segment: int = 0

    @property
    def group(self) -> str:
        return self.noise if self.kind == "noise" else f"shuffle{self.segment}"

    @property
    def key(self) -> str:
        """Stable identifier, used to derive this perturbation's seed."""
        if self.kind == "noise":
            return f"noise:{self.noise}:{self.onset}:{self.length}"
        return f"shuffle:{self.segment}:{self.onset}:{self.length}"


@dataclass(frozen=True)
class ProbeSpec:
    """The perturbations of a probe set, and how curves are analysed.

    Defaults follow the paper: 15 s clips, onset at token 250 (5 s), white noise
    replacing the window at -30 dBFS RMS, lengths 5/10/50/100/150/200 tokens.

    Args:
        onset: injection onset in tokens.
        lengths: injection lengths in tokens.
        noises: noise colours (``white``, ``pink``, ``blue``, ``brown``, ``violet``).
        level_dbfs: noise RMS in dBFS (ignored when ``level_db_rel`` is set).
        level_db_rel: noise RMS relative to each clip's RMS, in dB.
        mode: ``"replace"`` (paper Eq. 2) or ``"add"``.
        shuffle_segments: segment sizes (tokens) for order-shuffling perturbations
            of the window ``[onset, onset + shuffle_length)``; empty for none.
        shuffle_length: window length of the shuffles, in tokens.
        clip_seconds: clips are cropped to this duration.
        seed: base seed; each clip x perturbation derives its own.
        smoothing, margin: region detection settings (see ``functional.curves``).
        regions: region rule, ``"default"`` or ``"authors"`` (the paper's own code,
            :func:`~lightning_noiseprobe.functional.curves.authors_regions`; needs
            ``onset >= 51``). Analysis only: it is left out of :meth:`to_dict` (and so
            of :meth:`hash`) when ``"default"``, and never changes the token cache.

    Example:
        >>> spec = ProbeSpec(lengths=(5, 100), noises=("white", "pink"))
        >>> [p.key for p in spec.perturbations()]
        ['noise:white:250:5', 'noise:white:250:100', 'noise:pink:250:5', 'noise:pink:250:100']
        >>> spec.max_window_end
        350
    """

    onset: int = 250
    lengths: tuple[int, ...] = PAPER_LENGTHS
    noises: tuple[str, ...] = ("white",)
    level_dbfs: float = -30.0
    level_db_rel: float | None = None
    mode: str = "replace"
    shuffle_segments: tuple[int, ...] = field(default=())
    shuffle_length: int = 200
    clip_seconds: float = 15.0
    seed: int = 0
    smoothing: int = 5
    margin: int = 5
    regions: str = "default"

    def __post_init__(self) -> None:
        from lightning_noiseprobe.functional.curves import check_region_settings
        from lightning_noiseprobe.perturbations.noise import check_noise_color

        # accept lists (YAML / LightningCLI) but store tuples so the spec stays hashable
        for name in ("lengths", "noises", "shuffle_segments"):
            value = getattr(self, name)
            if isinstance(value, str) or not isinstance(value, Sequence):
                raise NoiseProbeError(
                    f"Expected argument `{name}` to be a sequence but got {value!r}."
                )
            object.__setattr__(self, name, tuple(value))
        if not isinstance(self.onset, int) or self.onset < 2:
            raise NoiseProbeError(
                f"Expected argument `onset` to be an integer >= 2 tokens (peak sharpness needs clean tokens before it) but got {self.onset!r}."
            )
        if not self.lengths and not self.shuffle_segments:
            raise NoiseProbeError(
                "Expected at least one of `lengths` or `shuffle_segments` but got neither."
            )
        for length in self.lengths:
            if not isinstance(length, int) or length <= 0:
                raise NoiseProbeError(
                    f"Expected argument `lengths` to hold positive integers but got {length!r}."
                )
        for name in ("lengths", "noises", "shuffle_segments"):
            values = getattr(self, name)
            repeated = sorted({v for v in values if values.count(v) > 1}, key=str)
            if repeated:
                raise NoiseProbeError(
                    f"Expected argument `{name}` to hold distinct values but got {list(values)}"
                    f" ({', '.join(map(str, repeated))} repeated)."
                )
        if self.lengths and not self.noises:
            raise NoiseProbeError("Expected at least one noise colour in `noises` but got none.")
        for noise in self.noises:
            check_noise_color(noise, "noises")
        if self.mode not in ("replace", "add"):
            raise NoiseProbeError(
                f"Expected argument `mode` to be 'replace' or 'add' but got {self.mode!r}."
            )
        for seg in self.shuffle_segments:
            if not isinstance(seg, int) or seg <= 0 or 2 * seg > self.shuffle_length:
                raise NoiseProbeError(
                    f"Expected argument `shuffle_segments` to hold positive integers of at most half of"
                    f" the shuffle window ({self.shuffle_length} tokens) but got {seg!r}."
                )
        from lightning_noiseprobe.functional.curves import AUTHORS_MIN_ONSET, REGION_RULES

        if self.regions not in REGION_RULES:
            raise NoiseProbeError(
                f"Expected argument `regions` to be one of {list(REGION_RULES)} but got {self.regions!r}."
            )
        if self.regions == "authors" and self.onset < AUTHORS_MIN_ONSET:
            raise NoiseProbeError(
                f"Expected `onset` to be at least {AUTHORS_MIN_ONSET} tokens for regions='authors'"
                f" (their baseline is the mean difference over the first onset - 50 tokens) but got {self.onset}."
            )
        if not (math.isfinite(self.clip_seconds) and self.clip_seconds > 0):
            raise NoiseProbeError(
                f"Expected argument `clip_seconds` to be a positive number but got {self.clip_seconds!r}."
            )
        if not math.isfinite(self.level_dbfs) or (
            self.level_db_rel is not None and not math.isfinite(self.level_db_rel)
        ):
            bad = "level_dbfs" if not math.isfinite(self.level_dbfs) else "level_db_rel"
            raise NoiseProbeError(
                f"Expected argument `{bad}` to be a finite level in dB but got {getattr(self, bad)!r}."
            )
        check_region_settings(self.smoothing, self.margin)

    def perturbations(self) -> list[Perturbation]:
        """Every perturbation, noises first (by colour, then length), then shuffles."""
        out = [
            Perturbation("noise", self.onset, length, noise=noise)
            for noise in self.noises
            for length in self.lengths
        ]
        out += [
            Perturbation("shuffle", self.onset, self.shuffle_length, segment=seg)
            for seg in self.shuffle_segments
        ]
        return out

    @property
    def max_window_end(self) -> int:
        """The largest ``onset + length`` over all perturbations, in tokens."""
        return max(p.onset + p.length for p in self.perturbations())

    @property
    def min_tokens(self) -> int:
        """Tokens a clip needs: the largest window end plus the detection margin."""
        return self.max_window_end + self.margin

    def min_clip_seconds(self, frame_rate: float) -> float:
        """The shortest usable clip, in seconds, at the model's ``frame_rate``.

        >>> ProbeSpec().min_clip_seconds(50.0)  # onset 250 + length 200 + margin 5 tokens
        9.1
        """
        return self.min_tokens / float(frame_rate)

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-able dict; ``regions`` only when not ``"default"``, so
        the hash of a spec written before that field existed stays the same."""
        data = asdict(self)
        if data["regions"] == "default":
            del data["regions"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProbeSpec:
        return cls(**data)

    def tokenization_key(self) -> dict[str, Any]:
        """The fields that change the perturbed audio (and so the cached codes)."""
        data = self.to_dict()
        for name in ("smoothing", "margin", "regions"):
            data.pop(name, None)
        return data

    def hash(self) -> str:
        """Short stable hash of the whole spec (stored in callback checkpoints)."""
        return hash_json(self.to_dict())[:16]
