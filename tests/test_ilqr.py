"""Initial controllers from the model (gps_core.traj_opt.ilqr): iLQR with the task's cost in the simulator.

Real MuJoCo, shortened horizons. The obstacle is a linear system (a point mass on two damped slides,
Euler steps, no gravity; far from the walls within 30 steps) and, with an action cost that keeps the
controls inside their range, its cost is quadratic: there iLQR is one exact LQR solve.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import yaml
from conftest import task_params

from gps_core.costs import build_cost, expand_cost
from gps_core.sim.env import Simulator
from gps_core.sim.linearise import LinearisationError, linearise_trajectory
from gps_core.sim.task import Conditions
from gps_core.traj_opt.ilqr import ILQRConfig, holding_lqr, ilqr, ilqr_growing, model_initial_controllers
from gps_core.traj_opt.init_lqr import init_lqr
from gps_core.traj_opt.lqr import backward_pass_batched
from stages.settings.load import load_settings


def _settings(tmp_path, name: str, edit=None):
    params = copy.deepcopy(task_params(name))
    if edit is not None:
        edit(params)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(params))
    return load_settings(path)


def _sim(s, conditions) -> Simulator:
    c = s.task.train
    return Simulator(s.task, Conditions(c.qpos0[conditions], None if c.offsets is None else c.offsets[conditions]))


def _noise_free_cost(sim, cost, pol, m, T) -> float:
    r = sim.rollout(np.array([m]), lambda t, x, o: x @ pol.K[t].T + pol.k[t], T)
    assert r.diverged_at[0] == -1
    return float(cost.evaluate(r.X, r.U, r.ee_jac).l.sum())


def _init_lqr_costs(s, sim, cost, T) -> np.ndarray:
    x0 = sim.initial_states()
    return np.array([_noise_free_cost(sim, cost, init_lqr(x0[m], sim.dU, T, s.init_lqr), m, T) for m in range(sim.M)])


def test_obstacle_is_one_exact_lqr_solve(tmp_path):
    """Linear dynamics, quadratic cost: iLQR's controller is the LQR optimum of the linearisation."""
    T = 30
    s = _settings(tmp_path, "obstacle", lambda p: p["cost"].append({"type": "action", "weight": 1.0, "wu": [1.0, 1.0]}))
    sim, cost = _sim(s, [0, 3]), build_cost(s.cost_terms, s.task)
    pols, costs = model_initial_controllers(sim, cost, T, init_var=0.5)
    reference = _init_lqr_costs(s, sim, cost, T)
    for m, (pol, c) in enumerate(zip(pols, costs)):
        res = ilqr(sim, m, cost, T)
        assert res.passes <= 2 and len(c) == 2 and res.stopped == "predicted"  # one step, then nothing left to gain
        assert np.abs(res.U).max() < 0.9  # inside the motors' range [-1, 1]: no clamping, the problem is LQ
        Fm, fv = linearise_trajectory(sim, m, res.X, res.U)
        q = expand_cost(cost.evaluate(res.X[None], res.U[None], None), res.X[None], res.U[None])
        K, k, _, failed = backward_pass_batched(q.Cm[None], q.cv[None], Fm[None], fv[None], sim.dX)
        assert not failed[0]
        np.testing.assert_allclose(pol.K, K[0], rtol=0, atol=1e-7 * np.abs(K).max())
        np.testing.assert_allclose(pol.k, k[0], rtol=0, atol=1e-6 * np.abs(k).max())
        # Along the zero-control start the linearisation is the same matrices (linear dynamics).
        Fm0, _ = linearise_trajectory(sim, m, *_zero_rollout(sim, m, T))
        np.testing.assert_allclose(Fm0, Fm, rtol=0, atol=1e-8)
        np.testing.assert_allclose(pol.covar, np.broadcast_to(0.5 * np.eye(2), (T, 2, 2)))
        assert c[-1] < reference[m]
        np.testing.assert_allclose(_noise_free_cost(sim, cost, pol, m, T), c[-1], rtol=1e-9)


def _zero_rollout(sim, m, T):
    r = sim.rollout(np.array([m]), lambda t, x, o: np.zeros((1, sim.dU)), T)
    return r.X[0], r.U[0]


def test_obstacle_as_shipped_clamps(tmp_path):
    """No action cost: the optimum pushes at the motors' limits. The forward pass clamps, so the
    controller's nominal commands stay in range and its noise-free rollout has the recorded cost."""
    T = 30
    s = _settings(tmp_path, "obstacle")
    sim, cost = _sim(s, [1]), build_cost(s.cost_terms, s.task)
    res = ilqr(sim, 0, cost, T)
    assert np.abs(res.U).max() == 1.0 and np.all(np.abs(res.U) <= 1.0)
    assert np.all(np.diff(res.costs) < 0) and len(res.costs) >= 2
    pols, costs = model_initial_controllers(sim, cost, T, init_var=1.0)
    np.testing.assert_allclose(_noise_free_cost(sim, cost, pols[0], 0, T), costs[0][-1], rtol=1e-9)


def test_peg_lowers_the_cost_monotonically_and_deterministically(tmp_path):
    T = 30
    s = _settings(tmp_path, "peg")
    sim, cost = _sim(s, [0, 6]), build_cost(s.cost_terms, s.task)
    pols, costs = model_initial_controllers(sim, cost, T, init_var=s.init_lqr.init_var)
    reference = _init_lqr_costs(s, sim, cost, T)
    for m in range(sim.M):
        single = ilqr(sim, m, cost, T)  # one horizon from u = 0
        assert len(single.costs) >= 3 and np.all(np.diff(single.costs) < 0)
        # Through horizons 25, 30 (model_initial_controllers): each pass lowers the cost, and it ends as low, to the
        # convergence tolerance.
        assert np.all(np.diff(costs[m]) < 0) and costs[m][-1] <= single.costs[-1] + 1e-4 * abs(single.costs[-1])  # iLQR's tolerance
        assert costs[m][-1] < reference[m] - 0.2 * abs(reference[m])
        # The returned u = K x + k is the accepted pass's u = ū + K (x − x̄) up to rounding, which the peg's
        # contacts amplify (2e-5 of the cost in condition 6).
        np.testing.assert_allclose(_noise_free_cost(sim, cost, pols[m], m, T), costs[m][-1], rtol=1e-4)
        assert pols[m].K.shape == (T, sim.dU, sim.dX) and pols[m].k.shape == (T, sim.dU)
        np.testing.assert_array_equal(pols[m].covar, np.broadcast_to(np.eye(sim.dU), (T, sim.dU, sim.dU)))
    again = ilqr_growing(sim, 1, cost, T)
    np.testing.assert_array_equal(again.K, pols[1].K)
    np.testing.assert_array_equal(again.k, pols[1].k)
    np.testing.assert_array_equal(again.costs, costs[1])


def test_reacher_lowers_the_cost(tmp_path):
    """Gymnasium's Reacher (RK4, the model's file from the installed package), T as shipped."""
    s = _settings(tmp_path, "reacher")
    T = s.task.T
    sim, cost = _sim(s, [1, 4]), build_cost(s.cost_terms, s.task)
    res = ilqr(sim, 0, cost, T, ILQRConfig(iterations=8))
    assert len(res.costs) >= 3 and np.all(np.diff(res.costs) < 0)
    assert res.costs[-1] < 0.5 * res.costs[0]
    assert np.all(np.abs(res.U) <= 1.0)
    # Condition 4: the target straight behind the outstretched arm. The distance's gradient in the joints is
    # exactly 0 there and the cost's Gauss–Newton Hessian has no kinematic curvature: a stationary point of
    # iLQR's model, so it keeps the start (u = 0) with the linearisation's feedback gains.
    still = ilqr(sim, 1, cost, T)
    assert still.stopped == "predicted" and len(still.costs) == 1 and np.all(still.U == 0.0)
    assert np.abs(still.K).max() > 0


def test_pusher_as_shipped_raises_the_linearisations_error(tmp_path):
    s = _settings(tmp_path, "pusher")
    sim, cost = _sim(s, [0]), build_cost(s.cost_terms, s.task)
    with pytest.raises(LinearisationError, match="obj_slide"):
        model_initial_controllers(sim, cost, 5, init_var=1.0)


def test_init_var_must_be_positive(tmp_path):
    s = _settings(tmp_path, "obstacle")
    with pytest.raises(ValueError, match="init_var"):
        model_initial_controllers(_sim(s, [0]), build_cost(s.cost_terms, s.task), 5, init_var=0.0)


def test_double_pendulum_is_balanced_through_growing_horizons(tmp_path):
    """InvertedDoublePendulum, both poles leaning the same way (the hardest corner), T = 40: iLQR from u = 0 over
    the whole horizon converges with the poles fallen (the tip below the rail); through horizons 25, 40 it
    balances them (the tip within 0.05 of upright, 1.2, at every step)."""
    T = 40
    s = _settings(tmp_path, "inverted_double_pendulum")
    sim, cost = _sim(s, [0]), build_cost(s.cost_terms, s.task)
    tip_z = -1  # the state's last entry: the tip block's z (configs/inverted_double_pendulum.yaml)
    fallen = ilqr(sim, 0, cost, T)
    assert fallen.X[:, tip_z].min() < 0.0
    grown = ilqr_growing(sim, 0, cost, T)
    assert grown.X[:, tip_z].min() > 1.15 and grown.costs[-1] < 0.25 * fallen.costs[-1]
    assert np.all(np.diff(grown.costs) < 0)


def test_holding_lqr_keeps_the_double_pendulum_up(tmp_path):
    """The LQR that extends a horizon, about one point: from the poles leaning apart at rest (condition 1), the
    model linearised there holds them up for 100 steps in the simulator; without it (u = 0) they fall."""
    n = 100
    s = _settings(tmp_path, "inverted_double_pendulum")
    sim, cost = _sim(s, [1]), build_cost(s.cost_terms, s.task)
    x0 = sim.initial_states()[0]
    J0 = sim.rollout(np.array([0]), lambda t, x, o: np.zeros((1, sim.dU)), 1).ee_jac[0, 0]
    K, k = holding_lqr(sim, 0, cost, x0, np.zeros(sim.dU), J0, n)
    assert K.shape == (n, sim.dU, sim.dX) and k.shape == (n, sim.dU)
    held = sim.rollout(np.array([0]), lambda t, x, o: np.clip(x @ K[t].T + k[t], -1.0, 1.0), n)
    loose = sim.rollout(np.array([0]), lambda t, x, o: np.zeros((1, sim.dU)), n)
    assert held.diverged_at[0] == -1 and held.X[0, :, -1].min() > 1.15  # the tip's z, upright 1.2
    assert loose.X[0, :, -1].min() < 0.5
