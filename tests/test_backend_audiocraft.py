"""The audiocraft backend against audiocraft itself (tiny model, CPU)."""

from __future__ import annotations

import pytest
import torch
from codec_helpers import NEAR_TIE_REL, assert_codes_match, codebooks_and_latents

from lightning_noiseprobe._errors import NoiseProbeError
from lightning_noiseprobe.backends import ProbeBackend, available_backends, get_backend
from lightning_noiseprobe.backends.audiocraft import (
    EXPORT_FILES,
    AudiocraftBackend,
    build_tiny_musicgen,
    save_audiocraft_export,
)
from lightning_noiseprobe.functional.losses import codebook_cross_entropy, token_nll_from_logits

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*weight_norm.*:FutureWarning"),
    pytest.mark.latest,  # also in the newest-release environment (make test-latest)
]

T = 120  # frames (2.4 s at 50 Hz)


def _noise(batch: int, frames: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 0.1 * torch.randn(batch, 1, frames * 640, generator=g)


@pytest.fixture(scope="module")
def codes(tiny_backend: AudiocraftBackend) -> torch.Tensor:
    return tiny_backend.encode(_noise(2, T))


def test_registry_and_static_description(tiny_backend: AudiocraftBackend) -> None:
    assert "audiocraft" in available_backends()
    backend = get_backend("audiocraft", model="tiny")
    assert isinstance(backend, AudiocraftBackend)
    assert isinstance(tiny_backend, ProbeBackend)
    assert (tiny_backend.sample_rate, tiny_backend.channels, tiny_backend.frame_rate) == (
        32000,
        1,
        50.0,
    )
    assert (tiny_backend.num_codebooks, tiny_backend.cardinality) == (4, 2048)
    assert list(tiny_backend.lm.pattern_provider.delays) == [0, 1, 2, 3]
    assert tiny_backend.musicgen.lm is tiny_backend.lm
    assert tiny_backend.describe()["num_codebooks"] == 4
    assert len(tiny_backend.codec_fingerprint()) == 64


def test_constructor_is_cheap_and_validates() -> None:
    backend = AudiocraftBackend(model="tiny")
    with pytest.raises(RuntimeError, match=r"call `\.load\(\)` first"):
        _ = backend.lm
    with pytest.raises(NoiseProbeError, match="tiny_config"):
        AudiocraftBackend(tiny_config={"depth": 3})
    with pytest.raises(NoiseProbeError, match="dtype"):
        AudiocraftBackend(dtype=torch.long)


def test_unknown_backend_lists_choices() -> None:
    with pytest.raises(ValueError, match=r"one of \[.*'audiocraft'.*\] but got 'nope'"):
        get_backend("nope")


def test_codec_is_frozen_and_codes_have_musicgen_shape(
    tiny_backend: AudiocraftBackend, codes: torch.Tensor
) -> None:
    assert not tiny_backend.codec.training
    assert not any(p.requires_grad for p in tiny_backend.codec.parameters())
    assert codes.shape == (2, 4, T) and codes.dtype == torch.long
    assert int(codes.min()) >= 0 and int(codes.max()) < 2048
    for k in range(4):  # codebooks drawn from the codec's latents: noise uses many codes
        assert codes[:, k].unique().numel() > 60


def test_nll_matches_audiocraft_training_loss(
    tiny_backend: AudiocraftBackend, codes: torch.Tensor
) -> None:
    from audiocraft.solvers.musicgen import MusicGenSolver

    descriptions = ["calm piano", None]
    lm = tiny_backend.lm
    provider = lm.condition_provider
    # The solver's own path: attributes -> tokenize -> condition tensors -> compute_predictions.
    attributes = tiny_backend.musicgen._prepare_tokens_and_attributes(descriptions, None)[0]
    with torch.no_grad():
        condition_tensors = provider(provider.tokenize(attributes))
        out = lm.compute_predictions(codes, [], condition_tensors=condition_tensors)
        # `_compute_cross_entropy` does not use `self`: call the real one unbound.
        ref_ce, ref_per_codebook = MusicGenSolver._compute_cross_entropy(
            None, out.logits, codes, out.mask
        )
        nll, mask = tiny_backend.token_nll(codes, descriptions)
    ce, per_codebook = codebook_cross_entropy(nll, mask)
    torch.testing.assert_close(ce, ref_ce, atol=1e-5, rtol=0)
    torch.testing.assert_close(per_codebook, torch.stack(ref_per_codebook), atol=1e-5, rtol=0)
    for k in range(4):  # ... which is the mean of the per-token NLL of each codebook
        torch.testing.assert_close(per_codebook[k], nll[:, k][mask[:, k]].mean(), atol=1e-5, rtol=0)
    assert torch.equal(mask, out.mask)
    assert nll.dtype == torch.float32 and mask.dtype == torch.bool
    assert torch.isfinite(nll).all() and (nll[~mask] == 0).all()


def test_descriptions_condition_the_lm(
    tiny_backend: AudiocraftBackend, codes: torch.Tensor
) -> None:
    with torch.no_grad():
        uncond, _ = tiny_backend.token_nll(codes)
        none_list, _ = tiny_backend.token_nll(codes, [None, None])
        text, _ = tiny_backend.token_nll(codes, ["calm piano", "calm piano"])
    assert torch.equal(uncond, none_list)
    assert not torch.allclose(uncond, text)
    with pytest.raises(NoiseProbeError, match="descriptions"):
        tiny_backend.token_nll(codes, ["only one"])


def test_delay_pattern_valid_counts_and_causality(tiny_backend: AudiocraftBackend) -> None:
    frames = 16
    codes = tiny_backend.encode(_noise(1, frames, seed=1))
    with torch.no_grad():
        base, mask = tiny_backend.token_nll(codes)
    assert mask[0].sum(-1).tolist() == [frames, frames - 1, frames - 2, frames - 3]
    for k in range(4):  # the last d_k = k frames of codebook k are invalid
        assert not mask[0, k, frames - k :].any()

    k_idx = torch.arange(4)[:, None]
    t_idx = torch.arange(frames)[None, :]
    t_prime = 7
    for q in range(4):
        changed_codes = codes.clone()
        changed_codes[0, q, t_prime] = (changed_codes[0, q, t_prime] + 1000) % 2048
        with torch.no_grad():
            nll, _ = tiny_backend.token_nll(changed_codes)
        changed = (nll - base).abs()[0] > 1e-6
        # NLL(k, t) sees code (q, t') in its context iff t' <= t - 1 + k - q; and (q, t') is its own target.
        expected = (t_prime <= t_idx - 1 + k_idx - q) & mask[0]
        expected[q, t_prime] = True
        assert torch.equal(changed, expected), f"codebook q={q}"


def test_gradients_flow_without_touching_mode_or_rng() -> None:
    backend = AudiocraftBackend(model="tiny", seed=3).load()
    codes = backend.encode(_noise(2, 24))
    lm = backend.lm
    lm.train()
    rng = torch.get_rng_state()
    logits, mask = backend.lm_logits(codes, ["a", None])
    nll, mask = token_nll_from_logits(logits, codes, mask)
    ce, _ = codebook_cross_entropy(nll, mask)
    ce.backward()
    assert lm.training  # the caller owns the mode
    assert torch.equal(rng, torch.get_rng_state())
    grads = [p.grad for p in lm.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert lm.condition_provider.conditioners["description"].embed.weight.grad.abs().sum() > 0
    lm.eval()
    with torch.no_grad():
        nll_eval, _ = backend.token_nll(codes, ["a", None])
    torch.testing.assert_close(nll_eval, nll.detach(), atol=1e-6, rtol=0)  # dropout is 0


def test_same_seed_same_weights_different_seed_different() -> None:
    a = build_tiny_musicgen(seed=5)
    b = build_tiny_musicgen(seed=5)
    c = build_tiny_musicgen(seed=6)
    for part in ("lm", "compression_model"):
        sa, sb, sc = (getattr(m, part).state_dict() for m in (a, b, c))
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
        assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_global_rng_untouched_by_build() -> None:
    state = torch.get_rng_state()
    build_tiny_musicgen(seed=1, dim=32, num_layers=1)
    assert torch.equal(state, torch.get_rng_state())
    with pytest.raises(NoiseProbeError, match="overrides"):
        build_tiny_musicgen(width=3)


def test_export_round_trip(tiny_export_dir, tiny_backend: AudiocraftBackend) -> None:
    from audiocraft.models.musicgen import MusicGen

    assert sorted(p.name for p in tiny_export_dir.iterdir()) == sorted(EXPORT_FILES)
    package = torch.load(tiny_export_dir / EXPORT_FILES[0], weights_only=True)  # safe loading works
    assert isinstance(package["xp.cfg"], str) and package["exported"] is True

    fresh = AudiocraftBackend(model="tiny", seed=0).load()  # the same weights as the export
    loaded = AudiocraftBackend(model=str(tiny_export_dir)).load()
    for part in ("lm", "codec"):  # weights are data: the export keeps them bit for bit
        want, got = getattr(fresh, part).state_dict(), getattr(loaded, part).state_dict()
        assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    wav = _noise(2, 40, seed=2)
    codes = fresh.encode(wav)
    # codes come from float maths: equal up to quantizer near-ties (see codec_helpers)
    assert_codes_match(loaded.encode(wav), codes, codec=fresh.codec, wav=wav)
    with torch.no_grad():
        ref, ref_mask = fresh.token_nll(codes, ["x", None])
        nll, mask = loaded.token_nll(codes, ["x", None])
    torch.testing.assert_close(nll, ref, atol=1e-6, rtol=0)
    assert torch.equal(mask, ref_mask)
    assert loaded.describe()["cardinality"] == 2048

    # audiocraft's own loader, tokenizing as audiocraft does (the MusicGen solver's and
    # MusicGen's `_prepare_tokens_and_attributes`: `compression_model.encode` under
    # `torch.no_grad()`). Without no_grad PyTorch runs the codec's LSTM with oneDNN's
    # forward-*training* kernel, whose float32 rounding differs from the inference
    # kernel's by ~4e-8: on an AMD EPYC that flipped one near-tied frame (4 of 320 codes).
    musicgen = MusicGen.get_pretrained(str(tiny_export_dir), device="cpu")
    with torch.no_grad():
        reference, scale = musicgen.compression_model.encode(wav)
    assert scale is None
    assert_codes_match(codes, reference, codec=musicgen.compression_model, wav=wav)


def test_code_comparison_tolerates_only_near_ties(
    tiny_backend: AudiocraftBackend, codes: torch.Tensor
) -> None:
    """The tolerance of `assert_codes_match` lets a near-tie flip pass, and nothing else."""
    wav = _noise(2, T)
    books, latents = codebooks_and_latents(tiny_backend.codec, wav)
    x = latents.transpose(1, 2)  # [B, T, D]
    dist = (x[..., None, :] - books[0]).pow(2).sum(-1)  # [B, T, bins]
    two = dist.topk(2, largest=False)
    gap = (two.values[..., 1] - two.values[..., 0]) / x.pow(2).sum(-1)
    nearest, second = two.indices[..., 0], two.indices[..., 1]
    # The reference picks the nearest codeword wherever float32 can tell the two apart
    # (torch 2.15 at 2 threads picked the second at a frame 1.3e-7 apart, relatively).
    clear = gap > NEAR_TIE_REL
    assert torch.equal(nearest[clear], codes[:, 0][clear])
    flat = gap.flatten()
    for pick, accepted in ((int(flat.argmin()), True), (int(flat.argmax()), False)):
        b, t = divmod(pick, T)
        changed = codes.clone()
        # the other of the two nearest codewords
        changed[b, 0, t] = second[b, t] if codes[b, 0, t] == nearest[b, t] else nearest[b, t]
        if accepted:
            assert float(gap[b, t]) <= NEAR_TIE_REL  # this noise has a near-tie frame
            assert assert_codes_match(changed, codes, codec=tiny_backend.codec, wav=wav) == 1
        else:
            with pytest.raises(AssertionError, match="not a near-tie"):
                assert_codes_match(changed, codes, codec=tiny_backend.codec, wav=wav)
    many = codes.clone()
    many[:, :, ::10] = (many[:, :, ::10] + 1) % 2048  # 10% of the frames
    with pytest.raises(AssertionError, match="more than 5%"):
        assert_codes_match(many, codes, codec=tiny_backend.codec, wav=wav)


def test_export_of_loaded_model_copies_its_frozen_codec(tmp_path, tiny_export_dir) -> None:
    loaded = AudiocraftBackend(model=str(tiny_export_dir)).load()
    # audiocraft's codec loader keeps no config: export copies the file the codec came from,
    # found where `musicgen.name` points, and only if it holds these very weights
    other = save_audiocraft_export(build_tiny_musicgen(seed=1), tmp_path / "other")
    musicgen = loaded.musicgen
    for name, why in ((str(other), "holds other codec weights"), ("nowhere/x", "names no folder")):
        musicgen.name = name
        with pytest.raises(NoiseProbeError, match=why) as info:
            save_audiocraft_export(musicgen, tmp_path / "refused")
        assert "codec_file=" in str(info.value)
    assert not (tmp_path / "refused").exists()
    musicgen.name = str(tiny_export_dir)
    found = save_audiocraft_export(musicgen, tmp_path / "found")
    assert (found / "compression_state_dict.bin").read_bytes() == (
        tiny_export_dir / "compression_state_dict.bin"
    ).read_bytes()
    assert loaded.codec_source == tiny_export_dir / "compression_state_dict.bin"
    with torch.no_grad():
        for p in loaded.lm.parameters():
            p.add_(0.01)  # a "fine-tune"
    out = save_audiocraft_export(loaded.musicgen, tmp_path / "out", codec_file=loaded.codec_source)
    assert (out / "compression_state_dict.bin").read_bytes() == loaded.codec_source.read_bytes()
    again = AudiocraftBackend(model=str(out)).load()
    codes = torch.randint(0, 2048, (1, 4, 40), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(
        again.token_nll(codes)[0], loaded.token_nll(codes)[0], atol=1e-6, rtol=0
    )


def test_folder_without_export_files(tmp_path) -> None:
    (tmp_path / "state_dict.bin").write_bytes(b"")
    with pytest.raises(NoiseProbeError) as info:
        AudiocraftBackend(model=str(tmp_path)).load()
    message = str(info.value)
    assert (
        str(tmp_path) in message
        and "compression_state_dict.bin" in message
        and "state_dict.bin" in message
    )


def test_missing_folder_path(tmp_path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(NoiseProbeError, match="is not a folder"):
        AudiocraftBackend(model=str(missing)).load()


def test_pickled_config_is_refused(tmp_path, tiny_export_dir) -> None:
    import shutil

    from omegaconf import OmegaConf

    for name in EXPORT_FILES:
        shutil.copy(tiny_export_dir / name, tmp_path / name)
    package = torch.load(tmp_path / EXPORT_FILES[0], weights_only=True)
    package["xp.cfg"] = OmegaConf.create(package["xp.cfg"])  # an old-style pickled config
    torch.save(package, tmp_path / EXPORT_FILES[0])
    with pytest.raises(NoiseProbeError, match=r"pickled Python objects \(`omegaconf\.") as info:
        AudiocraftBackend(model=str(tmp_path)).load()
    assert str(tmp_path / EXPORT_FILES[0]) in str(info.value) and "Re-export" in str(info.value)


def test_offline_hub_id_says_what_to_do(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("AUDIOCRAFT_CACHE_DIR", str(tmp_path))
    with pytest.raises(NoiseProbeError) as info:
        AudiocraftBackend(model="no-such-org/musicgen-nothing").load()
    message = str(info.value)
    assert "'no-such-org/musicgen-nothing'" in message and "could not be reached" in message
    assert "state_dict.bin" in message and "compression_state_dict.bin" in message
    assert str(tmp_path) in message and "HF_HUB_OFFLINE" in message


def test_bfloat16_lm_gives_float32_nll() -> None:
    backend = AudiocraftBackend(model="tiny", dtype=torch.bfloat16).load()
    assert next(backend.lm.parameters()).dtype == torch.bfloat16
    assert next(backend.codec.parameters()).dtype == torch.float32
    codes = backend.encode(_noise(1, 20))
    with torch.no_grad():
        nll, mask = backend.token_nll(codes, ["x"])
        ref, _ = AudiocraftBackend(model="tiny").load().token_nll(codes, ["x"])
    assert nll.dtype == torch.float32 and torch.isfinite(nll).all()
    assert (nll - ref)[mask].abs().mean() < 0.05


def test_import_is_cheap() -> None:
    import subprocess
    import sys

    code = (
        "import sys, lightning_noiseprobe.backends, lightning_noiseprobe.backends.audiocraft;"
        "print('audiocraft' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_registry_is_lazy_and_takes_third_party_backends() -> None:
    import subprocess
    import sys

    # naming the backends imports none of them; get_backend imports the one asked for
    code = (
        "import sys; from lightning_noiseprobe.backends import available_backends, get_backend;"
        "names = available_backends();"
        "before = 'lightning_noiseprobe.backends.audiocraft' in sys.modules;"
        "get_backend('transformers');"
        "print(names, before, 'lightning_noiseprobe.backends.audiocraft' in sys.modules,"
        " 'lightning_noiseprobe.backends.transformers' in sys.modules, 'transformers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['audiocraft', 'transformers'] False False True False"

    from lightning_noiseprobe.backends import base, register_backend

    @register_backend("test-mine")
    class Mine(AudiocraftBackend):
        pass

    try:
        assert "test-mine" in available_backends()
        assert type(get_backend("test-mine", model="tiny")) is Mine
    finally:
        del base._REGISTRY["test-mine"]
    assert "test-mine" not in available_backends()


def test_from_model_wraps_a_loaded_musicgen_without_copying_or_changing_it(
    tiny_backend: AudiocraftBackend, codes: torch.Tensor, tmp_path
) -> None:
    musicgen = build_tiny_musicgen(seed=0)  # the weights `tiny_backend` loaded
    musicgen.lm.train()  # a mode load() would change; from_model must not
    lm_cfg, codec_cfg = musicgen.lm.cfg, musicgen.compression_model.cfg
    lm_yaml = str(lm_cfg)
    grads = [p.requires_grad for p in musicgen.lm.parameters()]
    codec_grads = [p.requires_grad for p in musicgen.compression_model.parameters()]
    weights = {id(p) for p in musicgen.lm.parameters()}

    backend = AudiocraftBackend.from_model(musicgen)

    assert backend.musicgen is musicgen and backend.lm is musicgen.lm
    assert backend.codec is musicgen.compression_model
    assert {id(p) for p in backend.lm.parameters()} == weights  # nothing copied
    assert backend.load() is backend and backend.musicgen is musicgen
    assert musicgen.lm.training and not musicgen.compression_model.training
    assert musicgen.lm.cfg is lm_cfg and str(lm_cfg) == lm_yaml
    assert musicgen.compression_model.cfg is codec_cfg
    assert [p.requires_grad for p in musicgen.lm.parameters()] == grads
    assert [p.requires_grad for p in musicgen.compression_model.parameters()] == codec_grads
    assert (backend.device, backend.dtype) == (torch.device("cpu"), torch.float32)
    assert backend.describe()["source"] == "from_model" and "seed" not in backend.describe()

    descriptions = ["a chorale", None]
    with torch.no_grad():
        nll, mask = backend.token_nll(codes, descriptions)
        ref, ref_mask = tiny_backend.token_nll(codes, descriptions)
        fast, _ = backend.token_nll_fast(codes, descriptions)
    assert torch.equal(mask, ref_mask) and torch.equal(nll, ref)
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)
    assert torch.equal(backend.encode(_noise(1, 20)), tiny_backend.encode(_noise(1, 20)))
    assert musicgen.lm.training  # scoring left the caller's mode alone

    # its native export loads back to the same model
    folder = backend.export(tmp_path / "export")
    assert sorted(p.name for p in folder.iterdir()) == sorted(EXPORT_FILES)
    with torch.no_grad():
        again, _ = AudiocraftBackend(model=str(folder)).load().token_nll(codes, descriptions)
    assert torch.equal(again, ref)


def test_from_model_refuses_what_is_not_a_musicgen() -> None:
    with pytest.raises(NoiseProbeError, match=r"`musicgen` to be an audiocraft MusicGen"):
        AudiocraftBackend.from_model(torch.nn.Linear(2, 2))  # type: ignore[arg-type]
