"""AudioFolderDataModule and ChoraleDataModule on real files of several formats and rates."""

from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path

import pytest
import torch
from audio_fixtures import write_audio, write_empty_wav, write_garbage

from lightning_noiseprobe._errors import NoiseProbeError
from lightning_noiseprobe.data.datamodule import (
    AudioFolderDataModule,
    AudioSegmentDataset,
    ChoraleDataModule,
    EpochSampler,
)

SR = 32000
SEG = 0.5  # seconds
SEG_SAMPLES = round(SEG * SR)

# name -> (sample rate, channels, seconds, sidecar description)
GOOD = {
    "a.wav": (32000, 1, 1.5, "organ chorale"),
    "b.flac": (44100, 2, 1.5, "string quartet"),
    "c.mp3": (48000, 2, 1.5, None),
    "d.ogg": (44100, 1, 1.5, "piano"),
    "sub/e.wav": (48000, 2, 1.5, None),
    "f.flac": (32000, 1, 1.5, "flute"),
}


def _write_folder(folder: Path) -> Path:
    for name, (sr, ch, seconds, desc) in GOOD.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        write_audio(path, sr, ch, seconds)
        if desc is not None:
            path.with_suffix(".json").write_text(json.dumps({"description": desc}))
    write_garbage(folder / "corrupt.wav")
    write_audio(folder / "short.flac", 44100, 1, 0.2)
    write_empty_wav(folder / "empty.wav")
    return folder


@pytest.fixture(scope="module")
def music_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_folder(tmp_path_factory.mktemp("music"))


def _dm(folder: Path, **kwargs) -> AudioFolderDataModule:
    kwargs = {"segment_seconds": SEG, "batch_size": 2, "val_fraction": 0.2, **kwargs}
    return AudioFolderDataModule(folder, **kwargs)


def _all(loader) -> list[dict]:
    return list(loader)


def test_mixed_folder_batches_and_skips(music_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    dm = _dm(music_dir)
    with caplog.at_level(logging.WARNING, logger="lightning_noiseprobe.data.datamodule"):
        dm.setup("fit")
    warning = " ".join(r.getMessage() for r in caplog.records)
    for bad in ("corrupt.wav", "short.flac", "empty.wav"):
        assert bad in warning
    assert {Path(s["path"]).name for s in dm.skipped} == {"corrupt.wav", "short.flac", "empty.wav"}
    assert "too short" in warning and "unreadable" in warning

    assert len(dm.train_dataset) + len(dm.val_dataset) == len(GOOD)  # 1 val segment per file
    batches = _all(dm.train_dataloader()) + _all(dm.val_dataloader())
    seen = {}
    for batch in batches:
        assert set(batch) == {"wav", "description", "path"}
        wav = batch["wav"]
        assert wav.dtype == torch.float32 and wav.shape[1:] == (1, SEG_SAMPLES)
        assert wav.shape[0] == len(batch["path"]) == len(batch["description"]) <= 2
        assert torch.isfinite(wav).all() and wav.abs().amax() > 1e-3  # real music, not padding
        for path, desc in zip(batch["path"], batch["description"], strict=True):
            seen[Path(path).relative_to(music_dir).as_posix()] = desc
    assert seen == {name: spec[3] for name, spec in GOOD.items()}


def test_stereo_output_and_workers(music_dir: Path) -> None:
    dm0 = _dm(music_dir, channels=2, seed=3)
    dm1 = _dm(music_dir, channels=2, seed=3, num_workers=1)
    dm0.setup("fit")
    dm1.setup("fit")
    assert pickle.loads(pickle.dumps(dm1.train_dataset)).segment_offset(
        0
    ) == dm1.train_dataset.segment_offset(0)
    b0, b1 = _all(dm0.train_dataloader()), _all(dm1.train_dataloader())
    assert [b["path"] for b in b0] == [b["path"] for b in b1]
    for x, y in zip(b0, b1, strict=True):
        assert x["wav"].shape[1:] == (2, SEG_SAMPLES)
        torch.testing.assert_close(x["wav"], y["wav"], rtol=0, atol=0)


def test_manifest_and_default_description(music_dir: Path, tmp_path: Path) -> None:
    manifest = tmp_path / "meta" / "manifest.jsonl"
    manifest.parent.mkdir()
    relative = Path(*([".."] * (len(manifest.parent.parts) - 1))) / music_dir.relative_to("/")
    lines = [
        {"path": str(relative / "a.wav"), "description": "from the manifest"},  # relative
        {"path": str(music_dir / "c.mp3"), "description": "lute"},  # absolute
        {"path": "missing.wav", "description": "not there"},
    ]
    manifest.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    dm = _dm(music_dir, manifest=manifest, default_description="music")
    dm.setup()
    descs = {
        Path(f.path).name: f.description for f in dm.train_dataset.files + dm.val_dataset.files
    }
    assert descs == {
        "a.wav": "from the manifest",  # the manifest wins over the sidecar
        "b.flac": "string quartet",  # sidecar
        "c.mp3": "lute",
        "d.ogg": "piano",
        "e.wav": "music",  # neither: the default
        "f.flac": "flute",
    }

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"path": "a.wav"}\nnot json\n')
    with pytest.raises(NoiseProbeError, match=r"bad\.jsonl' line 2"):
        _dm(music_dir, manifest=bad).setup()


def test_all_bad_folder(tmp_path: Path) -> None:
    write_garbage(tmp_path / "x.wav")
    write_audio(tmp_path / "y.wav", 32000, 1, 0.1)
    with pytest.raises(NoiseProbeError, match=rf"folder '{tmp_path}'.*all 2 were skipped"):
        _dm(tmp_path).setup()
    empty = tmp_path / "none"
    empty.mkdir()
    with pytest.raises(NoiseProbeError, match=rf"folder '{empty}' but found none"):
        _dm(empty).setup()


def test_determinism(music_dir: Path) -> None:
    a, b = _dm(music_dir, seed=7), _dm(music_dir, seed=7)
    a.setup()
    b.setup()
    la, lb = a.train_dataloader(), b.train_dataloader()
    epoch0 = _all(la)
    for x, y in zip(epoch0, _all(lb), strict=True):
        assert x["path"] == y["path"]
        assert torch.equal(x["wav"], y["wav"])
    assert torch.equal(
        torch.cat([x["wav"] for x in _all(la)]), torch.cat([x["wav"] for x in epoch0])
    )

    n = len(a.train_dataset)
    offsets = [[a.train_dataset.segment_offset(e * n + i)[1] for i in range(n)] for e in range(3)]
    assert offsets[0] != offsets[1] != offsets[2]
    la.sampler.set_epoch(1)  # what Lightning's fit loop calls every epoch
    epoch1 = _all(la)
    by_path = {p: w for x in epoch1 for p, w in zip(x["path"], x["wav"], strict=True)}
    assert any(
        not torch.equal(by_path[p], w)
        for x in epoch0
        for p, w in zip(x["path"], x["wav"], strict=True)
    )

    val = a.val_dataloader()
    v0 = _all(val)
    val.sampler.set_epoch(5)
    for x, y in zip(v0, _all(val), strict=True):
        assert x["path"] == y["path"] and torch.equal(x["wav"], y["wav"])


def test_sampler_and_fixed_segments() -> None:
    s = EpochSampler(5, seed=1)
    s.set_epoch(3)
    assert sorted(s) == list(range(15, 20)) and list(s) == list(s)
    s.set_epoch(4)
    assert sorted(s) == list(range(20, 25))

    from lightning_noiseprobe.data.datamodule import AudioFile

    f = AudioFile("x.wav", None, 32000, 1, 3500, 3500)
    ds = AudioSegmentDataset([f], 32000, 1, 1000, random_offsets=False, segments_per_file=4)
    assert [ds.segment_offset(k) for k in range(len(ds))] == [(0, 0), (0, 1250), (0, 2500)]  # 3 fit
    ds = AudioSegmentDataset([f], 32000, 1, 1000, random_offsets=False, segments_per_file=2)
    assert [o for _, o in (ds.segment_offset(k) for k in range(len(ds)))] == [0, 2500]


def test_splits(tmp_path: Path) -> None:
    for i in range(10):
        write_audio(tmp_path / f"clip{i:02d}.wav", 32000, 1, 0.6)
    kw = {"val_fraction": 0.2, "probe_fraction": 0.25, "seed": 1}
    dm = _dm(tmp_path, **kw)
    probe = dm.probe_files()  # before setup, e.g. to build the callback
    dm.setup()
    train = [f.path for f in dm.train_dataset.files]
    val = [f.path for f in dm.val_dataset.files]
    assert (len(train), len(val), len(probe)) == (6, 2, 2)
    assert (
        not (set(train) & set(val))
        and not (set(train) & set(probe))
        and not (set(val) & set(probe))
    )
    assert len(set(train) | set(val) | set(probe)) == 10

    again = _dm(tmp_path, **kw)
    again.setup()
    assert again.probe_files() == probe and [f.path for f in again.val_dataset.files] == val
    other = _dm(tmp_path, **{**kw, "seed": 2})
    assert other.probe_files() != probe or [f.path for f in other.splits.val] != val

    assert _dm(tmp_path).probe_files() == []  # no probe split by default
    probe_dir = tmp_path / "probe"
    probe_dir.mkdir()
    write_audio(probe_dir / "p.flac", 48000, 2, 0.3)  # shorter than a segment: fine for probing
    dm = _dm(tmp_path, probe_dir=probe_dir)
    dm.setup()
    assert dm.probe_files() == [str(probe_dir / "p.flac")]
    assert all("probe" not in f.path for f in dm.train_dataset.files + dm.val_dataset.files)

    val_dir = tmp_path / "held"
    val_dir.mkdir()
    write_audio(val_dir / "v.ogg", 44100, 1, 1.2)
    dm = _dm(tmp_path, val_dir=val_dir, probe_dir=probe_dir, val_segments_per_file=2)
    dm.setup()
    assert len(dm.train_dataset) == 10 and len(dm.val_dataset) == 2

    few = tmp_path / "few"
    few.mkdir()
    write_audio(few / "only.wav", 32000, 1, 0.6)
    with pytest.raises(NoiseProbeError, match="found 1"):
        _dm(few).setup()


def test_hyperparameters_saved(music_dir: Path) -> None:
    dm = _dm(music_dir, seed=5)
    assert dm.hparams["seed"] == 5 and dm.hparams["segment_seconds"] == SEG
    assert Path(dm.hparams["train_dir"]) == music_dir


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batch_size": -1}, r"`batch_size`.*-1"),
        ({"batch_size": 2.0}, r"`batch_size`.*2\.0"),
        ({"segment_seconds": 0}, r"`segment_seconds`.*got 0"),
        ({"segment_seconds": float("nan")}, r"`segment_seconds`.*nan"),
        ({"sample_rate": 0}, r"`sample_rate`.*got 0"),
        ({"channels": True}, r"`channels`.*True"),
        ({"num_workers": -2}, r"`num_workers`.*-2"),
        ({"seed": -1}, r"`seed`.*-1"),
        ({"val_fraction": 0.0}, r"`val_fraction`.*0\.0"),
        ({"probe_fraction": 1.5}, r"`probe_fraction`.*1\.5"),
        ({"val_fraction": 0.5, "probe_fraction": 0.5}, r"below 1 but got 1\.0"),
        ({"default_description": 3}, r"`default_description`.*3"),
        ({"manifest": "/no/such/manifest.jsonl"}, r"`manifest`.*no/such"),
        ({"val_dir": "/no/such/val"}, r"`val_dir`.*'/no/such/val' does not exist"),
    ],
)
def test_bad_arguments(music_dir: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(NoiseProbeError, match=match):
        _dm(music_dir, **kwargs)


def test_missing_train_dir(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(NoiseProbeError, match=rf"`train_dir`.*'{missing}' does not exist"):
        AudioFolderDataModule(missing)
    with pytest.raises(NoiseProbeError, match=r"`train_dir`.*None"):
        AudioFolderDataModule(None)  # type: ignore[arg-type]


def test_chorale_datamodule(tmp_path: Path) -> None:
    pytest.importorskip("music21")
    root = tmp_path / "chorales"
    with pytest.raises(NoiseProbeError, match=r"`segment_seconds`.*5\.0"):
        ChoraleDataModule(root, num_clips=6, clip_seconds=4.0, segment_seconds=5.0)
    with pytest.raises(NoiseProbeError, match=r"`num_clips`.*0"):
        ChoraleDataModule(root, num_clips=0)

    dm = ChoraleDataModule(root, num_clips=6, clip_seconds=4.0, segment_seconds=2.0, batch_size=3)
    assert dm.hparams["num_clips"] == 6 and dm.hparams["clip_seconds"] == 4.0
    dm.prepare_data()
    dm.prepare_data()  # idempotent
    dm.setup("fit")
    assert (len(dm.train_dataset), len(dm.val_dataset), len(dm.probe_files())) == (4, 1, 1)
    batch = next(iter(dm.train_dataloader()))
    assert batch["wav"].shape == (3, 1, 64000)
    for path, desc in zip(batch["path"], batch["description"], strict=True):
        sidecar = json.loads(Path(path).with_suffix(".json").read_text())
        assert desc == sidecar["description"] and desc.startswith("Bach chorale")

    fresh = ChoraleDataModule(
        tmp_path / "other", num_clips=6, clip_seconds=4.0, segment_seconds=2.0
    )
    assert len(fresh.probe_files()) == 1  # writes the data on first use
