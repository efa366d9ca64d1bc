"""Probe sets: clips x perturbations, tokenized once with the frozen codec.

Because the codec is frozen while the LM fine-tunes, a probe set is encoded
once and cached (in memory, and on disk keyed by a hash of the audio, the
spec and the codec weights), so repeated probing costs only LM forward passes.

The disk cache never harms a run: an entry is used only if it loads and
passes validation (shapes, dtype, codes within the codec's cardinality, and
the SHA-256 checksum stored with it); otherwise it is rebuilt with a warning
naming the file and the problem, and overwritten atomically. A cache folder
that cannot be written (read-only, or under a file) is reported once and the
run goes on without writing to it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lightning_noiseprobe._errors import NoiseProbeError
from lightning_noiseprobe._hashing import derive_seed, hash_json, hash_tensor
from lightning_noiseprobe.probe.spec import Perturbation, ProbeSpec

if TYPE_CHECKING:
    from lightning_noiseprobe.backends.base import ProbeBackend

__all__ = [
    "AUDIO_EXTENSIONS",
    "CONDITIONINGS",
    "PreparedClip",
    "ProbeClip",
    "ProbeSet",
    "build_probe_set",
    "clear_memory_cache",
    "default_cache_dir",
    "find_audio_files",
    "perturb_clip",
    "prepare_clip",
]

log = logging.getLogger(__name__)

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".opus", ".m4a", ".aiff", ".aif")

AudioSource = (
    str
    | os.PathLike[str]
    | Sequence[str | os.PathLike[str]]
    | Sequence[tuple[str, torch.Tensor, int]]
)

#: How a clip was conditioned when scored: ``"sidecar"`` (text of its ``.json``
#: sidecar), ``"given"`` (text passed as ``descriptions`` / ``--description``) or
#: ``"unconditional"`` (no text: asked for, or no sidecar).
CONDITIONINGS = ("sidecar", "given", "unconditional")

# process-wide memory cache: cache key -> (clean codes [K, T], perturbed codes [P, K, T],
# tokens of each perturbed copy [P])
_CacheEntry = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
_MEMORY_CACHE: dict[str, _CacheEntry] = {}
_MEMORY_CACHE_MAX = 4096
# cache folders already reported as unwritable in this process (warn once each)
_UNWRITABLE_WARNED: set[str] = set()


def default_cache_dir() -> Path:
    """``$NOISEPROBE_CACHE``, else ``$XDG_CACHE_HOME/lightning_noiseprobe``, else ``~/.cache/lightning_noiseprobe``."""
    if os.environ.get("NOISEPROBE_CACHE"):
        return Path(os.environ["NOISEPROBE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lightning_noiseprobe" / "tokens"


def find_audio_files(
    source: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
) -> list[Path]:
    """Audio files of a folder (recursive, sorted) or an explicit list of files.

    Raises:
        NoiseProbeError: if a path does not exist or a folder holds no audio file.
    """
    items = [source] if isinstance(source, str | os.PathLike) else list(source)
    files: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = sorted(
                p for p in path.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file()
            )
            if not found:
                raise NoiseProbeError(
                    f"Expected audio files ({', '.join(AUDIO_EXTENSIONS)}) in folder '{path}' but found none."
                )
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            from lightning_noiseprobe._io import path_kind

            kind = path_kind(path)
            state = "does not exist" if kind == "missing" else f"is {kind}"
            raise NoiseProbeError(f"Expected an audio file or folder but '{path}' {state}.")
    return files


def _sidecar_description(path: Path) -> str | None:
    sidecar = path.with_suffix(".json")
    if not sidecar.is_file():
        return None
    try:
        data = json.loads(sidecar.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    desc = data.get("description") if isinstance(data, dict) else None
    return str(desc) if desc else None


@dataclass
class ProbeClip:
    """One clean clip of a probe set."""

    name: str  #: file path or given name
    description: str | None
    audio_hash: str
    num_tokens: int
    conditioning: str = "unconditional"  #: one of :data:`CONDITIONINGS`


@dataclass
class ProbeSet:
    """Tokenized clips and their perturbed copies.

    Attributes:
        clean_codes: ``[N, K, T]`` codes of the clean clips (padded with 0 past
            each clip's ``num_tokens``).
        perturbed_codes: ``[N, P, K, T]`` codes of the perturbed copies (padded with 0
            past each copy's own length: a deletion copy is shorter).
        perturbed_tokens: ``[N, P]`` tokens of each perturbed copy (``None``: each
            copy as long as its clean clip).
    """

    spec: ProbeSpec
    clips: list[ProbeClip]
    perturbations: list[Perturbation]
    clean_codes: torch.Tensor
    perturbed_codes: torch.Tensor
    frame_rate: float
    sample_rate: int
    channels: int
    skipped: list[dict[str, str]] = field(default_factory=list)
    encoded_clips: int = 0  #: how many clips needed the codec (0 = all from cache)
    perturbed_tokens: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.clips)

    @property
    def num_tokens(self) -> torch.Tensor:
        return torch.tensor([c.num_tokens for c in self.clips], dtype=torch.long)

    @property
    def perturbed_num_tokens(self) -> torch.Tensor:
        """``[N, P]`` tokens of each perturbed copy."""
        if self.perturbed_tokens is not None:
            return self.perturbed_tokens
        return self.num_tokens[:, None].expand(len(self.clips), len(self.perturbations))

    def perturbed_valid(self) -> torch.Tensor:
        """``[N, P, T]`` bool: tokens inside each perturbed copy."""
        T = self.clean_codes.shape[-1]
        return torch.arange(T) < self.perturbed_num_tokens.unsqueeze(-1)

    def subset(self, indices: list[int]) -> ProbeSet:
        """The probe set restricted to the clips at ``indices`` (repeats allowed).

        Keeps the full padded length ``T``, so subsets of one probe set stack and gather.
        """
        index = torch.tensor(indices, dtype=torch.long)
        clips = [self.clips[i] for i in indices]
        return ProbeSet(
            self.spec,
            clips,
            self.perturbations,
            self.clean_codes[index],
            self.perturbed_codes[index],
            self.frame_rate,
            self.sample_rate,
            self.channels,
            self.skipped,
            0,
            None if self.perturbed_tokens is None else self.perturbed_tokens[index],
        )

    def token_valid(self) -> torch.Tensor:
        """``[N, T]`` bool: tokens inside each clip."""
        T = self.clean_codes.shape[-1]
        return torch.arange(T) < self.num_tokens.unsqueeze(-1)


def _cache_key(audio_hash: str, spec: ProbeSpec, backend: ProbeBackend, codec_hash: str) -> str:
    return hash_json(
        {
            "audio": audio_hash,
            "spec": spec.tokenization_key(),
            "codec": codec_hash,
            "sample_rate": backend.sample_rate,
            "channels": backend.channels,
            "frame_rate": backend.frame_rate,
            "format": 3,  # 2: entries carry a checksum; 3: and each copy's token count
        }
    )


@dataclass(frozen=True)
class _EntryLayout:
    """What a cache entry of one clip must look like."""

    codebooks: int
    cardinality: int
    perturbations: int
    min_frames: int  # the codec gives floor or ceil(samples / hop) frames
    max_frames: int


def _entry_checksum(clean: torch.Tensor, perturbed: torch.Tensor, tokens: torch.Tensor) -> str:
    """SHA-256 over both code tensors and the copies' token counts (dtype, shape and bytes)."""
    h = hashlib.sha256()
    hash_tensor(clean, h)
    hash_tensor(perturbed, h)
    return hash_tensor(tokens, h)


def _entry_problem(data: Any, layout: _EntryLayout) -> str | None:
    """What is wrong with a loaded cache entry, or ``None`` if it is valid."""
    needed = {"clean", "perturbed", "tokens", "checksum"}
    if not isinstance(data, dict) or not needed <= data.keys():
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        return f"expected a dict with {sorted(needed)} but got {found}"
    clean, perturbed, tokens = data["clean"], data["perturbed"], data["tokens"]
    for name, t in (("clean", clean), ("perturbed", perturbed), ("tokens", tokens)):
        if not isinstance(t, torch.Tensor) or t.dtype != torch.long:
            got = t.dtype if isinstance(t, torch.Tensor) else type(t).__name__
            return f"expected '{name}' codes of dtype torch.int64 but got {got}"
    K, P = layout.codebooks, layout.perturbations
    if clean.dim() != 2 or clean.shape[0] != K:
        return f"expected 'clean' codes of shape [{K}, T] but got {tuple(clean.shape)}"
    T = clean.shape[1]
    if not layout.min_frames <= T <= layout.max_frames:
        return (
            f"expected {layout.min_frames} to {layout.max_frames} frames for this clip "
            f"but 'clean' has {T}"
        )
    if tuple(perturbed.shape) != (P, K, T):
        return f"expected 'perturbed' codes of shape {(P, K, T)} but got {tuple(perturbed.shape)}"
    if tuple(tokens.shape) != (P,) or (P and not 1 <= int(tokens.min()) <= int(tokens.max()) <= T):
        return (
            f"expected 'tokens' of shape ({P},) with values in [1, {T}] but got {tokens.tolist()}"
        )
    for name, t in (("clean", clean), ("perturbed", perturbed)):
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= layout.cardinality):
            return (
                f"expected '{name}' codes in [0, {layout.cardinality}) but found "
                f"{int(t.min())} to {int(t.max())}"
            )
    if data["checksum"] != _entry_checksum(clean, perturbed, tokens):
        return "the checksum does not match the codes (the file was changed or damaged)"
    return None


def _load_cached(cache_dir: Path | None, key: str, layout: _EntryLayout) -> _CacheEntry | None:
    if key in _MEMORY_CACHE:
        return _MEMORY_CACHE[key]
    if cache_dir is None:
        return None
    path = cache_dir / f"{key}.pt"
    if not path.is_file():
        return None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a corrupt cache file is rebuilt, never trusted
        log.warning(
            "Ignoring unreadable probe cache file '%s' (%s: %s); it will be rebuilt.",
            path,
            type(err).__name__,
            err,
        )
        return None
    problem = _entry_problem(data, layout)
    if problem is not None:
        log.warning(
            "Ignoring invalid probe cache file '%s': %s; it will be rebuilt.", path, problem
        )
        return None
    entry = (data["clean"], data["perturbed"], data["tokens"])
    _remember(key, entry)
    return entry


def _remember(key: str, entry: _CacheEntry) -> None:
    if len(_MEMORY_CACHE) >= _MEMORY_CACHE_MAX:
        _MEMORY_CACHE.pop(next(iter(_MEMORY_CACHE)))
    _MEMORY_CACHE[key] = entry


def _store_cached(cache_dir: Path | None, key: str, entry: _CacheEntry) -> bool:
    """Remember ``entry`` and write it to ``cache_dir`` atomically.

    Returns ``False`` if the folder cannot be written (reported once per folder
    and process); the caller then stops writing to it.
    """
    _remember(key, entry)
    if cache_dir is None:
        return True
    from lightning_noiseprobe._io import atomic_path

    clean, perturbed, tokens = entry
    try:
        with atomic_path(cache_dir / f"{key}.pt") as tmp:
            torch.save(
                {
                    "clean": clean,
                    "perturbed": perturbed,
                    "tokens": tokens,
                    "checksum": _entry_checksum(clean, perturbed, tokens),
                },
                tmp,
            )
    except (OSError, RuntimeError) as err:  # torch.save reports a full disk as RuntimeError
        if str(cache_dir) not in _UNWRITABLE_WARNED:
            _UNWRITABLE_WARNED.add(str(cache_dir))
            log.warning(
                "Cannot write the probe token cache folder '%s' (%s: %s); running without "
                "writing to it (probe sets are encoded again in each run). Pass another "
                "cache folder (`cache_dir`, `--cache-dir`, $NOISEPROBE_CACHE) or 'none'.",
                cache_dir,
                type(err).__name__,
                err,
            )
        return False
    return True


def clear_memory_cache() -> None:
    """Forget the in-process tokenization cache (the disk cache stays)."""
    _MEMORY_CACHE.clear()


def perturb_clip(
    wav: torch.Tensor,
    sr: int,
    frame_rate: float,
    spec: ProbeSpec,
    pert: Perturbation,
    audio_hash: str,
) -> torch.Tensor:
    """Apply one perturbation of ``spec`` to a clip ``[C, S]`` at rate ``sr``, with the seed the probe set uses.

    Windows are in tokens of ``frame_rate`` and map to samples at ``sr``
    (:func:`~lightning_noiseprobe.perturbations.inject.token_window_to_samples`), so
    the same call works on a file's own audio (``inject_at="source"``) and on the
    model's. The seed depends on the spec's seed, the clip's audio hash and the
    perturbation only (for nested noise: its colour and onset, not its length), so
    any process can recreate the exact perturbed audio.
    """
    from lightning_noiseprobe.perturbations import (
        bandstop_window,
        delete_window,
        inject_noise,
        reorder_segments,
        shuffle_segments,
    )

    nest = spec.nest_length(pert)
    if nest is not None:  # one draw per clip, colour and onset, shared by every length
        seed = derive_seed(spec.seed, audio_hash, f"noise:{pert.noise}:{pert.onset}:nested")
    else:
        seed = derive_seed(spec.seed, audio_hash, pert.key)
    onset, length = pert.onset, pert.length
    if pert.kind == "noise":
        return inject_noise(
            wav,
            sr,
            onset=onset,
            length=length,
            frame_rate=frame_rate,
            noise=pert.noise,
            level_dbfs=spec.level_dbfs,
            level_db_rel=spec.level_db_rel,
            mode=spec.mode,
            seed=seed,
            nest_length=nest,
        )
    if pert.kind == "shuffle":
        return shuffle_segments(
            wav,
            sr,
            onset=onset,
            length=length,
            segment=pert.segment,
            frame_rate=frame_rate,
            seed=seed,
        )[0]
    if pert.kind == "delete":
        return delete_window(wav, sr, onset=onset, length=length, frame_rate=frame_rate)
    if pert.kind == "reorder":
        lo, hi = pert.segment_range
        return reorder_segments(
            wav,
            sr,
            onset=onset,
            length=length,
            min_segment=lo,
            max_segment=hi,
            frame_rate=frame_rate,
            seed=seed,
        )[0]
    if pert.kind == "bandstop":
        return bandstop_window(
            wav,
            sr,
            onset=onset,
            length=length,
            low_hz=pert.band[0],
            high_hz=pert.band[1],
            frame_rate=frame_rate,
        )
    raise NoiseProbeError(f"Expected a known perturbation kind but got {pert.kind!r}.")


@dataclass
class PreparedClip:
    """A clip ready to be perturbed the way ``spec.inject_at`` says.

    Attributes:
        clean: ``[C, S]`` clean audio at the model's rate and channels, cropped to
            ``spec.clip_seconds``.
        base: the audio perturbations apply to: the file's own audio (cropped to
            ``clip_seconds`` at its own rate) for ``inject_at="source"``, else ``clean``.
        base_rate: sample rate of ``base``.
        audio_hash: the clip's identity for seeds and the token cache (of ``base``,
            and its rate for ``"source"``).
    """

    spec: ProbeSpec
    clean: torch.Tensor
    base: torch.Tensor
    base_rate: int
    audio_hash: str
    sample_rate: int
    channels: int
    frame_rate: float

    def perturbed(self, pert: Perturbation) -> torch.Tensor:
        """``[C, S']`` the perturbed copy as the model hears it (``S' < S`` for a deletion)."""
        from lightning_noiseprobe.audio import convert_audio

        out = perturb_clip(
            self.base, self.base_rate, self.frame_rate, self.spec, pert, self.audio_hash
        )
        if self.spec.inject_at == "source":
            out = convert_audio(out, self.base_rate, self.sample_rate, self.channels)
            out = out[..., : self.clean.shape[-1]]
        return out


def prepare_clip(
    wav: torch.Tensor,
    wav_sr: int,
    spec: ProbeSpec,
    *,
    sample_rate: int,
    channels: int,
    frame_rate: float,
) -> PreparedClip:
    """Crop a clip ``[C, S]`` at rate ``wav_sr`` and convert it for a model.

    ``inject_at="model"`` converts (channels, then rate) and crops to
    ``round(clip_seconds * sample_rate)``; perturbations then run on that audio.
    ``inject_at="source"`` crops the file's own audio to ``round(clip_seconds * wav_sr)``
    samples, where the perturbations run per channel, and converts the clean clip and
    every perturbed copy the same way afterwards (each converted alone, so the
    untouched part of a copy goes through exactly the computation of the clean clip).
    """
    from lightning_noiseprobe.audio import convert_audio

    wav = wav.float()
    max_samples = round(spec.clip_seconds * sample_rate)
    if spec.inject_at == "model":
        clean = convert_audio(wav, wav_sr, sample_rate, channels)[..., :max_samples]
        return PreparedClip(
            spec, clean, clean, sample_rate, hash_tensor(clean), sample_rate, channels, frame_rate
        )
    base = wav[..., : round(spec.clip_seconds * wav_sr)]
    clean = convert_audio(base, wav_sr, sample_rate, channels)[..., :max_samples]
    audio_hash = hash_json({"audio": hash_tensor(base), "sample_rate": int(wav_sr)})
    return PreparedClip(
        spec, clean, base, int(wav_sr), audio_hash, sample_rate, channels, frame_rate
    )


_Source = tuple[str, Path | None, torch.Tensor | None, int | None, str | None, str]


def _iter_sources(
    audio: AudioSource,
    descriptions: str | Sequence[str | None] | None,
    unconditional: bool = False,
) -> list[_Source]:
    """(name, path, wav, sr, description, conditioning) per source item; tensors are given as (name, wav, sr)."""
    if unconditional and descriptions is not None:
        raise NoiseProbeError(
            "Expected either `descriptions` or `unconditional=True` but got both; drop one of them."
        )
    items: list[_Source] = []
    if (
        isinstance(audio, Sequence)
        and not isinstance(audio, str)
        and audio
        and isinstance(audio[0], tuple)
    ):
        for name, wav, sr in audio:  # type: ignore[misc]
            items.append((str(name), None, wav, int(sr), None, "unconditional"))
    else:
        for path in find_audio_files(audio):  # type: ignore[arg-type]
            desc = None if unconditional else _sidecar_description(path)
            how = "unconditional" if desc is None else "sidecar"
            items.append((str(path), path, None, None, desc, how))
    if isinstance(descriptions, str):
        items = [(n, p, w, s, descriptions, "given") for n, p, w, s, _, _ in items]
    elif descriptions is not None:
        if len(descriptions) != len(items):
            raise NoiseProbeError(
                f"Expected one description per clip ({len(items)}) but got {len(descriptions)}."
            )
        items = [
            (n, p, w, s, d, "unconditional" if d is None else "given")
            for (n, p, w, s, _, _), d in zip(items, descriptions, strict=False)
        ]
    return items


def _encode_copies(
    backend: ProbeBackend, copies: list[torch.Tensor], batch_size: int
) -> list[torch.Tensor]:
    """Codes ``[K, T_i]`` of each copy, encoding runs of equal-length copies ``batch_size`` at a time."""
    out: list[torch.Tensor] = []
    i = 0
    while i < len(copies):
        j = i + 1
        while j < len(copies) and j - i < batch_size and copies[j].shape == copies[i].shape:
            j += 1
        out.extend(backend.encode(torch.stack(copies[i:j])).cpu())
        i = j
    return out


def build_probe_set(
    backend: ProbeBackend,
    audio: AudioSource,
    spec: ProbeSpec | None = None,
    *,
    descriptions: str | Sequence[str | None] | None = None,
    unconditional: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
    strict: bool = False,
    progress: bool = False,
    encode_batch_size: int = 1,
) -> ProbeSet:
    """Load, crop, perturb and tokenize a probe set.

    Each clip is read (any format, rate, channel count), cropped to
    ``spec.clip_seconds`` from its start, and perturbed by every perturbation of
    ``spec``: by default at the file's own rate and channels, each copy then mixed
    down and resampled to the backend's like the clean clip (``spec.inject_at``, see
    :func:`prepare_clip`). The seeds derive from the spec's seed, the clip's audio
    hash and the perturbation, so the same probe set comes out on every run, rank
    and epoch. Clips too short for the largest window (plus the detection margin)
    are skipped with a reason; so are unreadable files, unless ``strict``.

    Args:
        backend: a loaded backend (its codec tokenizes).
        audio: a folder, a file, a list of files, or ``(name, wav [C, S], sr)`` tuples.
        spec: the perturbations (default: the paper's protocol).
        descriptions: one text for all clips, one per clip (``None`` entries:
            unconditional), or ``None`` to read audiocraft-style ``.json`` sidecars
            (``{"description": ...}``; clips without one are unconditional).
        unconditional: score every clip without text, sidecars or not (the paper
            authors' setting). Each clip's :attr:`ProbeClip.conditioning` says which.
        cache_dir: folder for the on-disk token cache (``None``: memory only).
            Invalid entries are rebuilt with a warning; a folder that cannot be
            written is reported once and only read.
        strict: raise on the first bad clip instead of skipping it.
        progress: show a progress bar.
        encode_batch_size: perturbed copies encoded per codec call. The default 1
            encodes every copy with exactly the computation of its clean clip, so
            the codes of the untouched prefix match bit for bit: batched
            convolutions may round differently, and a random or fine-tuned
            codec's near-tied codebook choices would then flip before the onset.

    Returns:
        :class:`ProbeSet`.
    """
    from lightning_noiseprobe.audio import load_audio

    spec = spec or ProbeSpec()
    perts = spec.perturbations()
    cache = Path(cache_dir) if cache_dir is not None else None
    writable = True
    num_codebooks, cardinality = int(backend.num_codebooks), int(backend.cardinality)
    codec_hash: str | None = None
    frame_rate = float(backend.frame_rate)
    sr = int(backend.sample_rate)
    min_tokens = spec.min_tokens

    sources = _iter_sources(audio, descriptions, unconditional)
    iterator: Iterable[Any] = sources
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(sources, desc="tokenizing probe set", unit="clip")

    clips: list[ProbeClip] = []
    clean_list: list[torch.Tensor] = []
    pert_list: list[torch.Tensor] = []
    tokens_list: list[torch.Tensor] = []
    skipped: list[dict[str, str]] = []
    encoded = 0
    for name, path, wav, wav_sr, description, conditioning in iterator:
        try:
            if path is not None:
                wav, wav_sr = load_audio(path)
            assert wav is not None and wav_sr is not None
            if wav.ndim != 2 or wav.shape[-1] == 0 or not torch.isfinite(wav).all():
                raise NoiseProbeError(
                    f"Expected finite, non-empty audio of shape [C, S] for '{name}' but got shape {tuple(wav.shape)}."
                )
            prepared = prepare_clip(
                wav, wav_sr, spec, sample_rate=sr, channels=backend.channels, frame_rate=frame_rate
            )
            num_samples = prepared.clean.shape[-1]
            tokens_available = int(num_samples * frame_rate // sr)
            if tokens_available < min_tokens:
                raise NoiseProbeError(
                    f"Clip '{name}' is too short: {num_samples / sr:.2f} s ({tokens_available} tokens) but the largest"
                    f" window ends at token {spec.max_window_end} (+{spec.margin} margin)."
                    " Use longer clips or a smaller onset/length."
                )
            audio_hash = prepared.audio_hash
            if codec_hash is None:
                codec_hash = backend.codec_fingerprint()
            key = _cache_key(audio_hash, spec, backend, codec_hash)
            frames = num_samples * frame_rate / sr
            layout = _EntryLayout(
                num_codebooks, cardinality, len(perts), math.floor(frames), math.ceil(frames)
            )
            entry = _load_cached(cache, key, layout)
            if entry is None:
                copies = [prepared.perturbed(p) for p in perts]
                # the clean clip in the batch shape of the copies
                clean_codes = backend.encode(prepared.clean[None]).cpu()[0]
                T = clean_codes.shape[-1]
                codes = _encode_copies(backend, copies, encode_batch_size)
                tokens = torch.tensor([c.shape[-1] for c in codes], dtype=torch.long)
                padded = torch.stack(
                    [torch.nn.functional.pad(c, (0, T - c.shape[-1])) for c in codes]
                )
                entry = (clean_codes, padded, tokens)
                if not _store_cached(cache if writable else None, key, entry):
                    writable = False  # keep reading valid entries, stop writing
                encoded += 1
        except NoiseProbeError as err:
            if strict:
                raise
            skipped.append({"path": name, "reason": str(err)})
            log.warning("Skipping probe clip: %s", err)
            continue
        clean_codes, pert_codes, pert_tokens = entry
        clips.append(
            ProbeClip(name, description, audio_hash, int(clean_codes.shape[-1]), conditioning)
        )
        clean_list.append(clean_codes)
        pert_list.append(pert_codes)
        tokens_list.append(pert_tokens)

    if not clips:
        shown = "; ".join(f"{s['path']}: {s['reason']}" for s in skipped[:5])
        more = f"; and {len(skipped) - 5} more" if len(skipped) > 5 else ""
        raise NoiseProbeError(
            f"Expected at least one usable probe clip but all {len(skipped)} were skipped ({shown}{more})."
            f" This spec needs readable clips of at least {spec.min_clip_seconds(frame_rate):.2f} s"
            f" ({min_tokens} tokens at {frame_rate:g} Hz: onset + longest window + {spec.margin}-token"
            f" margin), and crops them to clip_seconds={spec.clip_seconds:g}."
        )
    T = max(c.shape[-1] for c in clean_list)
    clean = torch.stack([torch.nn.functional.pad(c, (0, T - c.shape[-1])) for c in clean_list])
    pert = torch.stack([torch.nn.functional.pad(c, (0, T - c.shape[-1])) for c in pert_list])
    return ProbeSet(
        spec,
        clips,
        perts,
        clean,
        pert,
        frame_rate,
        sr,
        backend.channels,
        skipped,
        encoded,
        torch.stack(tokens_list),
    )
