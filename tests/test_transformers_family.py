"""The hub's stereo and melody MusicGens through transformers, tiny and offline.

`tiny-stereo` is a `MusicgenForConditionalGeneration` with the layout of
`facebook/musicgen-stereo-*` (the mono EnCodec, a decoder with `audio_channels=2` and 8
interleaved codebooks); `tiny-melody` a `MusicgenMelodyForConditionalGeneration` as
`facebook/musicgen-melody` (chroma and text prepended). Each against audiocraft (the same
weights converted), transformers' own classes and processors, `noiseprobe probe` as a
subprocess, `NoiseProber` on the model object, and a real Lightning `Trainer`.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from audio_fixtures import synth_music, write_audio
from codec_helpers import assert_codes_match
from lightning_helpers import SHARDED_SPEC, cpu_trainer
from proc_helpers import our_tracebacks

from lightning_noiseprobe._errors import NoiseProbeError
from lightning_noiseprobe.backends.transformers import TransformersBackend
from lightning_noiseprobe.backends.transformers.delay import codebook_delays, delayed_input

pytestmark = pytest.mark.filterwarnings("ignore:.*weight_norm.*:FutureWarning")
# `latest`: also in the newest-release environment (make test-latest), all but the CLI
# subprocess (its own import of everything) and the audiocraft-only conversion refusals

FAMILY = ("tiny-stereo", "tiny-melody")
# per-token NLL agreement across backends, fp32, as the mono test; measured max |diff| on
# the same codes, in one process (same threads, same batch), OMP_NUM_THREADS 1 and 2, AMD
# EPYC: stereo 3.8e-6 (unconditional and with text), melody 1.5e-5 (9.5e-6 on transformers
# 5.25, torch 2.15)
ATOL = 1e-4
_LOADED: dict[str, TransformersBackend] = {}


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _backend(name: str) -> TransformersBackend:
    """A loaded tiny family member, seed 0, shared by this module's tests. Do not mutate."""
    if name not in _LOADED:
        _LOADED[name] = TransformersBackend(model=name, seed=0).load()
    return _LOADED[name]


def _wav(channels: int, frames: int = 60, batch: int = 2) -> torch.Tensor:
    """``[B, C, S]`` music-like audio whose channels differ."""
    wav = torch.from_numpy(synth_music(32000, channels, frames / 50))
    return torch.stack([wav * (0.5 + 0.5 * i) for i in range(batch)])


@pytest.fixture(scope="module")
def audio_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A stereo and a mono file, 4.2 s: each model converts both to its own channels."""
    folder = tmp_path_factory.mktemp("tf_family_audio")
    write_audio(folder / "a.wav", 48000, 2, seconds=4.2)
    write_audio(folder / "b.flac", 32000, 1, seconds=4.2)
    return folder


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each family member written by ``TransformersBackend.save`` (a ``save_pretrained`` folder)."""
    root = tmp_path_factory.mktemp("tf_family_saved")
    for name in FAMILY:  # text scoring pads a batch, which the fast tokenizer remembers
        _backend(name).tokenizer(["calm piano", "a bach chorale"], padding=True)
    return {name: _backend(name).save(root / name) for name in FAMILY}


# -- the layouts ---------------------------------------------------------------------
@pytest.mark.latest
def test_tiny_names_are_the_audiocraft_twins() -> None:
    """`--model tiny-stereo` (and `tiny`, `tiny-melody`) names the same layout on both backends."""
    from lightning_noiseprobe.backends import audiocraft, transformers

    assert transformers.TINY_MODELS == audiocraft.TINY_MODELS == ("tiny", *FAMILY)


@pytest.mark.latest
def test_stereo_is_the_hubs_layout() -> None:
    backend = _backend("tiny-stereo")
    model: Any = backend.musicgen
    assert type(model).__name__ == "MusicgenForConditionalGeneration"
    assert model.config.audio_encoder.audio_channels == 1  # the mono EnCodec, as the hub's
    assert (backend.sample_rate, backend.channels, backend.frame_rate) == (32000, 2, 50.0)
    assert (backend.num_codebooks, backend.cardinality) == (8, 2048)
    assert codebook_delays(model.decoder.config) == [0, 0, 1, 1, 2, 2, 3, 3]
    wav = _wav(2, frames=40, batch=1)
    codes = backend.encode(wav)
    with torch.no_grad():  # left and right codes of each codebook side by side
        left = backend.codec.encode(wav[:, :1]).audio_codes[0]
        right = backend.codec.encode(wav[:, 1:]).audio_codes[0]
    assert torch.equal(codes[:, 0::2], left) and torch.equal(codes[:, 1::2], right)
    assert not torch.equal(left, right)
    with torch.no_grad():
        _, mask = backend.token_nll(codes)
    assert mask[0].sum(-1).tolist() == [40, 40, 39, 39, 38, 38, 37, 37]
    assert backend.supports_prefix_sharing
    with pytest.raises(NoiseProbeError, match=r"shape \[B, 2, S\]"):
        backend.encode(wav[:, :1])


@pytest.mark.latest
def test_melody_null_condition_is_transformers_own_unconditional_input() -> None:
    """No description scores as ``MusicgenMelodyProcessor.get_unconditional_inputs`` asks
    transformers' own forward to: the default chroma (one-hot at bin 0) and one masked
    ``</s>`` prepended; texts of different lengths score as each one alone."""
    from lightning_noiseprobe.backends.transformers.hf_folder import processor_for

    backend = _backend("tiny-melody")
    model: Any = backend.musicgen
    assert type(model).__name__ == "MusicgenMelodyForConditionalGeneration"
    assert not any(".encoder_attn." in k for k in model.state_dict())  # nothing cross-attends
    assert (model.config.num_chroma, model.config.chroma_length) == (12, 235)
    assert backend.supports_prefix_sharing
    codes = backend.encode(_wav(1))
    B, K, T = codes.shape
    processor = processor_for(model, backend.tokenizer)
    assert type(processor).__name__ == "MusicgenMelodyProcessor"
    null = processor.get_unconditional_inputs(num_samples=B)
    ids = delayed_input(model.decoder, codes).reshape(B * K, T)
    with torch.no_grad():
        logits = model(**null, decoder_input_ids=ids).logits  # [B * K, 235 + 1 + T, card]
        nll, mask = backend.token_nll(codes)
    assert logits.shape[1] == 235 + 1 + T
    logits = logits.reshape(B, K, -1, logits.shape[-1])[:, :, -T:]
    logp = logits.float().log_softmax(-1)
    for k in range(K):  # the logits of frame t of codebook k sit at position t + k
        want = -logp[:, k, torch.arange(T - k) + k].gather(-1, codes[:, k, : T - k, None])
        torch.testing.assert_close(nll[:, k, : T - k], want[..., 0], atol=1e-5, rtol=0)
    assert not mask[:, 1:, -1].any()

    texts = ["calm piano with slow drums", None]
    with torch.no_grad():
        both, _ = backend.token_nll(codes, texts)
        alone = [backend.token_nll(codes[i : i + 1], texts[i : i + 1])[0] for i in range(B)]
        fast, _ = backend.token_nll_fast(codes, texts)
    torch.testing.assert_close(both, torch.cat(alone), atol=1e-6, rtol=0, equal_nan=True)
    torch.testing.assert_close(fast, both.nan_to_num(), atol=1e-5, rtol=0)
    torch.testing.assert_close(both[1], nll[1], atol=1e-6, rtol=0, equal_nan=True)
    assert not torch.allclose(both[0].nan_to_num(), nll[0].nan_to_num())  # the text matters


@pytest.mark.latest
@pytest.mark.parametrize("name", FAMILY)
def test_shared_prefix_runs_the_clean_prefix_once(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stereo pairs and melody's prepended conditions continue from the clean cache."""
    from lightning_noiseprobe.backends.transformers import prefix

    backend = _backend(name)
    codes = backend.encode(_wav(backend.channels))
    B, K, T = codes.shape
    g = torch.Generator().manual_seed(2)
    variants = codes[:, None].repeat(1, 3, 1, 1)
    for p in range(3):  # copies that differ from frame 30 + p on
        variants[:, p, :, 30 + p :] = torch.randint(0, 2048, (B, K, T - 30 - p), generator=g)
    texts = ["bach chorale on a slow organ", None]
    calls: list[int] = []
    decoder_pass = prefix._decoder_states

    def counted(decoder: Any, ids: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        calls.append(int(ids.shape[0]))  # rows of each decoder pass
        return decoder_pass(decoder, ids, *args, **kwargs)

    monkeypatch.setattr(prefix, "_decoder_states", counted)
    with torch.no_grad():
        shared, mask = backend.token_nll_shared_prefix(
            codes, variants, texts, shared_frames=30, batch_size=4
        )
    monkeypatch.undo()
    with torch.no_grad():
        full = [backend.token_nll(c, texts) for c in (codes, *variants.unbind(1))]
    ref = torch.stack([n for n, _ in full], 1)
    assert torch.equal(mask, torch.stack([m for _, m in full], 1))
    torch.testing.assert_close(shared, ref.nan_to_num(), atol=1e-5, rtol=0)
    # melody: texts of two lengths run as two groups (one item each), each a clean pass + 1
    # continuation of its 3 copies; stereo: one clean pass, the 6 copies in passes of 4
    assert calls == ([1, 3, 1, 3] if name == "tiny-melody" else [2, 4, 2])


# -- the same weights as audiocraft --------------------------------------------------
@pytest.mark.latest
@pytest.mark.parametrize("name", FAMILY)
def test_converted_audiocraft_model_scores_the_same(name: str, tmp_path: Path) -> None:
    """audiocraft tiny -> converted LM and codec in a composite -> save_pretrained -> backend:
    the same codes (up to quantizer near-ties) and per-token NLL within 1e-4."""
    from lightning_noiseprobe.backends.audiocraft import AudiocraftBackend
    from lightning_noiseprobe.backends.convert import (
        audiocraft_codec_to_transformers,
        audiocraft_lm_to_transformers,
        audiocraft_projections_to_transformers,
    )

    reference = AudiocraftBackend(model=name, seed=0).load()
    decoder = audiocraft_lm_to_transformers(reference.lm)
    codec = audiocraft_codec_to_transformers(reference.codec)
    assert decoder.config.audio_channels == reference.channels and codec.config.audio_channels == 1
    composite: Any = type(_backend(name).musicgen)(
        text_encoder=copy.deepcopy(_backend(name).musicgen.text_encoder),
        audio_encoder=codec,
        decoder=decoder,
    )
    for module, state in audiocraft_projections_to_transformers(reference.lm.state_dict()).items():
        if module == "audio_enc_to_dec_proj":  # the LUT description's has no T5 counterpart
            composite.audio_enc_to_dec_proj.load_state_dict(state)
    composite.save_pretrained(tmp_path / "converted")
    backend = TransformersBackend(model=tmp_path / "converted").load()
    # transformers 5 leaves these unset in a composite built from parts (4.57 does not): the
    # decoder would attend without its causal mask (NLL off by up to 1.6), so it is refused
    parts = (composite.decoder, composite.text_encoder)
    for part in parts:
        part.config._attn_implementation = None
    with pytest.raises(NoiseProbeError, match=r"decoder and text_encoder have `config._attn_impl"):
        TransformersBackend.from_model(composite)
    for part in parts:  # as the message says
        part.config._attn_implementation = "sdpa"
    held = TransformersBackend.from_model(composite)

    wav = _wav(reference.channels, frames=120)
    ref_codes = reference.encode(wav)
    codes = backend.encode(wav)
    inner = getattr(reference.codec, "model", reference.codec)  # stereo: per channel
    for c in range(reference.channels):
        step = reference.channels
        assert_codes_match(
            codes[:, c::step], ref_codes[:, c::step], codec=inner, wav=wav[:, c : c + 1]
        )
    with torch.no_grad():
        ref, ref_mask = reference.token_nll(ref_codes)  # audiocraft's null condition
        nll, mask = backend.token_nll(ref_codes)
        fast, _ = backend.token_nll_fast(ref_codes)
        direct, _ = held.token_nll(ref_codes)
    assert torch.equal(mask, ref_mask)
    torch.testing.assert_close(direct, nll, atol=0, rtol=0, equal_nan=True)
    diff = (nll - ref).nan_to_num().abs().max().item()
    print(f"{name}: max |NLL diff| transformers vs audiocraft, unconditional: {diff:.3g}")
    assert diff < ATOL
    torch.testing.assert_close(fast, nll.nan_to_num(), atol=1e-5, rtol=0)
    if name == "tiny-stereo":  # and with audiocraft's text states through cross-attention
        descriptions = ["calm piano", None]
        provider = reference.lm.condition_provider
        attributes = reference.musicgen._prepare_tokens_and_attributes(descriptions, None)[0]
        with torch.no_grad():
            states, _ = provider(provider.tokenize(attributes))["description"]
            ref_text, _ = reference.token_nll(ref_codes, descriptions)
        from lightning_noiseprobe.backends.transformers import delayed_lm_logits
        from lightning_noiseprobe.functional.losses import token_nll_from_logits

        with torch.no_grad():
            logits, lmask = delayed_lm_logits(composite.decoder, ref_codes, states)
        text_nll, _ = token_nll_from_logits(logits, ref_codes, lmask)
        text_diff = (text_nll - ref_text).nan_to_num()
        print(f"{name}: max |NLL diff| conditional: {text_diff.abs().max().item():.3g}")
        assert text_diff.abs().max().item() < ATOL
        assert not torch.allclose(ref_text[0].nan_to_num(), ref[0].nan_to_num())


def test_conversion_refuses_what_transformers_lacks() -> None:
    from audiocraft.models.encodec import InterleaveStereoCompressionModel

    from lightning_noiseprobe.backends.audiocraft import AudiocraftBackend
    from lightning_noiseprobe.backends.convert import (
        audiocraft_codec_to_transformers,
        audiocraft_lm_to_transformers,
    )

    stereo = AudiocraftBackend(model="tiny-stereo", seed=0).load()
    per_step = InterleaveStereoCompressionModel(stereo.codec.model, per_timestep=True)
    with pytest.raises(NoiseProbeError, match="per_timestep=False"):
        audiocraft_codec_to_transformers(per_step)
    lm = copy.deepcopy(stereo.lm)
    lm.pattern_provider.delays = [0, 1, 1, 2, 2, 3, 3, 4]
    with pytest.raises(NoiseProbeError, match=r"delays=\[0, 1, 1, .*for stereo"):
        audiocraft_lm_to_transformers(lm)


# -- folders and models the user holds ------------------------------------------------
@pytest.mark.latest
def test_saved_folders_load_in_transformers_and_back(saved: dict[str, Path]) -> None:
    """``save`` writes what ``from_pretrained`` + ``AutoProcessor`` take (a stereo prompt
    through ``generate`` included), and the model they load probes the same."""
    from transformers import AutoModelForTextToWaveform, AutoProcessor

    for name, folder in saved.items():
        backend = _backend(name)
        model: Any = AutoModelForTextToWaveform.from_pretrained(folder)
        processor: Any = AutoProcessor.from_pretrained(folder)
        assert type(model) is type(backend.musicgen)
        state, reloaded = backend.lm.state_dict(), model.state_dict()
        assert state.keys() == reloaded.keys()
        assert all(torch.equal(state[k], reloaded[k]) for k in state)
        wav = _wav(backend.channels, frames=50, batch=1)
        if name == "tiny-stereo":
            assert processor.feature_extractor.feature_size == 2  # takes stereo audio
            inputs = processor(
                audio=[wav[0].numpy()],
                sampling_rate=32000,
                text=["calm piano"],
                return_tensors="pt",
            )
        else:
            assert type(processor).__name__ == "MusicgenMelodyProcessor"
            inputs = processor(text=["calm piano"], return_tensors="pt")
        audio = model.generate(**inputs, max_new_tokens=3, do_sample=False, guidance_scale=1.0)
        assert audio.shape[:2] == (1, backend.channels)
        codes = backend.encode(wav)
        with torch.no_grad():
            want, _ = backend.token_nll(codes, ["calm piano"])
            for held in (model, torch.nn.DataParallel(model)):  # from_model, as_backend
                from lightning_noiseprobe.backends.wrap import as_backend

                got, _ = as_backend(held).token_nll(codes)
                torch.testing.assert_close(
                    got, backend.token_nll(codes)[0], rtol=0, atol=0, equal_nan=True
                )
            got, _ = TransformersBackend.from_model(model, processor).token_nll(
                codes, ["calm piano"]
            )
        torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)


@pytest.mark.latest
def test_a_codec_that_does_not_fit_the_decoder_is_refused_up_front() -> None:
    from transformers import EncodecConfig

    broken: Any = copy.deepcopy(_backend("tiny-stereo").musicgen)
    broken.config.audio_encoder = EncodecConfig(audio_channels=2)
    with pytest.raises(NoiseProbeError, match=r"mono EnCodec .* audio_channels=2"):
        TransformersBackend.from_model(broken)


# -- the user's paths: CLI, NoiseProber, Trainer ----------------------------------------
def test_cli_probe_as_a_subprocess_equals_the_python_api(
    audio_dir: Path, saved: dict[str, Path], tmp_path: Path
) -> None:
    """`noiseprobe probe --backend transformers` on a 48 kHz stereo file: tiny-stereo takes
    it as 2 channels, the saved melody folder mixes it down; `NoiseProber` on the model
    object in this process gives the same summary (same thread count, batch size 8)."""
    import lightning_noiseprobe as lnp

    clip = audio_dir / "a.wav"
    spec = ["--onset", "60", "--lengths", "5,20,60", "--clip-seconds", "4", "--cache-dir", "none"]
    base = ["probe", "--quiet", "--no-figures", "--backend", "transformers", *spec]
    models = {"tiny-stereo": "tiny-stereo", "tiny-melody": str(saved["tiny-melody"])}
    runs = [
        [*base, "--audio", str(clip), "--model", m, "--out", str(tmp_path / n)]
        for n, m in models.items()
    ]
    calls = " or ".join(f"main({argv!r})" for argv in runs)
    proc = subprocess.run(  # `noiseprobe probe ...` twice in one process (one import)
        [
            sys.executable,
            "-c",
            f"import sys; from lightning_noiseprobe.cli import main; sys.exit({calls})",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(torch.get_num_threads())},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not our_tracebacks(proc.stderr), proc.stderr
    for name in FAMILY:
        metrics = json.loads((tmp_path / name / "metrics.json").read_text())
        backend = _backend(name)
        assert metrics["num_clips"] == 1 and not metrics["skipped"]
        assert metrics["backend"]["channels"] == backend.channels
        assert metrics["backend"]["num_codebooks"] == backend.num_codebooks
        prober = lnp.NoiseProber([clip], cache_dir="none", **SHARDED_SPEC)
        held = prober(backend.musicgen)  # the model object, as NoiseProber takes it
        assert (
            prober.built is not None and prober.built.clean_codes.shape[1] == backend.num_codebooks
        )
        for key in ("clean_loss", "delta_loss", "peak_mean", "peak_sharpness"):
            assert metrics["summary"][key] == pytest.approx(held.summary[key], abs=1e-5), key


@pytest.mark.latest
@pytest.mark.parametrize("name", FAMILY)
def test_fit_with_the_callback(name: str, audio_dir: Path, tmp_path: Path) -> None:
    from lightning_noiseprobe import AudioFolderDataModule, MusicGenLightningModule
    from lightning_noiseprobe.callback import NoiseProbeCallback

    module = MusicGenLightningModule(backend="transformers", model=name, lr=3e-3, warmup_steps=1)
    channels = module.probe_backend.channels
    train = tmp_path / "train"
    train.mkdir()
    for i in range(2):
        write_audio(train / f"{i}.wav", 32000, channels, seconds=2.5)
    data = AudioFolderDataModule(
        train, val_dir=audio_dir, channels=channels, segment_seconds=2.0, batch_size=2
    )
    probe = NoiseProbeCallback(
        probe_audio=[audio_dir / "a.wav"],  # 48 kHz stereo: per channel, or mixed for melody
        cache_dir=tmp_path / "cache",
        batch_size=4,
        fatal=True,
        **SHARDED_SPEC,
    )
    before = {k: v.clone() for k, v in module.state_dict().items()}
    trainer = cpu_trainer(  # one step (warmup's first step learns), one val batch, one probe
        tmp_path,
        [probe],
        max_epochs=1,
        num_sanity_val_steps=0,
        limit_train_batches=1,
        limit_val_batches=1,
    )
    trainer.fit(module, datamodule=data)

    assert [h["epoch"] for h in probe.history] == [0]
    assert probe.history[0]["probe_ok"] == 1
    assert torch.isfinite(torch.tensor(probe.history[0]["peak_sharpness"]))
    assert torch.isfinite(trainer.callback_metrics["val/ce"])
    after = module.state_dict()
    frozen = [k for k in before if ".audio_encoder." in k or ".text_encoder." in k]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)
    trained = [k for k in before if ".decoder." in k or "enc_to_dec_proj" in k]
    assert any(not torch.equal(before[k], after[k]) for k in trained)
    if name == "tiny-melody":  # the null melody's projection trains too
        proj = [k for k in before if "audio_enc_to_dec_proj" in k]
        assert proj and all(not torch.equal(before[k], after[k]) for k in proj)
