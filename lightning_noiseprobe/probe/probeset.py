"""Probe sets: clips x perturbations, tokenized once with the frozen codec.

Because the codec is frozen while the LM fine-tunes, a probe set is encoded
once and cached (in memory, and on disk keyed by a hash of the audio, the
spec and the codec weights), so repeated probing costs only LM forward passes.

The disk cache (:mod:`lightning_noiseprobe.probe.cache`) never harms a run: an
invalid entry is rebuilt with a warning, an unwritable folder only read.
"""

from __future__ import annotations

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
from lightning_noiseprobe._hashing import hash_json, hash_tensor
from lightning_noiseprobe.probe.cache import (
    _cache_key,
    _EntryLayout,
    _load_cached,
    _store_cached,
    clear_memory_cache,
    default_cache_dir,
)
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
    "load_prepared",
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
    _first: torch.Tensor | None = field(default=None, init=False, repr=False, compare=False)

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

    def first_differences(self) -> torch.Tensor:
        """``[N, P]`` first token where each copy's codes differ from its clean clip's, on the
        copy's timeline (a deletion is compared with the clean codes re-indexed past the cut);
        ``T`` where none differs. Computed once: the analysis takes the perturbation's true
        start from it, and the scorer its shared prefix (:meth:`shared_prefix_tokens`)."""
        if self._first is None:
            from lightning_noiseprobe.functional.align import align_deleted
            from lightning_noiseprobe.functional.curves import first_differing_token

            N, P = len(self.clips), len(self.perturbations)
            onsets = torch.tensor([q.onset for q in self.perturbations]).expand(N, P)
            removed = torch.tensor([q.removed for q in self.perturbations]).expand(N, P)
            clean, _ = align_deleted(
                self.clean_codes[:, None].expand_as(self.perturbed_codes),
                onsets[..., None],
                removed[..., None],
            )
            self._first = first_differing_token(clean, self.perturbed_codes)
        return self._first

    def shared_prefix_tokens(self) -> torch.Tensor:
        """``[N, P]`` tokens each copy shares with its clean clip, as the clean clip's own
        timeline sees them: :meth:`first_differences`, capped at a deletion's onset (past the
        cut the timelines part). What prefix sharing and skipped prefix heads start from."""
        cut = torch.tensor(
            [q.onset if q.removed else self.clean_codes.shape[-1] for q in self.perturbations]
        )
        return torch.minimum(self.first_differences(), cut)

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


def perturb_clip(
    wav: torch.Tensor,
    sr: int,
    frame_rate: float,
    spec: ProbeSpec,
    pert: Perturbation,
    audio_hash: str,
) -> torch.Tensor:
    """Apply one perturbation of ``spec`` to a clip ``[C, S]`` at rate ``sr``, with the seed the
    probe set uses: :meth:`ProbeSpec.perturb <lightning_noiseprobe.probe.spec.ProbeSpec.perturb>`
    with the clip's audio hash as its identity.

    Windows are in tokens of ``frame_rate`` and map to samples at ``sr``, so the same
    call works on a file's own audio (``inject_at="source"``) and on the model's.
    """
    return spec.perturb(wav, sr, frame_rate, pert, audio_hash)


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


def load_prepared(
    source: str | os.PathLike[str] | tuple[torch.Tensor, int],
    spec: ProbeSpec,
    *,
    sample_rate: int,
    channels: int,
    frame_rate: float,
    name: str | None = None,
) -> PreparedClip:
    """Load a clip (a file, or ``(wav [C, S], sr)``), check it and :func:`prepare_clip` it: the
    one load-convert-crop sequence of probe-set building and of the callback's audio examples.

    Raises:
        NoiseProbeError: for empty, non-finite or wrongly shaped audio (naming the clip).
    """
    from lightning_noiseprobe.audio import load_audio

    if isinstance(source, tuple):
        wav, wav_sr = source
    else:
        wav, wav_sr = load_audio(source)
    name = name if name is not None else str(source if not isinstance(source, tuple) else "clip")
    if wav.ndim != 2 or wav.shape[-1] == 0 or not torch.isfinite(wav).all():
        raise NoiseProbeError(
            f"Expected finite, non-empty audio of shape [C, S] for '{name}' but got shape {tuple(wav.shape)}."
        )
    return prepare_clip(
        wav, wav_sr, spec, sample_rate=sample_rate, channels=channels, frame_rate=frame_rate
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
            prepared = load_prepared(
                path if path is not None else (wav, wav_sr),  # type: ignore[arg-type]
                spec,
                sample_rate=sr,
                channels=backend.channels,
                frame_rate=frame_rate,
                name=name,
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
