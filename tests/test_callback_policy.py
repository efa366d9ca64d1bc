"""The callback's failure policy through the user's path: the README recipe's monitors
(`EarlyStopping` / `ModelCheckpoint` in their default settings) in a real `Trainer.fit`."""

from __future__ import annotations

import math
import re

import lightning.pytorch as pl
import pytest
import torch
from audio_fixtures import write_audio
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning_helpers import ProtocolModule, cpu_trainer, make_protocol_module
from lightning_helpers import tiny_probe as _probe

from lightning_noiseprobe._errors import NoiseProbeError
from lightning_noiseprobe.callback import NoiseProbeCallback

PROBE = {"onset": 60, "lengths": (5, 20, 60), "clip_seconds": 4.0}
KEY = "noiseprobe/peak_sharpness"


@pytest.fixture(scope="module")
def probe_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("probe_clips")
    write_audio(d / "a.wav", 32000, 1, seconds=4.2)
    write_audio(d / "b.flac", 48000, 2, seconds=4.2)
    return d


def _trainer(tmp_path, callbacks, **kw):
    return cpu_trainer(tmp_path, callbacks, num_sanity_val_steps=0, **kw)


def _fail_at(monkeypatch, epochs: set[int], trainer_ref: list) -> None:
    """Make the probe's scoring raise a simulated out-of-memory error at the given epochs."""
    import lightning_noiseprobe.probe.runner as runner

    real = runner.score_probe_set

    def flaky(*args, **kwargs):
        if trainer_ref[0].current_epoch in epochs:
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "score_probe_set", flaky)


class Seen(Callback):
    """After the monitors ran (Lightning runs them after every other callback at the end of
    the training epoch): what they saw and their state, per epoch."""

    def __init__(self, early: EarlyStopping):
        self.early = early
        self.rows: list[dict] = []

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch > 0:
            self._record(trainer)

    def on_train_end(self, trainer, pl_module):
        self._record(trainer)

    def _record(self, trainer):
        self.rows.append(
            {
                "seen": float(trainer.callback_metrics[KEY]),
                "wait": self.early.wait_count,
                "best": float(self.early.best_score),
            }
        )


def test_transient_failures_keep_the_readme_recipe_running(probe_dir, tmp_path, monkeypatch):
    """Failures at epoch 0 (no value yet) and epoch 2: the run completes, a failed epoch is
    never the best checkpoint, EarlyStopping's patience is never reset by it, the failure is
    visible in the warning, the `probe_ok` scalar, the history and TensorBoard."""
    ref: list = [None]
    _fail_at(monkeypatch, {0, 2}, ref)
    probe = _probe(probe_dir, tmp_path)
    early = EarlyStopping(monitor=KEY, mode="max", patience=3)  # README settings
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor=KEY, mode="max")
    seen = Seen(early)
    logger = TensorBoardLogger(tmp_path, name="tb", version=0)
    trainer = _trainer(tmp_path, [probe, early, ckpt, seen], max_epochs=4, logger=logger)
    ref[0] = trainer
    pl.seed_everything(0)
    model = ProtocolModule()
    with pytest.warns(UserWarning, match=r"probe failed at epoch 0 .*out of memory"):
        trainer.fit(model)

    assert trainer.current_epoch == 4 and len(model.train_losses) == 8  # all epochs trained
    assert [h["probe_ok"] for h in probe.history] == [0, 1, 0, 1]
    assert "out of memory" in probe.history[0]["error"] and len(probe.failures) == 2
    good = {h["epoch"]: h["peak_sharpness"] for h in probe.history if h["probe_ok"]}
    assert all(math.isfinite(v) for v in good.values())

    # epoch 0: no value yet -> the worst finite value; epoch 2: the last good (epoch 1) value
    assert seen.rows[0]["seen"] == -torch.finfo(torch.float32).max
    assert seen.rows[2]["seen"] == pytest.approx(good[1], rel=1e-6)
    assert seen.rows[0]["wait"] == 0
    # a failed epoch is never an improvement: patience counts on from the epoch before
    assert seen.rows[2]["wait"] == seen.rows[1]["wait"] + 1
    assert seen.rows[2]["best"] == seen.rows[1]["best"]

    # the best checkpoint is a successful epoch's, with its real score
    best_epoch = int(re.search(r"epoch=(\d+)", ckpt.best_model_path).group(1))
    assert best_epoch in good
    assert float(ckpt.best_model_score) == pytest.approx(max(good.values()), rel=1e-6)

    # TensorBoard: probe_ok at every epoch, real metrics only at the successful ones
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(logger.log_dir, size_guidance={"scalars": 0})
    acc.Reload()
    assert [e.value for e in acc.Scalars("noiseprobe/probe_ok")] == [0.0, 1.0, 0.0, 1.0]
    assert [e.value for e in acc.Scalars(KEY)] == pytest.approx([good[1], good[3]], rel=1e-5)


def test_nan_model_outputs_stop_early_stopping_cleanly(probe_dir, tmp_path):
    """A model whose weights turn NaN: the metrics are logged as NaN, the warning says the
    model's outputs are NaN, and EarlyStopping(check_finite=True) stops the run itself."""

    class Poison(Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            if trainer.current_epoch == 1:
                with torch.no_grad():
                    for p in pl_module.lm.parameters():
                        p.fill_(float("nan"))

    probe = _probe(probe_dir, tmp_path)
    early = EarlyStopping(monitor=KEY, mode="max", patience=3)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor=KEY, mode="max")
    trainer = _trainer(tmp_path, [Poison(), probe, early, ckpt], max_epochs=5)
    with pytest.warns(UserWarning, match="model's outputs are NaN"):
        trainer.fit(ProtocolModule())
    # poisoned after epoch 1's validation: epoch 2's probe sees NaN, EarlyStopping stops there
    assert trainer.should_stop and early.stopped_epoch == 2  # stopped by EarlyStopping, not a crash
    assert "not finite" in (early.stopping_reason_message or "")
    assert [h["probe_ok"] for h in probe.history] == [1, 1, 0]
    assert math.isnan(float(trainer.callback_metrics[KEY]))
    assert "epoch=2" not in ckpt.best_model_path  # the NaN epoch ranks last


def test_unusable_probe_set_fails_before_training(tmp_path):
    """All clips too short or unreadable: one error naming the files and the shortest usable
    clip, before the first training step."""
    d = tmp_path / "clips"
    d.mkdir()
    write_audio(d / "short.wav", 32000, 1, seconds=1.0)
    (d / "broken.mp3").write_bytes(b"\xff\xfb not an mp3 at all" * 10)
    model = ProtocolModule()
    probe = NoiseProbeCallback(probe_audio=d, cache_dir="none", **PROBE)
    with pytest.raises(NoiseProbeError) as info:
        _trainer(tmp_path, [probe], max_epochs=1).fit(model)
    message = str(info.value)
    assert "short.wav" in message and "broken.mp3" in message
    assert "at least 2.50 s" in message  # (60 + 60 + 5 margin) tokens at 50 Hz
    assert model.train_losses == []  # no training step ran


def test_a_monitor_of_an_unknown_metric_is_refused_before_training(probe_dir, tmp_path):
    model = ProtocolModule()
    early = EarlyStopping(monitor="noiseprobe/peak_sharpnes", mode="max")
    with pytest.raises(
        NoiseProbeError, match=r"peak_sharpnes.*Did you mean.*'noiseprobe/peak_sharpness'"
    ):
        _trainer(tmp_path, [_probe(probe_dir, tmp_path), early], max_epochs=1).fit(model)
    assert model.train_losses == []


def test_resume_with_a_changed_spec_keeps_the_tagged_history(probe_dir, tmp_path):
    first = _probe(probe_dir, tmp_path)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "c", save_last=True)
    _trainer(tmp_path, [first, ckpt], max_epochs=1).fit(ProtocolModule())
    old_hash = first.spec.hash()
    assert [h["spec_hash"] for h in first.history] == [old_hash]

    changed = _probe(probe_dir, tmp_path, lengths=(5, 20))
    assert changed.state_key == first.state_key  # identity does not depend on the spec
    with pytest.warns(UserWarning, match="probe spec changed"):
        _trainer(tmp_path, [changed], max_epochs=2).fit(
            ProtocolModule(), ckpt_path=ckpt.last_model_path
        )
    assert [h["epoch"] for h in changed.history] == [0, 1]
    assert [h["spec_hash"] for h in changed.history] == [old_hash, changed.spec.hash()]
    assert changed.history[0]["peak_sharpness"] == pytest.approx(first.history[0]["peak_sharpness"])

    same = _probe(probe_dir, tmp_path)
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*probe spec changed.*")
        _trainer(tmp_path, [same], max_epochs=2).fit(
            ProtocolModule(), ckpt_path=ckpt.last_model_path
        )
    assert [h["spec_hash"] for h in same.history] == [old_hash, old_hash]


def test_figures_reach_a_pytorch_lightning_tensorboard_logger(probe_dir, tmp_path):
    """Many MusicGen fine-tunes import `pytorch_lightning`, not `lightning.pytorch`."""
    import pytorch_lightning as ptl
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    module = make_protocol_module(ptl.LightningModule)()
    logger = ptl.loggers.TensorBoardLogger(tmp_path, name="tb", version=0)
    trainer = ptl.Trainer(
        default_root_dir=tmp_path,
        max_epochs=1,
        accelerator="cpu",
        logger=logger,
        callbacks=[_probe(probe_dir, tmp_path)],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(module)
    acc = EventAccumulator(logger.log_dir, size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    assert {"noiseprobe/delta_curve", "noiseprobe/loss_vs_length"} <= set(acc.Tags()["images"])
    assert len(acc.Scalars(KEY)) == 1


def test_no_tensorboard_logger_warns_once(probe_dir, tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    probe = _probe(probe_dir, tmp_path)
    with pytest.warns(UserWarning, match="go to a TensorBoardLogger") as record:
        _trainer(tmp_path, [probe], max_epochs=2, logger=CSVLogger(tmp_path)).fit(ProtocolModule())
    assert sum("go to a TensorBoardLogger" in str(w.message) for w in record) == 1
