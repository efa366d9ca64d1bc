"""`regions="authors"`: the paper authors' own region rule, checked against a restatement of
their code on the same curves, through `analyze_curves`, `noiseprobe analyze` (subprocess,
CSVs in their format), `noiseprobe probe` and `NoiseProbeCallback`."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from audio_fixtures import write_audio
from lightning_helpers import ProtocolModule, cpu_trainer

from lightning_noiseprobe._errors import NoiseProbeError
from lightning_noiseprobe._hashing import hash_json
from lightning_noiseprobe.callback import NoiseProbeCallback
from lightning_noiseprobe.cli import main
from lightning_noiseprobe.functional.curves import REGION_NAMES, analyze_curves
from lightning_noiseprobe.probe import ProbeSpec
from lightning_noiseprobe.probe.probeset import _cache_key


# Reference: the authors' Fig. 4 rule, restated for this test from their source:
#   repository github.com/YoEv/noiseloss,
#   file experiments/phase5/phase5_region_analysis_boxplot_3areas.py,
#   functions detect_regions_ma (boundaries) and analyze_single_file (means);
#   identical at commits a1ebf25a50910e466642fe933e45115061cd523b and
#   ec800b705d1ab89a5feb2289417c9516b0a00937, e.g.
#   https://github.com/YoEv/noiseloss/blob/ec800b705d1ab89a5feb2289417c9516b0a00937/experiments/phase5/phase5_region_analysis_boxplot_3areas.py
# Their constants are written for onset 250 (STABLE_LEN 5, Peak start 245, baseline
# diff[:200], Assimilation end 249 + L + 4, Peak end 245 + 50 when none is found);
# with onset=250 this function is their code's logic step for step, other onsets shift
# those constants as this project's generalisation does.
def their_rule(ori, mix, noise_length, onset=250):
    n = min(len(ori), len(mix))  # they cut both curves to the shorter one
    ori, mix = ori[:n], mix[:n]
    diff = mix - ori
    baseline = np.mean(diff[: onset - 50])
    stable = 5
    peak_start = onset - 5
    peak_end = None
    for i in range(peak_start + stable, len(diff)):
        if all(diff[j] <= baseline for j in range(i - stable, i)):
            peak_end = i - stable
            break
    if peak_end is None:
        peak_end = peak_start + 50
    assim_end = min(onset - 1 + noise_length + 4, len(diff) - 1)
    regions = [(peak_start, peak_end), (peak_end, assim_end), (assim_end, len(diff) - 1)]
    means = [np.mean(diff[a:b]) if b > a else 0 for a, b in regions]
    return regions, means, baseline


def _curves():
    """(name, clean, perturbed, length, onset) covering their quirks, plus random curves."""
    rng = np.random.default_rng(12)
    out = []

    def base(T):
        return 6.0 + 0.5 * rng.standard_normal(T)

    # a clear peak, a dip inside the window, recovery
    T = 750
    clean = base(T)
    d = 0.05 * rng.standard_normal(T)
    d[247:262] += 3.0
    d[262:340] -= 1.0
    out.append(("paper shape", clean, clean + d, 100, 250))
    # the difference never falls back: Peak end 295, past the Assimilation end (start > end)
    d = 0.05 * rng.standard_normal(T)
    d[246:] += 2.0
    out.append(("peak never ends", clean, clean + d, 5, 250))
    # exactly zero before the onset (codes change only at the onset): empty Peak
    d = np.zeros(T)
    d[250:350] = 1.5
    d[350:420] = -0.5
    out.append(("empty peak", clean, clean + d, 100, 250))
    # ties with the baseline: numpy's mean of 200 x 0.3 is just below 0.3, of 2.3 just above
    for v in (0.3, 2.3):
        d = np.full(T, v)
        d[246:300] += 1.0
        out.append((f"ties at {v}", np.zeros(T), d, 50, 250))
    # a low run that only ends on the last token (never examined: Peak end 295 instead)
    T = 420
    clean = base(T)
    d = np.full(T, 1.0)
    d[:200] = 0.0
    d[T - 5 :] = -1.0
    out.append(("low run on the last token", clean, clean + d, 150, 250))
    d[T - 6 : T - 1] = -1.0
    d[T - 1] = 5.0
    out.append(("low run just before the last token", clean, clean + d, 150, 250))
    # short curve: Peak end 295 lies past its end
    T = 262
    clean = base(T)
    d = np.full(T, 1.0)
    d[:240] = 0.0
    out.append(("peak past the curve", clean, clean + d, 10, 250))
    # the window ends at the curve's end
    T = 350
    clean = base(T)
    d = np.zeros(T)
    d[248:270] = 2.0
    d[270:350] = -0.3
    out.append(("window at the end", clean, clean + d, 100, 250))
    # other onsets (their constants shifted)
    T = 500
    clean = base(T)
    d = 0.1 * rng.standard_normal(T)
    d[98:120] += 2.0
    d[120:170] -= 0.7
    out.append(("onset 100", clean, clean + d, 50, 100))
    out.append(("onset 51", clean, clean + d, 20, 51))
    # random curves, lengths of the paper
    for k in range(8):
        T = int(rng.integers(460, 760))
        clean = base(T)
        length = int(rng.choice([5, 10, 50, 100, 150, 200]))
        d = 0.3 * rng.standard_normal(T)
        d[245 : 250 + length] += rng.uniform(-0.5, 2.5)
        out.append((f"random {k}", clean, clean + d, length, 250))
    return out


CURVES = _curves()
IDS = [c[0] for c in CURVES]


def _assert_same(regions, means, baseline, ref):
    ref_regions, ref_means, ref_baseline = ref
    assert regions == [list(r) for r in ref_regions]
    assert means == [float(m) for m in ref_means]  # exact: same float64 arithmetic
    assert baseline == float(ref_baseline)


@pytest.mark.parametrize("case", CURVES, ids=IDS)
def test_analyze_curves_equals_their_code(case):
    _, clean, pert, length, onset = case
    a = analyze_curves(
        torch.from_numpy(clean), torch.from_numpy(pert), onset, length, regions="authors"
    )
    means = [float(getattr(a, f"{n}_mean")) for n in REGION_NAMES]
    _assert_same(
        a.regions.tolist(), means, float(a.baseline), their_rule(clean, pert, length, onset)
    )
    assert int(a.start) == onset - 5
    assert int(a.peak_width) == a.regions[0, 1] - a.regions[0, 0]


def test_quirks_are_reproduced():
    by_name = {c[0]: c for c in CURVES}

    def regions(name):
        _, clean, pert, length, onset = by_name[name]
        a = analyze_curves(
            torch.from_numpy(clean), torch.from_numpy(pert), onset, length, regions="authors"
        )
        return a, a.regions.tolist()

    a, r = regions("peak never ends")  # Peak 245..295 runs past the Assimilation end 258
    assert r == [[245, 295], [295, 258], [258, 749]] and float(a.assimilation_mean) == 0.0
    a, r = regions("empty peak")
    assert r[0] == [245, 245] and float(a.peak_mean) == 0.0 and float(a.peak_height) == 0.0
    assert regions("low run on the last token")[1][0] == [245, 295]
    assert regions("low run just before the last token")[1][0] == [245, 414]
    a, r = regions("peak past the curve")
    assert r == [[245, 295], [295, 261], [261, 261]] and float(a.recovery_mean) == 0.0
    assert regions("ties at 0.3")[1][0] == [245, 295]  # 0.3 > mean(200 x 0.3): never quiet
    assert regions("ties at 2.3")[1][0] == [245, 300]  # 2.3 <= mean(200 x 2.3)
    # the default rule is untouched by the option
    _, clean, pert, length, onset = by_name["paper shape"]
    default = analyze_curves(
        torch.from_numpy(clean).float(), torch.from_numpy(pert).float(), onset, length
    )
    again = analyze_curves(
        torch.from_numpy(clean), torch.from_numpy(pert), onset, length, regions="default"
    )
    assert default.regions.tolist() == again.regions.tolist() and default.baseline is None


def test_batched_and_padded_curves_equal_their_code():
    """A batch of curves of different lengths (padded, `valid` marks the tokens): each
    curve is analysed up to its own last token, as their code does per file."""
    cases = [c for c in CURVES if c[4] == 250]
    T = max(len(c[1]) for c in cases)
    clean = torch.full((len(cases), T), 99.0, dtype=torch.float64)
    pert = torch.full((len(cases), T), -99.0, dtype=torch.float64)
    valid = torch.zeros(len(cases), T, dtype=torch.bool)
    for i, (_, c, p, _, _) in enumerate(cases):
        clean[i, : len(c)] = torch.from_numpy(c)
        pert[i, : len(p)] = torch.from_numpy(p)
        valid[i, : len(c)] = True
    lengths = torch.tensor([c[3] for c in cases])
    a = analyze_curves(clean, pert, 250, lengths, valid=valid, regions="authors")
    for i, (_, c, p, length, onset) in enumerate(cases):
        means = [float(getattr(a, f"{n}_mean")[i]) for n in REGION_NAMES]
        _assert_same(
            a.regions[i].tolist(), means, float(a.baseline[i]), their_rule(c, p, length, onset)
        )
    records = a.to_records()
    assert records[0]["baseline"] == float(a.baseline[0])


def test_bad_arguments():
    x = torch.zeros(400)
    with pytest.raises(NoiseProbeError, match="at least 51"):
        analyze_curves(x, x, 50, 100, regions="authors")
    with pytest.raises(NoiseProbeError, match="'default', 'authors'"):
        analyze_curves(x, x, 250, 100, regions="paper")
    with pytest.raises(NoiseProbeError, match="at least 51"):
        ProbeSpec(onset=40, regions="authors")
    with pytest.raises(NoiseProbeError, match="regions"):
        ProbeSpec(regions="Authors")


def _write_their_csv(path, values):
    """Their per-token CSV format; repr() round-trips every float64 exactly."""
    lines = ["token_position,avg_loss_value"] + [f"{i},{float(v)!r}" for i, v in enumerate(values)]
    path.write_text("\n".join(lines) + "\n")


SUBPROCESS_CASES = ["paper shape", "peak never ends", "ties at 0.3"]


@pytest.mark.parametrize("name", SUBPROCESS_CASES)
def test_cli_analyze_on_their_csvs_gives_their_numbers(tmp_path, name):
    _, clean, pert, length, onset = dict(zip(IDS, CURVES, strict=True))[name]
    _write_their_csv(tmp_path / "clean.csv", clean)
    _write_their_csv(tmp_path / "noise.csv", pert)
    cmd = [sys.executable, "-m", "lightning_noiseprobe.cli", "analyze"]
    cmd += ["--clean", str(tmp_path / "clean.csv"), "--perturbed", str(tmp_path / "noise.csv")]
    cmd += ["--onset", str(onset), "--length", str(length), "--regions", "authors"]
    cmd += ["--json", str(tmp_path / "r.json")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc == json.loads(proc.stdout) and doc["region_rule"] == "authors"
    regions = [doc["regions"][n] for n in REGION_NAMES]
    means = [doc[f"{n}_mean"] for n in REGION_NAMES]
    _assert_same(regions, means, doc["baseline"], their_rule(clean, pert, length, onset))
    # the loss column, not the position column, is the loss
    assert doc["clean_loss"] == pytest.approx(float(np.mean(clean)), rel=1e-6)


def test_default_spec_hash_and_token_cache_do_not_depend_on_regions(tiny_backend):
    default, authors = ProbeSpec(), ProbeSpec(regions="authors")
    assert "regions" not in default.to_dict()  # existing spec hashes and checkpoints unchanged
    fields = {k: v for k, v in vars(default).items() if k != "regions"}
    assert default.hash() == hash_json(fields)[:16]
    assert authors.hash() != default.hash()
    assert ProbeSpec.from_dict(authors.to_dict()) == authors
    assert ProbeSpec.from_dict(default.to_dict()) == default
    assert _cache_key("audio", default, tiny_backend, "codec") == _cache_key(
        "audio", authors, tiny_backend, "codec"
    )
    assert NoiseProbeCallback(probe_audio="x", regions="authors").spec == authors


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("authors_clips")
    write_audio(d / "a.wav", 32000, 1, seconds=4.5)
    write_audio(d / "b.wav", 32000, 1, seconds=3.9)  # shorter: its curves are padded
    return d


def test_cli_probe_authors_regions_match_their_code(clip_dir, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["probe", "--model", "tiny", "--audio", str(clip_dir), "--out", str(out)]
    argv += ["--onset", "60", "--lengths", "5,60", "--clip-seconds", "4.5", "--regions", "authors"]
    argv += ["--cache-dir", "none", "--no-figures", "--quiet"]
    assert main(argv) == 0, capsys.readouterr().err
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["spec"]["regions"] == "authors"
    curves = np.load(out / "curves.npz")
    n_tokens = curves["valid"].sum(-1)
    assert len(set(n_tokens.tolist())) == 2  # two clip lengths
    P = 2
    for k, rec in enumerate(doc["clips"]):
        i, p = divmod(k, P)
        n = int(n_tokens[i])
        clean = curves["clean"][i, :n].astype(np.float64)
        pert = curves["perturbed"][i, p, :n].astype(np.float64)
        regions = [rec["regions"][r] for r in REGION_NAMES]
        means = [rec[f"{r}_mean"] for r in REGION_NAMES]
        _assert_same(regions, means, rec["baseline"], their_rule(clean, pert, rec["length"], 60))


def test_cli_authors_onset_too_small(tmp_path, capsys):
    _write_their_csv(tmp_path / "c.csv", np.ones(300))
    argv = ["analyze", "--clean", tmp_path / "c.csv", "--perturbed", tmp_path / "c.csv"]
    argv += ["--onset", "40", "--length", "10", "--regions", "authors"]
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--onset" in err and "40" in err


def test_callback_with_authors_regions_in_trainer_fit(clip_dir, tmp_path):
    probe = NoiseProbeCallback(
        probe_audio=clip_dir,
        onset=60,
        lengths=(20,),
        clip_seconds=4.5,
        regions="authors",
        cache_dir="none",
        batch_size=4,
        log_figures=False,
    )
    trainer = cpu_trainer(tmp_path, [probe], max_epochs=1, num_sanity_val_steps=0)
    trainer.fit(ProtocolModule())
    result = probe.last_result
    assert result is not None and result.spec["regions"] == "authors"
    for i in range(2):
        n = int(result.valid[i].sum())
        ref = their_rule(
            result.clean[i, :n].double().numpy(),
            result.perturbed[i, 0, :n].double().numpy(),
            20,
            60,
        )
        a = result.analysis
        means = [float(getattr(a, f"{r}_mean")[i, 0]) for r in REGION_NAMES]
        _assert_same(a.regions[i, 0].tolist(), means, float(a.baseline[i, 0]), ref)
    logged = float(trainer.callback_metrics["noiseprobe/peak_mean"])
    assert logged == pytest.approx(float(result.analysis.peak_mean.mean()), rel=1e-5)
