"""`noiseprobe study contamination|overfit`: structure of what they write, and that every
summary number is computed from the recorded runs. No test asserts a scientific outcome."""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from lightning_noiseprobe.cli import main
from lightning_noiseprobe.study.stats import (
    STUDY_METRICS,
    effect_size,
    pick_epoch,
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
    # a contaminated clip carries bursts; the probe set is clean and the same for every run
    contaminated = (
        out / "data" / "p1_seed0" / "train" / study["runs"][1]["contaminated"]["train"][0]
    )
    original = chorales / contaminated.name
    assert not np.array_equal(sf.read(contaminated)[0], sf.read(original)[0])
    assert len(study["config"]["probe_files"]) == 1
    for name in ("study_vs_level.png", "study_by_epoch.png"):
        assert (out / name).stat().st_size > 10_000
    for metric in STUDY_METRICS:
        assert metric in proc.stdout
    assert "effect d" in proc.stdout

    # a second invocation with the same settings reuses the four finished runs
    assert main(args) == 0
    assert "4 reused" in capsys.readouterr().out
    again = json.loads((out / "study.json").read_text())
    assert again["runs"] == study["runs"] and again["summary"] == study["summary"]


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
