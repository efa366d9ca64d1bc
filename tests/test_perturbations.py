"""Tests for noise colours, noise injection and segment shuffling, on real files."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import scipy.signal
import torch
from audio_fixtures import AUDIO_CASES, AudioCase, synth_music, write_audio

from lightning_noiseprobe._errors import NoiseProbeError
from lightning_noiseprobe._hashing import derive_seed
from lightning_noiseprobe.audio import load_audio, rms_dbfs, save_audio
from lightning_noiseprobe.perturbations import (
    NOISE_COLORS,
    colored_noise,
    inject_noise,
    seconds_window_to_samples,
    shuffle_segments,
    token_window_to_samples,
)

ONSET, LENGTH = 25, 50  # tokens: 0.5 s .. 1.5 s of a 2 s fixture clip
LEVEL_TOL_DB = 1e-4


def _music(sample_rate: int = 32000, channels: int = 2, seconds: float = 2.0) -> torch.Tensor:
    return torch.from_numpy(synth_music(sample_rate, channels, seconds))


def _changed(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Sample indices where any channel differs."""
    return (a != b).reshape(-1, a.shape[-1]).any(dim=0).nonzero().flatten()


# ----------------------------------------------------------------------------- colours
@pytest.mark.parametrize(
    ("color", "slope_db_per_octave"),
    [("white", 0.0), ("pink", -3.01), ("brown", -6.02), ("blue", 3.01), ("violet", 6.02)],
)
def test_noise_spectral_slope(color: str, slope_db_per_octave: float) -> None:
    x = colored_noise(color, 1, 2**18, torch.Generator().manual_seed(11)).numpy()[0]
    f, psd = scipy.signal.welch(x, fs=32000, nperseg=4096)
    band = (f >= 200) & (f <= 6400)
    slope = np.polyfit(np.log2(f[band]), 10 * np.log10(psd[band]), 1)[0]
    assert abs(slope - slope_db_per_octave) < 0.5, slope


@pytest.mark.parametrize("color", NOISE_COLORS)
def test_noise_unit_rms_zero_mean_independent_channels(color: str) -> None:
    x = colored_noise(color, 3, 20000, torch.Generator().manual_seed(0), dtype=torch.float64)
    assert x.shape == (3, 20000) and x.dtype == torch.float64
    assert torch.allclose(
        x.square().mean(dim=-1).sqrt(), torch.ones(3, dtype=torch.float64), atol=1e-12
    )
    assert float(x.mean(dim=-1).abs().max()) < 1e-12  # DC bin zeroed
    if color in ("white", "blue", "violet"):  # low-frequency colours have few independent dof
        corr = np.corrcoef(x.numpy())
        assert np.abs(corr[np.triu_indices(3, 1)]).max() < 0.05
    assert not torch.equal(x[0], x[1])


def test_noise_deterministic_given_generator() -> None:
    a = colored_noise("brown", 2, 1000, torch.Generator().manual_seed(5))
    b = colored_noise("brown", 2, 1000, torch.Generator().manual_seed(5))
    c = colored_noise("brown", 2, 1000, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    one = colored_noise("pink", 2, 1, torch.Generator().manual_seed(0))
    assert torch.equal(one.abs(), torch.ones(2, 1))


def test_noise_bad_arguments() -> None:
    g = torch.Generator().manual_seed(0)
    with pytest.raises(
        NoiseProbeError,
        match=r"`color` to be one of 'white', 'pink', 'blue', 'brown', 'violet' but got 'red'",
    ):
        colored_noise("red", 1, 10, g)
    with pytest.raises(NoiseProbeError, match=r"`num_samples` to be a positive integer but got 0"):
        colored_noise("white", 1, 0, g)
    with pytest.raises(NoiseProbeError, match=r"`channels` to be a positive integer but got -1"):
        colored_noise("white", -1, 10, g)
    with pytest.raises(NoiseProbeError, match=r"`generator` to be a CPU torch.Generator"):
        colored_noise("white", 1, 10, 0)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- windows
def test_token_window_to_samples_exact() -> None:
    assert token_window_to_samples(250, 100, 50.0, 32000) == (160000, 224000)
    assert token_window_to_samples(250, 5, 50, 48000) == (240000, 244800)
    assert token_window_to_samples(1, 1, 75, 44100) == (588, 1176)
    # Half-way cases round up: 1 token at 50 Hz / 25 Hz sample rate = 0.5 samples.
    assert token_window_to_samples(1, 2, 50, 25) == (1, 2)  # 0.5 -> 1, 1.5 -> 2
    # MusicGen-like rate 32000/640 given as a float: still exact.
    assert token_window_to_samples(3, 7, 32000 / 640, 32000) == (1920, 6400)
    # Windows tile: the end of one is the start of the next, for awkward rates too.
    rate = 86.1328125  # 44100 / 512
    for onset in range(0, 40, 3):
        a = token_window_to_samples(onset, 3, rate, 44100)
        b = token_window_to_samples(onset + 3, 5, rate, 44100)
        assert a[1] == b[0]
        exact = Fraction(onset) / Fraction(rate) * 44100
        assert a[0] == math.floor(exact + Fraction(1, 2))


def test_seconds_window_to_samples() -> None:
    assert seconds_window_to_samples(5.0, 2.0, 32000) == (160000, 224000)
    assert seconds_window_to_samples(0.1, 0.1, 32000) == (3200, 6400)
    assert seconds_window_to_samples(0.5 / 32000, 1 / 32000, 32000) == (1, 2)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"onset": -1, "length": 5}, r"`onset` to be a non-negative number of tokens but got -1"),
        ({"onset": 0, "length": 0}, r"`length` to be a positive number of tokens but got 0"),
        ({"onset": 0, "length": -3}, r"`length` to be a positive number of tokens but got -3"),
        (
            {"onset": 0, "length": math.nan},
            r"`length` to be a positive number of tokens but got nan",
        ),
        (
            {"onset": 0, "length": 5, "frame_rate": 0},
            r"`frame_rate` to be a positive number of tokens per second but got 0",
        ),
        (
            {"onset": 0, "length": 5, "sample_rate": 32000.0},
            r"`sample_rate` to be a positive integer \(Hz\) but got 32000.0",
        ),
    ],
)
def test_token_window_bad_arguments(kwargs: dict, pattern: str) -> None:
    args = {"frame_rate": 50.0, "sample_rate": 32000, **kwargs}
    with pytest.raises(NoiseProbeError, match=pattern):
        token_window_to_samples(**args)


# ----------------------------------------------------------------------------- injection on real files
@pytest.mark.parametrize("case", AUDIO_CASES, ids=str)
def test_inject_on_real_file(tmp_path: Path, case: AudioCase) -> None:
    path = write_audio(tmp_path / case.filename, case.sample_rate, case.channels)
    wav, sr = load_audio(path)
    before = wav.clone()
    out = inject_noise(wav, sr, onset=ONSET, length=LENGTH, level_dbfs=-30.0, seed=3)
    start, end = token_window_to_samples(ONSET, LENGTH, 50.0, sr)
    assert (start, end) == (sr // 2, sr * 3 // 2)

    assert torch.equal(wav, before)  # input untouched
    assert out.shape == wav.shape and out.dtype == wav.dtype
    changed = _changed(out, wav)
    assert int(changed[0]) == start and int(changed[-1]) == end - 1
    assert len(changed) == end - start  # every window sample replaced
    assert torch.equal(out[:, :start], wav[:, :start]) and torch.equal(out[:, end:], wav[:, end:])

    levels = rms_dbfs(out[:, start:end], dim=-1)
    assert torch.all((levels + 30.0).abs() < LEVEL_TOL_DB), levels
    if case.channels == 2:
        corr = np.corrcoef(out[:, start:end].numpy())[0, 1]
        assert abs(corr) < 0.05
        assert not torch.equal(out[0, start:end], out[1, start:end])


@pytest.mark.parametrize("level", [-30.0, -24.0, -12.0])
def test_inject_paper_protocol_defaults(level: float) -> None:
    clip = _music(32000, 2, 15.0)
    out = inject_noise(clip, 32000, level_dbfs=level, seed=0)  # onset 250, length 100 tokens
    assert _changed(out, clip)[[0, -1]].tolist() == [160000, 223999]
    assert torch.all((rms_dbfs(out[:, 160000:224000], dim=-1) - level).abs() < LEVEL_TOL_DB)


@pytest.mark.parametrize("subtype", ["FLOAT", "PCM_16", "PCM_24"])
def test_inject_file_roundtrip_keeps_untouched_samples(tmp_path: Path, subtype: str) -> None:
    src = write_audio(tmp_path / "in.wav", 48000, 2, subtype=subtype)
    wav, sr, info = load_audio(src, return_info=True)
    out = inject_noise(wav, sr, onset=ONSET, length=LENGTH, noise="pink", level_dbfs=-24.0, seed=1)
    save_audio(tmp_path / "out.wav", out, sr, subtype=info.subtype)
    again = load_audio(tmp_path / "out.wav")[0]
    start, end = token_window_to_samples(ONSET, LENGTH, 50.0, sr)
    assert torch.equal(again[:, :start], wav[:, :start])
    assert torch.equal(again[:, end:], wav[:, end:])
    tol = LEVEL_TOL_DB if subtype == "FLOAT" else 1e-2
    assert torch.all((rms_dbfs(again[:, start:end], dim=-1) + 24.0).abs() < tol)


def test_inject_additive_mode() -> None:
    clip = _music(48000, 2)
    out = inject_noise(
        clip, 48000, onset=ONSET, length=LENGTH, mode="add", level_dbfs=-30.0, seed=4
    )
    replaced = inject_noise(
        clip, 48000, onset=ONSET, length=LENGTH, mode="replace", level_dbfs=-30.0, seed=4
    )
    start, end = 24000, 72000
    assert torch.equal(out[:, :start], clip[:, :start]) and torch.equal(out[:, end:], clip[:, end:])
    # Same noise, added instead of substituted.
    assert torch.equal(out[:, start:end], clip[:, start:end] + replaced[:, start:end])
    added = out[:, start:end].double() - clip[:, start:end].double()
    assert torch.all((rms_dbfs(added, dim=-1) + 30.0).abs() < 1e-3)


def test_inject_relative_level() -> None:
    clip = _music(32000, 2)
    clip_db = float(rms_dbfs(clip))
    out = inject_noise(clip, 32000, onset=ONSET, length=LENGTH, level_db_rel=-6.0, level_dbfs=-99.0)
    levels = rms_dbfs(out[:, 16000:48000], dim=-1)
    assert torch.all((levels - (clip_db - 6.0)).abs() < LEVEL_TOL_DB), (levels, clip_db)
    # Batched: each item relative to its own RMS.
    batch = torch.stack([clip, 0.1 * clip])
    out_b = inject_noise(batch, 32000, onset=ONSET, length=LENGTH, level_db_rel=0.0)
    levels_b = rms_dbfs(out_b[..., 16000:48000], dim=-1)
    assert torch.all((levels_b[0] - clip_db).abs() < LEVEL_TOL_DB)
    assert torch.all((levels_b[1] - (clip_db - 20.0)).abs() < 1e-3)


def test_inject_batched_independent_noise() -> None:
    batch = torch.zeros(3, 2, 32000)
    out = inject_noise(batch, 32000, onset=ONSET, length=10, seed=0)
    rows = out[..., 16000:22400].reshape(6, -1)
    assert len({tuple(r[:8].tolist()) for r in rows}) == 6
    # Item 0 of a batch gets the same noise as the same clip alone.
    single = inject_noise(batch[0], 32000, onset=ONSET, length=10, seed=0)
    assert torch.equal(out[0], single)


@pytest.mark.parametrize("unit", ["tokens", "seconds"])
def test_inject_units(unit: str) -> None:
    clip = _music(48000, 1)
    onset, length = (ONSET, LENGTH) if unit == "tokens" else (0.5, 1.0)
    out = inject_noise(clip, 48000, onset=onset, length=length, unit=unit, noise="violet")
    assert _changed(out, clip)[[0, -1]].tolist() == [24000, 71999]


# ----------------------------------------------------------------------------- determinism
def test_inject_determinism() -> None:
    clip = _music(32000, 2)
    kw = {"onset": ONSET, "length": LENGTH, "noise": "brown"}
    a = inject_noise(clip, 32000, seed=123, **kw)
    assert torch.equal(a, inject_noise(clip, 32000, seed=123, **kw))
    assert not torch.equal(a, inject_noise(clip, 32000, seed=124, **kw))
    assert torch.equal(
        a, inject_noise(clip, 32000, generator=torch.Generator().manual_seed(123), **kw)
    )
    # Per-clip seeds from derive_seed: different clip keys -> different noise.
    s1, s2 = derive_seed(0, "a.wav"), derive_seed(0, "b.wav")
    assert not torch.equal(
        inject_noise(clip, 32000, seed=s1, **kw), inject_noise(clip, 32000, seed=s2, **kw)
    )
    # The window holds exactly the scaled CPU noise: nothing depends on the device.
    noise = colored_noise(
        "brown", 2, 32000, torch.Generator().manual_seed(123), dtype=torch.float64
    )
    assert torch.equal(a[:, 16000:48000], (noise * 10 ** (-30 / 20)).float())


def test_inject_generated_on_cpu_then_moved() -> None:
    if torch.cuda.is_available():
        device = torch.device("cuda")
    elif torch.backends.mps.is_available():
        device = torch.device("mps")
    else:
        pytest.skip("no accelerator: the CPU path is covered by test_inject_determinism")
    clip = _music(32000, 2)
    for mode in ("replace", "add"):
        cpu = inject_noise(clip, 32000, onset=ONSET, length=LENGTH, mode=mode, seed=9)
        dev = inject_noise(clip.to(device), 32000, onset=ONSET, length=LENGTH, mode=mode, seed=9)
        assert dev.device.type == device.type
        assert torch.equal(dev.cpu(), cpu)


def test_perturbation_model_applies_and_seeds() -> None:
    """One perturbation model (probe.spec.Perturbation), one seed recipe, one way to apply."""
    from lightning_noiseprobe.probe.spec import Perturbation, ProbeSpec

    clip = _music(32000, 1)
    pert = Perturbation("noise", ONSET, LENGTH, noise="blue")
    assert torch.equal(
        pert.apply(clip, 32000, seed=5, level_dbfs=-24.0),
        inject_noise(
            clip, 32000, onset=ONSET, length=LENGTH, noise="blue", level_dbfs=-24.0, seed=5
        ),
    )
    assert pert.seed(0, "a.wav") == pert.seed(0, "a.wav")
    assert pert.seed(0, "a.wav") != pert.seed(0, "b.wav")
    assert pert.seed(0, "a.wav") != pert.seed(1, "a.wav")
    assert pert.seed(0, "a.wav") != Perturbation("noise", ONSET, 10).seed(0, "a.wav")
    # nested noise: one seed per clip, colour and onset, whatever the length
    assert pert.seed(0, "a.wav", nested=True) == Perturbation(
        "noise", ONSET, 10, noise="blue"
    ).seed(0, "a.wav", nested=True)
    # the spec applies its own level, mode, nesting and seed
    spec = ProbeSpec(onset=ONSET, lengths=(LENGTH,), noises=("blue",), level_dbfs=-24.0, seed=3)
    (listed,) = spec.perturbations()
    assert listed == pert
    nested = pert.apply(
        clip, 32000, seed=pert.seed(3, "a", nested=True), level_dbfs=-24.0, nest_length=LENGTH
    )
    assert torch.equal(spec.perturb(clip, 32000, 50.0, pert, "a"), nested)
    cut = Perturbation("delete", ONSET, 10).apply(clip, 32000)
    assert cut.shape[-1] == clip.shape[-1] - 10 * 640
    with pytest.raises(NoiseProbeError, match="`mode` to be one of 'replace', 'add' but got 'mix'"):
        pert.apply(clip, 32000, mode="mix")
    with pytest.raises(NoiseProbeError, match=r"`noise` to be one of .* but got 'grey'"):
        Perturbation("noise", ONSET, LENGTH, noise="grey").apply(clip, 32000)
    with pytest.raises(NoiseProbeError, match=r"perturbation kind in .* but got 'blur'"):
        Perturbation("blur", ONSET, LENGTH)
    with pytest.raises(AttributeError):
        pert.length = 5  # type: ignore[misc]


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("wav", "kwargs", "pattern"),
    [
        (torch.zeros(1, 0), {}, r"`wav` to hold audio but it is empty \(shape \(1, 0\)\)"),
        (torch.zeros(5), {}, r"`wav` to have shape \[C, S\] or \[B, C, S\] but got \(5,\)"),
        (
            torch.zeros(1, 32000, dtype=torch.int16),
            {},
            r"`wav` to be a floating-point tensor but got torch.int16",
        ),
        (
            torch.full((1, 32000), math.nan),
            {},
            r"`wav` to hold finite samples but it holds 32000 NaN",
        ),
        (
            torch.zeros(1, 32000),
            {"length": 0},
            r"`length` to be a positive number of tokens but got 0",
        ),
        (
            torch.zeros(1, 32000),
            {"length": -2},
            r"`length` to be a positive number of tokens but got -2",
        ),
        (
            torch.zeros(1, 32000),
            {"onset": -1},
            r"`onset` to be a non-negative number of tokens but got -1",
        ),
        (
            torch.zeros(1, 32000),
            {"noise": "red"},
            r"`noise` to be one of 'white', 'pink', 'blue', 'brown', 'violet' but got 'red'",
        ),
        (
            torch.zeros(1, 32000),
            {"mode": "mix"},
            r"`mode` to be one of 'replace', 'add' but got 'mix'",
        ),
        (
            torch.zeros(1, 32000),
            {"unit": "frames"},
            r"`unit` to be one of 'tokens', 'seconds' but got 'frames'",
        ),
        (
            torch.zeros(1, 32000),
            {"seed": -1},
            r"`seed` to be an integer in \[0, 2\*\*63\) but got -1",
        ),
        (
            torch.zeros(1, 32000),
            {"level_dbfs": math.inf},
            r"`level_dbfs` to be a finite level in dBFS but got inf",
        ),
        (
            torch.zeros(1, 32000),
            {"level_db_rel": -6.0},
            r"non-zero RMS for `level_db_rel`=-6.0, but the clip is silent",
        ),
        (
            torch.zeros(1, 32000),
            {"length": 1e-6},
            r"to cover at least one sample but it maps to samples \[0, 0\)",
        ),
    ],
)
def test_inject_bad_input(wav: torch.Tensor, kwargs: dict, pattern: str) -> None:
    args = {"onset": 0, "length": 10, **kwargs}
    with pytest.raises(NoiseProbeError, match=pattern):
        inject_noise(wav, 32000, **args)


def test_inject_window_past_end_message() -> None:
    clip = _music(32000, 1, seconds=2.0)
    with pytest.raises(NoiseProbeError) as err:
        inject_noise(clip, 32000)  # default window: tokens 250..350 = 5 s .. 7 s
    msg = str(err.value)
    assert "`onset`=250, `length`=100 tokens" in msg
    assert "samples [160000, 224000) = 5.000 s to 7.000 s" in msg
    assert "the clip has 64000 samples (2.000 s)" in msg
    # A window ending exactly at the clip's end is fine.
    inject_noise(clip, 32000, onset=50, length=50)


def test_inject_silent_batch_item_named() -> None:
    batch = torch.stack([_music(32000, 1), torch.zeros(1, 64000)])
    with pytest.raises(NoiseProbeError, match=r"clip \(batch item 1\) is silent"):
        inject_noise(batch, 32000, onset=0, length=10, level_db_rel=-10.0)


# ----------------------------------------------------------------------------- shuffle
def _token_ramp(num_tokens: int, channels: int = 2, per_token: int = 640) -> torch.Tensor:
    """Each token frame holds its own index (channel c: index + 1000 c)."""
    base = torch.arange(num_tokens, dtype=torch.float32).repeat_interleave(per_token)
    return torch.stack([base + 1000 * c for c in range(channels)])


def test_shuffle_permutes_token_aligned_segments() -> None:
    x = _token_ramp(100)
    y, perm = shuffle_segments(x, 32000, onset=20, length=53, segment=5, seed=0)
    assert perm.dtype == torch.int64 and perm.shape == (10,)
    assert sorted(perm.tolist()) == list(range(10)) and perm.tolist() != list(range(10))
    tokens = y[0, ::640]
    # Every token frame is still constant (boundaries on frames), channels moved together.
    assert torch.equal(y[0].reshape(100, 640), tokens[:, None].expand(100, 640))
    assert torch.equal(y[1] - y[0], torch.full_like(y[0], 1000.0))
    expected = (
        list(range(20))
        + [20 + 5 * int(p) + k for p in perm for k in range(5)]
        + list(range(70, 100))
    )
    assert tokens.tolist() == [float(t) for t in expected]
    # Tokens 70..72 (the partial tail) and everything outside stay bit for bit.
    assert torch.equal(y[:, : 20 * 640], x[:, : 20 * 640])
    assert torch.equal(y[:, 70 * 640 :], x[:, 70 * 640 :])


def test_shuffle_real_music_preserves_segments() -> None:
    x = _music(48000, 2)
    y, perm = shuffle_segments(x, 48000, onset=ONSET, length=LENGTH, segment=10, seed=3)
    edges = [token_window_to_samples(ONSET + 10 * k, 10, 50.0, 48000)[0] for k in range(6)]
    segs_in = [x[:, a:b] for a, b in itertools.pairwise(edges)]
    segs_out = [y[:, a:b] for a, b in itertools.pairwise(edges)]
    for i, p in enumerate(perm.tolist()):
        assert torch.equal(segs_out[i], segs_in[p])
    key = lambda t: t.numpy().tobytes()  # noqa: E731
    assert sorted(map(key, segs_in)) == sorted(map(key, segs_out))  # multiset preserved
    assert not torch.equal(y, x)
    assert torch.equal(y[:, : edges[0]], x[:, : edges[0]]) and torch.equal(
        y[:, edges[-1] :], x[:, edges[-1] :]
    )
    again, perm2 = shuffle_segments(x, 48000, onset=ONSET, length=LENGTH, segment=10, seed=3)
    assert torch.equal(again, y) and torch.equal(perm2, perm)
    other = [
        shuffle_segments(x, 48000, onset=ONSET, length=LENGTH, segment=10, seed=s)[1].tolist()
        for s in range(4, 10)
    ]
    assert any(o != perm.tolist() for o in other)


def test_shuffle_never_identity() -> None:
    x = _token_ramp(10, channels=1)
    raw_identity = 0
    for seed in range(24):
        raw = torch.randperm(2, generator=torch.Generator().manual_seed(seed))
        raw_identity += raw.tolist() == [0, 1]
        y, perm = shuffle_segments(x, 32000, onset=2, length=4, segment=2, seed=seed)
        assert perm.tolist() == [1, 0]
        assert y[0, ::640].tolist() == [0, 1, 4, 5, 2, 3, 6, 7, 8, 9]
    assert raw_identity > 0  # the cyclic fallback was exercised


def test_shuffle_awkward_rate_keeps_length() -> None:
    x = torch.randn(1, 44100, generator=torch.Generator().manual_seed(0))
    y, perm = shuffle_segments(x, 44100, onset=3, length=12, segment=3, frame_rate=44100 / 512)
    start, end = token_window_to_samples(3, 12, 44100 / 512, 44100)
    assert y.shape == x.shape
    assert torch.equal(y[:, :start], x[:, :start]) and torch.equal(y[:, end:], x[:, end:])
    assert torch.equal(y[:, start:end].sort().values, x[:, start:end].sort().values)
    assert perm.tolist() != [0, 1, 2, 3] and not torch.equal(y, x)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        (
            {"segment": 10},
            r"`length`=10 tokens to hold at least 2 segments of `segment`=10 tokens but it holds 1",
        ),
        ({"segment": 0}, r"`segment` to be a positive number of tokens but got 0"),
        ({"length": 0}, r"`length` to be a positive number of tokens but got 0"),
        ({"onset": -5}, r"`onset` to be a non-negative number of tokens but got -5"),
        (
            {"onset": 95},
            r"samples \[60800, 67200\) = 1.900 s to 2.100 s and the clip has 64000 samples \(2.000 s\)",
        ),
    ],
)
def test_shuffle_bad_input(kwargs: dict, pattern: str) -> None:
    args = {"onset": 0, "length": 10, "segment": 2, **kwargs}
    with pytest.raises(NoiseProbeError, match=pattern):
        shuffle_segments(_music(32000, 1), 32000, **args)
    with pytest.raises(NoiseProbeError, match="finite samples"):
        shuffle_segments(torch.full((1, 64000), math.nan), 32000, onset=0, length=10, segment=2)
