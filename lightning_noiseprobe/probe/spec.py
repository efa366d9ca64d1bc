"""What a probe set is made of: the perturbations applied to every clip."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

from lightning_noiseprobe._defaults import (  # re-exported: the spec's defaults
    DEFAULT_CLIP_SECONDS,
    DEFAULT_LEVEL_DBFS,
    DEFAULT_MODE,
    DEFAULT_NOISES,
    DEFAULT_ONSET,
    PAPER_LENGTHS,
)
from lightning_noiseprobe._errors import NoiseProbeError
from lightning_noiseprobe._hashing import derive_seed, hash_json

if TYPE_CHECKING:
    import torch

__all__ = [
    "DEFAULT_CLIP_SECONDS",
    "DEFAULT_LEVEL_DBFS",
    "DEFAULT_MODE",
    "DEFAULT_NOISES",
    "DEFAULT_ONSET",
    "INJECT_AT",
    "PAPER_LENGTHS",
    "PERTURBATION_KINDS",
    "Perturbation",
    "ProbeSpec",
]

#: Perturbation kinds: noise injection, segment shuffling, token deletion,
#: random variable-length reordering, frequency-band deletion.
PERTURBATION_KINDS = ("noise", "shuffle", "delete", "reorder", "bandstop")

#: Where the probe perturbs a clip: in the file's own rate and channels, then converts
#: to the model's (the paper's protocol), or after converting.
INJECT_AT = ("source", "model")


@dataclass(frozen=True)
class Perturbation:
    """One perturbation of a clip: the one model of a perturbation, with the one seed recipe
    (:meth:`seed`) and the one way to apply it (:meth:`apply`).

    ``group`` names the family it is aggregated in: the noise colour,
    ``shuffle<segment>``, ``delete``, ``reorder<min>-<max>`` or ``bandstop<low>-<high>``.
    ``length`` is the window in tokens; for ``delete`` it is the number of tokens
    removed at ``onset``. A :class:`ProbeSpec` lists its perturbations
    (:meth:`ProbeSpec.perturbations`) and applies them with its level, mode and seed
    (:meth:`ProbeSpec.perturb`); the fields themselves are validated there.

    Example:
        >>> import torch
        >>> pert = Perturbation("noise", onset=25, length=10, noise="pink")
        >>> clip = torch.zeros(1, 32000)
        >>> seed = pert.seed(0, "clip.wav")
        >>> out = pert.apply(clip, 32000, frame_rate=50.0, seed=seed, level_dbfs=-24.0)
        >>> torch.equal(out, pert.apply(clip, 32000, frame_rate=50.0, seed=seed, level_dbfs=-24.0))
        True
        >>> bool(out[:, :16000].eq(0).all()), bool(out[:, 16000:22400].ne(0).all())
        (True, True)
    """

    kind: str  # one of PERTURBATION_KINDS
    onset: int
    length: int
    noise: str = "white"
    segment: int = 0
    segment_range: tuple[int, int] = (0, 0)
    band: tuple[float, float] = (0.0, 0.0)

    def __post_init__(self) -> None:
        if self.kind not in PERTURBATION_KINDS:
            raise NoiseProbeError(
                f"Expected a perturbation kind in {list(PERTURBATION_KINDS)} but got {self.kind!r}."
            )

    @property
    def group(self) -> str:
        if self.kind == "noise":
            return self.noise
        if self.kind == "shuffle":
            return f"shuffle{self.segment}"
        if self.kind == "reorder":
            return f"reorder{self.segment_range[0]}-{self.segment_range[1]}"
        if self.kind == "bandstop":
            return f"bandstop{self.band[0]:g}-{self.band[1]:g}"
        return self.kind

    @property
    def key(self) -> str:
        """Stable identifier, used to derive this perturbation's seed."""
        if self.kind == "noise":
            return f"noise:{self.noise}:{self.onset}:{self.length}"
        if self.kind == "shuffle":
            return f"shuffle:{self.segment}:{self.onset}:{self.length}"
        if self.kind == "reorder":
            lo, hi = self.segment_range
            return f"reorder:{lo}-{hi}:{self.onset}:{self.length}"
        if self.kind == "bandstop":
            return f"bandstop:{self.band[0]:g}-{self.band[1]:g}:{self.onset}:{self.length}"
        return f"{self.kind}:{self.onset}:{self.length}"

    @property
    def removed(self) -> int:
        """Tokens the perturbation removes from the clip (a deletion's length, else 0)."""
        return self.length if self.kind == "delete" else 0

    @property
    def span(self) -> int:
        """The clean tokens it needs: ``onset + length``; for a deletion ``onset + 2 * length``
        (the removed tokens, then as many after the cut for the analysis window)."""
        return self.onset + self.length + self.removed

    def seed(self, base_seed: int, clip_id: str, *, nested: bool = False) -> int:
        """The seed of this perturbation of one clip: from the base seed, the clip's identity
        (its audio hash in a probe set) and :attr:`key`. ``nested`` (noise only): one seed per
        clip, colour and onset, shared by every length (see ``ProbeSpec.nested_noise``).

        >>> a = Perturbation("noise", 250, 5)
        >>> a.seed(0, "x") != Perturbation("noise", 250, 10).seed(0, "x")
        True
        >>> a.seed(0, "x", nested=True) == Perturbation("noise", 250, 10).seed(0, "x", nested=True)
        True
        """
        if nested and self.kind == "noise":
            return derive_seed(base_seed, clip_id, f"noise:{self.noise}:{self.onset}:nested")
        return derive_seed(base_seed, clip_id, self.key)

    def apply(
        self,
        wav: torch.Tensor,
        sample_rate: int,
        *,
        frame_rate: float = 50.0,
        seed: int = 0,
        level_dbfs: float = DEFAULT_LEVEL_DBFS,
        level_db_rel: float | None = None,
        mode: str = DEFAULT_MODE,
        nest_length: int | None = None,
    ) -> torch.Tensor:
        """Apply to ``wav`` (``[C, S]`` at ``sample_rate``); windows are tokens of ``frame_rate``
        mapped to samples (:func:`~lightning_noiseprobe.perturbations.inject.token_window_to_samples`).

        ``level_dbfs``, ``level_db_rel``, ``mode`` and ``nest_length`` concern noise only
        (see :func:`~lightning_noiseprobe.perturbations.inject.inject_noise`); deletions and
        band-stops use no seed. Returns a new tensor (shorter for a deletion).
        """
        from lightning_noiseprobe import perturbations as P

        onset, length, rate = self.onset, self.length, frame_rate
        if self.kind == "noise":
            return P.inject_noise(
                wav,
                sample_rate,
                onset=onset,
                length=length,
                frame_rate=rate,
                noise=self.noise,
                level_dbfs=level_dbfs,
                level_db_rel=level_db_rel,
                mode=mode,
                seed=seed,
                nest_length=nest_length,
            )
        if self.kind == "shuffle":
            return P.shuffle_segments(
                wav,
                sample_rate,
                onset=onset,
                length=length,
                segment=self.segment,
                frame_rate=rate,
                seed=seed,
            )[0]
        if self.kind == "delete":
            return P.delete_window(wav, sample_rate, onset=onset, length=length, frame_rate=rate)
        if self.kind == "reorder":
            lo, hi = self.segment_range
            return P.reorder_segments(
                wav,
                sample_rate,
                onset=onset,
                length=length,
                min_segment=lo,
                max_segment=hi,
                frame_rate=rate,
                seed=seed,
            )[0]
        low, high = self.band  # bandstop
        return P.bandstop_window(
            wav, sample_rate, onset=onset, length=length, low_hz=low, high_hz=high, frame_rate=rate
        )


@dataclass(frozen=True)
class ProbeSpec:
    """The perturbations of a probe set, and how curves are analysed.

    Defaults follow the paper and the authors' scripts: 15 s clips, onset at token
    250 (5 s), white noise replacing the window at -30 dBFS RMS per channel, lengths
    5/10/50/100/150/200 tokens, injected into each file at its own sample rate and
    channels before it is converted to the model's (``inject_at="source"``), with
    one noise draw per clip shared by every length (``nested_noise``).

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
        inject_at: ``"source"`` (default, the paper's protocol): perturb each clip at
            the file's own sample rate and channels (noise per channel), then mix down
            and resample to the model's; ``"model"``: convert first, then perturb.
            Windows are in model tokens either way and map to the same time
            (:func:`~lightning_noiseprobe.perturbations.inject.token_window_to_samples`
            at the rate where the perturbation runs). For a stereo file the model then
            hears the noise about 3 dB quieter than the nominal level (two independent
            channels averaged), as in the authors' scripts.
        nested_noise: (default) one noise draw per clip, colour and onset, coloured for
            the longest length: every shorter window is its start, up to the gain that
            sets the window's level exactly (the authors reuse one seed for every
            length). ``False`` draws independent noise per length.
        delete_lengths: token deletions: remove this many tokens' worth of audio at
            ``onset`` (the clip gets shorter; see
            :func:`~lightning_noiseprobe.functional.align.align_deleted`).
        reorder_lengths: windows (tokens from ``onset``) cut into segments of random
            lengths in ``reorder_segment`` and randomly reordered.
        reorder_segment: ``(min, max)`` segment length of the reorderings, in tokens.
        bandstop_lengths: windows (tokens from ``onset``) where ``bandstop_band`` is
            deleted with a brick-wall band-stop.
        bandstop_band: ``(low_hz, high_hz)`` band of the band-stops (default the
            authors' 2000-20000 Hz; cut at the Nyquist frequency).

    Example:
        >>> spec = ProbeSpec(lengths=(5, 100), noises=("white", "pink"))
        >>> [p.key for p in spec.perturbations()]
        ['noise:white:250:5', 'noise:white:250:100', 'noise:pink:250:5', 'noise:pink:250:100']
        >>> spec.max_window_end
        350
    """

    onset: int = DEFAULT_ONSET
    lengths: tuple[int, ...] = PAPER_LENGTHS
    noises: tuple[str, ...] = DEFAULT_NOISES
    level_dbfs: float = DEFAULT_LEVEL_DBFS
    level_db_rel: float | None = None
    mode: str = DEFAULT_MODE
    shuffle_segments: tuple[int, ...] = field(default=())
    shuffle_length: int = 200
    clip_seconds: float = DEFAULT_CLIP_SECONDS
    seed: int = 0
    smoothing: int = 5
    margin: int = 5
    regions: str = "default"
    inject_at: str = "source"
    nested_noise: bool = True
    delete_lengths: tuple[int, ...] = field(default=())
    reorder_lengths: tuple[int, ...] = field(default=())
    reorder_segment: tuple[int, int] = (5, 50)
    bandstop_lengths: tuple[int, ...] = field(default=())
    bandstop_band: tuple[float, float] = (2000.0, 20000.0)

    def __post_init__(self) -> None:
        from lightning_noiseprobe.functional.curves import check_region_settings
        from lightning_noiseprobe.perturbations.noise import check_noise_color

        # accept lists (YAML / LightningCLI) but store tuples so the spec stays hashable
        for name in (
            "lengths",
            "noises",
            "shuffle_segments",
            "delete_lengths",
            "reorder_lengths",
            "reorder_segment",
            "bandstop_lengths",
            "bandstop_band",
        ):
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
        lists = ("lengths", "shuffle_segments", "delete_lengths", "reorder_lengths")
        if not any(getattr(self, name) for name in (*lists, "bandstop_lengths")):
            raise NoiseProbeError(
                "Expected at least one perturbation (`lengths`, `shuffle_segments`,"
                " `delete_lengths`, `reorder_lengths` or `bandstop_lengths`) but got none."
            )
        for name in ("lengths", "delete_lengths", "reorder_lengths", "bandstop_lengths"):
            for length in getattr(self, name):
                if isinstance(length, bool) or not isinstance(length, int) or length <= 0:
                    raise NoiseProbeError(
                        f"Expected argument `{name}` to hold positive integers but got {length!r}."
                    )
        if self.inject_at not in INJECT_AT:
            raise NoiseProbeError(
                f"Expected argument `inject_at` to be one of {list(INJECT_AT)} but got {self.inject_at!r}."
            )
        if not isinstance(self.nested_noise, bool):
            raise NoiseProbeError(
                f"Expected argument `nested_noise` to be True or False but got {self.nested_noise!r}."
            )
        rseg = self.reorder_segment
        if (
            len(rseg) != 2
            or any(isinstance(v, bool) or not isinstance(v, int) for v in rseg)
            or not 1 <= rseg[0] <= rseg[1]
        ):
            raise NoiseProbeError(
                f"Expected argument `reorder_segment` to be (min, max) whole tokens with 1 <= min <= max but got {rseg!r}."
            )
        for window in self.reorder_lengths:
            if window <= rseg[1]:
                raise NoiseProbeError(
                    f"Expected `reorder_lengths` to be longer than the largest segment {rseg[1]}"
                    f" (reorder_segment={rseg}), so that each window holds 2 segments, but got {window}."
                )
        band = self.bandstop_band
        if (
            len(band) != 2
            or any(
                isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v)
                for v in band
            )
            or not 0 <= band[0] < band[1]
        ):
            raise NoiseProbeError(
                f"Expected argument `bandstop_band` to be (low_hz, high_hz) with 0 <= low_hz < high_hz but got {band!r}."
            )
        object.__setattr__(self, "bandstop_band", (float(band[0]), float(band[1])))
        for name in (
            "lengths",
            "noises",
            "shuffle_segments",
            "delete_lengths",
            "reorder_lengths",
            "bandstop_lengths",
        ):
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
        """Every perturbation: noises (by colour, then length), shuffles, deletions,
        reorderings, band-stops."""
        out = [
            Perturbation("noise", self.onset, length, noise=noise)
            for noise in self.noises
            for length in self.lengths
        ]
        out += [
            Perturbation("shuffle", self.onset, self.shuffle_length, segment=seg)
            for seg in self.shuffle_segments
        ]
        out += [Perturbation("delete", self.onset, n) for n in self.delete_lengths]
        out += [
            Perturbation("reorder", self.onset, n, segment_range=self.reorder_segment)
            for n in self.reorder_lengths
        ]
        out += [
            Perturbation("bandstop", self.onset, n, band=self.bandstop_band)
            for n in self.bandstop_lengths
        ]
        return out

    @classmethod
    def field_defaults(cls) -> dict[str, Any]:
        """``{field: default}`` of every field, in declaration order (the per-field keyword
        arguments of :class:`~lightning_noiseprobe.callback.NoiseProbeCallback` and
        :class:`~lightning_noiseprobe.probe.engine.NoiseProber`)."""
        return {f.name: f.default for f in fields(cls)}

    @classmethod
    def resolve(cls, spec: ProbeSpec | None = None, **fields: Any) -> ProbeSpec:
        """The spec of a caller taking either ``spec=`` or per-field arguments.

        ``spec`` is returned as it is when every field argument is at its default
        (the caller's signature passes them all); a field given a different value too
        is refused rather than silently ignored. Without ``spec`` the fields build one.

        >>> ProbeSpec.resolve(onset=100).onset
        100
        >>> ProbeSpec.resolve(ProbeSpec(onset=100), onset=250).onset  # onset at its default
        100
        >>> ProbeSpec.resolve(ProbeSpec(), onset=100)
        Traceback (most recent call last):
        ...
        lightning_noiseprobe._errors.NoiseProbeError: Pass either spec= or per-field arguments, not both; got spec and onset=100. Put the fields in the spec (dataclasses.replace(spec, ...)).
        """
        defaults = cls.field_defaults()
        unknown = sorted(set(fields) - set(defaults))
        if unknown:
            raise NoiseProbeError(
                f"Expected ProbeSpec fields ({', '.join(defaults)}) but got {', '.join(unknown)}."
            )
        if spec is None:
            return cls(**fields)
        if not isinstance(spec, ProbeSpec):
            raise NoiseProbeError(
                f"Expected argument `spec` to be a ProbeSpec or None but got {type(spec).__name__}."
            )

        def norm(v: Any) -> Any:
            return tuple(v) if isinstance(v, list) else v

        changed = [f"{k}={v!r}" for k, v in fields.items() if norm(v) != norm(defaults[k])]
        if changed:
            raise NoiseProbeError(
                "Pass either spec= or per-field arguments, not both; got spec and"
                f" {', '.join(changed)}. Put the fields in the spec (dataclasses.replace(spec, ...))."
            )
        return spec

    def perturb(
        self,
        wav: torch.Tensor,
        sample_rate: int,
        frame_rate: float,
        pert: Perturbation,
        clip_id: str,
    ) -> torch.Tensor:
        """Apply ``pert`` to a clip ``[C, S]`` at ``sample_rate`` with this spec's level, mode,
        nesting and seed (:meth:`Perturbation.seed` of :attr:`seed` and ``clip_id``).

        The seed depends on the spec's seed, the clip's identity and the perturbation only
        (for nested noise: its colour and onset, not its length), so any process can
        recreate the exact perturbed audio.
        """
        nest = self.nest_length(pert)
        return pert.apply(
            wav,
            sample_rate,
            frame_rate=frame_rate,
            seed=pert.seed(self.seed, clip_id, nested=nest is not None),
            level_dbfs=self.level_dbfs,
            level_db_rel=self.level_db_rel,
            mode=self.mode,
            nest_length=nest,
        )

    def nest_length(self, pert: Perturbation) -> int | None:
        """The length the noise of ``pert`` is drawn for: the longest of ``lengths`` when
        ``nested_noise``, else ``None`` (its own window)."""
        if pert.kind != "noise" or not self.nested_noise:
            return None
        return max(self.lengths)

    @property
    def max_window_end(self) -> int:
        """The clean tokens the perturbations need: the largest ``onset + length``
        (``onset + 2 * length`` for a deletion: see :attr:`Perturbation.span`)."""
        return max(p.span for p in self.perturbations())

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
        """The spec of a :meth:`to_dict`; a dict written before ``inject_at`` existed
        describes the protocol of that time (``inject_at="model"``, independent noise)."""
        data = dict(data)
        if "inject_at" not in data:
            data.setdefault("nested_noise", False)
            data["inject_at"] = "model"
        return cls(**data)

    def tokenization_key(self) -> dict[str, Any]:
        """The fields that change the perturbed audio (and so the cached codes): all but
        the analysis settings ``smoothing``, ``margin`` and ``regions``."""
        data = self.to_dict()
        for name in ("smoothing", "margin", "regions"):
            data.pop(name, None)
        return data

    def hash(self) -> str:
        """Short stable hash of the whole spec (stored in callback checkpoints)."""
        return hash_json(self.to_dict())[:16]
