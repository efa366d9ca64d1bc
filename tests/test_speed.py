"""Correctness of the fast scoring paths (no timing here: see ``benchmarks/``).

Prefix sharing and the fused NLL must give the numbers of plain full scoring
with ``token_nll`` (audiocraft's ``compute_predictions`` path), on the tiny
model and real probe sets, and must leave the LM as they found it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from audio_fixtures import write_audio

from lightning_noiseprobe.backends.audiocraft import AudiocraftBackend
from lightning_noiseprobe.backends.base import ProbeBackend
from lightning_noiseprobe.functional.curves import first_differing_token
from lightning_noiseprobe.probe import ProbeSpec, build_probe_set, score_probe_set
from lightning_noiseprobe.probe.runner import score_shared_prefix

SPEC = ProbeSpec(onset=60, lengths=(5, 20, 60), clip_seconds=4.0)


@pytest.fixture(scope="module")
def audio_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("speed_audio")
    write_audio(d / "a_mono32k.wav", 32000, 1, seconds=4.5)
    write_audio(d / "b_stereo48k.flac", 48000, 2, seconds=4.5)
    write_audio(d / "c_mono44k.wav", 44100, 1, seconds=4.2)
    return d


@pytest.fixture(scope="module")
def probe_set(tiny_backend, audio_dir):
    return build_probe_set(tiny_backend, audio_dir, SPEC)


@pytest.fixture(scope="module")
def text_probe_set(tiny_backend, audio_dir):
    return build_probe_set(
        tiny_backend, audio_dir, SPEC, descriptions=["bach chorale", None, "organ, slow"]
    )


def _full_reference(backend, ps):
    """Every sequence scored alone-in-batch by ``token_nll`` (compute_predictions)."""
    N, P, K, T = ps.perturbed_codes.shape
    rows = torch.cat([ps.clean_codes[:, None], ps.perturbed_codes], 1).reshape(-1, K, T)
    descs = [c.description for c in ps.clips]
    descs = [d for d in descs for _ in range(1 + P)]
    with torch.no_grad():
        nll, mask = backend.token_nll(rows, descs)
    return nll.reshape(N, 1 + P, K, T), mask.reshape(N, 1 + P, K, T)


def _lm_snapshot(backend):
    from audiocraft.modules.transformer import StreamingMultiheadAttention

    lm = backend.lm
    return (
        lm.training,
        lm._is_streaming,
        dict(lm.get_streaming_state()),
        [m.memory_efficient for m in lm.modules() if isinstance(m, StreamingMultiheadAttention)],
    )


@pytest.mark.parametrize("which", ["plain", "text"])
@pytest.mark.parametrize("batch_size", [1, 3, 5, 64])
def test_prefix_sharing_equals_full_scoring(
    tiny_backend, probe_set, text_probe_set, which, batch_size
):
    ps = probe_set if which == "plain" else text_probe_set
    ref_nll, ref_mask = _full_reference(tiny_backend, ps)
    descs = [c.description for c in ps.clips]
    nll, mask = score_shared_prefix(
        tiny_backend,
        ps.clean_codes,
        ps.perturbed_codes,
        descs if which == "text" else None,
        batch_size=batch_size,
    )
    assert nll.shape == ref_nll.shape and nll.dtype == torch.float32
    assert torch.equal(mask, ref_mask)
    torch.testing.assert_close(nll, ref_nll, atol=1e-4, rtol=0)


def test_text_conditioning_changes_scores(tiny_backend, probe_set, text_probe_set):
    """Guards the text test above against descriptions being silently dropped."""
    a, _ = score_shared_prefix(tiny_backend, probe_set.clean_codes, probe_set.perturbed_codes, None)
    descs = [c.description for c in text_probe_set.clips]
    b, _ = score_shared_prefix(
        tiny_backend, text_probe_set.clean_codes, text_probe_set.perturbed_codes, descs
    )
    assert (a[0] - b[0]).abs().max() > 1e-3  # clip 0 has a description
    torch.testing.assert_close(a[1], b[1])  # clip 1 has none


@pytest.mark.parametrize("which", ["plain", "text"])
def test_score_probe_set_prefix_sharing_matches_full(
    tiny_backend, probe_set, text_probe_set, which
):
    ps = probe_set if which == "plain" else text_probe_set
    shared = score_probe_set(tiny_backend, ps, batch_size=5, prefix_sharing=True)
    full = score_probe_set(tiny_backend, ps, batch_size=5, prefix_sharing=False)
    torch.testing.assert_close(shared.clean, full.clean, atol=1e-4, rtol=0)
    torch.testing.assert_close(shared.perturbed, full.perturbed, atol=1e-4, rtol=0)
    torch.testing.assert_close(
        shared.perturbed_per_codebook, full.perturbed_per_codebook, atol=1e-4, rtol=0
    )
    assert torch.equal(shared.valid, full.valid)
    # the reference: audiocraft's compute_predictions path, sequence by sequence
    ref_nll, _ = _full_reference(tiny_backend, ps)
    torch.testing.assert_close(shared.clean_per_codebook, ref_nll[:, 0], atol=1e-4, rtol=0)


def test_shared_prefix_boundary_is_exact(tiny_backend):
    """Sharing up to the true first differing frame is exact; one frame more is not."""
    g = torch.Generator().manual_seed(0)
    B, P, K, T, f = 2, 3, 4, 120, 50
    codes = torch.randint(0, 2048, (B, K, T), generator=g)
    variants = codes[:, None].repeat(1, P, 1, 1)
    variants[:, :, 0, f] = (codes[:, None, 0, f] + 1) % 2048  # only codebook 0 differs at f
    variants[..., f + 1 :] = torch.randint(0, 2048, (B, P, K, T - f - 1), generator=g)
    assert (first_differing_token(codes[:, None].expand_as(variants), variants) == f).all()
    rows = torch.cat([codes[:, None], variants], 1).reshape(-1, K, T)
    with torch.no_grad():
        ref, ref_mask = tiny_backend.token_nll(rows)
        for shared in (f, f - 7, 2, 1, 0):  # 0 and 1: nothing shared, still exact
            nll, mask = tiny_backend.token_nll_shared_prefix(
                codes, variants, shared_frames=shared, batch_size=3
            )
            torch.testing.assert_close(nll.reshape(-1, K, T), ref, atol=1e-4, rtol=0)
            assert torch.equal(mask.reshape(-1, K, T), ref_mask)
        # claiming two more shared frames than there are must show (the test can fail)
        wrong, _ = tiny_backend.token_nll_shared_prefix(codes, variants, shared_frames=f + 2)
        assert (wrong.reshape(-1, K, T) - ref).abs().max() > 1e-2


@pytest.mark.parametrize("descriptions", [None, ["a", None, "b", "a"]])
def test_fast_nll_equals_token_nll(tiny_backend, descriptions):
    g = torch.Generator().manual_seed(1)
    codes = torch.randint(0, 2048, (4, 4, 97), generator=g)
    with torch.no_grad():
        ref, ref_mask = tiny_backend.token_nll(codes, descriptions)
        fast, mask = tiny_backend.token_nll_fast(codes, descriptions)
    assert torch.equal(mask, ref_mask)
    assert fast.dtype == torch.float32
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=0)
    assert (fast[~mask] == 0).all()


def test_fast_paths_under_inference_mode_and_bf16(tiny_backend, probe_set):
    """Under ``inference_mode`` (as in ``trainer.validate``) and bf16 autocast they still agree."""
    ps = probe_set
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        nll, _ = score_shared_prefix(tiny_backend, ps.clean_codes, ps.perturbed_codes, None)
        ref, _ = tiny_backend.token_nll(ps.clean_codes)
    assert nll.dtype == torch.float32
    # bf16 logits: agreement to bf16 resolution, on the mean curve
    assert (nll[:, 0].mean() - ref.mean()).abs() < 2e-2


def test_lm_state_rng_and_mode_untouched(probe_set):
    backend = AudiocraftBackend("tiny").load()  # own copy: the mode is changed here
    for training in (False, True):
        backend.lm.train(training)
        before = _lm_snapshot(backend)
        rng = torch.random.get_rng_state()
        np_rng = np.random.get_state()[1].copy()
        score_probe_set(backend, probe_set, batch_size=3, prefix_sharing=True)
        after = _lm_snapshot(backend)
        assert after == before
        assert after[2] == {}  # no streaming state left behind
        assert torch.equal(torch.random.get_rng_state(), rng)
        assert np.array_equal(np.random.get_state()[1], np_rng)


@pytest.mark.parametrize("fail_on_call", [1, 2])  # 1: the clean pass, 2: a continuation
def test_lm_left_as_found_after_an_error(fail_on_call):
    """No hook, no patched attention forward, no streaming state and the same
    attention flags remain when scoring fails in the clean pass or a continuation."""
    from audiocraft.modules.transformer import StreamingMultiheadAttention

    backend = AudiocraftBackend("tiny").load()
    attentions = [m for m in backend.lm.modules() if isinstance(m, StreamingMultiheadAttention)]
    flags = [m.memory_efficient for m in attentions]
    assert any(flags)  # audiocraft's default: the test is meaningful
    calls = []
    real = backend._nll_at_positions

    def boom(*args, **kwargs):
        calls.append(1)
        if len(calls) == fail_on_call:
            assert any("forward" in m.__dict__ for m in attentions) == (fail_on_call == 2)
            raise RuntimeError("boom")
        return real(*args, **kwargs)

    backend._nll_at_positions = boom  # type: ignore[method-assign]
    codes = torch.zeros(1, 4, 20, dtype=torch.long)
    with pytest.raises(RuntimeError, match="boom"):
        backend.token_nll_shared_prefix(codes, codes[:, None], shared_frames=10)
    assert [m.memory_efficient for m in attentions] == flags
    assert not any("forward" in m.__dict__ or m._forward_pre_hooks for m in attentions)
    assert backend.lm.get_streaming_state() == {} and not backend.lm._is_streaming


class _FullOnlyBackend(ProbeBackend):
    """A backend with only the required methods: prefix sharing must fall back."""

    name = "full-only"

    def __init__(self, inner):
        self.inner = inner
        self.calls = 0

    sample_rate = property(lambda self: self.inner.sample_rate)
    channels = property(lambda self: self.inner.channels)
    frame_rate = property(lambda self: self.inner.frame_rate)
    num_codebooks = property(lambda self: self.inner.num_codebooks)
    cardinality = property(lambda self: self.inner.cardinality)
    lm = property(lambda self: self.inner.lm)
    codec = property(lambda self: self.inner.codec)

    def load(self):
        return self

    def encode(self, wav):
        return self.inner.encode(wav)

    def token_nll(self, codes, descriptions=None):
        self.calls += codes.shape[0]
        return self.inner.token_nll(codes, descriptions)


def test_backend_without_prefix_sharing_falls_back(tiny_backend, probe_set):
    other = _FullOnlyBackend(tiny_backend)
    assert not other.supports_prefix_sharing
    result = score_probe_set(other, probe_set, batch_size=4, prefix_sharing=True)
    N, P = probe_set.perturbed_codes.shape[:2]
    assert other.calls == N * (1 + P)
    shared = score_probe_set(tiny_backend, probe_set, batch_size=4, prefix_sharing=True)
    torch.testing.assert_close(result.perturbed, shared.perturbed, atol=1e-4, rtol=0)
    # the base-class default of token_nll_shared_prefix scores in full
    nll, mask = other.token_nll_shared_prefix(
        probe_set.clean_codes, probe_set.perturbed_codes, shared_frames=50, batch_size=5
    )
    ref, ref_mask = _full_reference(tiny_backend, probe_set)
    torch.testing.assert_close(nll, ref, atol=1e-5, rtol=0)
    assert torch.equal(mask, ref_mask)


def test_unsupported_lm_falls_back_to_full_scoring(tiny_backend, probe_set, monkeypatch):
    backend = AudiocraftBackend("tiny").load()
    # e.g. another codebook pattern, a summed condition or an FSDP-wrapped LM
    monkeypatch.setattr(backend, "_plain_delays", lambda: None)
    assert not backend.supports_prefix_sharing
    calls = []
    original = backend.token_nll

    def counting(codes, descriptions=None):
        calls.append(codes.shape[0])
        return original(codes, descriptions)

    monkeypatch.setattr(backend, "token_nll", counting)
    ps = probe_set
    with torch.no_grad():
        nll, _ = backend.token_nll_shared_prefix(
            ps.clean_codes[:1], ps.perturbed_codes[:1], shared_frames=50
        )
        backend.token_nll_fast(ps.clean_codes[:1])
    assert sum(calls) == 1 + ps.perturbed_codes.shape[1] + 1
    ref, _ = _full_reference(tiny_backend, ps)
    torch.testing.assert_close(nll, ref[:1], atol=1e-5, rtol=0)


@pytest.mark.parametrize("which", ["plain", "text"])
@pytest.mark.parametrize("batch_size", [3, 8])
def test_default_scoring_skips_prefix_heads_exactly(
    tiny_backend, probe_set, text_probe_set, which, batch_size
):
    """The default path copies the clean NLL into the perturbed prefixes: still equal to full scoring."""
    ps = probe_set if which == "plain" else text_probe_set
    ref, ref_mask = _full_reference(tiny_backend, ps)
    result = score_probe_set(tiny_backend, ps, batch_size=batch_size)
    got = result.perturbed_per_codebook
    torch.testing.assert_close(
        got * ref_mask[:, 1:], ref[:, 1:] * ref_mask[:, 1:], atol=1e-4, rtol=0
    )
    torch.testing.assert_close(
        result.clean_per_codebook * ref_mask[:, 0], ref[:, 0] * ref_mask[:, 0], atol=1e-4, rtol=0
    )


def test_scoring_only_backend_cannot_give_logits(tiny_backend):
    with pytest.raises(
        NotImplementedError, match="_FullOnlyBackend implements neither `lm_logits`"
    ):
        _FullOnlyBackend(tiny_backend).lm_logits(torch.zeros(1, 4, 5, dtype=torch.long))


# -- the transformers backend: same fast paths, through its DynamicCache ----------------


@pytest.fixture(scope="module")
def hf_backend():
    import os

    from lightning_noiseprobe.backends.transformers import TransformersBackend

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return TransformersBackend(model="tiny", seed=0).load()


@pytest.fixture(scope="module")
def hf_text_probe_set(hf_backend, audio_dir):
    # texts of different lengths: the text attention mask pads the shorter ones
    descs = ["bach chorale on a slow organ, four voices", None, "piano"]
    return build_probe_set(hf_backend, audio_dir, SPEC, descriptions=descs)


@pytest.mark.parametrize("frames", [1, 37, 120])
@pytest.mark.parametrize("descriptions", [None, ["a calm piano piece, slow", None]])
def test_transformers_fast_paths_equal_token_nll(hf_backend, frames, descriptions):
    """Fused heads and the cache continuation give ``token_nll``'s values (1e-5) and mask,
    for every shared length, conditional (padded texts) and unconditional, any batch size."""
    assert hf_backend.supports_prefix_sharing
    g = torch.Generator().manual_seed(frames)
    B, P, K = 2, 3, 4
    codes = torch.randint(0, 2048, (B, K, frames), generator=g)
    with torch.no_grad():
        ref, ref_mask = hf_backend.token_nll(codes, descriptions)
        fast, fast_mask = hf_backend.token_nll_fast(codes, descriptions)
        assert torch.equal(fast_mask, ref_mask)
        torch.testing.assert_close(fast, ref, atol=1e-5, rtol=0)
        late, _ = hf_backend.token_nll_fast(codes, descriptions, score_from=frames // 2)
        torch.testing.assert_close(
            late[..., frames // 2 :], ref[..., frames // 2 :], atol=1e-5, rtol=0
        )
        for shared in sorted({0, 1, frames // 2, frames - 1, frames}):
            variants = codes[:, None].repeat(1, P, 1, 1)
            tail = variants[..., shared:]
            tail.copy_(torch.randint(0, 2048, tail.shape, generator=g))
            rows = torch.cat([codes[:, None], variants], 1).reshape(-1, K, frames)
            descs = (
                None if descriptions is None else [d for d in descriptions for _ in range(1 + P)]
            )
            full, full_mask = hf_backend.token_nll(rows, descs)
            for batch_size in (2, None):
                nll, mask = hf_backend.token_nll_shared_prefix(
                    codes, variants, descriptions, shared_frames=shared, batch_size=batch_size
                )
                assert nll.shape == mask.shape == (B, 1 + P, K, frames)
                assert torch.equal(mask.reshape(-1, K, frames), full_mask)
                err = (nll.reshape(-1, K, frames) - full).abs().max().item()
                assert err < 1e-5, (shared, batch_size, err)


@pytest.mark.latest
def test_transformers_probe_scores_equal_full_scoring(hf_backend, hf_text_probe_set):
    """``score_probe_set``'s default (prefix sharing) equals scoring every position."""
    shared = score_probe_set(hf_backend, hf_text_probe_set, batch_size=3)
    full = score_probe_set(
        hf_backend, hf_text_probe_set, batch_size=3, prefix_sharing=False, skip_prefix_heads=False
    )
    torch.testing.assert_close(shared.perturbed, full.perturbed, atol=1e-5, rtol=0, equal_nan=True)
    torch.testing.assert_close(shared.clean, full.clean, atol=1e-5, rtol=0, equal_nan=True)
    assert shared.summary == pytest.approx(full.summary, abs=1e-4, nan_ok=True)


def test_transformers_unsupported_model_falls_back(hf_backend, monkeypatch):
    """A model the fused path does not cover is scored in full by ``token_nll``."""
    from lightning_noiseprobe.backends.transformers import prefix as transformers_prefix

    codes = torch.randint(0, 2048, (1, 4, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref, _ = hf_backend.token_nll(codes)
        monkeypatch.setattr(transformers_prefix, "fast_path_supported", lambda backend: False)
        assert not hf_backend.supports_prefix_sharing
        nll, _ = hf_backend.token_nll_shared_prefix(codes, codes[:, None], shared_frames=10)
    assert torch.equal(nll[:, 0], ref) and torch.equal(nll[:, 1], ref)
