"""The released MusicGens' real configurations, and loading that holds each weight once.

The configurations are checked against what the hub's files and transformers'
conversion script say (built on the meta device: no memory, about a second
each); the lean loader against audiocraft's own loaders on the tiny export (the
same weights bit for bit, the same NLL). Real-size runs are in
``benchmarks/bench_shapes.py``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from lightning_noiseprobe.backends.audiocraft import EXPORT_FILES, AudiocraftBackend
from lightning_noiseprobe.backends.audiocraft.configs import REAL_MODELS, real_config
from lightning_noiseprobe.backends.audiocraft.export import load_pretrained
from lightning_noiseprobe.backends.audiocraft.shapes import lm_parameter_count

pytestmark = pytest.mark.filterwarnings("ignore:.*weight_norm.*:FutureWarning")


def test_real_configs_have_the_released_sizes() -> None:
    from audiocraft.models import builders
    from omegaconf import OmegaConf

    # transformers' convert_musicgen_transformers.py: hidden size and layers of each size
    for name, (dim, layers) in {
        "small": (1024, 24),
        "medium": (1536, 48),
        "large": (2048, 48),
        "stereo-small": (1024, 24),
        "melody": (1536, 48),
    }.items():
        tcfg = real_config(name)[0]["transformer_lm"]
        assert (tcfg["dim"], tcfg["num_layers"], tcfg["dim"] // tcfg["num_heads"]) == (
            dim,
            layers,
            64,
        )
    # the hub's facebook/musicgen-large: state_dict.bin 6.51 GB (float16 LM),
    # compression_state_dict.bin 236 MB (float32 EnCodec), audiocraft issue #234
    assert round(lm_parameter_count("large") * 2 / 1e9, 2) == 6.51
    _, codec_cfg = real_config("large")
    with torch.device("meta"):
        codec = builders.get_compression_model(OmegaConf.create({**codec_cfg, "device": "meta"}))
    assert round(sum(t.numel() for t in codec.state_dict().values()) * 4 / 1e6) == 236
    assert codec.frame_rate == 50 and codec.channels == 1 and codec.cardinality == 2048
    # stereo-small: small with 8 interleaved codebooks, i.e. 4 more embeddings (2049 rows)
    # and 4 more heads (2048 outputs), all 1024 wide
    extra = lm_parameter_count("stereo-small") - lm_parameter_count("small")
    assert extra == 4 * (2049 + 2048) * 1024
    stereo = real_config("stereo-small")[0]
    assert stereo["codebooks_pattern"]["delay"]["delays"] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert stereo["interleave_stereo_codebooks"]["use"] and stereo["channels"] == 2
    melody = real_config("melody")[0]
    assert melody["fuser"]["prepend"] == ["self_wav", "description"]
    # melody: medium's transformer without cross-attention (both conditions are prepended:
    # 4 dim**2 and a norm per layer fewer), plus the chroma's 12 -> dim projection
    d = 1536
    less = lm_parameter_count("medium") - lm_parameter_count("melody")
    assert less == 48 * (4 * d * d + 2 * d) - (12 * d + d)
    assert set(REAL_MODELS) == {"small", "medium", "large", "melody", "stereo-small"}


def _same_module(got: torch.nn.Module, want: torch.nn.Module) -> None:
    """The same entries, dtypes and values bit for bit, and the same trainable flags."""
    got_state, want_state = got.state_dict(), want.state_dict()
    assert list(got_state) == list(want_state)
    for key, value in want_state.items():
        assert got_state[key].dtype == value.dtype and torch.equal(got_state[key], value), key
    assert [(n, p.requires_grad) for n, p in got.named_parameters()] == [
        (n, p.requires_grad) for n, p in want.named_parameters()
    ]
    assert not any(t.is_meta for t in [*got.parameters(), *got.buffers()])
    assert got.training is want.training is False


def _hub_layout(tiny_export_dir: Path, folder: Path) -> Path:
    """The tiny export with its LM in float16, as the hub stores MusicGen's LMs."""
    folder.mkdir()
    shutil.copy(tiny_export_dir / EXPORT_FILES[1], folder / EXPORT_FILES[1])
    package = torch.load(tiny_export_dir / EXPORT_FILES[0], weights_only=True)
    package["best_state"] = {k: v.half() for k, v in package["best_state"].items()}
    torch.save(package, folder / EXPORT_FILES[0])
    return folder


@pytest.mark.parametrize(
    "layout, dtype",
    [("float32", torch.float32), ("hub", torch.float32), ("hub", torch.bfloat16)],
)
def test_lean_loader_gives_audiocraft_loaders_model(
    tiny_export_dir: Path, tmp_path: Path, layout: str, dtype: torch.dtype
) -> None:
    """Meta-device build plus assigned weights = audiocraft's ``load_*_model`` then ``.to(dtype)``."""
    from audiocraft.models import loaders
    from audiocraft.models.musicgen import MusicGen
    from omegaconf import OmegaConf

    folder = (
        tiny_export_dir if layout == "float32" else _hub_layout(tiny_export_dir, tmp_path / "m")
    )
    _, lm, codec, _ = load_pretrained(str(folder), dtype)
    want_lm = loaders.load_lm_model(str(folder), device="cpu").to(dtype)
    want_codec = loaders.load_compression_model(str(folder), device="cpu")
    _same_module(lm, want_lm)
    _same_module(codec, want_codec)
    assert OmegaConf.to_container(lm.cfg) == OmegaConf.to_container(want_lm.cfg)
    assert lm.condition_provider.device == "cpu"

    codes = torch.randint(0, 2048, (2, 4, 60), generator=torch.Generator().manual_seed(1))
    ours = AudiocraftBackend.from_model(MusicGen("lean", codec, lm))
    theirs = AudiocraftBackend.from_model(MusicGen("audiocraft", want_codec, want_lm))
    with torch.no_grad():
        got, got_mask = ours.token_nll_fast(codes, ["a text", None])
        want, want_mask = theirs.token_nll_fast(codes, ["a text", None])
    assert torch.equal(got, want) and torch.equal(got_mask, want_mask)
    assert got.dtype == torch.float32 and bool(torch.isfinite(got[got_mask]).all())


def test_cli_bf16_true_loads_bfloat16_weights(tmp_path: Path, capsys) -> None:
    import json

    from audio_fixtures import write_audio

    from lightning_noiseprobe.cli import main

    clip = write_audio(tmp_path / "clip.wav", 32000, 1, seconds=4.5)
    argv = ["probe", "--audio", clip, "--out", tmp_path / "out", "--precision", "bf16-true"]
    spec = ["--onset", "60", "--lengths", "5", "--clip-seconds", "4", "--cache-dir", "none"]
    code = main([*map(str, argv + spec), "--quiet", "--no-figures", "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["backend"]["dtype"] == "bfloat16"
    assert torch.isfinite(torch.tensor(metrics["summary"]["clean_loss"]))


@pytest.fixture
def scaled_down(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real configurations at a tiny width (a test-sized transformer and EnCodec)."""
    from lightning_noiseprobe.backends.audiocraft import configs

    tiny = {"dim": 64, "num_heads": 2, "num_layers": 2}
    monkeypatch.setitem(configs.MODEL_SCALES, "small", tiny)
    monkeypatch.setitem(configs.MODEL_SCALES, "medium", tiny)  # melody's scale
    monkeypatch.setitem(configs.ENCODEC_32KHZ["seanet"], "n_filters", 4)
    monkeypatch.setitem(configs.ENCODEC_32KHZ["seanet"], "dimension", 16)


def test_random_weights_are_drawn_as_audiocraft_draws_them(scaled_down) -> None:
    """Built part by part from the meta device, with audiocraft's init rules: the same
    distribution per tensor as audiocraft's own (CPU) build, and every weight drawn."""
    from audiocraft.models import builders
    from omegaconf import OmegaConf

    from lightning_noiseprobe.backends.audiocraft.shapes import _meta_lm, _random_lm_state

    lm, _, offline_cfg = _meta_lm("small")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        ours = _random_lm_state(lm, offline_cfg["transformer_lm"], torch.float32)
        torch.manual_seed(1)
        reference = builders.get_lm_model(OmegaConf.create({**offline_cfg, "device": "cpu"}))
    want = reference.state_dict()
    assert list(ours) == list(want)
    for key, value in want.items():
        got = ours[key]
        assert got.shape == value.shape and bool(torch.isfinite(got).all()), key
        if value.std() == 0:  # layer norms: ones and zeros
            assert torch.equal(got, value), key
        elif value.numel() >= 1000:  # depth-scaled truncated normals, kaiming uniforms
            # scale and bounds, to sampling error (at most 3 % seen, 64-wide)
            assert float(got.std() / value.std()) == pytest.approx(1, abs=0.06), key
            assert float(got.abs().max() / value.abs().max()) == pytest.approx(1, abs=0.06), key


@pytest.mark.parametrize("name", ["small", "melody"])
def test_real_shape_export_is_the_hubs_layout(scaled_down, tmp_path: Path, name: str) -> None:
    """What the benchmarks load: float16 LM, float32 codec, the real config as YAML;
    audiocraft's ``MusicGen.get_pretrained`` and the backend load it alike. The melody
    shape builds, exports and loads with no demucs, its chroma's computed buffer intact."""
    import sys

    from audiocraft.models.musicgen import MusicGen
    from omegaconf import OmegaConf

    from lightning_noiseprobe.backends.audiocraft.conditioners import building_lms
    from lightning_noiseprobe.backends.audiocraft.shapes import write_real_shape_export

    folder = write_real_shape_export(name, tmp_path / name)
    lm_package, codec_package = (torch.load(folder / f, weights_only=True) for f in EXPORT_FILES)
    assert {v.dtype for v in lm_package["best_state"].values()} == {torch.float16}
    assert {v.dtype for v in codec_package["best_state"].values()} == {torch.float32}
    saved = OmegaConf.to_container(OmegaConf.create(lm_package["xp.cfg"]))
    lm_cfg, codec_cfg = real_config(name)
    conditioners = saved.pop("conditioners")
    assert conditioners.pop("description")["model"] == "lut"  # offline T5 stand-in
    real_conditioners = lm_cfg.pop("conditioners")
    del real_conditioners["description"]
    assert conditioners == real_conditioners and saved == lm_cfg
    assert OmegaConf.to_container(OmegaConf.create(codec_package["xp.cfg"])) == codec_cfg

    backend = AudiocraftBackend(model=str(folder)).load()
    with building_lms():  # audiocraft's loader would build demucs for the melody conditioner
        musicgen = MusicGen.get_pretrained(str(folder), device="cpu")
    _same_module(backend.lm, musicgen.lm)
    assert backend.supports_prefix_sharing
    if name == "melody":  # built for real, not drawn: the STFT window of the chroma
        window = lm_package["best_state"][
            "condition_provider.conditioners.self_wav.chroma.spec.window"
        ]
        assert torch.equal(window, torch.hann_window(2**14).half())
        assert backend.lm.fuser.fuse2cond["prepend"] == ["self_wav", "description"]
        assert "demucs" not in sys.modules
    wav = torch.randn(1, 1, 32000, generator=torch.Generator().manual_seed(0))
    codes = backend.encode(wav)
    with torch.no_grad():
        nll, mask = backend.token_nll_fast(codes)
    assert codes.shape == (1, 4, 50) and bool(torch.isfinite(nll[mask]).all())
