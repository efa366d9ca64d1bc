"""`noiseprobe study contamination|overfit`: structure of what they write, and that every
summary number is computed from the recorded runs. No test asserts a scientific outcome."""

from __future__ import annotations

import itertools
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from lightning_noiseprobe.cli import main
from lightning_noiseprobe.study import stats as study_stats
from lightning_noiseprobe.study.stats import (
    STUDY_METRICS,
    effect_size,
    min_permutation_p,
    permutation_p,
    pick_epoch,
    summarize_by_epoch,
    summarize_overfit,
    summarize_runs,
)

# 6 chorales of 3 s: 1 probe, 2 validation, 3 training; probe windows fit in 150 tokens.
TINY = [
    "--clips", "6", "--probe-clips", "1", "--val-clips", "2", "--clip-seconds", "3",
    "--batch-size", "4", "--onset", "60", "--lengths", "5,20,60", "--quiet",
]  # fmt: skip


@pytest.fixture(scope="module")
def chorales(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder of rendered chorales shared by the studies of this module."""
    return tmp_path_factory.mktemp("study_chorales")


# ----------------------------------------------------------------------------- pure summary


def _runs(values: dict[float, list[float | None]], metric: str = "m") -> list[dict]:
    return [
        {"level": level, "seed": seed, "final": {} if v is None else {metric: v}}
        for level, vs in values.items()
        for seed, v in enumerate(vs)
    ]


def test_summary_of_hand_made_runs_has_the_known_answers():
    runs = _runs({0.0: [1.0, 2.0, 3.0], 1.0: [4.0, 6.0, 8.0]})
    s = summarize_runs(runs, metrics=["m"])["m"]
    assert s["by_level"] == {
        "0": {"mean": 2.0, "std": 1.0, "n": 3},
        "1": {"mean": 6.0, "std": 2.0, "n": 3},
    }
    # pooled sd = sqrt((2 * 1 + 2 * 4) / 4); d = (2 - 6) / pooled
    assert s["effect_size"] == pytest.approx(-4.0 / math.sqrt(2.5), rel=1e-12)
    # ranks of the levels (2, 2, 2, 5, 5, 5) against 1..6: rho = sqrt(13.5 / 17.5)
    assert s["spearman_with_level"] == pytest.approx(math.sqrt(13.5 / 17.5), rel=1e-12)
    assert 0 < s["spearman_p"] < 1


def test_summary_leaves_out_missing_values_and_reports_undefined_as_none():
    runs = _runs({0.0: [5.0, None, 7.0], 0.5: [1.0, 1.0, 1.0], 1.0: [3.0, None, None]})
    runs.append({"level": 1.0, "seed": 3, "final": {"m": float("nan")}})
    s = summarize_runs(runs, metrics=["m", "absent"])
    m = s["m"]
    assert m["by_level"]["0"] == {"mean": 6.0, "std": math.sqrt(2.0), "n": 2}
    assert m["by_level"]["0.5"] == {"mean": 1.0, "std": 0.0, "n": 3}
    assert m["by_level"]["1"] == {"mean": 3.0, "std": None, "n": 1}  # one value: no std
    # pooled over 0 and 1: sum of squares 2 + 0 over 2 + 1 - 2 = 1 degree of freedom
    assert m["effect_size"] == pytest.approx((6.0 - 3.0) / math.sqrt(2.0))
    a = s["absent"]
    assert a["by_level"]["0"] == {"mean": None, "std": None, "n": 0}
    assert a["spearman_with_level"] is None and a["effect_size"] is None
    assert effect_size([2.0, 2.0], [2.0, 2.0]) is None  # zero pooled sd: undefined


def test_overfit_summary_of_hand_made_runs():
    def rows(ce, sharp, delta):
        return [
            {"epoch": e, "val_ce": c, "peak_sharpness": s, "delta_loss": d}
            for e, (c, s, d) in enumerate(zip(ce, sharp, delta, strict=True))
        ]

    runs = [
        {"seed": 0, "epochs": rows([5, 4, 3, 3.5, 4], [1, 2, 3, 4, 2], [0.1, 0.2, 0.2, 0.1, 0.0])},
        {
            "seed": 1,
            "epochs": rows([5, 4, 3.8, 3.7, 3.6], [1, 5, 3, 4, 2], [0.0, 0.1, 0.3, 0.2, 0.1]),
        },
    ]
    out = summarize_overfit(runs)
    assert [r["picks"] for r in out["runs"]] == [
        {"val_ce": 2, "peak_sharpness": 3, "delta_loss": 1},  # ties keep the first epoch
        {"val_ce": 4, "peak_sharpness": 1, "delta_loss": 2},
    ]
    assert [r["turned_up"] for r in out["runs"]] == [True, False]
    sharp = out["summary"]["peak_sharpness"]
    assert sharp["epochs"] == [3, 1] and sharp["spread"] == 2 and sharp["mean"] == 2.0
    assert sharp["offset_from_val_ce"] == {"per_seed": [1, -3], "mean": -1.0, "mean_abs": 2.0}
    assert sharp["val_ce_excess"]["per_seed"] == pytest.approx([0.5, 0.4])
    assert out["summary"]["val_ce"]["val_ce_excess"]["mean"] == 0.0


# ------------------------------------------------------- per-epoch tests, recomputed here


def _cohen_d(low: list[float], high: list[float]) -> float | None:
    """(mean low - mean high) / pooled sample sd, as the study documents it."""
    if not low or not high or len(low) + len(high) < 3:
        return None
    ss = sum((x - statistics.mean(v)) ** 2 for v in (low, high) for x in v)
    pooled = math.sqrt(ss / (len(low) + len(high) - 2))
    return (statistics.mean(low) - statistics.mean(high)) / pooled if pooled > 0 else None


def _perm_p(low: list[float], high: list[float]) -> float | None:
    """Exact two-sided permutation p of |mean difference|: every way to pick len(low) of the
    pooled values, the observed one included; a relabeling within the study's documented
    tie tolerance (1e-9 x the largest |value|) of the observed difference counts."""
    if not low or not high:
        return None
    pooled = low + high
    observed = abs(statistics.fmean(low) - statistics.fmean(high))
    tol = 1e-9 * max(abs(x) for x in pooled)
    hits = total = 0
    for chosen in itertools.combinations(range(len(pooled)), len(low)):
        rest = [pooled[i] for i in range(len(pooled)) if i not in chosen]
        diff = abs(statistics.fmean(pooled[i] for i in chosen) - statistics.fmean(rest))
        hits += diff >= observed - tol
        total += 1
    return hits / total


def _first_lasting(ps: list[float | None]) -> int | None:
    """The first epoch from which every p is <= 0.05."""
    ok = [p is not None and p <= 0.05 for p in ps]
    return next((e for e in range(len(ok)) if all(ok[e:])), None)


def _check_by_epoch(study: dict, metrics=STUDY_METRICS) -> None:
    """Every per-epoch test and detection epoch of ``study`` is the one recomputed from its runs."""
    runs, levels = study["runs"], sorted({r["level"] for r in study["runs"]})
    epochs = 1 + max(row["epoch"] for r in runs for row in r["epochs"])
    assert len(study["by_epoch"]) == epochs

    def values(level, epoch, metric):
        rows = [row for r in runs if r["level"] == level for row in r["epochs"]]
        return [
            row[metric]
            for row in rows
            if row["epoch"] == epoch and math.isfinite(row.get(metric, math.nan))
        ]

    for metric in metrics:
        ps: dict[float, list] = {level: [] for level in levels[1:]}
        for e in range(epochs):
            low = values(levels[0], e, metric)
            for level in levels[1:]:
                high = values(level, e, metric)
                got = study["by_epoch"][e][metric]["vs_lowest"][f"{level:g}"]
                assert got["n"] == [len(low), len(high)]
                want_p = _perm_p(low, high)
                assert got["p"] == _approx(want_p), (metric, e, level)
                assert got["effect_size"] == _approx(_cohen_d(low, high)), (metric, e, level)
                ps[level].append(want_p)
            top = study["by_epoch"][e][metric]
            assert {k: top[k] for k in ("effect_size", "p", "n")} == top["vs_lowest"][
                f"{levels[-1]:g}"
            ]
        assert study["detection_epoch"][metric] == _first_lasting(ps[levels[-1]])
        assert study["detection_epoch_vs_lowest"][metric] == {
            f"{level:g}": _first_lasting(ps[level]) for level in levels[1:]
        }
    n = sum(r["level"] == levels[0] for r in runs)
    assert study["min_p"] == pytest.approx(2 / math.comb(2 * n, n))


def test_per_epoch_tests_of_hand_made_runs_have_the_known_answers():
    """3 levels x 4 seeds x 3 epochs. Level 1 is apart from level 0 from epoch 1 on, level
    0.5 only at epoch 2; epoch 0 has ties across levels and a metric missing in one run."""
    base = [1.0, 2.0, 3.0, 4.0]
    table = {  # level -> epoch -> values over seeds
        0.0: [[1.0, 2.0, 3.0, 4.0], base, base],
        0.5: [[1.0, 2.0, 3.0, 4.0], [3.5, 4.5, 1.5, 2.5], [11.0, 12.0, 13.0, 14.0]],
        1.0: [[4.0, 3.0, 2.0, math.nan], [10.0, 10.0, 10.0, 10.0], [20.0, 21.0, 22.0, 23.0]],
    }
    runs: list[dict[str, Any]] = [
        {
            "level": level,
            "seed": seed,
            "epochs": [{"epoch": e, "m": table[level][e][seed]} for e in range(3)],
        }
        for level in table
        for seed in range(4)
    ]
    out = summarize_by_epoch(runs, metrics=["m"])
    _check_by_epoch({"runs": runs, **out}, metrics=["m"])
    by = out["by_epoch"]
    assert by[0]["m"]["n"] == [4, 3] and by[0]["m"]["vs_lowest"]["0.5"]["p"] == 1.0  # all tie
    assert by[1]["m"]["p"] == pytest.approx(2 / 70)  # fully apart: the labeling and its swap
    assert by[1]["m"]["vs_lowest"]["0.5"]["p"] > 0.05
    assert out["detection_epoch"] == {"m": 1}
    assert out["detection_epoch_vs_lowest"] == {"m": {"0.5": 2, "1": 1}}
    assert out["alpha"] == 0.05 and out["exact"] and out["relabelings"] == 70
    # 3 seeds a level: 2 / C(6, 3) = 0.1, nothing can reach 0.05, yet every number is there
    three = [r for r in runs if r["seed"] < 3]
    out3 = summarize_by_epoch(three, metrics=["m"])
    assert out3["min_p"] == pytest.approx(0.1) and out3["detection_epoch"] == {"m": None}
    assert out3["by_epoch"][2]["m"]["p"] == pytest.approx(0.1)
    _check_by_epoch({"runs": three, **out3}, metrics=["m"])


def test_permutation_p_beyond_exhaustive_enumeration_is_a_close_monte_carlo_estimate(
    monkeypatch,
):
    low, high = [0.3, 1.9, 2.2, 3.1, 4.0], [1.1, 2.5, 2.9, 3.6, 5.2]
    exact = _perm_p(low, high)
    assert permutation_p(low, high) == pytest.approx(exact)
    monkeypatch.setattr(study_stats, "EXACT_RELABELINGS", 100)  # C(10, 5) = 252 > 100
    estimate = permutation_p(low, high)
    # 200000 draws: binomial sd <= 0.0012; the estimate is never below 1 / (draws + 1)
    assert estimate is not None and exact is not None
    assert estimate != exact and abs(estimate - exact) < 0.006
    assert min_permutation_p(4, 3) == pytest.approx(1 / 35) and min_permutation_p(0, 3) is None


# ----------------------------------------------------------------------------- the real CLI


def _recompute(runs: list[dict], metric: str, levels: list[float]) -> dict:
    """The summary of one metric computed here, independently of lightning_noiseprobe.

    A probe metric can be missing from an epoch (e.g. no Peak found in any curve of
    these tiny clips): such runs are left out, as the study does.
    """
    from scipy import stats

    have = [r for r in runs if metric in r["final"]]
    finals = {lv: [r["final"][metric] for r in have if r["level"] == lv] for lv in levels}
    out: dict = {
        "n": {lv: len(v) for lv, v in finals.items()},
        "mean": {lv: statistics.mean(v) if v else None for lv, v in finals.items()},
        "std": {lv: statistics.stdev(v) if len(v) > 1 else None for lv, v in finals.items()},
        "effect_size": None,
        "spearman": None,
    }
    low, high = finals[min(levels)], finals[max(levels)]
    if low and high and len(low) + len(high) > 2:
        ss = sum((x - statistics.mean(v)) ** 2 for v in (low, high) for x in v)
        pooled = math.sqrt(ss / (len(low) + len(high) - 2))
        if pooled > 0:
            out["effect_size"] = (statistics.mean(low) - statistics.mean(high)) / pooled
    xs, ys = [r["level"] for r in have], [r["final"][metric] for r in have]
    if len(xs) >= 3 and len(set(xs)) > 1 and len(set(ys)) > 1:
        out["spearman"] = float(stats.spearmanr(xs, ys)[0])
    return out


def _approx(value):
    return None if value is None else pytest.approx(value, rel=1e-9)


def test_contamination_study_via_the_cli(tmp_path, chorales, capsys):
    out = tmp_path / "study"
    args = ["study", "contamination", "--out", str(out), "--data-dir", str(chorales)]
    args += ["--levels", "0,1", "--seeds", "2", "--epochs", "2", *TINY]
    proc = subprocess.run(
        [sys.executable, "-m", "lightning_noiseprobe.cli", *args],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = json.loads((out / "study.json").read_text())
    assert study["levels"] == [0.0, 1.0] and study["seeds"] == [0, 1]
    assert sorted((r["level"], r["seed"]) for r in study["runs"]) == [
        (0.0, 0),
        (0.0, 1),
        (1.0, 0),
        (1.0, 1),
    ]
    for run in study["runs"]:
        assert [e["epoch"] for e in run["epochs"]] == [0, 1]
        for metric in ("val_ce", "clean_val_ce", "clean_loss", "delta_loss"):
            assert all(math.isfinite(e[metric]) for e in run["epochs"]), (metric, run)
        for metric in STUDY_METRICS:
            assert run["final"].get(metric) == run["epochs"][-1].get(metric)
        # the contaminated clips, by construction: none at p=0, every one at p=1
        assert len(run["contaminated"]["train"]) == (3 if run["level"] == 1 else 0)
        assert len(run["contaminated"]["val"]) == (2 if run["level"] == 1 else 0)
        if run["level"] == 0:  # own validation set == clean one: the same loss, two code paths
            assert all(abs(e["val_ce"] - e["clean_val_ce"]) < 1e-4 for e in run["epochs"])
    # every summary number is the one recomputed from the runs
    for metric in STUDY_METRICS:
        want = _recompute(study["runs"], metric, [0.0, 1.0])
        got = study["summary"][metric]
        for level, key in ((0.0, "0"), (1.0, "1")):
            assert got["by_level"][key]["n"] == want["n"][level]
            assert got["by_level"][key]["mean"] == _approx(want["mean"][level])
            assert got["by_level"][key]["std"] == _approx(want["std"][level])
        assert got["effect_size"] == _approx(want["effect_size"])
        assert got["spearman_with_level"] == _approx(want["spearman"])
    assert study["summary"]["val_ce"]["by_level"]["0"]["n"] == 2
    # every per-epoch test and detection epoch is the one recomputed from the runs; with 2
    # seeds a level the smallest reachable p is 2 / C(4, 2) = 1/3, and the table says so
    _check_by_epoch(study)
    assert study["min_p"] == pytest.approx(1 / 3) and study["alpha"] == 0.05
    assert "smallest p this test can reach is 2/C(4,2) = 0.333 > 0.05" in proc.stdout
    assert "detection epoch" in proc.stdout and "0 vs 1" in proc.stdout
    # a contaminated clip carries bursts; the probe set is clean and the same for every run
    contaminated = (
        out / "data" / "p1_seed0" / "train" / study["runs"][1]["contaminated"]["train"][0]
    )
    original = chorales / contaminated.name
    assert not np.array_equal(sf.read(contaminated)[0], sf.read(original)[0])
    assert len(study["config"]["probe_files"]) == 1
    for name in ("study_vs_level.png", "study_by_epoch.png", "study_detection.png"):
        assert (out / name).stat().st_size > 10_000
    for metric in STUDY_METRICS:
        assert metric in proc.stdout
    assert "effect d" in proc.stdout

    # a second invocation with the same settings reuses the four finished runs
    assert main(args) == 0
    assert "4 reused" in capsys.readouterr().out
    again = json.loads((out / "study.json").read_text())
    assert again["runs"] == study["runs"] and again["summary"] == study["summary"]
    assert again["by_epoch"] == study["by_epoch"]


def test_overfit_study_via_the_cli(tmp_path, chorales, capsys):
    out = tmp_path / "overfit"
    argv = ["study", "overfit", "--out", str(out), "--data-dir", str(chorales), "--seeds", "2"]
    code = main([*argv, "--epochs", "2", "--patience", "1", "--train-clips", "2", *TINY])
    printed = capsys.readouterr().out
    assert code == 0
    overfit = json.loads((out / "overfit.json").read_text())
    assert overfit["seeds"] == [0, 1] and len(overfit["config"]["train_files"]) == 2
    for run in overfit["runs"]:
        epochs = run["epochs"]
        assert [e["epoch"] for e in epochs] == [0, 1]
        ce = [e["val_ce"] for e in epochs]
        assert run["picks"]["val_ce"] == int(np.argmin(ce))
        assert run["picks"]["peak_sharpness"] == int(
            np.argmax([e["peak_sharpness"] for e in epochs])
        )
        assert run["picks"]["delta_loss"] == pick_epoch(epochs, "delta_loss", "max")
        assert run["turned_up"] == (ce[-1] > min(ce))
    picks = [r["picks"]["peak_sharpness"] for r in overfit["runs"]]
    assert overfit["summary"]["peak_sharpness"]["spread"] == max(picks) - min(picks)
    assert (out / "overfit_curves.png").stat().st_size > 10_000
    assert "val_ce min" in printed and "peak_sharpness max" in printed


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["contamination", "--levels", "0.5"], "--levels"),
        (["contamination", "--levels", "0,1.5"], "--levels"),
        (["contamination", "--seeds", "0"], "--seeds"),
        (["overfit", "--patience", "x"], "--patience"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(tmp_path, capsys, argv, expected):
    with pytest.raises(SystemExit) as info:
        main(["study", argv[0], "--out", str(tmp_path / "o"), *argv[1:]])
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert expected in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_bad_settings_exit_2_naming_the_flag_and_write_nothing(tmp_path, capsys):
    a_file = tmp_path / "taken"
    a_file.write_text("x")
    assert main(["study", "contamination", "--out", str(a_file)]) == 2
    assert "--out" in capsys.readouterr().err
    out = tmp_path / "o"
    code = main(["study", "overfit", "--out", str(out), "--clip-seconds", "3", "--onset", "250"])
    err = capsys.readouterr().err
    assert code == 2 and "--onset" in err and "--clip-seconds" in err
    assert not out.exists()


def test_clean_validation_leaves_training_unchanged(tmp_path, chorales):
    """The extra clean-set evaluation runs under no_grad with isolated RNGs: the same seed
    trains to the same numbers with and without it."""
    from lightning_noiseprobe.study.data import prepare_clean_splits, write_contaminated
    from lightning_noiseprobe.study.training import RunSettings, quiet_lightning, train_run

    clean = prepare_clean_splits(
        chorales, num_clips=6, probe_clips=1, val_clips=2, clip_seconds=3.0, batch_size=4
    )
    write_contaminated(tmp_path / "p1", clean, level=1.0, seed=0, bursts=3)
    settings = RunSettings(
        batch_size=2, clip_seconds=3.0, segment_seconds=3.0, onset=60, lengths=(5, 60)
    )
    runs = []
    with quiet_lightning():
        for clean_val in (None, clean.val):
            runs.append(
                train_run(
                    train_dir=tmp_path / "p1" / "train",
                    val_dir=tmp_path / "p1" / "val",
                    probe_files=clean.probe,
                    seed=0,
                    epochs=2,
                    settings=settings,
                    cache_dir=tmp_path / "token_cache",
                    clean_val_files=clean_val,
                )
            )
    without, with_clean = runs
    timing = {"train_seconds", "probe_seconds", "clean_val_ce"}
    for a, b in zip(without, with_clean, strict=True):
        assert "clean_val_ce" not in a and math.isfinite(b["clean_val_ce"])
        assert {k: v for k, v in a.items() if k not in timing} == {
            k: v for k, v in b.items() if k not in timing
        }
    # the contaminated validation set is not the clean one
    assert any(abs(b["val_ce"] - b["clean_val_ce"]) > 1e-4 for b in with_clean)
