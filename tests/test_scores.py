"""Scores a task defines besides the final distance (evaluation.survival, evaluation.cost): the functions by
hand, the evaluate stage's eval.h5 and metrics, gps status and gps report, the settings' one-line errors."""

from __future__ import annotations

import copy
import json
import os
import shlex
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from conftest import small_params
from gps_core.scoring import survival_steps
from stages.errors import UserError


def test_survival_steps_count_up_to_the_first_exit():
    X = np.zeros((4, 5, 3))
    X[1, 3, 1] = 2.0          # leaves at t = 3 (entry 1 of the block starting at 1)
    X[2, 0, 2] = -1.5         # outside from the start
    X[3, 2, 1] = np.nan       # NaN is outside
    X[0, 4, 0] = 99.0         # outside the block: ignored
    steps = survival_steps(X, 1, [-1.0, -1.0], [1.0, 1.0])
    assert steps.tolist() == [5, 3, 0, 2]
    assert survival_steps(np.full((1, 3, 1), 1.0), 0, [1.0], [1.0]).tolist() == [3]  # bounds included


def scored_params() -> dict:
    """The small obstacle run with both scores: the particle must stay in a box it leaves in some conditions."""
    p = small_params(2)
    p["evaluation"]["survival"] = {"block": "particle", "low": [-0.5, -1.0, -1.0], "high": [0.1, 1.0, 1.0]}
    p["evaluation"]["cost"] = True
    return p


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    from test_other_optimizers import run_in_process

    ws = tmp_path_factory.mktemp("scored")
    run_in_process(ws, scored_params())
    return ws


def test_evaluate_writes_the_scores_the_task_selects(run):
    from gps_core.costs import build_cost
    from stages.settings.load import load_settings

    s = load_settings(run / "params.yaml")
    T = s.task.T
    every = []
    for k in range(2):
        d = run / "data" / f"itr_{k:02d}"
        with h5py.File(d / "eval.h5") as f:
            X, U, steps, cost = f["X"][()], f["U"][()], f["survival_steps"][()], f["cost"][()]
        sv = s.evaluation.survival
        block = X[:, :, sv.start:sv.start + 3]
        inside = np.all((block >= sv.low) & (block <= sv.high), axis=-1)
        expected = [T if row.all() else int(np.argmax(~row)) for row in inside]
        assert steps.tolist() == expected
        metrics = json.loads((d / "metrics.json").read_text())
        assert metrics["survival"] == pytest.approx(np.mean(steps == T))
        assert metrics["survival_steps"] == pytest.approx(np.mean(steps) / T)
        assert metrics["eval_cost"] == pytest.approx(cost.mean())
        # the summed cost is the cost function's on the evaluation rollout (the obstacle's is a state term: no Jacobian)
        terms = build_cost(s.cost_terms, s.task).evaluate(X, U, np.zeros((*X.shape[:2], 0, 0)))
        np.testing.assert_allclose(cost, terms.l.sum(-1), rtol=1e-12)
        every += steps.tolist()
    assert T in every and min(every) > 0 and min(every) < T  # iteration 0 stays in the box, iteration 1 leaves it


def test_status_and_report_show_the_scores(run, tmp_path):
    from stages.main import registered_app
    from stages.pipeline.generate import build_pipeline, write_pipeline
    from stages.tools.status import status_text

    text = status_text(run / "data", run / "params.yaml")
    header = text.splitlines()[[i for i, line in enumerate(text.splitlines()) if line.startswith("itr")][0]]
    assert "survived" in header and "eval cost" in header
    params = yaml.safe_load((run / "params.yaml").read_text())
    write_pipeline(params, run / "params.yaml", run)
    app, cwd = registered_app(), os.getcwd()
    os.chdir(run)
    try:
        result = CliRunner().invoke(app, shlex.split(build_pipeline(2)["stages"]["summary"]["cmd"])[1:])
    finally:
        os.chdir(cwd)
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(app, ["report", str(run)])
    assert result.exit_code == 0, result.output
    assert "### Survival (%)" in result.output and "### Summed cost of the evaluation rollouts" in result.output


def test_without_the_scores_nothing_changes():
    """The shipped configs select neither: metrics and eval.h5 keep their keys (reference runs are byte-identical)."""
    from conftest import task_params

    for task in ("obstacle", "peg", "peg_blind", "reacher", "pusher"):
        ev = task_params(task)["evaluation"]
        assert "survival" not in ev and "cost" not in ev


@pytest.mark.parametrize("change, message", [
    (lambda p: p["evaluation"]["survival"].update(block="nope"), "evaluation.survival.block is 'nope', expected a block of task.state"),
    (lambda p: p["evaluation"]["survival"].update(low=[0.0]), "evaluation.survival.low is [0.0] (1 entry), expected 3 entries"),
    (lambda p: p["evaluation"]["survival"].update(low=[0.0, 2.0, 0.0]), "evaluation.survival.low[1] (2.0) is above evaluation.survival.high[1] (1.0)"),
    (lambda p: p["evaluation"].update(cost="yes"), "evaluation.cost is 'yes', expected true or false"),
])
def test_settings_errors(tmp_path, change, message):
    from stages.settings.params import load_params

    p = copy.deepcopy(scored_params())
    change(p)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    with pytest.raises(UserError) as err:
        load_params(tmp_path / "params.yaml")
    assert message in str(err.value) and "\n" not in str(err.value)
