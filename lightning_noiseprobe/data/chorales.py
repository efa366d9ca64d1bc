"""Bach chorales from music21's bundled corpus, rendered to audio in-process.

The default data of the project: real four-part compositions, read offline from
the corpus that ships with music21 (``pip install music21``, the ``demo``
extra) and rendered to 32 kHz mono by :mod:`lightning_noiseprobe.data.synth`,
so a tiny MusicGen-shaped model can be trained on CPU without downloading
anything.

music21 is imported inside the functions that need it: importing this module is
cheap. Parsed scores are cached in-process (as plain tuples, not music21
objects), and music21's on-disk pickle cache is neither read nor written.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lightning_noiseprobe._io import atomic_path, atomic_write_text
from lightning_noiseprobe.data.synth import TIMBRES, render_notes

__all__ = [
    "chorale_notes",
    "list_chorales",
    "make_description",
    "render_chorale",
    "write_chorale_dataset",
]

#: Default tempi (quarter notes per minute) are drawn per chorale from this range.
DEFAULT_BPM_RANGE = (80, 100)
#: Rest, in beats, between two repetitions when a chorale is looped.
LOOP_REST_BEATS = 1.0
_DATASET_VERSION = 1
_SUFFIX_PREFERENCE = (".mxl", ".xml", ".musicxml", ".krn")
_NOT_CHORALES = frozenset({"bwv846"})  # The C major prelude of the Well-Tempered Clavier.
_VOICE_NAMES = ("soprano", "alto", "tenor", "bass")
_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight",
                 "nine", "ten", "eleven", "twelve")  # fmt: skip
_STEM_RE = re.compile(r"^bwv(\d+)(?:\.(\d+))?(.*)$")


def _natural_key(stem: str) -> tuple[int, int, str]:
    match = _STEM_RE.match(stem)
    if match is None:  # pragma: no cover - every stem in the list matched when it was built
        return (1 << 30, 0, stem)
    return (int(match.group(1)), int(match.group(2) or 0), match.group(3))


@functools.lru_cache(maxsize=1)
def _corpus_paths() -> dict[str, Path]:
    """``{'bach/bwv10.7': path}`` of every chorale score in music21's core corpus."""
    from music21 import corpus

    by_stem: dict[str, Path] = {}
    for path in corpus.getComposer("bach"):
        path = Path(path)
        if path.suffix not in _SUFFIX_PREFERENCE or _STEM_RE.match(path.stem) is None:
            continue
        if path.stem in _NOT_CHORALES:
            continue
        old = by_stem.get(path.stem)
        if old is None or _SUFFIX_PREFERENCE.index(path.suffix) < _SUFFIX_PREFERENCE.index(
            old.suffix
        ):
            by_stem[path.stem] = path
    return {f"bach/{stem}": by_stem[stem] for stem in sorted(by_stem, key=_natural_key)}


def list_chorales(limit: int | None = None, include_variants: bool = False) -> list[str]:
    """Corpus identifiers of the Bach chorales in music21's bundled corpus.

    Every score in the corpus' ``bach`` folder except BWV 846 (a keyboard
    prelude) is a chorale harmonisation. Sorted by BWV number (``bwv2.6``
    before ``bwv10.7``); the same on every machine with the same music21.

    Args:
        limit: return at most this many (the first ones).
        include_variants: also list alternative versions of a chorale that is
            already listed (``bach/bwv190.7-inst`` next to ``bach/bwv190.7``).

    >>> ids = list_chorales()
    >>> len(ids) > 300, ids[0], "bach/bwv10.7" in ids
    (True, 'bach/bwv1.6', True)
    >>> list_chorales(limit=2)
    ['bach/bwv1.6', 'bach/bwv2.6']
    """
    if limit is not None and not (isinstance(limit, int) and limit >= 0):
        raise ValueError(f"Expected argument `limit` to be None or an int >= 0 but got {limit!r}")
    ids = list(_corpus_paths())
    if not include_variants:
        known = set(ids)
        ids = [i for i in ids if "-" not in i or i.split("-", 1)[0] not in known]
    return ids if limit is None else ids[:limit]


@functools.lru_cache(maxsize=1)
def _bwv_titles() -> dict[str, str]:
    from music21.corpus import chorales

    titles: dict[str, str] = {}
    for bwv, entry in chorales.ChoraleList().byBWV.items():
        titles.setdefault(str(bwv), str(entry["title"]))
    for bwv, entry in chorales.ChoraleListRKBWV().byBWV.items():
        titles.setdefault(str(bwv), str(entry["title"]))
    return titles


def _key_name(key: Any) -> str:
    """``'B-flat major'`` for music21's ``<music21.key.Key of B- major>``."""
    name = key.tonic.name
    tonic = name[0] + "".join("-sharp" if c == "#" else "-flat" for c in name[1:])
    return f"{tonic} {key.mode}"


def _default_bpm(identifier: str) -> int:
    """A tempo in :data:`DEFAULT_BPM_RANGE`, fixed per chorale (stable across processes)."""
    low, high = DEFAULT_BPM_RANGE
    digest = hashlib.sha256(identifier.encode()).digest()
    return low + int.from_bytes(digest[:4], "little") % (high - low + 1)


@functools.lru_cache(maxsize=512)
def _parsed(identifier: str) -> tuple[tuple[tuple[float, float, int, int], ...], float, str]:
    """``(notes in quarter lengths, length in quarter lengths, metadata JSON)``."""
    paths = _corpus_paths()
    if identifier not in paths:
        raise ValueError(
            f"Expected argument `identifier` to be a Bach chorale of the music21 corpus, such as"
            f" 'bach/bwv10.7' (see `list_chorales()`), but got {identifier!r}"
        )
    from music21 import converter, tempo

    score: Any = converter.parse(paths[identifier], forceSource=True, storePickle=False)
    parts = list(score.parts) or [score]
    names = [(p.partName or "").strip().lower() for p in parts]
    voices = [p for p, n in zip(parts, names, strict=True) if n.startswith(_VOICE_NAMES)]
    if len(voices) >= 2:  # render the choir; skip trumpets, timpani, continuo doublings
        parts = voices
    notes: list[tuple[float, float, int, int]] = []
    for index, part in enumerate(parts):
        # Soprano (the tune) a little louder, then bass, then the inner voices.
        velocity = 96 if index == 0 else 84 if index == len(parts) - 1 else 72
        open_notes: dict[int, int] = {}  # midi -> index in `notes` of a note tied onward
        for element in part.flatten().notes:
            offset, length = float(element.offset), float(element.quarterLength)
            if length <= 0:  # grace notes
                continue
            for sub in element.notes if element.isChord else (element,):
                midi = round(sub.pitch.ps)
                tie = sub.tie.type if sub.tie is not None else None
                if tie in ("stop", "continue") and midi in open_notes:
                    i = open_notes[midi]
                    start = notes[i][0]
                    notes[i] = (start, offset + length - start, midi, notes[i][3])
                else:
                    notes.append((offset, length, midi, velocity))
                    i = len(notes) - 1
                if tie in ("start", "continue"):
                    open_notes[midi] = i
                else:
                    open_notes.pop(midi, None)
    notes.sort()

    flat = score.flatten()
    marks = list(flat.getElementsByClass(tempo.MetronomeMark))
    quarter_bpm = marks[0].getQuarterBPM() if marks else None
    score_bpm = round(float(quarter_bpm), 3) if quarter_bpm else None
    signatures = list(flat.getElementsByClass("TimeSignature"))
    key: str | None
    try:
        key = _key_name(score.analyze("key"))
    except Exception:  # analysis can fail on odd scores: fall back to the signature
        key_signatures = list(flat.getElementsByClass("KeySignature"))
        key = _key_name(key_signatures[0].asKey()) if key_signatures else None
    stem = identifier.split("/", 1)[1]
    bwv = stem[3:]
    titles = _bwv_titles()
    title = titles.get(bwv) or titles.get(bwv.split("-", 1)[0])
    if title is None and score.metadata is not None and score.metadata.title:
        title = re.sub(r"^\d+\.\s*", "", str(score.metadata.title))
    metadata = {
        "identifier": identifier,
        "bwv": bwv,
        "title": title,
        "key": key,
        "time_signature": signatures[0].ratioString if signatures else None,
        "num_parts": len(parts),
        "score_bpm": score_bpm,
    }
    length_ql = max(float(score.highestTime), max((o + d for o, d, _, _ in notes), default=0.0))
    return tuple(notes), length_ql, json.dumps(metadata)


def chorale_notes(
    identifier: str, bpm: float | None = None
) -> tuple[list[tuple[float, float, int, int]], dict[str, Any]]:
    """The notes of a chorale, all parts flattened, timed in seconds.

    Args:
        identifier: a corpus identifier from :func:`list_chorales`.
        bpm: tempo in quarter notes per minute. ``None``: the score's own
            metronome mark if it has one, else a tempo between 80 and 100 bpm
            fixed per chorale.

    Returns:
        ``(notes, metadata)``: ``notes`` are ``(onset_s, duration_s, midi,
        velocity)`` tuples sorted by onset (tied notes merged); ``metadata``
        holds ``identifier``, ``bwv``, ``title`` (``None`` if unknown),
        ``key`` (e.g. ``"G minor"``), ``time_signature``, ``num_parts`` (the
        sung voices when the score names them, else all parts), ``bpm`` and
        ``duration`` (seconds, without the final release).

    >>> notes, meta = chorale_notes("bach/bwv10.7", bpm=90)
    >>> meta["title"], meta["key"], meta["time_signature"], meta["num_parts"]
    ('Meine Seel’ erhebt den Herren', 'G minor', '4/4', 4)
    >>> notes[0][0], len(notes) > 100
    (0.0, True)
    """
    notes_ql, length_ql, meta_json = _parsed(identifier)
    metadata = json.loads(meta_json)
    if bpm is None:
        bpm = metadata["score_bpm"] or _default_bpm(identifier)
    if not (isinstance(bpm, (int, float)) and math.isfinite(bpm) and bpm > 0):
        raise ValueError(f"Expected argument `bpm` to be a positive number but got {bpm!r}")
    beat = 60.0 / bpm
    notes = [(o * beat, d * beat, m, v) for o, d, m, v in notes_ql]
    metadata["bpm"] = bpm
    metadata["duration"] = length_ql * beat
    return notes, metadata


def render_chorale(
    identifier: str,
    sample_rate: int = 32000,
    timbre: str = "organ",
    bpm: float | None = None,
    seconds: float | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Render a chorale to a mono waveform.

    Args:
        identifier: a corpus identifier from :func:`list_chorales`.
        sample_rate: output sample rate in Hz.
        timbre: a timbre of :data:`lightning_noiseprobe.data.synth.TIMBRES`.
        bpm: see :func:`chorale_notes`.
        seconds: output length. ``None``: the whole chorale plus the last
            note's release. Otherwise exactly ``round(seconds * sample_rate)``
            samples: a shorter chorale is looped (with one beat of rest between
            repetitions), a longer one cut.

    Returns:
        ``(wav, metadata)``: ``[S]`` float32 waveform peaking near -3 dBFS, and
        the metadata of :func:`chorale_notes` plus ``timbre``, ``sample_rate``
        and ``seconds`` (the waveform's length in seconds).

    >>> wav, meta = render_chorale("bach/bwv10.7", sample_rate=16000, seconds=2.0)
    >>> wav.shape, wav.dtype, meta["timbre"]
    ((32000,), dtype('float32'), 'organ')
    """
    if seconds is not None and not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(
            f"Expected argument `seconds` to be None or a positive number but got {seconds!r}"
        )
    notes, metadata = chorale_notes(identifier, bpm=bpm)
    if seconds is not None and metadata["duration"] > 0:
        period = metadata["duration"] + LOOP_REST_BEATS * 60.0 / metadata["bpm"]
        repeats = math.ceil(seconds / period)
        notes = [(o + r * period, d, m, v) for r in range(repeats) for o, d, m, v in notes]
        notes = [n for n in notes if n[0] < seconds]
    wav = render_notes(notes, sample_rate=sample_rate, duration=seconds, timbre=timbre)
    metadata.update(timbre=timbre, sample_rate=sample_rate, seconds=len(wav) / sample_rate)
    return wav, metadata


def make_description(metadata: Mapping[str, Any], timbre: str | None = None) -> str:
    """A text description of a rendered chorale, for text conditioning.

    >>> make_description({"bwv": "10.7", "key": "G minor", "num_parts": 4, "bpm": 92}, "organ")
    'Bach chorale BWV 10.7 in G minor, four voices, organ, 92 bpm'
    >>> make_description({"bwv": "269", "key": None, "num_parts": 4, "bpm": 85.5})
    'Bach chorale BWV 269, four voices, 85.5 bpm'
    """
    timbre = timbre if timbre is not None else metadata.get("timbre")
    text = f"Bach chorale BWV {metadata['bwv']}"
    if metadata.get("key"):
        text += f" in {metadata['key']}"
    parts = [text]
    num_parts = metadata.get("num_parts")
    if num_parts:
        count = _NUMBER_WORDS[num_parts] if num_parts < len(_NUMBER_WORDS) else str(num_parts)
        parts.append(f"{count} voice" + ("s" if num_parts != 1 else ""))
    if timbre:
        parts.append(str(timbre))
    bpm = metadata.get("bpm")
    if bpm:
        parts.append(f"{bpm:g} bpm")
    return ", ".join(parts)


def _read_complete(folder: Path, params: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    """The manifest of a complete dataset written with ``params``, else ``None``."""
    try:
        if json.loads((folder / "dataset.json").read_text(encoding="utf-8")) != params:
            return None
        lines = (folder / "manifest.jsonl").read_text(encoding="utf-8").splitlines()
        records = [json.loads(line) for line in lines if line.strip()]
    except (OSError, ValueError):
        return None
    if len(records) != params["num_clips"]:
        return None
    for record in records:
        wav = folder / record["path"]
        if not (wav.is_file() and wav.with_suffix(".json").is_file()):
            return None
    return records


def _old_files(folder: Path) -> set[str]:
    """Files listed by an earlier manifest in ``folder`` (ours to replace)."""
    try:
        lines = (folder / "manifest.jsonl").read_text(encoding="utf-8").splitlines()
        paths = [json.loads(line)["path"] for line in lines if line.strip()]
    except (OSError, ValueError, KeyError, TypeError):
        return set()
    names = set()
    for path in paths:
        if isinstance(path, str) and "/" not in path and path.endswith(".wav"):
            names.update({path, path[: -len(".wav")] + ".json"})
    return names


def write_chorale_dataset(
    folder: str | os.PathLike[str],
    num_clips: int = 16,
    seconds: float = 15.0,
    sample_rate: int = 32000,
    seed: int = 0,
    timbres: Sequence[str] = ("organ", "strings", "piano"),
) -> list[dict[str, Any]]:
    """Render a small text-to-music dataset of Bach chorales into ``folder``.

    Picks ``num_clips`` distinct chorales with ``np.random.default_rng(seed)``
    and renders the first ``seconds`` of each (looping short ones), cycling
    through ``timbres``. For each clip writes ``NAME.wav`` (16-bit PCM, mono)
    and an audiocraft-style sidecar ``NAME.json`` (``description``, ``title``,
    ``key``, ``bpm``, ``duration``, ``sample_rate``, ``source``...), then
    ``manifest.jsonl`` (one line per clip: ``path`` relative to ``folder``,
    ``description``, ``duration``, ``sample_rate``) and ``dataset.json`` (the
    arguments). Every file is written atomically.

    Idempotent: if ``folder`` already holds a complete dataset written with
    the same arguments, its manifest is returned and nothing is rendered. The
    same arguments always give bitwise identical files.

    Returns:
        The manifest records, in order.
    """
    import soundfile as sf

    if not (isinstance(num_clips, int) and num_clips >= 1):
        raise ValueError(f"Expected argument `num_clips` to be an int >= 1 but got {num_clips!r}")
    if not (isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"Expected argument `seconds` to be a positive number but got {seconds!r}")
    if not (isinstance(sample_rate, (int, np.integer)) and sample_rate > 0):
        raise ValueError(
            f"Expected argument `sample_rate` to be a positive integer but got {sample_rate!r}"
        )
    if not (isinstance(seed, (int, np.integer)) and seed >= 0):
        raise ValueError(f"Expected argument `seed` to be an int >= 0 but got {seed!r}")
    if isinstance(timbres, str) or not timbres:
        raise ValueError(
            f"Expected argument `timbres` to be a non-empty sequence of names but got {timbres!r}"
        )
    for timbre in timbres:
        if timbre not in TIMBRES:
            raise ValueError(
                f"Expected argument `timbres` to hold names from {tuple(sorted(TIMBRES))}"
                f" but got {timbre!r}"
            )
    params = {
        "generator": "lightning_noiseprobe.data.chorales",
        "version": _DATASET_VERSION,
        "num_clips": num_clips,
        "seconds": float(seconds),
        "sample_rate": int(sample_rate),
        "seed": int(seed),
        "timbres": list(timbres),
    }
    sample_rate = int(sample_rate)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    done = _read_complete(folder, params)
    if done is not None:
        return done

    identifiers = list_chorales()
    if num_clips > len(identifiers):
        raise ValueError(
            f"Expected argument `num_clips` to be at most {len(identifiers)} (the chorales"
            f" available) but got {num_clips}"
        )
    rng = np.random.default_rng(seed)
    chosen = [identifiers[i] for i in rng.choice(len(identifiers), size=num_clips, replace=False)]
    stale = _old_files(folder)
    (folder / "dataset.json").unlink(missing_ok=True)  # incomplete until written again below
    records = []
    for index, identifier in enumerate(chosen):
        timbre = timbres[index % len(timbres)]
        wav, meta = render_chorale(
            identifier, sample_rate=sample_rate, timbre=timbre, seconds=float(seconds)
        )
        name = f"{index:03d}_{identifier.split('/', 1)[1]}_{timbre}"
        description = make_description(meta, timbre)
        sidecar = {
            "description": description,
            "title": meta["title"],
            "key": meta["key"],
            "bpm": meta["bpm"],
            "time_signature": meta["time_signature"],
            "num_parts": meta["num_parts"],
            "timbre": timbre,
            "duration": meta["seconds"],
            "sample_rate": sample_rate,
            "source": f"music21 corpus {identifier}",
        }
        wav_path = folder / f"{name}.wav"
        with atomic_path(wav_path) as tmp:
            sf.write(str(tmp), wav, sample_rate, subtype="PCM_16", format="WAV")
        atomic_write_text(
            wav_path.with_suffix(".json"), json.dumps(sidecar, indent=2, ensure_ascii=False) + "\n"
        )
        stale -= {wav_path.name, wav_path.with_suffix(".json").name}
        records.append(
            {
                "path": wav_path.name,
                "description": description,
                "duration": meta["seconds"],
                "sample_rate": sample_rate,
            }
        )
    manifest = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    atomic_write_text(folder / "manifest.jsonl", manifest)
    for name in sorted(stale):
        (folder / name).unlink(missing_ok=True)
    atomic_write_text(folder / "dataset.json", json.dumps(params, indent=2) + "\n")
    return records
