"""The peg-insertion model (gps_core/assets/peg.xml) with the simulator wrapper.

Besides structural checks, the arm is driven by a scripted controller (test
scaffolding below): damped-least-squares inverse kinematics on the two peg sites
gives joint targets that hold the peg vertical above a point and then lower it;
a computed-torque law tracks them. Aimed at the hole the peg must go in, aimed at
the table top it must stay on top (ALGORITHM.md §12.3 item 7).
"""

from __future__ import annotations

import mujoco
import numpy as np
import pytest

from gps_core.sim.env import Simulator, model_path

Q0 = np.array([0.1, 0.1, -1.54, -1.7, 1.54, -0.2, 0.0])  # initial joint angles of every peg condition
TARGET = np.array([0.0, 0.3, -0.5])  # hole bottom: the scored target of leg_bottom
GRID = np.array([(dx, dy, 0.0) for dx in (-0.1, 0.0, 0.1) for dy in (-0.1, 0.0, 0.1)])  # paper's 9 base offsets
DT, SUBSTEPS, T = 0.05, 5, 100
PEG = 0.3  # peg length (leg_bottom → leg_top)


def peg_sim(offsets) -> Simulator:
    offsets = np.asarray(offsets, dtype=float)
    return Simulator.for_model(model_path("peg"), np.tile(Q0, (len(offsets), 1)), dt=DT, substeps=SUBSTEPS,
                              body_offsets=offsets)


# ----------------------------------------------------------------------------- scaffolding


def solve_ik(model, q_init, bottom, top, iters=300, damping=1e-2):
    """Joint angles putting leg_bottom at `bottom` and leg_top at `top` (damped least squares)."""
    data = mujoco.MjData(model)
    q = np.array(q_init, dtype=float)
    goal = np.r_[bottom, top]
    jac = np.zeros((6, model.nv))
    lim = model.jnt_limited.astype(bool)
    lo, hi = model.jnt_range[lim, 0], model.jnt_range[lim, 1]
    for _ in range(iters):
        data.qpos[:] = q
        mujoco.mj_kinematics(model, data)
        mujoco.mj_comPos(model, data)  # needed for correct site Jacobians
        r = goal - data.site_xpos.ravel()
        if np.linalg.norm(r) < 1e-7:
            break
        for s in range(2):
            mujoco.mj_jacSite(model, data, jac[3 * s : 3 * s + 3], None, s)
        q = q + jac.T @ np.linalg.solve(jac @ jac.T + damping * np.eye(6), r)
        q[lim] = np.clip(q[lim], lo, hi)
    return q, float(np.linalg.norm(r))


def vertical_descent_plan(model, x, y, z_above=-0.3, z_end=-0.55, n_points=12, t_move=40, t_down=80):
    """Joint targets [T, 7]: move (smoothstep in joint space) from Q0 until the peg is
    vertical with its bottom at (x, y, z_above), then lower it along the vertical to
    z_end (below the hole floor, so the controller keeps pressing), then hold."""
    waypoints, q = [], Q0
    for z in np.linspace(z_above, z_end, n_points):
        q, err = solve_ik(model, q, (x, y, z), (x, y, z + PEG))
        assert err < 1e-4, f"IK did not converge for ({x}, {y}, {z}): residual {err}"
        waypoints.append(q)
    waypoints = np.array(waypoints)
    ref = np.empty((T, 7))
    for t in range(T):
        if t <= t_move:
            s = t / t_move
            s = 3 * s**2 - 2 * s**3
            ref[t] = (1 - s) * Q0 + s * waypoints[0]
        elif t <= t_down:
            s = (t - t_move) / (t_down - t_move) * (n_points - 1)
            i = min(int(s), n_points - 2)
            ref[t] = (1 - (s - i)) * waypoints[i] + (s - i) * waypoints[i + 1]
        else:
            ref[t] = waypoints[-1]
    return ref


class ComputedTorque:
    """u = M(q) (Kp (q_ref − q) + Kd (q̇_ref − q̇)) + bias(q, q̇) + damping·q̇, one reference per episode."""

    def __init__(self, models, refs, wn=15.0):
        self.models, self.refs = models, refs
        self.datas = [mujoco.MjData(m) for m in models]
        self.kp, self.kd = wn**2, 2.0 * wn

    def __call__(self, t, x, o):
        u = np.zeros((x.shape[0], 7))
        M = np.zeros((7, 7))
        for b, (model, data, ref) in enumerate(zip(self.models, self.datas, self.refs)):
            q, qd = x[b, :7], x[b, 7:14]
            qd_ref = (ref[min(t + 1, T - 1)] - ref[max(t - 1, 0)]) / (2 * DT)
            data.qpos[:], data.qvel[:] = q, qd
            mujoco.mj_forward(model, data)
            mujoco.mj_fullM(model, data, M)
            u[b] = M @ (self.kp * (ref[t] - q) + self.kd * (qd_ref - qd)) + data.qfrc_bias + model.dof_damping * qd
        return u


def scripted_rollout(sim: Simulator, conditions, aim):
    """Lower the peg vertically onto the point `aim` = (x, y) in every listed condition."""
    models = [sim.models[m] for m in conditions]
    refs = [vertical_descent_plan(model, *aim) for model in models]
    return sim.rollout(np.asarray(conditions), ComputedTorque(models, refs), T)


@pytest.fixture(scope="module")
def grid_sim():
    return peg_sim(GRID)


@pytest.fixture(scope="module")
def insertion(grid_sim):
    return scripted_rollout(grid_sim, np.arange(len(GRID)), (0.0, 0.3))


# ----------------------------------------------------------------------------- structure


def test_model_structure():
    model = mujoco.MjModel.from_xml_path(model_path("peg"))
    assert (model.nq, model.nv, model.nu) == (7, 7, 7)
    assert [model.site(i).name for i in range(model.nsite)] == ["leg_bottom", "leg_top"]
    assert model.body(1).name == "r_shoulder_pan_link"
    assert model.opt.integrator == mujoco.mjtIntegrator.mjINT_EULER
    assert model.opt.timestep == 0.01
    np.testing.assert_array_equal(model.opt.gravity, 0.0)
    np.testing.assert_array_equal(model.actuator_ctrlrange, np.tile([-100.0, 100.0], (7, 1)))
    assert model.actuator_ctrllimited.all()
    # each motor drives its own joint, in joint order
    np.testing.assert_array_equal(model.actuator_trnid[:, 0], np.arange(7))
    np.testing.assert_array_equal(model.jnt_type, mujoco.mjtJoint.mjJNT_HINGE)
    np.testing.assert_allclose(model.dof_damping, [10, 10, 0.1, 1, 0.1, 0.1, 0.1])
    np.testing.assert_allclose(model.dof_armature, 0.04)
    np.testing.assert_array_equal(model.jnt_limited, [1, 1, 1, 1, 0, 1, 0])  # forearm and wrist roll unlimited
    np.testing.assert_array_equal(model.geom_condim, 1)  # frictionless


def test_peg_and_hole_geometry():
    model = mujoco.MjModel.from_xml_path(model_path("peg"))
    peg = model.geom("peg")
    assert peg.type[0] == mujoco.mjtGeom.mjGEOM_CYLINDER
    np.testing.assert_allclose(peg.size[:2], [0.028, 0.15])
    assert model.body_mass[peg.bodyid[0]] == pytest.approx(2000 * np.pi * 0.028**2 * 0.3)
    np.testing.assert_allclose(model.site_pos, [[0, 0, -0.15], [0, 0, 0.15]])
    assert model.site_bodyid[0] == model.site_bodyid[1] == model.body("r_gripper_tool_frame").id

    # The peg collides only with the static table/hole geoms, nothing else collides.
    static = model.geom_bodyid == 0
    for g1 in range(model.ngeom):
        for g2 in range(g1 + 1, model.ngeom):
            can = (model.geom_contype[g1] & model.geom_conaffinity[g2]) or (model.geom_contype[g2] & model.geom_conaffinity[g1])
            is_peg_table = (g1 == peg.id and static[g2]) or (g2 == peg.id and static[g1])
            assert bool(can) == is_peg_table or (static[g1] and static[g2]), (model.geom(g1).name, model.geom(g2).name)

    def box_extent(name, axis):
        g = model.geom(name)
        return g.pos[axis] - g.size[axis], g.pos[axis] + g.size[axis]

    tables = ["table_pos_x", "table_neg_x", "table_pos_y", "table_neg_y"]
    assert all(box_extent(n, 2) == pytest.approx((-0.5, -0.4)) for n in tables)  # table top −0.4, 0.1 thick
    assert box_extent("hole_floor", 2)[1] == pytest.approx(-0.5)
    assert box_extent("table_pos_x", 0)[0] == pytest.approx(0.033)
    assert box_extent("table_neg_x", 0)[1] == pytest.approx(-0.033)
    assert box_extent("table_pos_y", 1)[0] == pytest.approx(0.333)
    assert box_extent("table_neg_y", 1)[1] == pytest.approx(0.267)
    for name, axis in [("funnel_pos_x", 1), ("funnel_neg_x", 1), ("funnel_pos_y", 0), ("funnel_neg_y", 0)]:
        quat = model.geom(name).quat
        tilt = 2 * np.arccos(min(1.0, abs(quat[0])))
        assert tilt == pytest.approx(0.05)
        assert abs(quat[1 + axis]) == pytest.approx(np.sin(0.025))  # tilted about the plate's long horizontal axis


# ----------------------------------------------------------------------------- kinematics


def test_sites_at_initial_pose_match_reference():
    x0 = peg_sim([(0.0, 0.0, 0.0)]).initial_states()[0]
    assert x0.shape == (26,)
    np.testing.assert_array_equal(x0[:7], Q0)
    np.testing.assert_allclose(x0[14:17], [0.3696, 0.3782, -0.1280], atol=2e-3)
    np.testing.assert_allclose(x0[17:20], [0.4043, 0.3120, 0.1625], atol=2e-3)
    assert np.linalg.norm(x0[17:20] - x0[14:17]) == pytest.approx(PEG)
    np.testing.assert_array_equal(x0[20:], 0.0)


def test_base_offset_moves_both_sites_by_the_offset():
    # The first offset is non-zero on purpose: each condition's shift must be
    # relative to the unshifted model, not to the first condition's model.
    offsets = np.array([(-0.1, -0.1, 0.0), (0.1, -0.1, 0.0), (-0.07, 0.05, 0.0), (0.0, 0.0, 0.0)])
    x0 = peg_sim(offsets).initial_states()
    unshifted = peg_sim(np.zeros((1, 3))).initial_states()[0]
    for m in range(len(offsets)):
        np.testing.assert_allclose(x0[m, 14:20] - unshifted[14:20], np.tile(offsets[m], 2), atol=1e-12)
        np.testing.assert_array_equal(x0[m, :14], unshifted[:14])
    # the hole does not move: the static geoms are the same in every condition's model
    sim = peg_sim(offsets)
    np.testing.assert_array_equal(sim.models[1].geom_pos[sim.models[1].geom_bodyid == 0], sim.models[0].geom_pos[sim.models[0].geom_bodyid == 0])


# ----------------------------------------------------------------------------- contact behaviour


@pytest.mark.parametrize("gap, touching", [(0.0015, True), (0.0025, False)])
def test_peg_table_contacts_have_the_originals_2mm_margin(gap, touching):
    """The original gives every geom margin 0.002 and its MuJoCo took the larger
    margin of a pair: a peg–table contact exists below 2 mm of separation, not 4."""
    model = mujoco.MjModel.from_xml_path(model_path("peg"))
    bottom = np.array([0.2, 0.3, -0.4 + gap])  # over the table top, well beside the hole
    q, err = solve_ik(model, Q0, bottom, bottom + [0.0, 0.0, PEG])
    assert err < 1e-6
    data = mujoco.MjData(model)
    data.qpos[:] = q
    mujoco.mj_forward(model, data)
    contacts = data.contact[: data.ncon]
    assert (data.ncon > 0) == touching
    np.testing.assert_allclose(contacts.includemargin, 0.002)
    np.testing.assert_allclose(contacts.dist, gap, atol=1e-6)


def test_scripted_insertion_reaches_the_hole_bottom(insertion):
    final = insertion.X[:, -1]
    bottom, top = final[:, 14:17], final[:, 17:20]
    dist = np.linalg.norm(bottom - TARGET, axis=1)
    # Bottomed out: 0.003 with the original's 2 mm contact margin per pair; a 4 mm
    # margin (MuJoCo 4 adding two geoms' 0.002) leaves the peg wedged at ≈ 0.018.
    assert np.all(dist < 0.01), dist
    assert np.all(bottom[:, 2] < -0.47)  # well below the table top: inside the hole
    assert np.all(insertion.X[:, :, 16] > -0.505)  # but not through the hole floor
    np.testing.assert_allclose(top[:, :2], np.tile([0.0, 0.3], (len(GRID), 1)), atol=0.01)  # peg still upright
    assert np.all(np.abs(insertion.U) < 100)  # achieved without saturating the motors


def test_peg_off_the_axis_slides_in_as_in_the_originals_collider(grid_sim):
    # MPR with one contact per pair (the original's collider, restored by the model's
    # flags) guides a peg lowered 10 mm off the axis in x into the hole in every
    # condition; MuJoCo 4's default GJK/EPA with several contacts leaves it on the rim
    # (distance ≈ 0.14) from 8 mm on.
    X = scripted_rollout(grid_sim, np.arange(len(GRID)), (0.010, 0.3)).X
    dist = np.linalg.norm(X[:, -1, 14:17] - TARGET, axis=1)
    assert np.all(dist < 0.01), dist
    model = grid_sim.models[0]
    assert model.opt.disableflags & mujoco.mjtDisableBit.mjDSBL_NATIVECCD
    assert model.opt.disableflags & mujoco.mjtDisableBit.mjDSBL_MULTICCD


@pytest.mark.parametrize("aim", [(0.15, 0.3), (0.0, 0.2)])
def test_peg_cannot_pass_through_the_table(grid_sim, aim):
    X = scripted_rollout(grid_sim, [4], aim).X[0]
    assert X[-1, 16] > -0.39  # resting on the table top (≈ −0.385 with the peg slightly tilted)
    assert X[:, 16].min() > -0.42  # never sinks into the 0.1 m thick table
    assert np.linalg.norm(X[-1, 14:17] - TARGET) > 0.1  # a failure under both scoring thresholds


def test_rollouts_are_deterministic(grid_sim, insertion):
    again = scripted_rollout(peg_sim(GRID[[0, 8]]), [0, 1], (0.0, 0.3))
    np.testing.assert_array_equal(again.X, insertion.X[[0, 8]])
    np.testing.assert_array_equal(again.U, insertion.U[[0, 8]])
    np.testing.assert_array_equal(again.ee_jac, insertion.ee_jac[[0, 8]])
