"""Initial controllers from the model (init_lqr.source: model): the init stage runs iLQR with the task's cost on
the simulator's linearisation; what it writes, what it records, and its one-line refusal where the task's state
does not hold the simulation's."""

from __future__ import annotations

import copy
import os
import shlex
from pathlib import Path

import numpy as np
import yaml
from typer.testing import CliRunner

from conftest import small_params, task_params
from stages.pipeline.generate import pipeline_of, render_pipeline


def run_init(ws: Path, params: dict):
    from stages.main import registered_app

    ws.mkdir(parents=True, exist_ok=True)
    (ws / "params.yaml").write_text(yaml.safe_dump(params))
    doc = pipeline_of(params)
    cwd = os.getcwd()
    os.chdir(ws)
    try:
        return CliRunner().invoke(registered_app(), shlex.split(doc["stages"]["init"]["cmd"])[1:])
    finally:
        os.chdir(cwd)


def test_model_controllers_roll_out_the_ilqr_trajectory_and_beat_the_guess(tmp_path):
    """The written controllers' noise-free rollout in the simulator has the cost iLQR reported (lower than the
    guessed controllers'), they explore with init_var · I, and the file records the cost among its params."""
    from gps_core.costs import build_cost
    from gps_core.sim.env import Simulator
    from gps_core.sim.sampling import rollout_controllers
    from stages.artifacts.controllers import load_controllers
    from stages.artifacts.io import read_artifact
    from stages.settings.load import load_settings

    guess, model = small_params(1), small_params(1)
    model["init_lqr"]["source"] = "model"
    totals = {}
    for name, params in (("guess", guess), ("model", model)):
        result = run_init(tmp_path / name, params)
        assert result.exit_code == 0, result.output
        s = load_settings(tmp_path / name / "params.yaml")
        sim = Simulator(s.task)
        pols = load_controllers(tmp_path / name / "data" / "init" / "controllers.h5")
        r = rollout_controllers(sim, pols, np.zeros((sim.M, 1, s.task.T, sim.dU)))
        terms = build_cost(s.cost_terms, s.task).evaluate(r.X[:, 0], r.U[:, 0], r.ee_jac[:, 0])
        totals[name] = terms.l.sum(-1)
        if name == "model":
            logged = [float(part.split("-> ")[1]) for part in result.output.split("controller: ")[1].split("\n")[0].split(", ")]
            np.testing.assert_allclose(totals[name], logged, rtol=1e-3)
            for p in pols:
                np.testing.assert_array_equal(p.covar, np.broadcast_to(s.init_lqr.init_var * np.eye(sim.dU), p.covar.shape))
            recorded = yaml.safe_load(read_artifact(tmp_path / name / "data" / "init" / "controllers.h5")[1]["params"])
            assert recorded["cost"] == params["cost"] and recorded["init_lqr"]["source"] == "model"
    assert np.all(totals["model"] < totals["guess"] - 1.0), totals


def test_only_model_initialisation_reads_the_cost():
    """The paper's configs (no init_lqr.source) keep their init stage's params; with source model the cost is one."""
    peg = task_params("peg")
    assert "source" not in peg["init_lqr"]
    text = render_pipeline(peg)["dvc.yaml"]
    init = yaml.safe_load(text)["stages"]["init"]
    assert "cost" not in init["params"]
    model = copy.deepcopy(peg)
    model["init_lqr"]["source"] = "model"
    assert "cost" in yaml.safe_load(render_pipeline(model)["dvc.yaml"])["stages"]["init"]["params"]
    badmm = copy.deepcopy(model)
    badmm["algorithm"]["name"], badmm["algorithm"]["sample_on_policy"] = "badmm", False
    params = yaml.safe_load(render_pipeline(badmm)["dvc.yaml"])["stages"]["init"]["params"]
    assert "cost" in params and "badmm.init_pol_wt" in params


def test_a_state_that_is_not_the_simulations_is_refused_in_one_line(tmp_path):
    """Pusher's state reads the cylinder through body positions, not its slide joints: no linearisation in x."""
    params = task_params("pusher")
    params["init_lqr"]["source"] = "model"
    params["task"]["T"] = 5
    params["task"]["conditions"] = params["task"]["conditions"][:1]
    params["task"].pop("test_conditions")
    result = run_init(tmp_path / "ws", params)
    assert result.exit_code == 2
    line = result.output.strip().splitlines()[-1]
    assert line.startswith("gps init-model: error: init_lqr.source is model, but task pusher: the state x does not hold "
                           "the simulation's state"), line
    assert "obj_slidex" in line
    assert not (tmp_path / "ws" / "data").exists()


def test_the_guessed_init_stage_does_not_depend_on_ilqr():
    """Only a run whose initial controllers come from the model has iLQR's code among its init stage's deps: editing
    ilqr.py leaves the paper's runs up to date. Each command refuses the other source in one line."""
    peg = task_params("peg")
    init = yaml.safe_load(render_pipeline(peg)["dvc.yaml"])["stages"]["init"]
    assert init["cmd"].startswith("gps init ") and "gps_core/traj_opt/ilqr.py" not in init["deps"]
    model = copy.deepcopy(peg)
    model["init_lqr"]["source"] = "model"
    init = yaml.safe_load(render_pipeline(model)["dvc.yaml"])["stages"]["init"]
    assert init["cmd"].startswith("gps init-model ") and "gps_core/traj_opt/ilqr.py" in init["deps"]


def test_each_init_command_refuses_the_other_source(tmp_path):
    from stages.main import registered_app

    for source, command in (("model", "init"), ("guess", "init-model")):
        params = small_params(1)
        params["init_lqr"]["source"] = source
        ws = tmp_path / source
        ws.mkdir()
        (ws / "params.yaml").write_text(yaml.safe_dump(params))
        cwd = os.getcwd()
        os.chdir(ws)
        try:
            result = CliRunner().invoke(registered_app(), [command, "--controllers-out", "c.h5", "--policy-out", "p.h5",
                                                           "--step-out", "s.h5"])
        finally:
            os.chdir(cwd)
        assert result.exit_code == 2
        assert result.output.strip().splitlines()[-1].startswith(
            f"gps {command}: error: params.yaml: init_lqr.source is '{source}'"), result.output
        assert not any(ws.glob("*.h5"))
