"""The hub's stereo and melody MusicGens, tiny and offline: `tiny-stereo`, `tiny-melody`.

`tiny-stereo` has the layout of `facebook/musicgen-stereo-*` (the mono EnCodec inside
audiocraft's `InterleaveStereoCompressionModel`, 8 codebooks, delays [0,0,1,1,2,2,3,3]);
`tiny-melody` that of `facebook/musicgen-melody` (a `ChromaStemConditioner` melody and the
description prepended to the sequence). Each against audiocraft's own training loss, through
the fast and prefix-sharing paths, `noiseprobe probe` as a subprocess, a real `Trainer`, and
export round trips through audiocraft's own loader.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from audio_fixtures import write_audio
from lightning_helpers import SHARDED_SPEC, cpu_trainer
from proc_helpers import our_tracebacks

from lightning_noiseprobe._errors import NoiseProbeError
from lightning_noiseprobe.backends.audiocraft import EXPORT_FILES, AudiocraftBackend

pytestmark = pytest.mark.filterwarnings("ignore:.*weight_norm.*:FutureWarning")

FAMILY = ("tiny-stereo", "tiny-melody")
_LOADED: dict[str, AudiocraftBackend] = {}


def _backend(name: str) -> AudiocraftBackend:
    """A loaded tiny family member, seed 0, shared by this module's tests. Do not mutate."""
    if name not in _LOADED:
        _LOADED[name] = AudiocraftBackend(model=name, seed=0).load()
    return _LOADED[name]


def _codes(backend: AudiocraftBackend, frames: int = 60, batch: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    wav = 0.1 * torch.randn(batch, backend.channels, frames * 640, generator=g)
    return backend.encode(wav)


@pytest.fixture(scope="module")
def audio_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A stereo and a mono file, 4.2 s: each model converts both to its own channels."""
    folder = tmp_path_factory.mktemp("family_audio")
    write_audio(folder / "a.wav", 48000, 2, seconds=4.2)
    write_audio(folder / "b.flac", 32000, 1, seconds=4.2)
    return folder


def test_stereo_is_the_hubs_layout() -> None:
    from audiocraft.models.encodec import EncodecModel, InterleaveStereoCompressionModel

    backend = _backend("tiny-stereo")
    codec = backend.codec
    assert isinstance(codec, InterleaveStereoCompressionModel) and not codec.per_timestep
    assert isinstance(codec.model, EncodecModel) and codec.model.channels == 1
    assert (backend.sample_rate, backend.channels, backend.frame_rate) == (32000, 2, 50.0)
    assert (backend.num_codebooks, backend.cardinality) == (8, 2048)
    assert list(backend.lm.pattern_provider.delays) == [0, 0, 1, 1, 2, 2, 3, 3]
    g = torch.Generator().manual_seed(1)
    wav = 0.1 * torch.randn(1, 2, 40 * 640, generator=g)
    codes = backend.encode(wav)
    with torch.no_grad():  # left and right codes of each codebook side by side
        left, _ = codec.model.encode(wav[:, :1])
        right, _ = codec.model.encode(wav[:, 1:])
    assert torch.equal(codes[:, 0::2], left) and torch.equal(codes[:, 1::2], right)
    assert backend.supports_prefix_sharing


def test_melody_loads_without_demucs_and_keeps_its_fast_paths() -> None:
    import importlib.util

    from audiocraft.modules.conditioners import ChromaStemConditioner

    backend = _backend("tiny-melody")
    conditioner = backend.lm.condition_provider.conditioners["self_wav"]
    assert isinstance(conditioner, ChromaStemConditioner)
    assert backend.lm.fuser.fuse2cond["prepend"] == ["self_wav", "description"]
    assert not backend.lm.fuser.fuse2cond["cross"]
    # the project's environment has no demucs, and loading and scoring never asked for it
    assert importlib.util.find_spec("demucs") is None and "demucs" not in sys.modules
    assert "demucs" not in vars(conditioner)
    assert backend.supports_prefix_sharing  # prepended conditions no longer turn it off


@pytest.mark.parametrize("name", FAMILY)
def test_nll_equals_audiocraft_training_loss(name: str) -> None:
    from audiocraft.solvers.musicgen import MusicGenSolver

    from lightning_noiseprobe.functional.losses import codebook_cross_entropy

    backend = _backend(name)
    codes = _codes(backend)
    lm, provider = backend.lm, backend.lm.condition_provider
    descriptions = ["calm piano", None]
    # the solver's path: MusicGen's attributes (a null melody for melody models), the
    # condition tensors, compute_predictions, and the solver's own cross-entropy
    attributes = backend.musicgen._prepare_tokens_and_attributes(descriptions, None)[0]
    with torch.no_grad():
        out = lm.compute_predictions(
            codes, [], condition_tensors=provider(provider.tokenize(attributes))
        )
        ref_ce, ref_per_codebook = MusicGenSolver._compute_cross_entropy(
            None, out.logits, codes, out.mask
        )
        nll, mask = backend.token_nll(codes, descriptions)
        fast, fast_mask = backend.token_nll_fast(codes, descriptions)
    assert torch.equal(mask, out.mask) and torch.equal(fast_mask, mask)
    for got in (nll, fast):
        ce, per_codebook = codebook_cross_entropy(got, mask)
        torch.testing.assert_close(ce, ref_ce, atol=1e-5, rtol=0)
        torch.testing.assert_close(per_codebook, torch.stack(ref_per_codebook), atol=1e-5, rtol=0)
    torch.testing.assert_close(fast, nll, atol=1e-5, rtol=0)
    assert not torch.allclose(nll[0], nll[1])  # the description conditions the LM


def test_melody_null_condition_is_the_authors() -> None:
    """The probe's unconditional melody score is the authors' (loss_cal_mgen-melody.py):
    no description and an empty one-sample `self_wav` of length 1."""
    from audiocraft.modules.conditioners import ConditioningAttributes, WavCondition

    from lightning_noiseprobe.functional.losses import token_nll_from_logits

    backend = _backend("tiny-melody")
    codes = _codes(backend, batch=1)
    authors = ConditioningAttributes(
        text={"description": None},
        wav={
            "self_wav": WavCondition(
                wav=torch.zeros(1, 1, 1),
                length=torch.tensor([1]),
                sample_rate=torch.tensor([backend.sample_rate]),
            )
        },
    )
    with torch.no_grad():
        out = backend.lm.compute_predictions(codes, [authors])
        ref, ref_mask = token_nll_from_logits(out.logits, codes, out.mask.bool())
        fast, mask = backend.token_nll_fast(codes)
    assert torch.equal(mask, ref_mask)
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", FAMILY)
def test_shared_prefix_runs_the_prefix_and_prepended_conditions_once(name: str) -> None:
    backend = _backend(name)
    codes = _codes(backend)
    B, K, T = codes.shape
    g = torch.Generator().manual_seed(2)
    variants = codes[:, None].repeat(1, 3, 1, 1)
    for p in range(3):  # copies that differ from frame 30 + p on
        variants[:, p, :, 30 + p :] = torch.randint(0, 2048, (B, K, T - 30 - p), generator=g)
    lengths: list[int] = []
    inner = backend._nll_at_positions

    def recorded(sequence, *args, **kwargs):
        lengths.append(int(sequence.shape[-1]))
        return inner(sequence, *args, **kwargs)

    backend._nll_at_positions = recorded  # type: ignore[method-assign]
    try:
        with torch.no_grad():
            shared, mask = backend.token_nll_shared_prefix(
                codes, variants, shared_frames=30, batch_size=4
            )
    finally:
        del backend._nll_at_positions
    with torch.no_grad():
        full = [backend.token_nll(c) for c in (codes, *variants.unbind(1))]
    torch.testing.assert_close(shared, torch.stack([n for n, _ in full], 1), atol=1e-5, rtol=0)
    assert torch.equal(mask, torch.stack([m for _, m in full], 1))
    # one clean pass, then the 6 copies continue from position 29 in passes of at most 4 rows
    assert lengths == [T, T - 29, T - 29]


def test_demucs_is_built_only_for_a_real_melody(monkeypatch: pytest.MonkeyPatch) -> None:
    from audiocraft.modules.conditioners import ChromaStemConditioner, WavCondition

    from lightning_noiseprobe.backends.audiocraft.conditioners import lazy_chroma_stem_class

    args = {
        "output_dim": 16,
        "sample_rate": 32000,
        "n_chroma": 12,
        "radix2_exp": 14,
        "duration": 30,
    }
    # audiocraft's own class, its stem model replaced by a stand-in (the real one downloads)
    separator = torch.nn.Identity()
    separator.sources = ["drums", "bass", "other", "vocals"]  # type: ignore[assignment]
    fake = types.ModuleType("demucs")
    fake.pretrained = types.SimpleNamespace(get_model=lambda name: separator)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "demucs", fake)
    torch.manual_seed(0)
    own = ChromaStemConditioner(**args, argmax=True)
    torch.manual_seed(0)
    lazy = lazy_chroma_stem_class()(**args, argmax=True)
    assert own.state_dict().keys() == lazy.state_dict().keys()
    assert all(torch.equal(v, lazy.state_dict()[k]) for k, v in own.state_dict().items())
    assert set(vars(own)) ^ set(vars(lazy)) == {"demucs", "stem_indices"}  # nothing else differs
    assert own.chroma_len == lazy.chroma_len
    null = WavCondition(torch.zeros(2, 1, 1), torch.tensor([0, 0]), [32000] * 2, [None] * 2)
    with torch.no_grad():
        for a, b in zip(own(own.tokenize(null)), lazy(lazy.tokenize(null)), strict=True):
            assert torch.equal(a, b)
    assert "demucs" not in vars(lazy)
    assert torch.equal(lazy.stem_indices, own.stem_indices)  # built on first use
    assert lazy.demucs is separator

    # without demucs, a real melody says what is missing (a null one never asks)
    monkeypatch.setitem(sys.modules, "demucs", None)
    melody = 0.1 * torch.randn(1, 1, 32000)
    fresh = lazy_chroma_stem_class()(**args)
    with pytest.raises(NoiseProbeError, match=r"`demucs` package .* not installed"):
        fresh(fresh.tokenize(WavCondition(melody, torch.tensor([32000]), [32000], [None])))


def test_cli_probe_as_a_subprocess_equals_the_python_api(audio_dir: Path, tmp_path: Path) -> None:
    from lightning_noiseprobe.probe import ProbeSpec, build_probe_set, score_probe_set

    spec = ["--onset", "60", "--lengths", "5,20,60", "--clip-seconds", "4", "--cache-dir", "none"]
    stereo_file = audio_dir / "a.wav"  # 48 kHz stereo: per channel to tiny-stereo, mixed for melody
    base = ["probe", "--quiet", "--no-figures", "--audio", str(stereo_file), *spec]
    runs = {name: [*base, "--model", name, "--out", str(tmp_path / name)] for name in FAMILY}
    # `noiseprobe probe ...` for each model: the console script's `main`, in one process to
    # import audiocraft once; codes are bitwise equal to this process's at the same thread count
    calls = " or ".join(f"main({argv!r})" for argv in runs.values())
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import sys; from lightning_noiseprobe.cli import main; sys.exit({calls})",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())},
    )
    assert proc.returncode == 0, proc.stderr
    assert not our_tracebacks(proc.stderr), proc.stderr
    for name in FAMILY:
        metrics = json.loads((tmp_path / name / "metrics.json").read_text())
        backend = _backend(name)
        assert metrics["model"] == name and metrics["num_clips"] == 1 and not metrics["skipped"]
        assert metrics["backend"]["channels"] == backend.channels
        assert metrics["backend"]["num_codebooks"] == backend.num_codebooks
        probe_set = build_probe_set(backend, [str(stereo_file)], ProbeSpec(**SHARDED_SPEC))
        result = score_probe_set(backend, probe_set, batch_size=8)
        for key in ("clean_loss", "delta_loss", "peak_mean", "peak_sharpness"):
            assert metrics["summary"][key] == pytest.approx(result.summary[key], abs=1e-5), key


@pytest.mark.parametrize("name", FAMILY)
def test_fit_with_the_callback(name: str, audio_dir: Path, tmp_path: Path) -> None:
    from lightning_noiseprobe import AudioFolderDataModule, MusicGenLightningModule
    from lightning_noiseprobe.callback import NoiseProbeCallback

    module = MusicGenLightningModule(model=name, lr=3e-3, warmup_steps=1)
    channels = module.probe_backend.channels
    train = tmp_path / "train"
    train.mkdir()
    for i in range(4):
        write_audio(train / f"{i}.wav", 32000, channels, seconds=2.5)
    data = AudioFolderDataModule(
        train, val_dir=audio_dir, channels=channels, segment_seconds=2.0, batch_size=2
    )
    probe = NoiseProbeCallback(
        probe_audio=audio_dir,
        cache_dir=tmp_path / "cache",
        batch_size=4,
        fatal=True,
        **SHARDED_SPEC,
    )
    before = {k: v.clone() for k, v in module.state_dict().items()}
    trainer = cpu_trainer(tmp_path, [probe], max_epochs=2, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=data)

    assert [h["epoch"] for h in probe.history] == [0, 1]
    assert all(h["probe_ok"] == 1 for h in probe.history)
    assert torch.isfinite(torch.tensor([h["peak_sharpness"] for h in probe.history])).all()
    assert torch.isfinite(trainer.callback_metrics["val/ce"])
    after = module.state_dict()
    codec = [k for k in before if k.startswith("codec.")]
    assert codec and all(torch.equal(before[k], after[k]) for k in codec)  # frozen
    assert not all(torch.equal(before[k], after[k]) for k in before if k.startswith("lm."))


def _nll(backend: AudiocraftBackend, codes: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return backend.token_nll(codes, ["calm piano", None])[0]


def test_stereo_export_is_the_hubs_and_loaded_models_export_again(tmp_path: Path) -> None:
    from audiocraft.models.encodec import InterleaveStereoCompressionModel
    from audiocraft.models.musicgen import MusicGen
    from omegaconf import OmegaConf

    backend = _backend("tiny-stereo")
    codes = _codes(backend)
    folder = backend.export(tmp_path / "stereo")
    lm_cfg, codec_cfg = (
        OmegaConf.create(torch.load(folder / f, weights_only=True)["xp.cfg"]) for f in EXPORT_FILES
    )
    assert lm_cfg.interleave_stereo_codebooks.use and lm_cfg.transformer_lm.n_q == 8
    assert codec_cfg.channels == 1 and codec_cfg.rvq.n_q == 4  # the hub's: the mono EnCodec

    musicgen = MusicGen.get_pretrained(str(folder), device="cpu")  # audiocraft's own loader
    assert isinstance(musicgen.compression_model, InterleaveStereoCompressionModel)
    loaded = AudiocraftBackend.from_model(musicgen)
    assert torch.equal(_codes(loaded), codes)
    torch.testing.assert_close(_nll(loaded, codes), _nll(backend, codes), atol=1e-6, rtol=0)

    # what audiocraft loaded exports again (its codec has no config: the file it came from)
    with torch.no_grad():
        next(musicgen.lm.parameters()).add_(0.01)  # a "fine-tune"
    again = loaded.export(tmp_path / "again")
    assert (again / EXPORT_FILES[1]).read_bytes() == (folder / EXPORT_FILES[1]).read_bytes()
    reloaded = AudiocraftBackend.from_model(MusicGen.get_pretrained(str(again), device="cpu"))
    torch.testing.assert_close(_nll(reloaded, codes), _nll(loaded, codes), atol=1e-6, rtol=0)


def test_mono_model_loaded_by_audiocraft_exports(
    tiny_export_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from audiocraft.models.musicgen import MusicGen

    musicgen = MusicGen.get_pretrained(str(tiny_export_dir), device="cpu")
    out = AudiocraftBackend.from_model(musicgen).export(tmp_path / "out")
    for name in EXPORT_FILES:  # nothing changed: the same weights, the codec file as it was
        saved = torch.load(out / name, weights_only=True)["best_state"]
        source = torch.load(tiny_export_dir / name, weights_only=True)["best_state"]
        assert saved.keys() == source.keys()
        assert all(torch.equal(saved[k], source[k]) for k in saved)

    # loaded from a hub id (`get_pretrained("facebook/...")` names it so): the codec file is
    # found in audiocraft's hub cache, never downloaded
    repo = tmp_path / "hub" / "models--facebook--musicgen-small"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    shutil.copy(tiny_export_dir / EXPORT_FILES[1], snapshot / EXPORT_FILES[1])
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("AUDIOCRAFT_CACHE_DIR", str(tmp_path / "hub"))
    musicgen.name = "facebook/musicgen-small"
    hub = AudiocraftBackend.from_model(musicgen).export(tmp_path / "hub_out")
    assert (hub / EXPORT_FILES[1]).read_bytes() == (snapshot / EXPORT_FILES[1]).read_bytes()


def test_melody_export_round_trip(tmp_path: Path) -> None:
    from audiocraft.models.musicgen import MusicGen

    from lightning_noiseprobe.backends.audiocraft.conditioners import building_lms

    backend = _backend("tiny-melody")
    codes = _codes(backend)
    folder = backend.export(tmp_path / "melody")
    loaded = AudiocraftBackend(model=str(folder)).load()
    torch.testing.assert_close(_nll(loaded, codes), _nll(backend, codes), atol=1e-6, rtol=0)
    # audiocraft's own loader builds demucs at construction; inside building_lms it does not
    with building_lms():
        musicgen = MusicGen.get_pretrained(str(folder), device="cpu")
    own = AudiocraftBackend.from_model(musicgen)
    torch.testing.assert_close(_nll(own, codes), _nll(backend, codes), atol=1e-6, rtol=0)
    assert "demucs" not in sys.modules
