"""The obstacle-course model and the simulator wrapper."""

import mujoco
import numpy as np
import pytest

from gps_core.sim.env import BAD_ACTION, Simulator, model_path


def sim_at(*starts):
    return Simulator.for_model(model_path("obstacle"), np.array(starts, dtype=float), dt=0.05, substeps=5)


def push(sim, u, T=200):
    return sim.rollout(np.arange(sim.M), lambda t, x, o: np.tile(u, (x.shape[0], 1)), T)


def test_initial_states_and_layout():
    sim = sim_at((0.0, -1.5), (0.0, 0.75))
    assert (sim.dX, sim.dU) == (10, 2)
    np.testing.assert_allclose(sim.initial_states(), [[0, -1.5, 0, 0, 0, -1.5, 0, 0, 0, 0], [0, 0.75, 0, 0, 0, 0.75, 0, 0, 0, 0]])
    np.testing.assert_array_equal(sim.initial_observations(), sim.initial_states())  # the plain layout: o = x


def test_top_speed_and_time_constant():
    """|u| ≤ 1 with damping 1 and mass ≈ 4.82 kg: top speed ≈ 1 m/s, time constant ≈ 4.8 s."""
    sim = sim_at((-20.0, 5.0))  # far from every wall
    X = push(sim, [1.0, 0.0], T=400).X
    assert X[0, -1, 2] == pytest.approx(1.0, abs=0.02)
    tau = -0.05 * 40 / np.log(1 - X[0, 40, 2])  # v(t) = 1 − exp(−t/τ)
    assert tau == pytest.approx(4.82, rel=0.05)


def test_walls_block_the_particle_and_the_target_does_not():
    # (0, 0.8) heads straight into the near wall at x = 1; (2.5, 0) passes through the target marker at (3, 0).
    X = push(sim_at((0.0, 0.8), (2.5, 0.0)), [1.0, 0.0]).X
    assert 0.75 < X[0, -1, 0] < 0.82  # stopped at 1 − wall radius − particle radius (minus the contact margin)
    assert X[1, -1, 0] > 4.0


@pytest.mark.parametrize("gap, touching", [(0.0015, True), (0.0025, False)])
def test_wall_contacts_have_the_originals_2mm_margin(gap, touching):
    """2 mm per contact pair, as in the original (its MuJoCo took the larger geom margin; MuJoCo 4 adds them)."""
    sim = sim_at((1.0 - 0.1 - 0.11 - gap, 0.8))  # left of the wall at (1, 0.8); the particle reaches 0.11 along x
    data = sim._reset(0)
    contacts = data.contact[: data.ncon]
    assert (data.ncon > 0) == touching
    np.testing.assert_allclose(contacts.includemargin, 0.002)
    np.testing.assert_allclose(contacts.dist, gap, atol=2e-4)  # the wall's capsule axis is tilted slightly in z


def test_actions_recorded_unclipped_but_clipped_in_simulation():
    sim = sim_at((0.0, 0.0))
    big, unit = push(sim, [5.0, -3.0], T=20), push(sim, [1.0, -1.0], T=20)
    np.testing.assert_array_equal(big.U[0, 0], [5.0, -3.0])
    np.testing.assert_allclose(big.X, unit.X)


def test_sites_are_one_substep_stale():
    sim = sim_at((0.0, 0.0))
    X = push(sim, [1.0, 0.0], T=3).X
    # Reference: plain MuJoCo Euler steps; the site belongs to the state before the last substep.
    model = mujoco.MjModel.from_xml_path(model_path("obstacle"))
    data = mujoco.MjData(model)
    data.ctrl[:] = [1.0, 0.0]
    for _ in range(4):
        mujoco.mj_step(model, data)
    before_last = data.qpos[0]
    mujoco.mj_step(model, data)
    assert X[0, 1, 0] == pytest.approx(data.qpos[0], abs=1e-12)
    assert X[0, 1, 4] == pytest.approx(before_last, abs=1e-12)
    assert X[0, 1, 7] == pytest.approx(before_last / 0.05, abs=1e-12)  # site velocity: finite difference over dt


def test_rollouts_are_deterministic_and_nan_is_reported():
    sim = sim_at((0.0, 0.0), (0.0, 1.0))
    a = push(sim, [0.3, -0.2], T=30)
    b = push(sim, [0.3, -0.2], T=30)
    np.testing.assert_array_equal(a.X, b.X)
    assert list(a.diverged_at) == [-1, -1]
    # A NaN action is reported, not raised (tests/test_rollout_faults.py has the rest).
    r = sim.rollout(np.array([0]), lambda t, x, o: np.full((1, 2), np.nan), 5)
    assert list(r.diverged_at) == [0] and list(r.cause) == [BAD_ACTION] and not r.U.any()
