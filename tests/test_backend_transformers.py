"""The transformers backend: agreement with audiocraft, save/load, registry, errors, probe.

Real tiny models on CPU, offline (``HF_HUB_OFFLINE=1``).
"""

from __future__ import annotations

import copy
import math
import os
from pathlib import Path

import pytest
import torch
from audio_fixtures import synth_music, write_audio
from codec_helpers import assert_codes_match

from lightning_noiseprobe._errors import NoiseProbeError
from lightning_noiseprobe.backends import ProbeBackend, available_backends, get_backend
from lightning_noiseprobe.backends.audiocraft import AudiocraftBackend
from lightning_noiseprobe.backends.convert import (
    audiocraft_codec_to_transformers,
    audiocraft_lm_to_transformers,
)
from lightning_noiseprobe.backends.transformers import (
    TransformersBackend,
    build_tiny_transformers_musicgen,
    delayed_lm_logits,
)
from lightning_noiseprobe.functional.losses import codebook_cross_entropy, token_nll_from_logits

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*weight_norm.*:FutureWarning"),
    pytest.mark.latest,  # also in the newest-release environment (make test-latest)
]

T = 120  # frames (2.4 s at 50 Hz)
ATOL = 1e-4  # per-token NLL agreement, fp32


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def hf_backend() -> TransformersBackend:
    """A loaded tiny transformers MusicGen (seed 0). Do not mutate."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return TransformersBackend(model="tiny", seed=0).load()


@pytest.fixture(scope="module")
def music() -> torch.Tensor:
    """``[2, 1, S]``: two music-like clips at 32 kHz, 2.4 s."""
    wav = torch.from_numpy(synth_music(32000, 1, T / 50))
    return torch.stack([wav, 0.5 * wav.flip(-1)])


@pytest.fixture(scope="module")
def ac_codes(tiny_backend: AudiocraftBackend, music: torch.Tensor) -> torch.Tensor:
    return tiny_backend.encode(music)


@pytest.fixture(scope="module")
def converted(tiny_backend: AudiocraftBackend) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The audiocraft tiny LM and codec converted to transformers."""
    return (
        audiocraft_lm_to_transformers(tiny_backend.lm),
        audiocraft_codec_to_transformers(tiny_backend.codec),
    )


def _hf_nll(decoder: torch.nn.Module, codes: torch.Tensor, **kwargs):
    with torch.no_grad():
        logits, mask = delayed_lm_logits(decoder, codes, **kwargs)
    return token_nll_from_logits(logits, codes, mask)


# -- agreement with audiocraft ------------------------------------------------------


def test_converted_lm_agrees_with_audiocraft_unconditional(
    tiny_backend: AudiocraftBackend, ac_codes: torch.Tensor, converted
) -> None:
    hf_lm, _ = converted
    assert hf_lm.config.dropout == 0.0 and not hf_lm.training
    with torch.no_grad():
        ref_nll, ref_mask = tiny_backend.token_nll(ac_codes)
    nll, mask = _hf_nll(hf_lm, ac_codes)
    assert torch.equal(mask, ref_mask)
    assert mask[0].sum(-1).tolist() == [T, T - 1, T - 2, T - 3]
    diff = (nll - ref_nll).abs().max().item()
    print(f"max |NLL diff| unconditional: {diff:.3g}")
    assert diff < ATOL
    # sanity: the codes are informative and the loss is not trivially equal
    assert ac_codes[:, 0].unique().numel() > 20


def test_converted_lm_agrees_with_audiocraft_conditional(
    tiny_backend: AudiocraftBackend, ac_codes: torch.Tensor, converted
) -> None:
    hf_lm, _ = converted
    descriptions = ["calm piano", None]
    provider = tiny_backend.lm.condition_provider
    attributes = tiny_backend.musicgen._prepare_tokens_and_attributes(descriptions, None)[0]
    with torch.no_grad():
        states, _ = provider(provider.tokenize(attributes))["description"]
        ref_nll, ref_mask = tiny_backend.token_nll(ac_codes, descriptions)
        uncond_nll, _ = tiny_backend.token_nll(ac_codes)
    # audiocraft cross-attends to the (zeroed-at-padding) states without a mask
    nll, mask = _hf_nll(hf_lm, ac_codes, encoder_hidden_states=states)
    assert torch.equal(mask, ref_mask)
    diff = (nll - ref_nll).abs().max().item()
    print(f"max |NLL diff| conditional: {diff:.3g}")
    assert diff < ATOL
    assert not torch.allclose(ref_nll[0], uncond_nll[0])  # the text matters


def test_converted_codec_gives_audiocraft_codes(
    tiny_backend: AudiocraftBackend, music: torch.Tensor, ac_codes: torch.Tensor, converted
) -> None:
    _, hf_codec = converted
    with torch.no_grad():
        codes = hf_codec.encode(music).audio_codes[0]
    # two implementations of the same float maths: equal up to quantizer near-ties
    assert_codes_match(codes, ac_codes, codec=tiny_backend.codec, wav=music)
    odd = music[..., : 640 * 50 + 17]  # not a whole number of frames
    with torch.no_grad():
        odd_codes = hf_codec.encode(odd).audio_codes[0]
    assert_codes_match(odd_codes, tiny_backend.encode(odd), codec=tiny_backend.codec, wav=odd)


def test_converted_model_through_backend_folder(
    tiny_backend: AudiocraftBackend,
    hf_backend: TransformersBackend,
    music: torch.Tensor,
    ac_codes: torch.Tensor,
    converted,
    tmp_path: Path,
) -> None:
    """audiocraft tiny -> converted LM + codec in a composite -> save_pretrained -> backend."""
    from transformers import MusicgenForConditionalGeneration

    hf_lm, hf_codec = converted
    composite = MusicgenForConditionalGeneration(
        text_encoder=copy.deepcopy(hf_backend.lm.text_encoder),
        audio_encoder=copy.deepcopy(hf_codec),
        decoder=copy.deepcopy(hf_lm),
    )
    composite.save_pretrained(tmp_path / "converted")  # no tokenizer files
    backend = TransformersBackend(model=tmp_path / "converted").load()
    assert backend.tokenizer is None
    codes = backend.encode(music)
    assert_codes_match(codes, ac_codes, codec=tiny_backend.codec, wav=music)
    with torch.no_grad():
        nll, mask = backend.token_nll(codes)
        ref_nll, ref_mask = tiny_backend.token_nll(ac_codes)
    assert torch.equal(mask, ref_mask)
    assert (nll - ref_nll).abs().max().item() < ATOL
    with pytest.raises(NoiseProbeError, match="no tokenizer files"):
        backend.token_nll(codes, ["calm piano", None])


# -- the backend itself -------------------------------------------------------------


def test_registry_and_static_description(hf_backend: TransformersBackend) -> None:
    assert {"audiocraft", "transformers"} <= set(available_backends())
    backend = get_backend("transformers", model="tiny")
    assert isinstance(backend, TransformersBackend) and isinstance(backend, ProbeBackend)
    assert (hf_backend.sample_rate, hf_backend.channels, hf_backend.frame_rate) == (32000, 1, 50.0)
    assert (hf_backend.num_codebooks, hf_backend.cardinality) == (4, 2048)
    assert hf_backend.lm.decoder.config.dropout == 0.0
    assert hf_backend.lm.decoder.config.attention_dropout == 0.0
    assert hf_backend.lm.decoder.config.activation_dropout == 0.0
    info = hf_backend.describe()
    assert info["backend"] == "transformers" and info["num_codebooks"] == 4
    assert len(hf_backend.codec_fingerprint()) == 64
    assert hf_backend.codec is hf_backend.lm.audio_encoder
    assert hf_backend.device == torch.device("cpu")


def test_constructor_is_cheap_and_validates() -> None:
    backend = TransformersBackend(model="tiny")
    with pytest.raises(RuntimeError, match=r"call `\.load\(\)` first"):
        _ = backend.lm
    with pytest.raises(NoiseProbeError, match="tiny_config"):
        TransformersBackend(tiny_config={"depth": 3})
    with pytest.raises(NoiseProbeError, match="dtype"):
        TransformersBackend(dtype=torch.long)
    with pytest.raises(NoiseProbeError, match="dropout"):
        TransformersBackend(dropout=1.5)
    with pytest.raises(NoiseProbeError, match="model"):
        TransformersBackend(model="")


def test_codec_is_frozen_and_codes_informative(
    hf_backend: TransformersBackend, music: torch.Tensor
) -> None:
    codec = hf_backend.codec
    assert not codec.training and not any(p.requires_grad for p in codec.parameters())
    assert not any(p.requires_grad for p in hf_backend.lm.text_encoder.parameters())
    codes = hf_backend.encode(music)
    assert codes.shape == (2, 4, T) and codes.dtype == torch.long
    assert int(codes.min()) >= 0 and int(codes.max()) < 2048
    noise = hf_backend.encode(0.1 * torch.randn(1, 1, 640 * 60, generator=torch.Generator()))
    for k in range(4):  # codebooks drawn from the codec's latents: many codes in use
        assert noise[:, k].unique().numel() > 40
    # codes do not follow the precision: the same instance and call on the same machine
    # give the same bits (autocast is off inside `encode`)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(hf_backend.encode(music), codes)
    with pytest.raises(NoiseProbeError, match="wav"):
        hf_backend.encode(music[:, 0])


def test_token_nll_contract_and_text(hf_backend: TransformersBackend, music: torch.Tensor) -> None:
    codes = hf_backend.encode(music)
    with torch.no_grad():
        nll, mask = hf_backend.token_nll(codes)
        none_list, _ = hf_backend.token_nll(codes, [None, None])
        text, text_mask = hf_backend.token_nll(codes, ["calm piano", None])
        again, _ = hf_backend.token_nll(codes, ["calm piano", None])
    assert nll.dtype == torch.float32 and mask.dtype == torch.bool
    assert nll.shape == mask.shape == (2, 4, T)
    assert torch.isfinite(nll).all() and (nll[~mask] == 0).all() and (nll[mask] > 0).all()
    assert mask[1].sum(-1).tolist() == [T, T - 1, T - 2, T - 3]
    assert torch.equal(mask, text_mask)
    assert torch.equal(nll, none_list)
    assert not torch.allclose(nll[0], text[0])  # text conditions item 0 ...
    torch.testing.assert_close(nll[1], text[1], atol=1e-5, rtol=0)  # ... and not item 1
    assert torch.equal(text, again)
    with pytest.raises(NoiseProbeError, match="descriptions"):
        hf_backend.token_nll(codes, ["only one"])
    with pytest.raises(NoiseProbeError, match="codes"):
        hf_backend.token_nll(codes[:, :3])


def test_seeded_build_is_deterministic(hf_backend: TransformersBackend) -> None:
    model, _ = build_tiny_transformers_musicgen(seed=0)
    ref = hf_backend.lm.state_dict()
    state = model.state_dict()
    assert state.keys() == ref.keys()
    assert all(torch.equal(state[k], ref[k]) for k in ref)
    other, _ = build_tiny_transformers_musicgen(seed=1)
    assert not torch.equal(other.decoder.lm_heads[0].weight, model.decoder.lm_heads[0].weight)


def test_gradients_reach_decoder_and_projection_only(music: torch.Tensor) -> None:
    backend = TransformersBackend(model="tiny", seed=2).load()
    codes = backend.encode(music[..., : 640 * 24])
    lm = backend.lm
    lm.train()
    rng = torch.get_rng_state()
    logits, mask = backend.lm_logits(codes, ["a", None])
    assert logits.shape == (2, 4, 24, 2048) and logits[~mask].isnan().all()
    ce, _ = codebook_cross_entropy(*token_nll_from_logits(logits, codes, mask))
    ce.backward()
    assert torch.equal(rng, torch.get_rng_state())
    assert lm.decoder.training and not lm.text_encoder.training  # frozen parts back in eval
    assert all(p.grad is not None for p in lm.decoder.parameters() if p.requires_grad)
    assert lm.enc_to_dec_proj.weight.grad is not None
    assert all(p.grad is None for p in lm.text_encoder.parameters())
    assert all(p.grad is None for p in lm.audio_encoder.parameters())
    lm.zero_grad(set_to_none=True)
    logits, mask = backend.lm_logits(codes)  # unconditional: the projection still takes part (DDP)
    codebook_cross_entropy(*token_nll_from_logits(logits, codes, mask))[0].backward()
    assert lm.enc_to_dec_proj.weight.grad is not None


# -- save / load ----------------------------------------------------------------------


def test_save_load_round_trip(
    hf_backend: TransformersBackend, music: torch.Tensor, tmp_path: Path
) -> None:
    folder = hf_backend.save(tmp_path / "export")
    assert (folder / "config.json").is_file()
    hf_backend.save(folder)  # an earlier save is replaced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # no temporary leftovers
    loaded = TransformersBackend(model=str(folder)).load()
    codes = hf_backend.encode(music)
    # the same weights, another instance: equal up to quantizer near-ties
    assert_codes_match(loaded.encode(music), codes, codec=hf_backend.codec, wav=music)
    descriptions = ["calm piano", None]
    with torch.no_grad():
        for desc in (None, descriptions):
            nll, mask = hf_backend.token_nll(codes, desc)
            nll2, mask2 = loaded.token_nll(codes, desc)
            assert torch.equal(nll, nll2) and torch.equal(mask, mask2)
    assert loaded.codec_fingerprint() == hf_backend.codec_fingerprint()


def test_save_refuses_foreign_folder(hf_backend: TransformersBackend, tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(NoiseProbeError, match="holds something else"):
        hf_backend.save(tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


# -- errors ---------------------------------------------------------------------------


def test_missing_folder_and_files(tmp_path: Path) -> None:
    with pytest.raises(NoiseProbeError, match=r"not a folder") as err:
        TransformersBackend(model=str(tmp_path / "nope")).load()
    assert str(tmp_path / "nope") in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(NoiseProbeError, match=r"'config.json' is missing") as err:
        TransformersBackend(model=str(tmp_path / "empty")).load()
    assert str(tmp_path / "empty") in str(err.value)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(NoiseProbeError, match="'bert'"):
        TransformersBackend(model=str(tmp_path / "other")).load()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text('{"model_type": "musicgen"}')
    with pytest.raises(NoiseProbeError, match="broken"):
        TransformersBackend(model=str(tmp_path / "broken")).load()


def test_offline_hub_id_says_what_to_do() -> None:
    with pytest.raises(NoiseProbeError) as err:
        TransformersBackend(model="noiseprobe-tests/not-a-cached-musicgen").load()
    message = str(err.value)
    assert "'noiseprobe-tests/not-a-cached-musicgen'" in message
    assert "HF_HUB_OFFLINE" in message and "save_pretrained" in message


# -- the probe engine -------------------------------------------------------------------


def test_probe_engine_runs_on_transformers_backend(
    hf_backend: TransformersBackend, tmp_path: Path
) -> None:
    from lightning_noiseprobe.probe import ProbeSpec, build_probe_set, score_probe_set

    write_audio(tmp_path / "a.wav", 32000, 1, seconds=4.5)
    write_audio(tmp_path / "b.flac", 48000, 2, seconds=4.5)
    spec = ProbeSpec(onset=60, lengths=(5, 20), clip_seconds=4.0)
    probe_set = build_probe_set(hf_backend, tmp_path, spec)
    assert len(probe_set) == 2 and probe_set.clean_codes.shape == (2, 4, 200)
    result = score_probe_set(hf_backend, probe_set, batch_size=4)
    assert result.summary and all(math.isfinite(v) for v in result.summary.values())
    assert result.summary["clean_loss"] > 0
    assert result.backend_info["backend"] == "transformers"
