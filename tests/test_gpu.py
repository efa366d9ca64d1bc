"""What needs CUDA: 16-mixed / bf16-mixed probing and FSDP1 in a real Trainer.

Run on a GPU machine with ``scripts/gpu-check.sh`` (it also runs the CUDA/CPU
noise-equality test and the MusicGen-small-shaped benchmark). Without CUDA every
test here is skipped: fp16 autocast is refused on CPU, and Lightning and torch
refuse FSDP1 without a GPU; the CPU paths are covered by ``test_precision.py``
and ``test_fsdp.py``.
"""

from __future__ import annotations

import pytest
import torch
from audio_fixtures import write_audio
from lightning_helpers import CodeDicts

from lightning_noiseprobe.probe import ProbeSpec, build_probe_set, score_probe_set

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device (scripts/gpu-check.sh)"
)

SPEC = ProbeSpec(onset=60, lengths=(5, 20, 60), clip_seconds=4.0)
# The bf16-mixed bounds of test_precision.py (measured on CPU, 2.5x headroom);
# fp16 has more mantissa than bf16, so they hold for 16-mixed too.
BOUNDS = {"clean_loss": 0.03, "delta_loss": 0.02, "peak_mean": 0.1, "peak_height": 0.1}


def _probe_folder(tmp_path):
    d = tmp_path / "probe"
    d.mkdir()
    write_audio(d / "a.wav", 32000, 1, seconds=4.2)
    write_audio(d / "b.flac", 48000, 2, seconds=4.2)
    write_audio(d / "c.ogg", 44100, 2, seconds=4.2)
    return d


def _fit(tmp_path, precision: str, strategy="auto"):
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader

    from lightning_noiseprobe.callback import NoiseProbeCallback
    from lightning_noiseprobe.module import MusicGenLightningModule

    d = _probe_folder(tmp_path)
    module = MusicGenLightningModule(model="tiny", lr=1e-3, warmup_steps=1, cfg_dropout=0.0)
    probe = NoiseProbeCallback(
        probe_audio=d, spec=SPEC, batch_size=4, cache_dir="none", fatal=True, log_figures=False
    )
    trainer = pl.Trainer(
        accelerator="cuda",
        devices=1,
        strategy=strategy,
        precision=precision,
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[probe],
    )
    trainer.fit(
        module,
        DataLoader(CodeDicts(n=8, seed=0), batch_size=4),
        DataLoader(CodeDicts(n=4, seed=1), batch_size=4),
    )
    return trainer, module, probe, d


def _fp32_reference(state_dict, folder):
    """An fp32 CPU probe of the trained LM weights, for comparison."""
    from lightning_noiseprobe.module import MusicGenLightningModule

    ref = MusicGenLightningModule(model="tiny", cfg_dropout=0.0)
    lm_state = {
        k[len("lm.") :]: v.float().cpu() for k, v in state_dict.items() if k.startswith("lm.")
    }
    ref.lm.load_state_dict(lm_state)
    backend = ref.probe_backend
    return score_probe_set(backend, build_probe_set(backend, folder, SPEC), precision="32")


def _check(probe, reference, precision):
    assert [e["probe_ok"] for e in probe.history] == [1, 1]
    entry = probe.history[-1]
    for name, bound in BOUNDS.items():
        diff = abs(entry[name] - reference.summary[name])
        print(
            f"{precision} {name}: cuda {entry[name]:.5f} fp32 cpu {reference.summary[name]:.5f} |diff| {diff:.5f}"
        )
        assert diff < bound, name
    assert entry["clean_loss"] != reference.summary["clean_loss"]  # it really ran in low precision


@pytest.mark.parametrize("precision", ["16-mixed", "bf16-mixed"])
def test_mixed_precision_probe_in_a_cuda_trainer(precision, tmp_path):
    """The probe runs under the Trainer's autocast on CUDA, every epoch, and its metrics
    stay within the bf16 bounds of an fp32 CPU probe of the same trained weights; the
    codec stays fp32 and on the module's device."""
    _, module, probe, folder = _fit(tmp_path, precision)
    assert module.device.type == "cuda"
    assert all(p.dtype == torch.float32 for p in module.codec.parameters())
    assert all(p.device.type == "cuda" for p in module.codec.parameters())
    _check(probe, _fp32_reference(module.state_dict(), folder), precision)


def test_fsdp1_on_one_device(tmp_path):
    """FSDP1 (``FSDPStrategy``) with the transformer layers wrapped: the probe runs inside
    the root's forward every epoch and agrees with an fp32 probe of the gathered weights."""
    from audiocraft.modules.transformer import StreamingTransformerLayer
    from lightning.pytorch.strategies import FSDPStrategy

    strategy = FSDPStrategy(auto_wrap_policy={StreamingTransformerLayer})
    trainer, _, probe, folder = _fit(tmp_path, "bf16-mixed", strategy=strategy)
    state = trainer.strategy.lightning_module_state_dict()
    assert any(k.startswith("lm.") for k in state)
    _check(probe, _fp32_reference(state, folder), "fsdp1 bf16-mixed")
