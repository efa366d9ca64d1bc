"""The probe engine end to end on the tiny audiocraft model and real audio files."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from audio_fixtures import write_audio, write_garbage

from lightning_noiseprobe._errors import NoiseProbeError
from lightning_noiseprobe.cli import main
from lightning_noiseprobe.probe import ProbeSpec, build_probe_set, score_probe_set
from lightning_noiseprobe.probe.probeset import clear_memory_cache

# Short protocol so the suite stays fast: 5 s clips, onset at token 60.
SPEC = ProbeSpec(onset=60, lengths=(5, 20, 60), clip_seconds=4.0)


@pytest.fixture(scope="module")
def audio_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("probe_audio")
    write_audio(d / "mono32k.wav", 32000, 1, seconds=4.5)
    write_audio(d / "stereo48k.flac", 48000, 2, seconds=4.5)
    write_audio(d / "stereo44k.mp3", 44100, 2, seconds=4.5)
    write_audio(d / "short.ogg", 32000, 1, seconds=1.5)
    write_garbage(d / "corrupt.wav")
    return d


def test_probe_set_skips_bad_clips_with_reasons(tiny_backend, audio_dir):
    clear_memory_cache()
    ps = build_probe_set(tiny_backend, audio_dir, SPEC)
    assert [c.name.rsplit("/", 1)[-1] for c in ps.clips] == [
        "mono32k.wav",
        "stereo44k.mp3",
        "stereo48k.flac",
    ]
    reasons = {s["path"].rsplit("/", 1)[-1]: s["reason"] for s in ps.skipped}
    assert set(reasons) == {"corrupt.wav", "short.ogg"}
    assert "too short" in reasons["short.ogg"] and "1.50 s" in reasons["short.ogg"]
    assert "corrupt.wav" in reasons["corrupt.wav"]
    assert ps.clean_codes.shape == (3, 4, 200)
    assert ps.perturbed_codes.shape == (3, 3, 4, 200)
    with pytest.raises(NoiseProbeError, match=r"corrupt\.wav"):
        build_probe_set(tiny_backend, audio_dir, SPEC, strict=True)


def test_prefix_codes_identical_and_start_near_onset(tiny_backend, audio_dir):
    ps = build_probe_set(tiny_backend, audio_dir / "mono32k.wav", SPEC)
    from lightning_noiseprobe.functional.curves import first_differing_token

    start = first_differing_token(
        ps.clean_codes[:, None].expand_as(ps.perturbed_codes), ps.perturbed_codes
    )
    # the codec's receptive field lets codes change a few frames early, never long before
    assert ((start >= SPEC.onset - 6) & (start <= SPEC.onset + 1)).all(), start


def test_cache_hit_does_no_encoding(tiny_backend, audio_dir, tmp_path, monkeypatch):
    clear_memory_cache()
    first = build_probe_set(tiny_backend, audio_dir, SPEC, cache_dir=tmp_path)
    assert first.encoded_clips == 3
    assert len(list(tmp_path.glob("*.pt"))) == 3
    clear_memory_cache()  # force the disk cache

    def no_encode(wav):
        raise AssertionError("the codec was called on a cache hit")

    monkeypatch.setattr(tiny_backend, "encode", no_encode)
    second = build_probe_set(tiny_backend, audio_dir, SPEC, cache_dir=tmp_path)
    assert second.encoded_clips == 0
    assert torch.equal(first.clean_codes, second.clean_codes)
    assert torch.equal(first.perturbed_codes, second.perturbed_codes)
    # a different spec is a different key: it must encode again
    monkeypatch.undo()
    other = build_probe_set(
        tiny_backend,
        audio_dir / "mono32k.wav",
        ProbeSpec(onset=60, lengths=(7,), clip_seconds=4.0),
        cache_dir=tmp_path,
    )
    assert other.encoded_clips == 1


def test_corrupt_cache_file_is_rebuilt(tiny_backend, audio_dir, tmp_path):
    clear_memory_cache()
    build_probe_set(tiny_backend, audio_dir / "mono32k.wav", SPEC, cache_dir=tmp_path)
    (cache_file,) = tmp_path.glob("*.pt")
    cache_file.write_bytes(b"not a torch file")
    clear_memory_cache()
    again = build_probe_set(tiny_backend, audio_dir / "mono32k.wav", SPEC, cache_dir=tmp_path)
    assert again.encoded_clips == 1


def test_scoring_is_deterministic_and_consistent(tiny_backend, audio_dir):
    ps = build_probe_set(tiny_backend, audio_dir, SPEC)
    a = score_probe_set(tiny_backend, ps, batch_size=4)
    b = score_probe_set(tiny_backend, ps, batch_size=3)
    assert a.summary.keys() == b.summary.keys()
    for k in a.summary:
        assert a.summary[k] == pytest.approx(b.summary[k], rel=1e-5, abs=1e-6), k
    # each clean clip scored once: its curve is the codebook mean of the backend's NLL
    nll, mask = tiny_backend.token_nll(ps.clean_codes[:1])
    expected = (nll * mask).sum(1) / mask.sum(1)
    torch.testing.assert_close(a.clean[0], expected[0], rtol=1e-5, atol=1e-5)
    assert a.analysis.regions.shape == (3, 3, 3, 2)
    assert all(math.isfinite(v) for v in a.summary.values())
    doc = a.to_json()
    json.dumps(doc, allow_nan=False)
    assert len(doc["clips"]) == 9 and doc["clips"][0]["noise"] == "white"
    assert set(doc["by_length"]["white"]) == {"5", "20", "60"}


def test_cli_probe_writes_all_outputs(audio_dir, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(
        [
            "probe",
            "--model",
            "tiny",
            "--audio",
            str(audio_dir),
            "--out",
            str(out),
            "--onset",
            "60",
            "--lengths",
            "5,20,60",
            "--clip-seconds",
            "4",
            "--batch-size",
            "4",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--quiet",
        ]
    )
    assert code == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "curves.npz",
        "fig2_loss_vs_length.png",
        "fig3_loss_curves.png",
        "fig4_regions.png",
        "metrics.json",
    ]
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["model"] == "tiny" and doc["spec"]["onset"] == 60
    for key in (
        "clean_loss",
        "delta_loss",
        "peak_mean",
        "peak_sharpness",
        "peak_area",
        "peak_height",
        "assimilation_mean",
        "recovery_mean",
        "recovery_std",
        "length_pearson",
        "length_spearman",
        "length_slope",
    ):
        assert key in doc["summary"], key
    assert {s["path"].rsplit("/", 1)[-1] for s in doc["skipped"]} == {"corrupt.wav", "short.ogg"}
    clip = doc["clips"][0]
    assert set(clip["regions"]) == {"peak", "assimilation", "recovery"} and clip["onset"] == 60
    # region means leave empty regions out; the summary says how many there were
    for name in ("peak", "assimilation", "recovery"):
        empty = [c for c in doc["clips"] if c["regions"][name][1] <= c["regions"][name][0]]
        assert doc["summary"][f"{name}_empty"] == len(empty), name
        assert all(c[f"{name}_mean"] is None for c in empty)
        n = doc["by_length"]["white"]
        assert sum(n[k][f"{name}_mean"]["n"] for k in n) == len(doc["clips"]) - len(empty)
    # Recovery starts after every window and its margin
    assert all(c["regions"]["recovery"][0] == 60 + c["length"] + 5 for c in doc["clips"])
    curves = np.load(out / "curves.npz")
    assert curves["perturbed"].shape == (3, 3, 200) and curves["clean_per_codebook"].shape == (
        3,
        4,
        200,
    )
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "peak_sharpness" in capsys.readouterr().out


def test_cli_probe_strict_fails_cleanly(audio_dir, tmp_path, capsys):
    out = tmp_path / "strict"
    code = main(
        [
            "probe",
            "--audio",
            str(audio_dir),
            "--out",
            str(out),
            "--onset",
            "60",
            "--lengths",
            "5",
            "--clip-seconds",
            "4",
            "--strict",
            "--quiet",
            "--cache-dir",
            "none",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("noiseprobe: error: ") and ("corrupt.wav" in err or "short.ogg" in err)
    assert not out.exists() or not any(out.iterdir())


def test_cli_probe_missing_audio(tmp_path, capsys):
    code = main(
        ["probe", "--audio", str(tmp_path / "nope"), "--out", str(tmp_path / "o"), "--quiet"]
    )
    assert code == 2
    assert "nope" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"onset": 1}, "`onset`"),
        ({"lengths": (0,)}, "`lengths`"),
        ({"noises": ("red",)}, "`noises`"),
        ({"mode": "mix"}, "`mode`"),
        ({"clip_seconds": -1.0}, "`clip_seconds`"),
        ({"lengths": (), "shuffle_segments": ()}, "at least one"),
        ({"lengths": (5, 10, 5)}, "`lengths` to hold distinct values"),
        ({"noises": ("white", "white")}, "`noises` to hold distinct values"),
        ({"shuffle_segments": (10, 10)}, "`shuffle_segments` to hold distinct values"),
        ({"smoothing": 4}, "`smoothing`"),
        ({"margin": -1}, "`margin`"),
        ({"level_dbfs": float("inf")}, "`level_dbfs`"),
    ],
)
def test_spec_validation(kwargs, match):
    with pytest.raises(NoiseProbeError, match=match):
        ProbeSpec(**kwargs)


def test_shuffle_perturbations_are_scored(tiny_backend, audio_dir):
    spec = ProbeSpec(
        onset=60, lengths=(20,), shuffle_segments=(10,), shuffle_length=40, clip_seconds=4.0
    )
    ps = build_probe_set(tiny_backend, audio_dir / "mono32k.wav", spec)
    result = score_probe_set(tiny_backend, ps)
    assert [p.group for p in result.perturbations] == ["white", "shuffle10"]
    assert "shuffle10" in result.by_length


# ----------------------------------------------------------------------------- the engine
def test_engine_in_a_plain_loop(tiny_backend, audio_dir, tmp_path):
    """NoiseProber without Lightning: the probe set is built once (skips reported), scoring
    matches score_probe_set, the LM's modes come back, the global RNGs are untouched."""
    from lightning_noiseprobe.probe.engine import NoiseProber

    warned: list[str] = []
    prober = NoiseProber(audio_dir, spec=SPEC, batch_size=4, cache_dir=tmp_path, max_clips=4)
    prober.warn = warned.append
    lm = tiny_backend.lm
    lm.train()
    lm.transformer.layers[0].eval()
    modes = {name: m.training for name, m in lm.named_modules()}
    torch.manual_seed(5)
    expected_draw = torch.rand(3)
    torch.manual_seed(5)
    result = prober(tiny_backend)
    assert torch.equal(torch.rand(3), expected_draw)  # the probe used no global RNG state
    assert {name: m.training for name, m in lm.named_modules()} == modes
    lm.eval()
    ps = prober.probe_set(tiny_backend)
    assert ps is prober.built and len(ps) == 2  # max_clips=4 kept 4 files; 2 were unusable
    assert len(warned) == 2 and all(w.startswith("skipped probe clip ") for w in warned)
    reference = score_probe_set(tiny_backend, ps, batch_size=4)
    torch.testing.assert_close(result.perturbed, reference.perturbed)
    metrics = prober.metrics(result, prefix="probe")
    assert metrics["probe/peak_sharpness"] == pytest.approx(reference.summary["peak_sharpness"])
    assert "probe/white/len60/peak_mean" in metrics
    assert set(metrics) <= set(prober.metric_names(prefix="probe"))
    assert not any(k.endswith("_p") for k in metrics)
    assert set(prober.metrics(result, per_length=False)) == {
        k.replace("probe/", "noiseprobe/") for k in metrics if k.count("/") == 1
    }
    examples = prober.audio_examples(0)
    assert list(examples) == ["clean", "white_len60"]
    clean, noisy = examples["clean"], examples["white_len60"]
    assert clean.shape == noisy.shape == (1, 4 * 32000)
    start, end = 60 * 640, 120 * 640
    assert torch.equal(clean[:, : start - 640], noisy[:, : start - 640])
    assert not torch.equal(clean[:, start:end], noisy[:, start:end])


def test_engine_sharded_scoring_matches_single_process(tiny_backend, audio_dir, tmp_path):
    """score(world_size=2): each rank's share, gathered, equals the one-process result. The
    two ranks run one after the other here; all_gather replays what each rank contributed."""
    from lightning_noiseprobe.probe.engine import NoiseProber

    calls: list[list[torch.Tensor]] = [[], []]

    def gather_for(rank):
        def gather(t):
            calls[rank].append(t.clone())
            other = calls[1 - rank][len(calls[rank]) - 1] if calls[1 - rank] else t
            return torch.stack([t, other] if rank == 0 else [other, t])

        return gather

    prober = NoiseProber(audio_dir, spec=SPEC, batch_size=4, cache_dir=tmp_path)
    single = prober(tiny_backend)
    prober(tiny_backend, world_size=2, rank=1, all_gather=gather_for(1))  # records rank 1's share
    sharded = prober(tiny_backend, world_size=2, rank=0, all_gather=gather_for(0))
    torch.testing.assert_close(sharded.perturbed, single.perturbed)
    assert sharded.clip_names == single.clip_names
