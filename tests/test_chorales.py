"""Bach chorales from music21's corpus, rendered by the numpy synthesizer."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from lightning_noiseprobe.data.synth import PEAK_DBFS, TIMBRES, render_notes

pytest.importorskip("music21")
sf = pytest.importorskip("soundfile")

from lightning_noiseprobe.data.chorales import (  # noqa: E402
    chorale_notes,
    list_chorales,
    make_description,
    render_chorale,
    write_chorale_dataset,
)

CHORALE = "bach/bwv10.7"
SR = 32000


def _chroma(wav: np.ndarray, sample_rate: int) -> np.ndarray:
    """Spectral power per pitch class ``[12]`` (C = 0) between 60 Hz and 2 kHz."""
    power = np.abs(np.fft.rfft(wav.astype(np.float64))) ** 2
    freqs = np.fft.rfftfreq(len(wav), 1.0 / sample_rate)
    band = (freqs > 60) & (freqs < 2000)
    pitch_class = np.round(12 * np.log2(freqs[band] / 440.0) + 69).astype(int) % 12
    return np.bincount(pitch_class, weights=power[band], minlength=12)


def _score_chroma(notes, seconds: float) -> np.ndarray:
    """Sounding time per pitch class ``[12]``, weighted by velocity squared (power)."""
    hist = np.zeros(12)
    for onset, duration, midi, velocity in notes:
        if onset < seconds:
            hist[midi % 12] += min(duration, seconds - onset) * velocity**2
    return hist


# ---------------------------------------------------------------- listing, notes


def test_list_chorales_is_deterministic_and_sorted():
    ids = list_chorales()
    assert len(ids) > 300
    assert ids == list_chorales()
    assert len(set(ids)) == len(ids)
    assert all(i.startswith("bach/bwv") for i in ids)
    assert CHORALE in ids and "bach/bwv846" not in ids  # a prelude, not a chorale
    numbers = [float(i[len("bach/bwv") :].split("-")[0].split(".")[0]) for i in ids]
    assert numbers == sorted(numbers)
    assert list_chorales(limit=5) == ids[:5]
    variants = list_chorales(include_variants=True)
    assert set(ids) < set(variants) and "bach/bwv190.7-inst" in variants


@pytest.mark.parametrize("limit", [-1, 2.5, "3"])
def test_list_chorales_rejects_bad_limit(limit):
    with pytest.raises(ValueError, match="Expected argument `limit`"):
        list_chorales(limit=limit)


def test_chorale_notes_metadata_and_tempo():
    notes, meta = chorale_notes(CHORALE)
    assert meta["identifier"] == CHORALE and meta["bwv"] == "10.7"
    assert meta["key"] == "G minor" and meta["time_signature"] == "4/4"
    assert meta["num_parts"] == 4 and meta["title"]
    assert 80 <= meta["bpm"] <= 100 and meta["bpm"] == chorale_notes(CHORALE)[1]["bpm"]
    assert notes == sorted(notes) and notes[0][0] == 0.0
    assert all(d > 0 and 30 <= m <= 90 and 0 < v <= 127 for _, d, m, v in notes)
    assert meta["duration"] == pytest.approx(max(o + d for o, d, _, _ in notes))

    slow, slow_meta = chorale_notes(CHORALE, bpm=60)
    fast, _ = chorale_notes(CHORALE, bpm=120)
    assert slow_meta["bpm"] == 60
    assert [n[0] for n in slow] == pytest.approx([2 * n[0] for n in fast])
    assert [n[2:] for n in slow] == [n[2:] for n in fast]
    notes.clear()  # the caller's copy: the cache is not affected
    assert chorale_notes(CHORALE)[0]


def test_chorale_notes_errors():
    with pytest.raises(ValueError, match="list_chorales"):
        chorale_notes("bach/bwv99999.1")
    with pytest.raises(ValueError, match="Expected argument `bpm`"):
        chorale_notes(CHORALE, bpm=0)


def test_make_description():
    meta = {"bwv": "10.7", "key": "G minor", "num_parts": 4, "bpm": 92}
    assert make_description(meta, "organ") == (
        "Bach chorale BWV 10.7 in G minor, four voices, organ, 92 bpm"
    )
    assert make_description({**meta, "timbre": "piano", "num_parts": 5}) == (
        "Bach chorale BWV 10.7 in G minor, five voices, piano, 92 bpm"
    )


# ---------------------------------------------------------------- rendering


@pytest.mark.parametrize("timbre", sorted(TIMBRES))
def test_render_chorale_audio(timbre):
    seconds = 8.0
    wav, meta = render_chorale(CHORALE, sample_rate=SR, timbre=timbre, seconds=seconds)
    assert wav.dtype == np.float32 and wav.shape == (round(seconds * SR),)
    assert np.isfinite(wav).all()
    peak = float(np.abs(wav).max())
    assert peak == pytest.approx(10 ** (PEAK_DBFS / 20), rel=1e-3)
    rms = float(np.sqrt(np.mean(wav.astype(np.float64) ** 2)))
    assert 0.03 < rms < 0.5
    assert meta["timbre"] == timbre and meta["seconds"] == seconds

    # The spectrum follows the score: pitch-class energy correlates with the
    # notes' sounding time, and better than with any transposition of them.
    notes, _ = chorale_notes(CHORALE)
    audio = _chroma(wav, SR)
    score = _score_chroma(notes, seconds)
    corr = [np.corrcoef(np.roll(score, k), audio)[0, 1] for k in range(12)]
    assert corr[0] > 0.9 and corr[0] > max(corr[1:]) + 0.1
    assert audio.argmax() in np.argsort(score)[-3:]


def test_render_chorale_loops_instead_of_padding():
    _, meta = chorale_notes(CHORALE)
    seconds = 2.5 * meta["duration"]
    wav, _ = render_chorale(CHORALE, sample_rate=8000, seconds=seconds)
    assert wav.shape == (round(seconds * 8000),)
    # Every 2-second window has sound: no silent padding after the piece.
    window = 2 * 8000
    for start in range(0, len(wav) - window, window):
        assert np.sqrt(np.mean(wav[start : start + window] ** 2)) > 0.02

    full, _ = render_chorale(CHORALE, sample_rate=8000)
    assert len(full) / 8000 == pytest.approx(meta["duration"] + TIMBRES["organ"].release, abs=1e-3)
    cropped, _ = render_chorale(CHORALE, sample_rate=8000, seconds=3.0)
    assert cropped.shape == (24000,)


def test_render_chorale_is_deterministic():
    a, meta_a = render_chorale(CHORALE, sample_rate=16000, timbre="strings", seconds=3.0)
    b, meta_b = render_chorale(CHORALE, sample_rate=16000, timbre="strings", seconds=3.0)
    assert a.tobytes() == b.tobytes() and meta_a == meta_b


# ---------------------------------------------------------------- synth


def test_render_notes_errors():
    with pytest.raises(ValueError, match="Expected argument `timbre`"):
        render_notes([(0.0, 1.0, 60, 100)], timbre="kazoo")
    with pytest.raises(ValueError, match="Expected argument `notes`"):
        render_notes([(0.0, 1.0, 60)])
    with pytest.raises(ValueError, match="non-negative"):
        render_notes([(0.0, -1.0, 60, 100)])
    with pytest.raises(ValueError, match="Expected argument `sample_rate`"):
        render_notes([], sample_rate=0)


@pytest.mark.parametrize("timbre", sorted(TIMBRES))
def test_render_notes_has_no_clicks(timbre):
    # One note, cut off in the middle by `duration`: it starts and ends at
    # zero, and no step at the onset or at the cut is larger than the steps of
    # the tone just after (a click would be).
    wav = render_notes([(0.1, 1.0, 69, 100)], sample_rate=SR, duration=0.6, timbre=timbre)
    onset, edge = round(0.1 * SR), round(0.01 * SR)
    assert not wav[:onset].any() and abs(wav[-1]) < 1e-3
    steps = np.abs(np.diff(wav.astype(np.float64)))
    assert (
        steps[onset - 1 : onset + edge].max() <= 1.25 * steps[onset + edge : onset + 4 * edge].max()
    )
    assert steps[-edge:].max() <= 1.25 * steps[-4 * edge : -edge].max()
    silent = render_notes([(0.0, 1.0, 60, 0)], sample_rate=SR, duration=0.1)
    assert not silent.any()


# ---------------------------------------------------------------- dataset


def _files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_write_chorale_dataset(tmp_path):
    kwargs = dict(num_clips=3, seconds=4.0, sample_rate=SR, seed=0)
    folder = tmp_path / "a"
    records = write_chorale_dataset(folder, **kwargs)
    assert len(records) == 3

    manifest = [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]
    assert manifest == records
    sources = []
    for record in records:
        wav_path = folder / record["path"]
        info = sf.info(str(wav_path))
        assert (info.samplerate, info.channels, info.frames) == (SR, 1, 4 * SR)
        assert info.subtype == "PCM_16"
        data, sr = sf.read(str(wav_path), dtype="float32")
        assert sr == SR and data.ndim == 1 and 0.01 < np.sqrt(np.mean(data**2)) < 0.5
        sidecar = json.loads(wav_path.with_suffix(".json").read_text())
        assert sidecar["description"] == record["description"]
        assert sidecar["duration"] == record["duration"] == 4.0
        assert sidecar["sample_rate"] == SR
        assert sidecar["source"].startswith("music21 corpus bach/bwv")
        assert sidecar["description"].startswith("Bach chorale BWV")
        assert sidecar["timbre"] in sidecar["description"]
        assert {"title", "key", "bpm"} <= set(sidecar)
        sources.append(sidecar["source"])
    assert len(set(sources)) == 3  # distinct chorales
    params = json.loads((folder / "dataset.json").read_text())
    assert params["num_clips"] == 3 and params["seed"] == 0
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]

    # A second call finds the complete dataset and writes nothing.
    mtimes = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    assert write_chorale_dataset(folder, **kwargs) == records
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == mtimes

    # Same arguments, another folder: bitwise identical files.
    twin = tmp_path / "b"
    write_chorale_dataset(twin, **kwargs)
    assert _files(twin) == _files(folder)

    # Another seed picks other chorales.
    other = write_chorale_dataset(tmp_path / "c", **{**kwargs, "seed": 1})
    assert [r["path"] for r in other] != [r["path"] for r in records]


def test_write_chorale_dataset_rewrites_on_new_arguments(tmp_path):
    first = write_chorale_dataset(tmp_path, num_clips=3, seconds=1.0, sample_rate=8000, seed=3)
    second = write_chorale_dataset(tmp_path, num_clips=2, seconds=1.0, sample_rate=8000, seed=4)
    names = {p.name for p in tmp_path.iterdir()}
    expected = {r["path"] for r in second} | {r["path"][:-4] + ".json" for r in second}
    assert names == expected | {"manifest.jsonl", "dataset.json"}  # stale clips removed
    assert json.loads((tmp_path / "dataset.json").read_text())["seed"] == 4
    assert first != second

    # An incomplete dataset (a clip lost) is rendered again.
    os.remove(tmp_path / second[0]["path"])
    assert write_chorale_dataset(tmp_path, num_clips=2, seconds=1.0, sample_rate=8000, seed=4)
    assert (tmp_path / second[0]["path"]).is_file()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_clips": 0}, "`num_clips`"),
        ({"num_clips": 100_000}, "`num_clips` to be at most"),
        ({"seconds": -1.0}, "`seconds`"),
        ({"timbres": ("organ", "kazoo")}, "`timbres`"),
        ({"timbres": "organ"}, "`timbres`"),
        ({"sample_rate": 16000.0}, "`sample_rate`"),
        ({"seed": -1}, "`seed`"),
    ],
)
def test_write_chorale_dataset_errors(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        write_chorale_dataset(tmp_path, **kwargs)
