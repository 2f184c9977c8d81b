"""`gps plot` on a small real run."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from stages.artifacts.io import write_artifact
from stages.main import registered_app

app = registered_app()
from stages.steps.plot import FIGURES, TABLE, policy_cost

from small_runs import obstacle_run, peg_start

runner = CliRunner()


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return obstacle_run(tmp_path_factory)


def plot(*args):
    return runner.invoke(app, ["plot", *map(str, args)])


def test_writes_the_figures_and_their_table(run, tmp_path):
    out = tmp_path / "plots"
    result = plot("--data", run / "data", "--curve", run / "data" / "learning_curve.csv", "--out-dir", out)
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert result.stdout.splitlines() == [f"wrote {out / name}" for name in (*FIGURES, TABLE)]
    for name in FIGURES:
        with Image.open(out / name) as img:
            assert img.format == "PNG" and img.size == (600, 360)
            pixels = np.asarray(img.convert("L"))
            assert pixels.std() > 5, f"{name} looks blank"
    with (out / TABLE).open() as f:
        rows = list(csv.DictReader(f))
    assert [r["iteration"] for r in rows] == ["1", "2"]
    for k, row in enumerate(rows):
        d = run / "data" / f"itr_{k:02d}"
        metrics = json.loads((d / "metrics.json").read_text())
        for key in ("final_distance", "success_0.5", "sample_cost", "kl", "kl_bound", "step_mult", "eta"):
            assert float(row[key]) == pytest.approx(metrics[key], rel=1e-5)
        assert float(row["policy_cost"]) == pytest.approx(policy_cost(d / "eval.h5", d / "samples.h5").mean(), rel=1e-5)


@pytest.mark.parametrize("task", ["obstacle", "peg"])
def test_cost_model_from_samples_file_reproduces_the_recorded_costs(run, tmp_path_factory, task, tmp_path):
    """The policy's cost is computed like the samples' cost: check it on the samples themselves.

    eval.h5 is faked from one sample per condition; the peg's FK cost shows
    that the site Jacobians are not needed for the value.
    """
    samples = (run if task == "obstacle" else peg_start(tmp_path_factory)) / "data" / "itr_00" / "samples.h5"
    with h5py.File(samples) as f:
        X, U, cost = f["X"][:, 1], f["U"][:, 1], f["cost"][:, 1]
    write_artifact(tmp_path / "eval.h5", "evaluate", 0, {}, {"X": X, "U": U})
    np.testing.assert_allclose(policy_cost(tmp_path / "eval.h5", samples), cost.sum(-1), rtol=1e-12)


def test_half_finished_run_and_learning_curve_fallback(run, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(run / "data", data)
    (data / "itr_01" / "metrics.json").unlink()
    result = plot("--data", data, "--out-dir", tmp_path / "a")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader((tmp_path / "a" / TABLE).open()))
    assert [r["iteration"] for r in rows] == ["1"]

    # no per-iteration metrics at all: the learning curve's means
    curve = tmp_path / "curve.csv"
    curve.write_text("iteration,final_distance,success_0.5,sample_cost,kl,kl_bound,eta,step_mult\n"
                     "1,3.0,0,140,60,60,0.07,1\n2,2.5,0.5,120,50,60,0.06,0.8\n")
    empty = tmp_path / "empty"
    empty.mkdir()
    result = plot("--data", empty, "--curve", curve, "--out-dir", tmp_path / "b")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader((tmp_path / "b" / TABLE).open()))
    assert [(r["iteration"], r["sample_cost"]) for r in rows] == [("1", "140"), ("2", "120")]
    assert all((tmp_path / "b" / name).exists() for name in FIGURES)


def test_nothing_to_plot_is_one_line_exit_2(tmp_path):
    result = plot("--data", tmp_path, "--curve", tmp_path / "none.csv", "--out-dir", tmp_path / "p")
    assert result.exit_code == 2
    assert result.stderr.strip() == f"gps plot: error: nothing to plot: no {tmp_path}/itr_*/metrics.json and no {tmp_path / 'none.csv'}"
