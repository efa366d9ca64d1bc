"""PeakShape, the torchmetrics twin of the functional curve analysis: the probe's summary on
real per-token losses of the tiny MusicGen, accumulated over updates, across two real gloo
processes, and inside a Lightning validation loop read by EarlyStopping."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from audio_fixtures import write_audio
from lightning_helpers import SHARDED_SPEC, ProtocolModule, cpu_trainer

from lightning_noiseprobe._errors import NoiseProbeError, NonFiniteLossError
from lightning_noiseprobe.functional.losses import token_nll_from_logits
from lightning_noiseprobe.metrics import PeakShape, clip_shard, gather_clips
from lightning_noiseprobe.probe import ProbeSpec, build_probe_set
from lightning_noiseprobe.probe.runner import result_from_nll, score_nll

RULES = ("default", "authors")


@pytest.fixture(scope="module")
def probe(tiny_backend, tmp_path_factory):
    """A real probe set of 3 clips (one of 2.5 s: padded, and its Recovery is empty), scored
    once; its ProbeResult under each region rule."""
    folder = tmp_path_factory.mktemp("metric_audio")
    write_audio(folder / "a.wav", 32000, 1, seconds=4.2)
    write_audio(folder / "b.mp3", 44100, 2, seconds=4.2)
    write_audio(folder / "c.flac", 48000, 1, seconds=2.5)
    ps = build_probe_set(tiny_backend, folder, ProbeSpec(**SHARDED_SPEC))
    nll, mask = score_nll(tiny_backend, ps, batch_size=4)
    results = {
        rule: result_from_nll(
            tiny_backend,
            dataclasses.replace(ps, spec=ProbeSpec(**SHARDED_SPEC, regions=rule)),
            nll,
            mask,
        )
        for rule in RULES
    }
    return ps, nll, mask, results


def curve_inputs(ps, result) -> dict[str, torch.Tensor]:
    """PeakShape.update's arguments for every clip x perturbation, ``[N, P, ...]``, from the
    codebook-averaged curves of a ProbeResult (as a user who has curves already)."""
    N, P, K, T = ps.perturbed_codes.shape
    return {
        "clean": result.pair_clean,
        "perturbed": result.perturbed,
        "onset": torch.tensor([p.onset for p in ps.perturbations]).expand(N, P),
        "length": torch.tensor([p.length for p in ps.perturbations]).expand(N, P),
        "mask": result.pair_valid,
        "clean_codes": ps.clean_codes[:, None].expand(N, P, K, T),
        "perturbed_codes": ps.perturbed_codes,
    }


def assert_same_summary(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for key, value in want.items():
        assert float(got[key]) == pytest.approx(value, abs=1e-6), key


@pytest.mark.parametrize("rule", RULES)
def test_equals_the_probe_summary_on_real_curves(probe, rule):
    ps, nll, mask, results = probe
    result = results[rule]
    want = result.summary
    # the fixture holds what the metric must get right: an empty Recovery (the short clip,
    # default rule), empty Assimilations, and the length correlations
    assert want["assimilation_empty"] > 0 and "length_pearson_p" in want
    if rule == "default":
        assert want["recovery_empty"] == 1  # the 2.5 s clip's 60-token window ends at its end
    # codebook-averaged curves, all at once
    metric = PeakShape(regions=rule)
    metric.update(**curve_inputs(ps, result))
    assert_same_summary(metric.compute(), want)
    # per-codebook losses and masks straight from the LM, one clip per update
    per_codebook = PeakShape(regions=rule, per_codebook=True)
    onset, length = (
        torch.tensor([getattr(p, k) for p in ps.perturbations]) for k in ("onset", "length")
    )
    for i in range(len(ps)):
        per_codebook.update(
            nll[i, :1].expand_as(nll[i, 1:]),
            nll[i, 1:],
            onset,
            length,
            mask=mask[i, :1].expand_as(mask[i, 1:]),
            perturbed_mask=mask[i, 1:],
            clean_codes=ps.clean_codes[i].expand_as(ps.perturbed_codes[i]),
            perturbed_codes=ps.perturbed_codes[i],
        )
    assert_same_summary(per_codebook.compute(), want)


def test_settings_reach_the_analysis(probe, tiny_backend):
    """smoothing and margin are the spec's: other values give the probe's other summary."""
    ps, nll, mask, results = probe
    spec = ProbeSpec(**SHARDED_SPEC, smoothing=3, margin=0)
    want = result_from_nll(tiny_backend, dataclasses.replace(ps, spec=spec), nll, mask).summary
    metric = PeakShape(smoothing=3, margin=0)
    metric.update(**curve_inputs(ps, results["default"]))
    got = metric.compute()
    assert_same_summary(got, want)
    assert float(got["peak_height"]) != pytest.approx(
        results["default"].summary["peak_height"], abs=1e-6
    )


def test_many_updates_equal_one_and_reset_starts_over(probe):
    ps, _, _, results = probe
    inputs = curve_inputs(ps, results["default"])
    whole = PeakShape()
    whole.update(**inputs)
    want = whole.compute()
    pieces = PeakShape()
    N, P = inputs["onset"].shape
    for i in range(N):
        for j in range(P):
            # one curve per update, its onset and length as ints and its start as the
            # first differing frame
            item = {k: v[i, j] for k, v in inputs.items()}
            onset, length = int(item.pop("onset")), int(item.pop("length"))
            pieces.update(item.pop("clean"), item.pop("perturbed"), onset, length, **item)
    got = pieces.compute()
    assert set(got) == set(want)
    for key in want:
        assert float(got[key]) == pytest.approx(float(want[key]), abs=1e-12), key

    pieces.reset()
    with pytest.warns(UserWarning, match="before the ``update``"):
        empty = pieces.compute()
    assert {k: float(v) for k, v in empty.items()} == {
        "peak_empty": 0.0,
        "assimilation_empty": 0.0,
        "recovery_empty": 0.0,
    }
    pieces.update(**{k: v[:1] for k, v in inputs.items()})  # one clip, after the reset
    one_clip = PeakShape()
    one_clip.update(**{k: v[:1] for k, v in inputs.items()})
    assert {k: float(v) for k, v in pieces.compute().items()} == {
        k: float(v) for k, v in one_clip.compute().items()
    }
    assert float(one_clip.compute()["peak_mean"]) != pytest.approx(
        float(want["peak_mean"]), abs=1e-6
    )


def test_two_gloo_processes_equal_one(probe, tmp_path):
    """Both region rules in one 2-process run (its start-up is most of the time)."""
    ps, _, _, results = probe
    files, wants, inputs = [], [], {}
    for rule in RULES:
        inputs[rule] = curve_inputs(ps, results[rule])
        torch.save({**inputs[rule], "regions": rule}, tmp_path / f"{rule}.pt")
        files.append(str(tmp_path / f"{rule}.pt"))
        single = PeakShape(regions=rule)
        single.update(**inputs[rule])
        wants.append({k: float(v) for k, v in single.compute().items()})
    script = Path(__file__).parent / "metric_ddp_script.py"
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path), *files],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    for rule, want, got in zip(
        RULES, wants, zip(*(r["files"] for r in ranks), strict=True), strict=True
    ):
        assert [g["clips"] for g in got] == [[0, 2], [1]]  # uneven shares
        for g in got:
            assert_same_summary(g["sharded"], want)
            assert_same_summary(g["one_sided"], want)  # rank 1 saw no curve
            assert torch.equal(torch.tensor(g["gathered_clean"]), inputs[rule]["clean"]), rule


def test_gather_clips_in_one_process():
    rows = torch.arange(6.0).reshape(3, 2)
    assert torch.equal(gather_clips(rows, 3), rows)
    assert clip_shard(3, 2, 0) == [0, 2] and clip_shard(3, 2, 1) == [1]
    with pytest.raises(NoiseProbeError, match=r"`local` to hold 3 rows .* got 2"):
        gather_clips(rows[:2], 3)
    with pytest.raises(NoiseProbeError, match=r"rank=2, world_size=2"):
        clip_shard(3, 2, 2)


class PeakShapeModule(ProtocolModule):
    """A user's module: validation scores clean clips and their noise-injected copies and
    feeds PeakShape; the epoch's metrics are logged for EarlyStopping."""

    def __init__(self, probe_set):
        super().__init__(lr=3e-3)
        self.probe_set = probe_set
        self.peak = PeakShape(per_codebook=True)
        self.logged: list[dict[str, float]] = []

    def val_dataloader(self):
        ps = self.probe_set
        items = [
            {
                "clean": ps.clean_codes[i],
                "perturbed": ps.perturbed_codes[i],
                "onset": torch.tensor([p.onset for p in ps.perturbations]),
                "length": torch.tensor([p.length for p in ps.perturbations]),
                "valid": ps.token_valid()[i],
            }
            for i in range(len(ps))
        ]
        return torch.utils.data.DataLoader(items, batch_size=2)

    def token_nll(self, codes, valid):
        logits, mask = self.probe_backend.lm_logits(codes)
        return token_nll_from_logits(logits, codes, mask & valid[:, None, :])

    def validation_step(self, batch, batch_idx):
        clean, pert = batch["clean"], batch["perturbed"]
        B, P, K, T = pert.shape
        nll, mask = self.token_nll(
            torch.cat([clean, pert.reshape(B * P, K, T)]),
            torch.cat([batch["valid"], batch["valid"].repeat_interleave(P, 0)]),
        )
        self.peak.update(
            nll[:B, None].expand(B, P, K, T),
            nll[B:].reshape(B, P, K, T),
            batch["onset"],
            batch["length"],
            mask=mask[:B, None].expand(B, P, K, T),
            perturbed_mask=mask[B:].reshape(B, P, K, T),
            clean_codes=clean[:, None].expand_as(pert),
            perturbed_codes=pert,
        )

    def on_validation_epoch_end(self):
        values = self.peak.compute()
        self.log_dict(values)
        self.peak.reset()
        if not self.trainer.sanity_checking:
            self.logged.append({k: float(v) for k, v in values.items()})


@pytest.mark.latest
def test_in_a_lightning_validation_loop_with_early_stopping(probe, tmp_path):
    from lightning.pytorch.callbacks import EarlyStopping

    ps = probe[0]
    model = PeakShapeModule(ps)
    early = EarlyStopping(monitor="peak_sharpness", mode="max", patience=5)
    trainer = cpu_trainer(tmp_path, [early], max_epochs=2)
    trainer.fit(model)
    assert len(model.logged) == 2
    first, last = model.logged
    assert first["peak_sharpness"] != pytest.approx(last["peak_sharpness"], abs=1e-6)  # it trained
    assert float(trainer.callback_metrics["peak_sharpness"]) == pytest.approx(
        last["peak_sharpness"], abs=1e-5
    )
    assert float(early.best_score) == pytest.approx(
        max(first["peak_sharpness"], last["peak_sharpness"]), abs=1e-5
    )
    # the last epoch's values (reset after the first) are the probe's for the trained weights
    model.eval()
    with torch.no_grad():
        trained_nll, trained_mask = score_nll(
            model.probe_backend, ps, batch_size=4, prefix_sharing=False
        )
    want = result_from_nll(model.probe_backend, ps, trained_nll, trained_mask).summary
    assert set(last) == set(want)
    for key, value in want.items():
        assert last[key] == pytest.approx(value, abs=1e-4), key


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (
            lambda m, c: m.update(c, c[..., :-1], 60, 5),
            r"`clean` and `perturbed` .* \(2, 200\) and \(2, 199\)",
        ),
        (
            lambda m, c: m.update(c, c, 60, 5, mask=torch.ones(2, 199, dtype=torch.bool)),
            r"`mask` .* \(2, 199\)",
        ),
        (lambda m, c: m.update(c, c, 60, -3), r"`length` to be positive but got -3"),
        (lambda m, c: m.update(c, c, 250, 5), r"onset=250, length=5"),
        (
            lambda m, c: m.update(c, c, torch.tensor([60, 60, 60]), 5),
            r"`onset` .* batch shape \(2,\) .* \(3,\)",
        ),
        (lambda m, c: m.update(c, c, 60, torch.ones(2, 2)), r"`length` .* \(2, 2\)"),
        (
            lambda m, c: m.update(
                c, c, 60, 5, clean_codes=torch.zeros(3, 4, 200), perturbed_codes=None
            ),
            r"`clean_codes` .* \(2, 200\) .* \(3, 4, 200\)",
        ),
        (
            lambda m, c: PeakShape(per_codebook=True).update(c[0], c[0], 60, 5),
            r"`clean` of shape \[\.\.\., K, T\]",
        ),
    ],
)
def test_bad_input_names_the_argument(call, match):
    metric = PeakShape()
    curves = torch.rand(2, 200)
    with pytest.raises(NoiseProbeError, match=match):
        call(metric, curves)
    metric.update(curves, curves + 0.1, 60, 5)  # nothing was kept from the failed update
    assert len(metric.peak_mean) == 1 and metric.peak_mean[0].shape == (2,)


def test_bad_settings_and_non_finite_losses():
    with pytest.raises(NoiseProbeError, match=r"`regions` .* got 'mine'"):
        PeakShape(regions="mine")
    with pytest.raises(NoiseProbeError, match=r"`smoothing` .* got 4"):
        PeakShape(smoothing=4)
    with pytest.raises(NoiseProbeError, match=r"`margin` .* got -1"):
        PeakShape(margin=-1)
    with pytest.raises(NoiseProbeError, match=r"`per_codebook` .* got 'yes'"):
        PeakShape(per_codebook="yes")
    losses = torch.rand(2, 4, 200)
    bad = losses.clone()
    bad[1, 2, 7] = math.nan
    with pytest.raises(NonFiniteLossError, match=r"`perturbed` to hold finite values but got 1"):
        PeakShape(per_codebook=True).update(losses, bad, 60, 5)
    with pytest.raises(NoiseProbeError, match=r"at least 51 tokens .* got 40"):
        PeakShape(regions="authors").update(losses[:, 0], losses[:, 0], 40, 5)


def test_readme_snippet_runs_and_prints_what_it_says(capsys):
    """README, "Use the metric in your own loop": the snippet prints what the README says."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("### Use the metric in your own loop", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    printed = section.split("prints `", 1)[1].split("`", 1)[0]
    exec(
        compile(code, "README.md", "exec"), {}
    )  # in this process: torchmetrics is imported already
    assert capsys.readouterr().out.strip() == printed


def test_exported_lazily():
    """`import lightning_noiseprobe` stays cheap: torchmetrics (which imports transformers)
    loads on first use of `PeakShape`."""
    import lightning_noiseprobe

    assert lightning_noiseprobe.PeakShape is PeakShape and "PeakShape" in dir(lightning_noiseprobe)
    code = "import sys, lightning_noiseprobe; print('torchmetrics' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "False", proc.stderr[-2000:]
