"""The model's linearisation of one control step (gps_core.sim.linearise) against the simulator itself.

The reference everywhere is the simulator's own one-step function in x: Simulator._step from the
physics state x holds (qpos, qvel entries; held joints at the condition's start), with x's point
blocks as the previous reading its velocity blocks difference against. Central differences of it
(step 1e-6) should agree with F and G to finite-difference accuracy: both are central differences
with step 1e-6, so truncation (~1e-12) is negligible and rounding (machine epsilon / 1e-6 ≈ 1e-10
per physics step, times the 1/dt = 20..50 of the velocity blocks, plus the constraint solver's own
tolerance where a joint limit or contact is near) stays well below 2e-6 of the largest entry; the
largest differences seen are 6e-7 (peg, entries up to 20) and 2.8e-5 in contact (peg, entries up to 184).
"""

from __future__ import annotations

import copy
import time

import mujoco
import numpy as np
import pytest
from conftest import task_params

from gps_core.sim.env import Simulator
from gps_core.sim.linearise import (LinearisationError, linearise_step, linearise_trajectory, physics_state,
                                    state_map)
from gps_core.sim.task import compile_task

TASKS = ("obstacle", "peg", "peg_blind", "reacher", "pusher_with_object")
H = 1e-6


def _task(name: str):
    params = copy.deepcopy(task_params(name.removesuffix("_with_object")))
    if name == "pusher_with_object":  # Pusher's state as shipped lacks the cylinder's joints (see test below)
        blocks = params["task"]["blocks"]
        blocks["object_qpos"] = {"kind": "qpos", "joints": ["obj_slidey", "obj_slidex"]}
        blocks["object_qvel"] = {"kind": "qvel", "joints": ["obj_slidey", "obj_slidex"]}
        params["task"]["state"] += ["object_qpos", "object_qvel"]
    return compile_task(params["task"])


def sim_step(sim: Simulator, m: int, x: np.ndarray, u: np.ndarray) -> np.ndarray:
    """x_{t+1} [dX] as the simulator steps and reads it, from the physics state x holds."""
    task = sim.task
    qpos, qvel = physics_state(task, x, sim.qpos0[m])
    data = mujoco.MjData(sim.models[m])
    data.qpos[:], data.qvel[:] = qpos, qvel
    mujoco.mj_forward(sim.models[m], data)
    X, O = np.zeros((1, 2, task.dX)), np.zeros((1, 2, task.dO))
    J, U = np.zeros((1, 2, task.n_jac, task.dU)), np.zeros((1, 2, task.dU))
    X[0, 0], U[0, 0] = x, u
    sim._step([sim.models[m]], [data], [0], X, O, J, U, [{n: x[task.x_slices[n]] for n in task.state}], 0)
    return X[0, 1]


def rollout(sim: Simulator, T: int = 6, seed: int = 0):
    """A short rollout of condition 0 under random controls within half the range.

    Pusher's arm starts resting on the upper limit (0) of its elbow and wrist flex joints, where
    the step has a kink; pulling those two joints away from it makes the later states smooth.
    """
    rng = np.random.default_rng(seed)
    task = sim.task
    half = np.where(np.isfinite(task.action_high), (task.action_high - task.action_low) / 2, 1.0)
    bias = np.zeros(task.dU)
    if task.name == "pusher":
        bias[[3, 5]] = -0.5 * half[[3, 5]]
    r = sim.rollout(np.array([0]), lambda t, x, o: bias + rng.uniform(-0.5, 0.5, (1, task.dU)) * half, T)
    assert r.diverged_at[0] == -1
    return r.X[0], r.U[0]


def fd_jacobians(sim, m, x, u):
    """Central differences of sim_step in every coordinate of x and u: [dX, dX], [dX, dU]."""
    F = np.stack([(sim_step(sim, m, x + H * e, u) - sim_step(sim, m, x - H * e, u)) / (2 * H) for e in np.eye(len(x))], 1)
    G = np.stack([(sim_step(sim, m, x, u + H * e) - sim_step(sim, m, x, u - H * e)) / (2 * H) for e in np.eye(len(u))], 1)
    return F, G


@pytest.mark.parametrize("name", TASKS)
def test_F_and_G_are_the_simulators_derivatives(name):
    task = _task(name)
    sim = Simulator(task)
    X, U = rollout(sim)
    smap = state_map(sim.models[0], task)
    for t in ((1, 4) if name.startswith("pusher") else (0, 2, 4)):  # pusher at t = 0: on its joint limits (rollout)
        qpos, qvel = physics_state(task, X[t], sim.qpos0[0])
        lin = linearise_step(sim.models[0], task, qpos, qvel, U[t], x=X[t], smap=smap)
        # The step taken is the simulator's: bit for bit from the same physics state; the rollout itself
        # carried the constraint solver's warm start from the step before, worth a few ulps.
        np.testing.assert_array_equal(lin.x, X[t])
        np.testing.assert_array_equal(lin.x_next, sim_step(sim, 0, X[t], U[t]))
        np.testing.assert_allclose(lin.x_next, X[t + 1], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(lin.F @ lin.x + lin.G @ U[t] + lin.f, lin.x_next, rtol=0, atol=1e-9)
        F, G = fd_jacobians(sim, 0, X[t], U[t])
        np.testing.assert_allclose(lin.F, F, rtol=0, atol=2e-6 * max(1.0, np.abs(F).max()))
        np.testing.assert_allclose(lin.G, G, rtol=0, atol=2e-6 * max(1.0, np.abs(G).max()))


def test_in_contact():
    """The peg on the table (frictionless contact, as the model has it), reached by random torques."""
    task = _task("peg")
    sim = Simulator(task)
    rng = np.random.default_rng(6)
    r = sim.rollout(np.array([0]), lambda t, x, o: rng.uniform(-60, 60, (1, 7)) - 5 * x[:, 7:14], 9)
    x, u = r.X[0, 7], r.U[0, 7]
    qpos, qvel = physics_state(task, x, sim.qpos0[0])
    data = mujoco.MjData(sim.models[0])
    data.qpos[:], data.qvel[:] = qpos, qvel
    mujoco.mj_forward(sim.models[0], data)
    assert data.ncon > 0
    lin = linearise_step(sim.models[0], task, qpos, qvel, u, x=x)
    F, G = fd_jacobians(sim, 0, x, u)
    np.testing.assert_allclose(lin.F, F, rtol=0, atol=2e-6 * np.abs(F).max())
    np.testing.assert_allclose(lin.G, G, rtol=0, atol=2e-6 * np.abs(G).max())


@pytest.mark.parametrize("name", TASKS)
def test_prediction_error_is_second_order(name):
    """|step(x + s dx, u + s du) − (F (x + s dx) + G (u + s du) + f)| falls ~4x as s halves (obstacle: linear, ~0)."""
    task = _task(name)
    sim = Simulator(task)
    X, U = rollout(sim)
    t = 4
    qpos, qvel = physics_state(task, X[t], sim.qpos0[0])
    lin = linearise_step(sim.models[0], task, qpos, qvel, U[t], x=X[t])
    rng = np.random.default_rng(1)
    dx, du = rng.normal(size=task.dX), 0.2 * rng.normal(size=task.dU)
    errs = []
    for s in (4e-3, 2e-3, 1e-3):
        x, u = X[t] + s * dx, U[t] + s * du
        errs.append(np.abs(sim_step(sim, 0, x, u) - (lin.F @ x + lin.G @ u + lin.f)).max())
    if name == "obstacle":  # a damped point mass away from the walls: linear, only rounding left
        assert max(errs) < 1e-9
    else:
        ratios = [errs[0] / errs[1], errs[1] / errs[2]]
        assert all(3.5 < r < 4.5 for r in ratios), (errs, ratios)


def test_point_mass_matches_the_exact_discrete_time_system():
    """Obstacle's particle away from the walls: per physics step MuJoCo's Euler with implicit damping gives
    v' = (m v + h u) / (m + h b), q' = q + h v'; five substeps chained, the site read one substep stale."""
    task = _task("obstacle")
    sim = Simulator(task)
    model = sim.models[0]
    body = model.jnt_bodyid[0]
    m, b, h, n, dt = model.body_mass[body], model.dof_damping[0], model.opt.timestep, task.substeps, task.dt
    a, c = m / (m + h * b), h / (m + h * b)
    A1 = np.kron(np.array([[1.0, h * a], [0.0, a]]), np.eye(2))  # state (q [2], v [2])
    B1 = np.kron(np.array([[h * c], [c]]), np.eye(2))
    An, Bn = np.eye(4), np.zeros((4, 2))
    for _ in range(n - 1):
        An, Bn = A1 @ An, A1 @ Bn + B1
    A, B = A1 @ An, A1 @ Bn + B1  # An, Bn: to the state before the last substep, whose site is read
    S = np.zeros((3, 4))
    S[:2, :2] = np.eye(2)  # site (x, y, 0) = the slide joints
    F = np.zeros((10, 10))
    G = np.zeros((10, 2))
    F[:4, :4], G[:4] = A, B
    F[4:7, :4], G[4:7] = S @ An, S @ Bn
    F[7:10, :4], G[7:10] = S @ An / dt, S @ Bn / dt
    F[7:10, 4:7] = -np.eye(3) / dt  # the velocity block differences against x's own site position
    x = sim.initial_states()[2]  # the particle at the origin: 0.8 m from the nearest wall
    u = np.array([0.3, -0.2])
    lin = linearise_step(model, task, *physics_state(task, x, sim.qpos0[2]), u, x=x)
    np.testing.assert_allclose(lin.F, F, rtol=0, atol=1e-8)
    np.testing.assert_allclose(lin.G, G, rtol=0, atol=1e-10)


def test_split_stepping_linearises_as_mj_step():
    """On an Euler model mj_step1, set the control, mj_step2 is mj_step: same steps, same derivatives."""
    params = copy.deepcopy(task_params("peg"))
    lins = []
    for stepping in ("split", "mj_step"):
        params["task"]["stepping"] = stepping
        task = compile_task(params["task"])
        sim = Simulator(task)
        X, U = rollout(sim)
        lins.append(linearise_step(sim.models[0], task, *physics_state(task, X[3], sim.qpos0[0]), U[3], x=X[3]))
    for field in ("F", "G", "f", "x_next"):
        np.testing.assert_array_equal(getattr(lins[0], field), getattr(lins[1], field))


def test_controls_beyond_their_range_have_no_effect():
    task = _task("reacher")
    sim = Simulator(task)
    X, U = rollout(sim)
    u = np.array([1.7, 0.4])  # the first beyond ctrlrange [-1, 1]: MuJoCo clamps it
    lin = linearise_step(sim.models[0], task, *physics_state(task, X[2], sim.qpos0[0]), u, x=X[2])
    _, G = fd_jacobians(sim, 0, X[2], u)
    assert np.all(lin.G[:, 0] == 0.0) and np.abs(lin.G[:, 1]).max() > 0.1
    np.testing.assert_allclose(lin.G, G, rtol=0, atol=2e-6 * np.abs(G).max())
    np.testing.assert_array_equal(lin.x_next, sim_step(sim, 0, X[2], u))


def test_a_state_without_a_moving_joint_is_refused_and_held_joints_are_not():
    pusher = _task("pusher")  # as shipped: the cylinder's slide joints are in no block of the state
    with pytest.raises(LinearisationError, match="obj_slidey.*obj_slidex.*can collide"):
        state_map(mujoco.MjModel.from_xml_path(pusher.model_path), pusher)
    # Reacher's target and Pusher's goal are not in the state either, but nothing can move them.
    reacher = _task("reacher")
    held = state_map(mujoco.MjModel.from_xml_path(reacher.model_path), reacher).held
    assert sorted(held) == [2, 3, 6, 7]  # target_x, target_y: their dq and dv
    assert len(state_map(mujoco.MjModel.from_xml_path(pusher.model_path), _task("pusher_with_object")).held) == 4


def test_x_must_be_read_at_the_physics_state_given():
    task = _task("obstacle")
    sim = Simulator(task)
    x = sim.initial_states()[0]
    qpos, qvel = physics_state(task, x, sim.qpos0[0])
    with pytest.raises(ValueError, match="joint_positions"):
        linearise_step(sim.models[0], task, qpos + 0.1, qvel, np.zeros(2), x=x)


def test_trajectory_in_the_layout_of_the_dynamics_and_deterministic():
    task = _task("reacher")
    sim = Simulator(task)
    X, U = rollout(sim)
    Fm, fv = linearise_trajectory(sim, 0, X, U)
    T, dX = X.shape
    assert Fm.shape == (T, dX, dX + task.dU) and fv.shape == (T, dX)
    assert not Fm[-1].any() and not fv[-1].any()  # step T-1 leads nowhere, as in the fitted dynamics
    for t in range(T - 1):
        np.testing.assert_allclose(Fm[t] @ np.concatenate([X[t], U[t]]) + fv[t], X[t + 1], rtol=0, atol=1e-9)
    Fm2, fv2 = linearise_trajectory(sim, 0, X, U)
    np.testing.assert_array_equal(Fm, Fm2)
    np.testing.assert_array_equal(fv, fv2)


@pytest.mark.parametrize("name", ("obstacle", "peg", "reacher", "pusher_with_object"))
def test_cost_per_step(name, capsys):
    """Not a check: the time of one linearised control step, for docs/performance.md (pytest -s shows it)."""
    task = _task(name)
    sim = Simulator(task)
    X, U = rollout(sim)
    Fm, fv = linearise_trajectory(sim, 0, X, U)  # warm
    start = time.perf_counter()
    for _ in range(5):
        linearise_trajectory(sim, 0, X, U)
    per_step = (time.perf_counter() - start) / (5 * (len(X) - 1))
    with capsys.disabled():
        print(f"\nlinearise {name}: {per_step * 1e3:.2f} ms per control step (dX {task.dX}, dU {task.dU})")


def test_a_joint_limit_switching_on_within_the_difference_step_takes_the_free_side():
    """Pusher's elbow 5e-7 inside its upper limit (0), moving into it at 2 rad/s: the limit switches on between
    q - eps and q + eps, and the step jumps there. A central difference of the simulator's whole step gives
    1.8e5 in the elbow's column (iLQR turned such columns into gains of 5.6e5); the linearisation takes the
    free side's one-sided difference there (the whole step's backward difference, to 1e-6) and the central
    difference in every other column (to 1e-7, as everywhere)."""
    from gps_core.sim.linearise import one_sided_at_kinks

    task = _task("pusher_with_object")
    sim = Simulator(task)
    X, U = rollout(sim)
    x, u = X[2].copy(), U[2]
    elbow = task.x_slices["arm_angles"].start + 3  # r_elbow_flex_joint, range [-2.32, 0]
    x[elbow], x[task.x_slices["arm_velocities"].start + 3] = -5e-7, 2.0
    qpos, qvel = physics_state(task, x, sim.qpos0[0])
    lin = linearise_step(sim.models[0], task, qpos, qvel, u, x=x)
    F, _ = fd_jacobians(sim, 0, x, u)
    assert np.abs(F[:, elbow]).max() > 1e5
    base = sim_step(sim, 0, x, u)
    e = np.eye(len(x))[elbow]
    backward = (base - sim_step(sim, 0, x - H * e, u)) / H
    forward = (sim_step(sim, 0, x + H * e, u) - base) / H
    assert np.abs(forward).max() > 1e5 and np.abs(backward).max() < 30
    np.testing.assert_allclose(lin.F[:, elbow], backward, rtol=0, atol=1e-5)
    others = np.delete(np.arange(len(x)), elbow)
    np.testing.assert_allclose(lin.F[:, others], F[:, others], rtol=0, atol=2e-6 * np.abs(F[:, others]).max())
    # Smooth differences come back as they were, the very array.
    central = np.random.default_rng(0).standard_normal((5, 4))
    assert one_sided_at_kinks(central, central + 1e-6) is central
