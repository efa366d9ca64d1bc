"""Figures and audio examples reach every attached logger that takes them, in a real Trainer.fit.

Real loggers, offline: TensorBoard event files, an MLflow file store and a W&B offline run,
each read back from disk.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from audio_fixtures import write_audio
from lightning.pytorch.loggers import CSVLogger, MLFlowLogger, TensorBoardLogger
from lightning_helpers import ProtocolModule
from lightning_helpers import cpu_trainer as _trainer
from lightning_helpers import tiny_probe as _probe

from lightning_noiseprobe.audio import load_audio

FIGURES = ("delta_curve", "loss_vs_length", "history")
PNG = b"\x89PNG"
pytestmark = pytest.mark.latest  # also in the newest-release environment (make test-latest)


@pytest.fixture(scope="module")
def probe_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("probe_clips")
    write_audio(d / "a.wav", 32000, 1, seconds=4.2)
    return d


def _fit(probe_dir, tmp_path, loggers, epochs=2):
    probe = _probe(probe_dir, tmp_path, log_figures=True, log_audio=True)
    trainer = _trainer(tmp_path, [probe], max_epochs=epochs, logger=loggers, num_sanity_val_steps=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(ProtocolModule())
    assert [h["probe_ok"] for h in probe.history] == [1] * epochs
    return probe, [str(w.message) for w in caught]


def _tensorboard_media(logger):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(logger.log_dir, size_guidance={"images": 0, "audio": 0})
    acc.Reload()
    images = {t: len(acc.Images(t)) for t in acc.Tags()["images"]}
    return images, acc.Tags()["audio"]


def _assert_tensorboard_got_everything(logger, epochs):
    images, audio = _tensorboard_media(logger)
    assert images == {f"noiseprobe/{name}": epochs for name in FIGURES}
    assert len(audio) == 2 and all(t.startswith("noiseprobe/audio/") for t in audio)


def _mlflow_artifacts(logger) -> Path:
    from urllib.parse import urlparse
    from urllib.request import url2pathname

    uri = logger.experiment.get_run(logger.run_id).info.artifact_uri
    return Path(url2pathname(urlparse(uri).path))


def _mlflow(tmp_path, monkeypatch):
    """An MLFlowLogger on a local file store (mlflow 3 wants an explicit opt-in for it)."""
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    return MLFlowLogger(experiment_name="probe", tracking_uri=f"file:{tmp_path}/mlruns")


def test_tensorboard_and_mlflow_both_get_figures_and_audio(probe_dir, tmp_path, monkeypatch):
    tb = TensorBoardLogger(tmp_path, name="tb", version=0)
    mlf = _mlflow(tmp_path, monkeypatch)
    csv = CSVLogger(tmp_path, name="csv")  # takes no media: skipped without a word
    probe, messages = _fit(probe_dir, tmp_path, [tb, mlf, csv])
    assert not [m for m in messages if "NoiseProbeCallback" in m], messages

    _assert_tensorboard_got_everything(tb, epochs=2)
    root = _mlflow_artifacts(mlf)
    steps = sorted({h["step"] for h in probe.history})
    for name in FIGURES:
        pngs = sorted((root / "noiseprobe" / name).glob("*.png"))
        assert [p.name for p in pngs] == [f"step_{s:06d}.png" for s in steps]
        assert all(p.read_bytes()[:4] == PNG for p in pngs)
    wavs = sorted((root / "noiseprobe" / "audio").glob("*.wav"))
    assert len(wavs) == 2  # clean and perturbed, once
    wav, rate = load_audio(wavs[0])
    assert wav.shape[0] == 1 and rate == 32000 and wav.abs().max() > 0
    # the scalars too (they always reached every logger)
    run = mlf.experiment.get_run(mlf.run_id)
    assert "noiseprobe/peak_sharpness" in run.data.metrics


def test_tensorboard_and_wandb_offline_both_get_figures_and_audio(probe_dir, tmp_path, monkeypatch):
    import wandb
    from lightning.pytorch.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    tb = TensorBoardLogger(tmp_path, name="tb", version=0)
    wb = WandbLogger(project="noiseprobe-test", save_dir=str(tmp_path), offline=True)
    try:
        _, messages = _fit(probe_dir, tmp_path, [tb, wb], epochs=1)
        run_dir = Path(wb.experiment.dir).parent  # .../wandb/offline-run-*/files -> run folder
    finally:
        wandb.finish()
    assert not [m for m in messages if "NoiseProbeCallback" in m], messages

    _assert_tensorboard_got_everything(tb, epochs=1)
    media = run_dir / "files" / "media"
    for name in FIGURES:
        pngs = list((media / "images" / "noiseprobe").glob(f"{name}_*.png"))
        assert len(pngs) == 1, sorted(p.name for p in media.rglob("*"))
        assert all(p.read_bytes()[:4] == PNG for p in pngs)
    wavs = list((media / "audio" / "noiseprobe" / "audio").glob("*.wav"))
    assert len(wavs) == 2, sorted(p.name for p in media.rglob("*"))
    assert load_audio(wavs[0])[1] == 32000


def test_a_logger_failing_on_figures_is_warned_once_and_training_goes_on(
    probe_dir, tmp_path, monkeypatch
):
    tb = TensorBoardLogger(tmp_path, name="tb", version=0)
    mlf = _mlflow(tmp_path, monkeypatch)

    def broken(*args, **kwargs):
        raise OSError("artifact store unreachable")

    monkeypatch.setattr(mlf.experiment, "log_figure", broken)
    probe, messages = _fit(probe_dir, tmp_path, [mlf, tb], epochs=2)
    failed = [m for m in messages if "MLFlowLogger failed" in m]
    assert len(failed) == 1 and "artifact store unreachable" in failed[0], messages
    assert [f["logger"] for f in probe._media.failed] == ["MLFlowLogger", "MLFlowLogger"]
    _assert_tensorboard_got_everything(tb, epochs=2)  # the logger after it still got all
    assert "noiseprobe/peak_sharpness" in mlf.experiment.get_run(mlf.run_id).data.metrics
