"""NoiseProbeCallback inside a real Lightning Trainer on the tiny audiocraft model."""

from __future__ import annotations

import math
import warnings

import lightning.pytorch as pl
import pytest
import torch
from audio_fixtures import write_audio
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning_helpers import ProtocolModule
from lightning_helpers import cpu_trainer as _trainer
from lightning_helpers import tiny_probe as _probe

from lightning_noiseprobe._errors import NoiseProbeError
from lightning_noiseprobe.callback import NoiseProbeCallback

PROBE = {"onset": 60, "lengths": (5, 20, 60), "clip_seconds": 4.0}


@pytest.fixture(scope="module")
def probe_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("probe_clips")
    write_audio(d / "a.wav", 32000, 1, seconds=4.2)
    write_audio(d / "b.flac", 48000, 2, seconds=4.2)
    return d


@pytest.mark.latest
def test_training_is_bitwise_identical_with_and_without_probe(probe_dir, tmp_path):
    def run(with_probe: bool):
        pl.seed_everything(123, workers=True)
        model = ProtocolModule()
        callbacks = [_probe(probe_dir, tmp_path)] if with_probe else []
        _trainer(tmp_path / str(with_probe), callbacks, max_epochs=2).fit(model)
        return model

    plain, probed = run(False), run(True)
    assert len(plain.train_losses) == 4
    assert plain.train_losses == probed.train_losses  # exact float equality, every step
    for (name, a), (_, b) in zip(
        plain.state_dict().items(), probed.state_dict().items(), strict=False
    ):
        assert torch.equal(a, b), name


@pytest.mark.latest
def test_metrics_monitored_logged_and_modes_restored(probe_dir, tmp_path):
    probe = _probe(probe_dir, tmp_path, log_audio=True)
    model = ProtocolModule()
    model.lm.train()
    model.codec.train()  # unusual modes must come back exactly as they were
    model.lm.transformer.layers[0].eval()
    modes = {name: m.training for name, m in model.named_modules()}
    early = EarlyStopping(
        monitor="noiseprobe/peak_sharpness", mode="max", patience=1, min_delta=1e9, strict=True
    )
    ckpt = ModelCheckpoint(
        dirpath=tmp_path / "ckpt",
        monitor="noiseprobe/peak_sharpness",
        mode="max",
        save_top_k=1,
        save_last=True,
    )
    logger = TensorBoardLogger(tmp_path, name="tb", version=0)
    trainer = _trainer(tmp_path, [probe, early, ckpt], max_epochs=6, logger=logger)
    trainer.fit(model)

    # EarlyStopping saw the metric in the same epoch: min_delta is unreachable, patience 1 -> stop after epoch 2
    assert trainer.current_epoch == 2 and trainer.should_stop
    assert [h["epoch"] for h in probe.history] == [0, 1]  # not during the sanity check
    sharp = [h["peak_sharpness"] for h in probe.history]
    assert all(math.isfinite(v) for v in sharp)
    assert float(ckpt.best_model_score) == pytest.approx(max(sharp), rel=1e-6)
    assert "noiseprobe/white/len60/delta_loss" in trainer.callback_metrics
    # the empty-region counts are logged next to the region means
    regions = probe.last_result.analysis.regions
    for k, name in enumerate(("peak", "assimilation", "recovery")):
        count = int((regions[..., k, 1] <= regions[..., k, 0]).sum())
        assert float(trainer.callback_metrics[f"noiseprobe/{name}_empty"]) == count
        assert probe.history[-1][f"{name}_empty"] == count
    assert {name: m.training for name, m in model.named_modules()} == modes

    # TensorBoard event files, read back with tensorboard's own reader
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(logger.log_dir, size_guidance={"images": 0, "scalars": 0, "audio": 0})
    acc.Reload()
    tags = acc.Tags()
    steps = [e.step for e in acc.Scalars("noiseprobe/peak_sharpness")]
    assert len(steps) == 2
    assert [e.value for e in acc.Scalars("noiseprobe/peak_sharpness")] == pytest.approx(
        sharp, rel=1e-5
    )
    assert {"noiseprobe/delta_curve", "noiseprobe/loss_vs_length", "noiseprobe/history"} <= set(
        tags["images"]
    )
    assert len(acc.Images("noiseprobe/delta_curve")) == 2
    assert acc.Images("noiseprobe/history")[-1].encoded_image_string[:4] == b"\x89PNG"
    assert any(t.startswith("noiseprobe/audio/") for t in tags["audio"])
    # the custom-scalars layout is written once
    from tensorboard.plugins.custom_scalar import metadata

    assert metadata.PLUGIN_NAME in acc.PluginTagToContent(
        metadata.PLUGIN_NAME
    ) or acc.PluginTagToContent(metadata.PLUGIN_NAME)

    # resume from the last checkpoint: the history continues
    resumed_probe = _probe(probe_dir, tmp_path)
    resumed = _trainer(tmp_path, [resumed_probe], max_epochs=4)
    resumed.fit(ProtocolModule(), ckpt_path=ckpt.last_model_path)
    assert [h["epoch"] for h in resumed_probe.history] == [0, 1, 2, 3]
    assert resumed_probe.history[0]["peak_sharpness"] == pytest.approx(sharp[0])


def test_validate_and_fast_dev_run_are_skipped_unless_asked(probe_dir, tmp_path):
    model = ProtocolModule()
    probe = _probe(probe_dir, tmp_path)
    _trainer(tmp_path, [probe], max_epochs=1).validate(model)
    assert probe.history == []
    asked = _probe(probe_dir, tmp_path, run_on_validate=True)
    _trainer(tmp_path, [asked], max_epochs=1).validate(model)
    assert len(asked.history) == 1
    quick = _probe(probe_dir, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pl.Trainer(
            fast_dev_run=True, callbacks=[quick], accelerator="cpu", enable_progress_bar=False
        ).fit(model)
    assert quick.history == []


def test_every_n_epochs(probe_dir, tmp_path):
    probe = _probe(probe_dir, tmp_path, every_n_epochs=2)
    _trainer(tmp_path, [probe], max_epochs=4).fit(ProtocolModule())
    assert [h["epoch"] for h in probe.history] == [1, 3]


def test_module_without_protocol_gets_clear_error(probe_dir, tmp_path):
    class Plain(ProtocolModule):
        probe_backend = None

    with pytest.raises(NoiseProbeError, match="probe_backend"):
        _trainer(tmp_path, [_probe(probe_dir, tmp_path)], max_epochs=1).fit(Plain())


def test_missing_probe_audio_lists_options(tmp_path):
    with pytest.raises(NoiseProbeError, match="probe_audio"):
        _trainer(tmp_path, [NoiseProbeCallback(**PROBE)], max_epochs=1).fit(ProtocolModule())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"every_n_epochs": 0}, "every_n_epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"precision": "8"}, "precision"),
        ({"lengths": (-5,)}, "lengths"),
        ({"prefix": "a/b"}, "prefix"),
    ],
)
def test_argument_validation(kwargs, match):
    with pytest.raises(NoiseProbeError, match=match):
        NoiseProbeCallback(**kwargs)


def test_per_field_arguments_are_the_probespec_fields():
    """The callback's per-field keywords are ProbeSpec's fields (names, order, defaults), each
    reaches the spec, and the engine takes exactly those fields and the same other options."""
    import inspect

    from lightning_noiseprobe.probe.engine import NoiseProber
    from lightning_noiseprobe.probe.spec import ProbeSpec

    fields = ProbeSpec.field_defaults()
    params = inspect.signature(NoiseProbeCallback).parameters
    given = {name: p.default for name, p in params.items() if name in fields}
    assert list(given) == list(fields) and given == fields
    assert NoiseProbeCallback(probe_audio="x").spec == ProbeSpec()
    changed = {"smoothing": 3, "margin": 7, "shuffle_length": 100, "shuffle_segments": [10]}
    spec = NoiseProbeCallback(probe_audio="x", **changed).spec
    assert (spec.smoothing, spec.margin, spec.shuffle_length, spec.shuffle_segments) == (
        3,
        7,
        100,
        (10,),
    )
    for name, default in fields.items():
        assert NoiseProber("x", **{name: default}).spec == ProbeSpec()
    with pytest.raises(NoiseProbeError, match="but got onsett"):
        NoiseProber("x", onsett=100)
    engine = inspect.signature(NoiseProber).parameters
    shared = [n for n in engine if n not in ("spec_fields",)]
    assert {n: engine[n].default for n in shared} == {n: params[n].default for n in shared}


def test_spec_with_a_changed_field_is_refused_before_training(probe_dir, tmp_path):
    from lightning_noiseprobe.probe.spec import ProbeSpec

    model = ProtocolModule()
    spec = ProbeSpec(**PROBE)
    with pytest.raises(
        NoiseProbeError,
        match=r"Pass either spec= or per-field arguments, not both; got spec and onset=100, mode='add'",
    ):
        probe = NoiseProbeCallback(probe_audio=probe_dir, spec=spec, onset=100, mode="add")
        _trainer(tmp_path, [probe], max_epochs=1).fit(model)
    assert model.train_losses == []  # nothing trained
    # fields left at their defaults (as LightningCLI passes them) take the spec as it is
    probe = NoiseProbeCallback(
        probe_audio=probe_dir, spec=spec, onset=250, lengths=[5, 10, 50, 100, 150, 200]
    )
    assert probe.spec is spec
