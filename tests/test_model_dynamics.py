"""The model as the C-step's dynamics (dynamics.source: model): the fit_dynamics stage linearises the task's
MuJoCo model along the samples instead of the regression; what it writes, the pipeline around it, refusals."""

from __future__ import annotations

import os
import shlex

import h5py
import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from conftest import small_params, task_params
from stages.pipeline.generate import pipeline_of, render_pipeline


def model_params(iterations: int = 2) -> dict:
    p = small_params(iterations)
    p["dynamics"]["source"] = "model"
    return p


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from test_other_optimizers import run_in_process

    ws = tmp_path_factory.mktemp("model_dynamics")
    run_in_process(ws, model_params())
    return ws


def test_the_point_mass_is_linear_so_the_model_explains_every_sample(run):
    """The obstacle's point mass is a linear system away from the walls and inside its motors' range [-1, 1]:
    the model linearised at the mean trajectory predicts every sampled transition whose command, and the
    mean command, MuJoCo did not clamp (the clamped ones make the residual covariance); it equals linearise_trajectory there; the
    initial state is the fit's without a prior."""
    from gps_core.fit.dynamics import fit_initial_state
    from gps_core.sim.env import Simulator
    from gps_core.sim.linearise import linearise_trajectory
    from stages.settings.load import load_settings

    s = load_settings(run / "params.yaml")
    sim = Simulator(s.task)
    for k in range(2):
        d = run / "data" / f"itr_{k:02d}"
        with h5py.File(d / "samples.h5") as f:
            X, U = f["X"][()], f["U"][()]
        with h5py.File(d / "dynamics.h5") as f:
            data = {n: f[n][()] for n in f}
            assert f.attrs["source"] == "model" and not any(n.startswith("prior") for n in f)
        for m in range(2):
            Fm, fv = linearise_trajectory(sim, m, X[m].mean(0), U[m].mean(0))
            np.testing.assert_array_equal(data["Fm"][m], Fm)
            np.testing.assert_array_equal(data["fv"][m], fv)
            z = np.concatenate([X[m, :, :-1], U[m, :, :-1]], -1)
            e = X[m, :, 1:] - np.einsum("txd,ntd->ntx", Fm[:-1], z) - fv[:-1]
            np.testing.assert_allclose(data["dyn_covar"][m, :-1], np.einsum("ntx,nty->txy", e, e) / X.shape[1], atol=1e-15)
            inside = np.all(np.abs(U[m, :, :-1]) <= 1.0, axis=-1)  # [N, T-1]: commands within the motors' range,
            inside &= np.all(np.abs(U[m, :, :-1].mean(0)) <= 1.0, axis=-1)  # as the mean command linearised at
            assert inside.sum() > 10 and (~inside).sum() > 0
            assert np.abs(e[inside]).max() < 1e-7  # linear (up to the derivative's finite differences): each such sample
            assert np.abs(e[~inside]).max() > 1e-4
            x0mu, x0sigma = fit_initial_state(X[m], None, s.algorithm.initial_state_var, 1.0)
            np.testing.assert_array_equal(data["x0mu"][m], x0mu)
            np.testing.assert_array_equal(data["x0sigma"][m], x0sigma)


def test_the_c_step_runs_on_the_model(run):
    with h5py.File(run / "data" / "itr_01" / "controllers.h5") as f:
        kl, bound, converged = f["kl"][()], f["kl_step"][()], f["converged"][()]
    assert np.all(converged) and np.all(np.abs(kl - bound) < 0.1 * bound)
    assert (run / "data" / "itr_01" / "metrics.json").exists()


def test_the_pipeline_reads_the_task_and_no_previous_dynamics():
    stages = yaml.safe_load(render_pipeline(model_params())["pipelines/itr_01/fit_dynamics/dvc.yaml"])["stages"]
    stage = stages["fit_dynamics_01"]
    assert "--prev" not in stage["cmd"] and "data/itr_00/dynamics.h5" not in stage["deps"]
    assert stage["params"] == ["task", "dynamics.source", "algorithm.initial_state_var"]
    assert "gps_core/sim/linearise.py" in stage["deps"] and "gps_core/assets/obstacle.xml" in stage["deps"]
    fitted = yaml.safe_load(render_pipeline(small_params(2))["pipelines/itr_01/fit_dynamics/dvc.yaml"])["stages"]
    assert "--prev data/itr_00/dynamics.h5" in fitted["fit_dynamics_01"]["cmd"]
    assert "source" not in task_params("peg")["dynamics"]  # the shipped configs keep the fit


def test_a_state_that_is_not_the_simulations_is_refused_in_one_line(tmp_path):
    from stages.main import registered_app

    p = task_params("pusher")
    p["dynamics"]["source"] = "model"
    p["task"]["T"], p["iterations"], p["agent"]["num_samples"], p["policy"]["batch_size"] = 5, 1, 2, 5
    p["task"]["conditions"] = p["task"]["conditions"][:1]
    p["task"].pop("test_conditions")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    doc = pipeline_of(p)
    app, cwd = registered_app(), os.getcwd()
    os.chdir(tmp_path)
    try:
        for name in ("init", "sample_00"):
            assert CliRunner().invoke(app, shlex.split(doc["stages"][name]["cmd"])[1:]).exit_code == 0
        result = CliRunner().invoke(app, shlex.split(doc["stages"]["fit_dynamics_00"]["cmd"])[1:])
    finally:
        os.chdir(cwd)
    assert result.exit_code == 2
    line = result.output.strip().splitlines()[-1]
    assert line.startswith("gps fit-dynamics: error: dynamics.source is model, but task pusher: the state x does not hold")
    assert not (tmp_path / "data" / "itr_00" / "dynamics.h5").exists()
