"""Progress callbacks of gps_core and the rich bars of the stages (drawn only on a terminal)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from stages.main import registered_app

app = registered_app()
from stages.progress import bars_enabled, progress_bar

from small_runs import obstacle_run

runner = CliRunner()


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_train_policy_reports_progress_without_changing_the_result():
    from gps_core.policy.policy_net import init_policy
    from gps_core.policy.s_step import train_policy
    from gps_core.configs import SStepConfig

    rng = np.random.default_rng(0)
    S, T, dO, dU = 2, 5, 3, 2
    obs, target = rng.normal(size=(S, T, dO)), rng.normal(size=(S, T, dU))
    precision, weight = np.broadcast_to(np.eye(dU), (S, T, dU, dU)).copy(), np.ones((S, T))
    cfg = SStepConfig(iterations=250, batch_size=5)
    params = init_policy(dO, dU, (8,), 0.1, 1)
    calls = []
    a = train_policy(params, None, obs, target, precision, weight, cfg, np.random.default_rng(1), lambda d, t: calls.append((d, t)))
    b = train_policy(params, None, obs, target, precision, weight, cfg, np.random.default_rng(1))
    np.testing.assert_array_equal(a[2], b[2])
    for wa, wb in zip(a[0].weights, b[0].weights):
        np.testing.assert_array_equal(wa, wb)
    done = [d for d, _ in calls]
    assert calls[0] == (0, 250) and calls[-1] == (250, 250) and all(t == 250 for _, t in calls)
    assert done == sorted(done) and 50 <= len(calls) <= 130


def test_rollouts_report_each_time_step():
    from conftest import small_params
    from gps_core.policy.policy_net import init_policy
    from gps_core.sim.sampling import rollout_policy
    from gps_core.sim.env import Simulator
    from gps_core.sim.task import compile_task

    params = small_params()
    sim = Simulator(compile_task(params["task"]))
    net = init_policy(sim.dO, sim.dU, (8,), 0.1, 1)
    T = 12
    noise = np.random.default_rng(0).normal(size=(sim.M, 2, T, sim.dU))
    calls = []
    with_bar = rollout_policy(sim, net, noise, lambda d, t: calls.append((d, t)))
    plain = rollout_policy(sim, net, noise)
    np.testing.assert_array_equal(with_bar.X, plain.X)
    assert [d for d, _ in calls] == list(range(1, T + 1)) and {t for _, t in calls} == {T}


def test_bar_only_on_a_terminal(monkeypatch):
    monkeypatch.delenv("GPS_PROGRESS", raising=False)
    quiet = io.StringIO()
    with progress_bar("sampling", 10, stream=quiet) as progress:
        progress(5, 10)
    assert quiet.getvalue() == "" and not bars_enabled(quiet)
    tty = FakeTerminal()
    assert bars_enabled(tty)
    with progress_bar("s-step 3: gradient step", 10, stream=tty, enabled=True) as progress:
        for i in range(11):
            progress(i, 10)
    assert "s-step 3: gradient step" in tty.getvalue()
    monkeypatch.setenv("GPS_PROGRESS", "0")
    assert not bars_enabled(tty)
    monkeypatch.setenv("GPS_PROGRESS", "1")
    assert bars_enabled(quiet)


def test_dual_search_and_gmm_fits_report_progress_without_changing_the_result(tmp_path_factory):
    """The C-step reports converged conditions per round; the GMM fits report conditions done."""
    import h5py

    from gps_core.fit.dynamics import fit_all_dynamics
    from gps_core.traj_opt.c_step import c_step_batched
    from stages.artifacts.checks import load_eta, load_step
    from stages.artifacts.controllers import load_controllers
    from stages.artifacts.models import load_cost_models, load_dynamics
    from stages.settings.load import load_settings

    run = obstacle_run(tmp_path_factory)
    d = run / "data"
    s = load_settings(run / "params.yaml")
    costs, dyns = load_cost_models(d / "itr_01/samples.h5"), load_dynamics(d / "itr_01/dynamics.h5")
    lins, eta = load_controllers(d / "itr_01/policy_lin.h5"), load_eta(d / "itr_00/controllers.h5")
    bounds = 2.0 * load_step(d / "itr_01/step.h5") * lins[0].T
    calls = []
    a = c_step_batched(costs, lins, dyns, bounds, eta, s.traj_opt, progress=lambda c, m: calls.append((c, m)))
    b = c_step_batched(costs, lins, dyns, bounds, eta, s.traj_opt)
    np.testing.assert_array_equal(a.K, b.K)
    M = len(costs)
    assert len(calls) == a.dual_iterations.max() and calls[-1] == (int(a.converged.sum()), M)
    assert [c for c, _ in calls] == sorted(c for c, _ in calls)
    with h5py.File(d / "itr_01/samples.h5") as f:
        X, U = f["X"][()], f["U"][()]
    prior_cfg = s.dynamics.prior
    calls = []
    args = ([None] * M, X, U, prior_cfg, 1e-6, "all_entries", 1e-6)
    _, with_bar = fit_all_dynamics(*args, np.random.default_rng(3), lambda c, m: calls.append((c, m)))
    _, plain = fit_all_dynamics(*args, np.random.default_rng(3))
    np.testing.assert_array_equal(with_bar["Fm"], plain["Fm"])
    assert calls and calls[-1] == (M, M)


@pytest.mark.parametrize("command", ["sample", "s-step"])
def test_stage_logs_stay_one_line_without_a_terminal(tmp_path_factory, tmp_path, command, monkeypatch):
    monkeypatch.delenv("GPS_PROGRESS", raising=False)
    run = obstacle_run(tmp_path_factory)
    d, p = run / "data", ["--params", run / "params.yaml"]
    if command == "sample":
        args = ["sample", "-i", 1, *p, "--controllers", d / "itr_00/controllers.h5", "--policy", d / "itr_00/policy.h5"]
    else:
        args = ["s-step", "-i", 1, *p, "--samples", d / "itr_01/samples.h5", "--controllers", d / "itr_01/controllers.h5",
                "--policy", d / "itr_00/policy.h5"]
    result = runner.invoke(app, [str(a) for a in [*args, "--out", tmp_path / "out.h5"]])
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 2 and lines[0].startswith("iteration 1: ") and lines[1].startswith(f"gps {command}: done in")
    assert result.stdout == ""
    # the same bytes as the run without any bar in the way
    assert (tmp_path / "out.h5").read_bytes() == (d / "itr_01" / ("samples.h5" if command == "sample" else "policy.h5")).read_bytes()


def test_bar_is_drawn_on_a_terminal(tmp_path_factory, tmp_path, monkeypatch):
    """GPS_PROGRESS=1 stands in for a terminal: the bar goes to stderr, stdout stays empty."""
    monkeypatch.setenv("GPS_PROGRESS", "1")
    run = obstacle_run(tmp_path_factory)
    d = run / "data"
    result = runner.invoke(app, [str(a) for a in [
        "s-step", "-i", 1, "--params", run / "params.yaml", "--samples", d / "itr_01/samples.h5",
        "--controllers", d / "itr_01/controllers.h5", "--policy", d / "itr_00/policy.h5", "--out", tmp_path / "p.h5"]])
    assert result.exit_code == 0, result.output
    assert "s-step 1: gradient step" in result.stderr and result.stdout == ""
    assert Path(tmp_path / "p.h5").read_bytes() == (d / "itr_01" / "policy.h5").read_bytes()
    result = runner.invoke(app, [str(a) for a in [
        "c-step", "-i", 1, "--params", run / "params.yaml", "--samples", d / "itr_01/samples.h5", "--dynamics",
        d / "itr_01/dynamics.h5", "--policy-lin", d / "itr_01/policy_lin.h5", "--step", d / "itr_01/step.h5",
        "--prev-controllers", d / "itr_00/controllers.h5", "--out", tmp_path / "c.h5"]])
    assert result.exit_code == 0, result.output
    assert "c-step 1: dual search, conditions converged" in result.stderr
    assert Path(tmp_path / "c.h5").read_bytes() == (d / "itr_01" / "controllers.h5").read_bytes()
