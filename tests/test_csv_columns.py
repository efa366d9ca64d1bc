"""Which column of a per-token CSV is the loss: `noiseprobe analyze` never takes a column
because it is numeric, keeps a header-less file's first value, and refuses ambiguous files
(exit 2, one line listing the columns and how to choose)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from lightning_noiseprobe.cli import main
from lightning_noiseprobe.csvio import read_loss_csv

T = 400
RNG = np.random.default_rng(3)
CLEAN = 6.05 + 0.4 * RNG.standard_normal(T)
PERT = CLEAN.copy()
PERT[250:256] += 2.0
PERT[256:340] -= 0.8


def _write(path, header, rows):
    lines = [header] if header is not None else []
    lines += [
        ",".join(f"{float(v)!r}" if isinstance(v, float) else str(v) for v in r) for r in rows
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def _analyze(tmp_path, clean, pert, *extra):
    argv = ["analyze", "--clean", clean, "--perturbed", pert, "--json", tmp_path / "r.json"]
    return main([str(a) for a in [*argv, *extra]])


def _reference(tmp_path, capsys):
    """The result on plain `loss` CSVs, the format whose reading never changed."""
    c = _write(tmp_path / "ref_c.csv", "loss", [[v] for v in CLEAN])
    p = _write(tmp_path / "ref_p.csv", "loss", [[v] for v in PERT])
    assert _analyze(tmp_path, c, p) == 0
    capsys.readouterr()
    return json.loads((tmp_path / "r.json").read_text())


# Formats that must give exactly the plain `loss` result: (name, header, row builder, extra argv)
FORMATS = {
    "their format": ("token_position,avg_loss_value", lambda i, v: [i, v], []),
    "header-less column": (None, lambda i, v: [v], []),
    "index + value": ("frame_idx,value", lambda i, v: [i + 1, v], []),
    "token_loss next to token": ("token,token_loss", lambda i, v: [i, v], []),
    "text column ignored": ("clip,step,value", lambda i, v: ["a.wav", i, v], []),
    "loss preferred": ("token_position,avg_loss_value,loss", lambda i, v: [i, 999.0, v], []),
    "chosen by name": ("index,q0,q1", lambda i, v: [i, v, 5.0], ["--column", "q0"]),
    "chosen by number": (None, lambda i, v: [i, v], ["--column", "2"]),
    "codebooks averaged": (
        "index,q0,q1",
        lambda i, v: [i, v - 1.0, v + 1.0],
        ["--column", "q0,q1"],
    ),
}


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_formats_read_the_loss_column(tmp_path, capsys, fmt):
    expected = _reference(tmp_path, capsys)
    header, row, extra = FORMATS[fmt]
    c = _write(tmp_path / "c.csv", header, [row(i, v) for i, v in enumerate(CLEAN)])
    p = _write(tmp_path / "p.csv", header, [row(i, v) for i, v in enumerate(PERT)])
    code = _analyze(tmp_path, c, p, *extra)
    assert code == 0, capsys.readouterr().err
    got = json.loads((tmp_path / "r.json").read_text())
    if fmt == "codebooks averaged":  # (v - 1 + v + 1) / 2 is v up to one rounding
        assert got["regions"] == expected["regions"]
        assert got["clean_loss"] == pytest.approx(expected["clean_loss"], rel=1e-6)
    else:
        assert got == expected
    assert got["clean_loss"] == pytest.approx(6.05, abs=0.1)  # not the position column's ~200


def test_headerless_keeps_first_value_and_single_row(tmp_path):
    column = _write(tmp_path / "col.csv", None, [[1.5], [2.5], [3.5]])
    assert read_loss_csv(str(column)) == [1.5, 2.5, 3.5]
    row = tmp_path / "row.csv"
    row.write_text("1.5,2.5,3.5,\n")  # trailing comma as some writers leave it
    assert read_loss_csv(str(row)) == [1.5, 2.5, 3.5]
    bom = tmp_path / "bom.csv"
    bom.write_text("\ufefftoken_position,avg_loss_value\n0,1.5\n1,2.5\n", encoding="utf-8")
    assert read_loss_csv(str(bom)) == [1.5, 2.5]


def _bad(tmp_path):
    idx = list(range(T))
    return {
        # several numeric columns: none is taken as the loss just because it is numeric
        "codebook columns": (
            _write(
                tmp_path / "cb.csv", "index,q0,q1,q2,q3", [[i, 1.0, 2.0, 3.0, 4.0] for i in idx]
            ),
            [],
            ["'index' (index)", "'q0'", "'q3'", "--column NAME"],
        ),
        # an increasing integer column is an index only when named like one
        "unnamed counter": (
            _write(tmp_path / "ab.csv", "a,b", [[i, 6.0] for i in idx]),
            [],
            ["'a'", "'b'", "--column"],
        ),
        "header-less two columns": (
            _write(tmp_path / "two.csv", None, [[i, 6.0] for i in idx]),
            [],
            ["no header row", "2 columns", "--column N"],
        ),
        "index only": (
            _write(tmp_path / "idx.csv", "token,frame", [[i, i] for i in idx]),
            [],
            ["'token' (index)", "'frame' (index)", "--column"],
        ),
        "unknown --column": (
            _write(
                tmp_path / "named.csv", "token_position,avg_loss_value", [[i, 6.0] for i in idx]
            ),
            ["--column", "loss_value"],
            ["--column 'loss_value'", "'token_position'", "'avg_loss_value'"],
        ),
        "text in the loss column": (
            _write(tmp_path / "text.csv", "loss", [[6.0]] * 10 + [["n/a"]] + [[6.0]] * (T - 11)),
            [],
            ["'loss'", "line 12", "n/a"],
        ),
        "header without rows": (
            _write(tmp_path / "empty.csv", "token_position,avg_loss_value", []),
            [],
            ["under its header"],
        ),
        "a folder": (tmp_path, [], ["folder"]),
    }


@pytest.mark.parametrize(
    "case",
    [
        "codebook columns",
        "unnamed counter",
        "header-less two columns",
        "index only",
        "unknown --column",
        "text in the loss column",
        "header without rows",
        "a folder",
    ],
)
def test_bad_csv_exit_2_one_line_listing_columns(tmp_path, capsys, case):
    path, extra, needles = _bad(tmp_path)[case]
    good = _write(tmp_path / "good.csv", "loss", [[v] for v in CLEAN])
    code = _analyze(tmp_path, path, good, *extra)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("noiseprobe: error:") and str(path) in lines[0], err
    for needle in needles:
        assert needle in lines[0], (needle, err)
    assert not (tmp_path / "r.json").exists()


def test_ambiguous_csv_through_the_console_script(tmp_path):
    clean = _write(tmp_path / "c.csv", "token_position,q0,q1", [[i, 6.0, 6.1] for i in range(T)])
    cmd = [sys.executable, "-m", "lightning_noiseprobe.cli", "analyze", "--clean", str(clean)]
    cmd += ["--perturbed", str(clean)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1
    assert "'token_position' (index), 'q0', 'q1'" in proc.stderr and "--column" in proc.stderr
