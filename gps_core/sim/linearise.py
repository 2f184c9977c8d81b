"""One control step of a task linearised with MuJoCo's own derivatives: x' ≈ F x + G u + f.

The step is the simulator's (gps_core.sim.env.Simulator): `substeps` physics steps with the
task's stepping, the control clamped to the actuators' range by MuJoCo, then the blocks read.
MuJoCo's `mjd_transitionFD` gives each physics step's derivative in its own state tangent
s = (dq [nv], dv [nv], act [na]); the substeps are chained, and the result is mapped into the
task's x through the blocks:

    dx'/dx = (dx'/ds') (ds'/ds) (ds/dx)  +  (how x' reads x itself)

- ds/dx (StateMap.P) picks the qpos and qvel entries of x. Everything else in x is a reading
  of the simulation, not a degree of freedom of it, with one exception below. A coordinate of s
  that x does not hold must be one nothing in x or u can move (Reacher's target, Pusher's goal:
  unactuated, carrying no geom that can collide, at rest); a joint that can be moved but is not
  in x (Pusher's cylinder) makes x no state of the simulation, and raises LinearisationError.
- qpos, qvel, cos and sin blocks are read from s' (the state after the control step).
- Points (position and relative blocks) are read from the kinematics MuJoCo last computed,
  which belong to the state before the last substep, s⁻ (the simulator's docstring): their rows
  are the points' Jacobians (mj_jacSite, mj_jacBody) at s⁻ times ds⁻/ds. Under RK4 (Reacher)
  MuJoCo's last kinematics are those of its fourth stage (off s⁻'s by ~2 mm there), which also
  depend on u, and mjd_transitionFD refuses RK4: there each physics step and the last substep's
  reading are differenced here (central, in MuJoCo's tangent space, as mjd_transitionFD would).
- Velocity blocks are the simulator's finite differences (b' − b)/dt of a point-like block b of
  the previous step. That previous reading is part of x (the block must be in the state, else
  raise), so F holds −I/dt at (velocity', b): x's point blocks enter the step through the
  velocity blocks and nothing else; x's velocity blocks do not enter it at all. This is exactly
  how x' depends on x in the simulator, with no J q̇ approximation (and no dJ/dq term) needed.

Split stepping (mj_step1, set the control, mj_step2) equals mj_step for the derivative: the
task compiler allows split only for Euler models, where both run the same computations (for
the shipped tasks the trajectories agree bit for bit), and MuJoCo reads the control only after
mj_step1. mjd_transitionFD differentiates mj_step, and the forward pass here steps as the task does.

The recorded action u is unclipped (env.py); MuJoCo clamps it, so G's column of a control
strictly outside its range is zero (the derivatives are taken at the clamped control, where
MuJoCo's differences stay inside the range: a control exactly at its limit gets the inward,
one-sided derivative, where a central difference of the simulator would give half of it).

Where the step has a kink (a joint limit or contact switching on within the difference step,
e.g. Pusher's arm resting on its elbow and wrist limits at t = 0) the chained per-substep
differences and a difference of the whole control step can disagree; elsewhere, including in
steady contact, they agree to ~1e-7 of the largest entry (tests/test_linearise.py). Where a limit
switches on with the joint moving into it, the step jumps, and a central difference across the
jump is jump / (2 eps) (1.8e5 on Pusher's elbow at 2 rad/s; iLQR made gains of 5.6e5 of such a
column). Each substep's difference is therefore also taken forward: a column whose forward and
backward differences disagree by more than KINK_RATIO (1 + the smaller's size) takes the smaller
one-sided difference, the free side's (one_sided_at_kinks). Every other column is the central
difference, bit for bit. The forward differences add 15-25 % to the linearisation's time (docs/performance.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import mujoco
import numpy as np

from gps_core.sim.env import control_step
from gps_core.sim.task import POINT_KINDS, Task

# Integrators whose step computes the kinematics at the start (positions read after it are s⁻'s).
_KINEMATICS_AT_START = {int(mujoco.mjtIntegrator.mjINT_EULER), int(mujoco.mjtIntegrator.mjINT_IMPLICIT),
                        int(mujoco.mjtIntegrator.mjINT_IMPLICITFAST)}


class LinearisationError(ValueError):
    """The task's state x does not determine the simulation's state, so no F in x exists."""


@dataclass(frozen=True)
class StateMap:
    """How x holds MuJoCo's state tangent s = (dq [nv], dv [nv], act [na]), decided once per task and model.

    P: [ns, dX] ds/dx (0/1 entries). held: [k] coordinates of s that x does not hold (they must stay put).
    velocity: (x slice of a velocity block, x slice of the block it differentiates) pairs.
    """

    P: np.ndarray
    held: np.ndarray
    velocity: tuple[tuple[slice, slice], ...]


@dataclass(frozen=True)
class Linearisation:
    """x_next ≈ F x + G u + f near (x, u). F: [dX, dX], G: [dX, dU], f: [dX], x: [dX], x_next: [dX] (the step's own)."""

    F: np.ndarray
    G: np.ndarray
    f: np.ndarray
    x: np.ndarray
    x_next: np.ndarray


def _subtree_geoms(model, body: int) -> np.ndarray:
    """Geoms on `body` and its descendants."""
    inside = np.zeros(model.nbody, dtype=bool)
    for b in range(model.nbody):  # parents come before children in MuJoCo's body order
        inside[b] = b == body or (b > 0 and inside[model.body_parentid[b]])
    return np.flatnonzero(inside[model.geom_bodyid])


def _can_collide(model, geoms: np.ndarray) -> bool:
    """Whether one of `geoms` can touch a geom outside them (MuJoCo's contype/conaffinity rule, or an explicit pair)."""
    others = np.setdiff1d(np.arange(model.ngeom), geoms)
    for g in geoms:
        t, a = model.geom_contype[g], model.geom_conaffinity[g]
        if np.any((t & model.geom_conaffinity[others]) | (model.geom_contype[others] & a)):
            return True
    return bool(model.npair) and bool(np.isin(model.pair_geom1, geoms).any() or np.isin(model.pair_geom2, geoms).any())


def state_map(model, task: Task) -> StateMap:
    """ds/dx for `task` on `model` [ns, dX]; raises LinearisationError where x does not hold the simulation's state."""
    nv, na = model.nv, model.na
    P = np.zeros((2 * nv + na, task.dX))
    for b in task.blocks:
        if b.name in task.state and b.kind in ("qpos", "qvel"):
            start = task.x_slices[b.name].start
            # Hinge and slide joints only (compile_task): a qpos entry is its dof's tangent coordinate.
            rows = b.dadr if b.kind == "qpos" else nv + b.dadr
            for i, r in enumerate(rows):
                if not P[r].any():  # a joint in two blocks: the first one holds it
                    P[r, start + i] = 1.0
    held = np.flatnonzero(~P.any(axis=1))
    problems = []
    if na:
        problems.append(f"{na} actuator activation state(s), which no block reads")
    actuated = {int(model.actuator_trnid[a, 0]) for a in range(model.nu)
                if model.actuator_trntype[a] in (mujoco.mjtTrn.mjTRN_JOINT, mujoco.mjtTrn.mjTRN_JOINTINPARENT)}
    for j in range(model.njnt):
        dofs = np.flatnonzero(model.dof_jntid == j)  # 1 (hinge, slide), 3 (ball) or 6 (free)
        coords = np.concatenate([dofs, nv + dofs])
        if not np.isin(coords, held).any():
            continue
        name = mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_JOINT, j) or f"#{j}"
        why = ("an actuator drives it" if j in actuated
               else "it carries geoms that can collide" if _can_collide(model, _subtree_geoms(model, model.jnt_bodyid[j]))
               else None)  # any other coupling shows in the step's derivative (_check_held)
        if why is not None:
            missing = "qpos and qvel" if np.isin(coords, held).all() else ("qpos" if np.isin(dofs, held).any() else "qvel")
            problems.append(f"joint {name!r} ({missing} not in the state; {why})")
    if problems:
        raise LinearisationError(
            f"task {task.name}: the state x does not hold the simulation's state, so the model cannot be "
            f"linearised in x: {'; '.join(problems)}. Add qpos and qvel blocks of these joints to task.state.")
    velocity = []
    for b in task.blocks:
        if b.name in task.state and b.kind == "velocity":
            if b.of not in task.state:
                raise LinearisationError(f"task {task.name}: velocity block {b.name!r} differentiates {b.of!r}, which is "
                                         "not in the state: x' then depends on a reading x does not hold")
            velocity.append((task.x_slices[b.name], task.x_slices[b.of]))
    return StateMap(P, held, tuple(velocity))


def physics_state(task: Task, x: np.ndarray, qpos0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(qpos [nq], qvel [nv]) of a state x [dX]: x's joint entries, the rest from qpos0 [nq] at rest (held joints)."""
    qpos, qvel = np.array(qpos0, dtype=float), np.zeros(task.nv)
    for b in reversed([b for b in task.blocks if b.name in task.state]):  # reversed: the first block holding a joint wins
        if b.kind == "qpos":
            qpos[b.qadr] = x[task.x_slices[b.name]]
        elif b.kind == "qvel":
            qvel[b.dadr] = x[task.x_slices[b.name]]
    return qpos, qvel


def _point_rows(model, data, task: Task) -> tuple[list[slice], np.ndarray]:
    """The state's point-like blocks: their x slices and d(block)/dq [n, nv] at data's kinematics."""
    slices, rows = [], []
    jac = np.zeros((3, model.nv))
    for b in task.blocks:
        if b.name not in task.state or b.kind not in POINT_KINDS:
            continue
        per_point = []
        for p in b.points:
            (mujoco.mj_jacSite if p.kind == "site" else mujoco.mj_jacBody)(model, data, jac, None, p.id)
            per_point.append(jac.copy())
        if b.kind == "relative":
            per_point = [per_point[0] - per_point[1]]
        slices.append(task.x_slices[b.name])
        rows.append(np.concatenate([J[list(b.axes)] for J in per_point]))
    return slices, (np.concatenate(rows) if rows else np.zeros((0, model.nv)))


def _points(task: Task, values: dict) -> np.ndarray:
    return np.concatenate([values[b.name] for b in task.blocks if b.name in task.state and b.kind in POINT_KINDS]
                          or [np.zeros(0)])


# A column whose forward and backward differences differ by more than this many times (1 + the smaller one's
# size) is taken to cross a kink (module docstring).
KINK_RATIO = 100.0


def one_sided_at_kinks(central: np.ndarray, forward: np.ndarray) -> np.ndarray:
    """Central differences [n, k], except in the columns where the step has a kink: there the one-sided
    difference (forward, or backward = 2 central - forward) of the smaller size (max |entry|).

    A joint limit or contact that switches on between x - eps and x + eps makes the step jump, and a central
    difference across the jump is jump / (2 eps): 5e6 on Pusher where the elbow returns to its limit, which
    iLQR turned into gains of 5.6e5. The side the limit is not on has the step's derivative there. On smooth
    steps the two one-sided differences agree to O(eps) (second derivatives times eps), far within the
    threshold, and the central difference is returned unchanged, bit for bit.
    """
    backward = 2.0 * central - forward
    size_f, size_b = np.max(np.abs(forward), axis=0), np.max(np.abs(backward), axis=0)
    kink = np.max(np.abs(forward - backward), axis=0) > KINK_RATIO * (1.0 + np.minimum(size_f, size_b))
    if not np.any(kink):
        return central
    out = central.copy()
    out[:, kink] = np.where(size_f[kink] <= size_b[kink], forward[:, kink], backward[:, kink])
    return out


def _substep_fd(model, data, task: Task, u: np.ndarray, split: bool, eps: float):
    """One physics step from data's state by central differences, for what mjd_transitionFD does not take (RK4).

    u: [nu] a control within its range. Returns A [ns, ns], B [ns, nu] (as mjd_transitionFD's) and
    R [n, ns], Ru [n, nu]: the derivatives of the state's points read after the step.
    A control at the edge of its range is differenced one-sidedly inward, as MuJoCo does.
    """
    from gps_core.sim.env import BlockReader

    reader = BlockReader(task)
    nv, na, nu = model.nv, model.na, model.nu
    ns = 2 * nv + na
    qpos, qvel, act = data.qpos.copy(), data.qvel.copy(), data.act.copy()
    warm, time = data.qacc_warmstart.copy(), data.time
    scratch = mujoco.MjData(model)
    dq = np.zeros(nv)

    def run(ds: np.ndarray, du: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scratch.qpos[:] = qpos
        mujoco.mj_integratePos(model, scratch.qpos, ds[:nv], 1.0)
        scratch.qvel[:], scratch.act[:] = qvel + ds[nv:2 * nv], act + ds[2 * nv:]
        scratch.qacc_warmstart[:], scratch.time = warm, time
        control_step(model, scratch, u + du, 1, split)
        mujoco.mj_differentiatePos(model, dq, 1.0, qpos, scratch.qpos)  # tangent of qpos', relative to qpos
        s = np.concatenate([dq, scratch.qvel, scratch.act])
        return s, _points(task, reader.values(scratch, None))

    # Central differences, and forward ones for one_sided_at_kinks (a column differenced one-sidedly, a control
    # at a limit, has its forward difference equal to the central one, so it is never taken for a kink).
    s0 = np.concatenate(run(np.zeros(ns), np.zeros(nu)))
    central_s, forward_s = [], []
    for i in range(ns):
        e = np.zeros(ns)
        e[i] = eps
        plus, minus = np.concatenate(run(e, np.zeros(nu))), np.concatenate(run(-e, np.zeros(nu)))
        central_s.append((plus - minus) / (2 * eps))
        forward_s.append((plus - s0) / eps)
    lo, hi = task.action_low, task.action_high
    central_u, forward_u = [], []
    for i in range(nu):
        up, down = min(eps, hi[i] - u[i]), min(eps, u[i] - lo[i])
        if up <= 0 and down <= 0:
            central_u.append(np.zeros(len(s0)))
            forward_u.append(central_u[-1])
            continue
        e_up, e_down = np.zeros(nu), np.zeros(nu)
        e_up[i], e_down[i] = max(up, 0.0), -max(down, 0.0)
        plus, minus = np.concatenate(run(np.zeros(ns), e_up)), np.concatenate(run(np.zeros(ns), e_down))
        central_u.append((plus - minus) / (e_up[i] - e_down[i]))
        forward_u.append((plus - s0) / e_up[i] if e_up[i] == -e_down[i] else central_u[-1])
    Ds = one_sided_at_kinks(np.stack(central_s, axis=1), np.stack(forward_s, axis=1))
    Du = one_sided_at_kinks(np.stack(central_u, axis=1), np.stack(forward_u, axis=1))
    return Ds[:ns], Du[:ns], Ds[ns:], Du[ns:]


def linearise_step(model, task: Task, qpos: np.ndarray, qvel: np.ndarray, u: np.ndarray,
                   x: np.ndarray | None = None, eps: float = 1e-6, smap: StateMap | None = None) -> Linearisation:
    """One control step of `task` on `model` linearised at the physics state (qpos [nq], qvel [nv]) and control u [dU].

    x [dX]: the state as the simulator read it there (its point blocks are the previous reading the
    velocity blocks difference against); None: read now, as at t = 0 (points exact, velocities 0).
    eps: mjd_transitionFD's (central) difference step. smap: state_map(model, task), to decide it once.
    """
    from gps_core.sim.env import BlockReader

    smap = state_map(model, task) if smap is None else smap
    reader = BlockReader(task)
    nv, na, nu = model.nv, model.na, model.nu
    ns, split = 2 * nv + na, task.stepping == "split"
    u = np.asarray(u, dtype=float)
    # MuJoCo's differences are taken at the clamped control (they keep inside the range there); a control
    # beyond its range has no effect at all.
    lo, hi = task.action_low, task.action_high
    inside = ((u >= lo) & (u <= hi)).astype(float)
    uc = np.clip(u, lo, hi)

    data = mujoco.MjData(model)
    data.qpos[:], data.qvel[:] = qpos, qvel
    mujoco.mj_forward(model, data)
    if x is None:
        x = np.concatenate([reader.values(data, None)[n] for n in task.state])
    x = np.asarray(x, dtype=float)
    for blk in task.blocks:  # x's joint entries are the physics state's (x was read there)
        if blk.name in task.state and blk.kind in ("qpos", "qvel"):
            have = data.qpos[blk.qadr] if blk.kind == "qpos" else data.qvel[blk.dadr]
            if not np.allclose(x[task.x_slices[blk.name]], have, rtol=0, atol=1e-12):
                raise ValueError(f"x's block {blk.name!r} is not the physics state's {blk.kind}: pass the state x was read at")
    prev = {name: x[task.x_slices[name]] for name in task.state}  # the previous reading of the velocity blocks' sources

    A, B = np.eye(ns), np.zeros((ns, nu))  # d s_k / d(s_0, u) over the substeps taken so far
    Ak, Bk = np.zeros((ns, ns)), np.zeros((ns, nu))
    Ak_fwd, Bk_fwd = np.zeros((ns, ns)), np.zeros((ns, nu))
    # mjd_transitionFD takes every integrator but RK4 (MuJoCo 4.0 refuses it); those also compute the kinematics
    # at the start of the step, so the points read after it are s⁻'s (split steps are Euler: compile_task).
    mjd = split or int(model.opt.integrator) in _KINEMATICS_AT_START
    last_rows = None
    for k in range(task.substeps):
        if k == task.substeps - 1:  # s⁻: the points read after the step are its kinematics (or RK4's stage from it)
            A_pre, B_pre = A.copy(), B.copy()
            if mjd:
                mujoco.mj_kinematics(model, data)
                mujoco.mj_comPos(model, data)
                slices, J = _point_rows(model, data, task)
                last_rows = (slices, np.hstack([J, np.zeros((len(J), ns - nv))]), np.zeros((len(J), nu)))
            else:
                slices, _ = _point_rows(model, data, task)
        if mjd:
            data.ctrl[:] = uc
            mujoco.mjd_transitionFD(model, data, eps, True, Ak, Bk, None, None)
            mujoco.mjd_transitionFD(model, data, eps, False, Ak_fwd, Bk_fwd, None, None)
            Ak, Bk = one_sided_at_kinks(Ak, Ak_fwd), one_sided_at_kinks(Bk, Bk_fwd)
        else:
            Ak, Bk, Rs, Ru = _substep_fd(model, data, task, uc, split, eps)
            if k == task.substeps - 1:
                last_rows = (slices, Rs, Ru)
        A, B = Ak @ A, Ak @ B + Bk
        control_step(model, data, u, 1, split)
    B = B * inside
    values = reader.values(data, prev)
    x_next = np.concatenate([values[n] for n in task.state])

    # dx'/ds_0 and dx'/du, block by block.
    Ds, Du = np.zeros((task.dX, ns)), np.zeros((task.dX, nu))
    for b in task.blocks:
        if b.name not in task.state or b.kind not in ("qpos", "qvel", "cos", "sin"):
            continue
        sl = task.x_slices[b.name]
        rows = nv + b.dadr if b.kind == "qvel" else b.dadr
        q = data.qpos[b.qadr]  # cos and sin of q' change by ∓sin, cos times dq'
        scale = (np.ones_like(q) if b.kind in ("qpos", "qvel") else -np.sin(q) if b.kind == "cos" else np.cos(q))[:, None]
        Ds[sl], Du[sl] = scale * A[rows], scale * B[rows]
    slices, Rs, Ru = last_rows
    row = 0
    for sl in slices:
        n = sl.stop - sl.start
        Ds[sl] = Rs[row:row + n] @ A_pre
        Du[sl] = (Rs[row:row + n] @ B_pre + Ru[row:row + n]) * inside
        row += n
    F = Ds @ smap.P
    for vel, of in smap.velocity:  # (b' − b)/dt: b' through the simulation, b straight from x
        Ds_v, Du_v = Ds[of] / task.dt, Du[of] / task.dt
        F[vel] = Ds_v @ smap.P
        F[vel, of] -= np.eye(of.stop - of.start) / task.dt
        Du[vel] = Du_v
    _check_held(task, smap, A, B)
    f = x_next - F @ x - Du @ u
    return Linearisation(F=F, G=Du, f=f, x=x, x_next=x_next)


def _check_held(task: Task, smap: StateMap, A: np.ndarray, B: np.ndarray) -> None:
    """The coordinates x does not hold must not move with x or u (they enter F as constants)."""
    if not len(smap.held):
        return
    moved = np.abs(np.hstack([A[smap.held] @ smap.P, B[smap.held]])).max()
    if moved > 1e-6:
        raise LinearisationError(f"task {task.name}: a coordinate of the simulation that the state x does not hold "
                                 f"moves with x or u here (derivative {moved:.3g}): x is not the simulation's state")


def linearise_trajectory(sim, m: int, X: np.ndarray, U: np.ndarray, eps: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """The model's dynamics along a trajectory of condition m, in the layout of gps_core.traj_opt.lqr.Dynamics.

    X: [T, dX] states, U: [T, dU] controls -> Fm [T, dX, dX+dU], fv [T, dX] with x_{t+1} ≈ Fm_t [x_t; u_t] + fv_t.
    Each x_t is put into condition m's simulation by physics_state (held joints at the condition's
    initial positions). Step T-1 leads nowhere and stays zero, as in the fitted dynamics.
    """
    task, model = sim.task, sim.models[m]
    T, dX = X.shape
    smap = state_map(model, task)
    Fm, fv = np.zeros((T, dX, dX + task.dU)), np.zeros((T, dX))
    for t in range(T - 1):
        qpos, qvel = physics_state(task, X[t], sim.qpos0[m])
        lin = linearise_step(model, task, qpos, qvel, U[t], x=X[t], eps=eps, smap=smap)
        Fm[t, :, :dX], Fm[t, :, dX:], fv[t] = lin.F, lin.G, lin.f
    return Fm, fv


def model_dynamics(sim, X: np.ndarray, U: np.ndarray, initial_state_var: float,
                   progress=None) -> dict[str, np.ndarray]:
    """The model as the C-step's dynamics (dynamics.source: model), in the layout of the fitted ones.

    X [M, N, T, dX], U [M, N, T, dU]: each condition's samples. Per condition m, the model is linearised
    along the samples' mean trajectory (x̄_t, ū_t) = mean_n (x_nt, u_nt) (linearise_trajectory): Fm, fv.
    dyn_covar_t is the samples' residual covariance about that linear model, mean_n e eᵀ with
    e = x_n,t+1 − Fm_t [x_nt; u_nt] − fv_t: what the linearisation does not explain of the sampled
    transitions (its error away from the mean trajectory, contact, commands clamped to the actuators'
    range), in the place of the regression's
    residual covariance; x0mu, x0sigma as the fit's without a prior (fit_initial_state).
    progress(done, M), if given, after each condition. Raises LinearisationError as linearise_trajectory.
    -> {"Fm" [M, T, dX, D], "fv" [M, T, dX], "dyn_covar" [M, T, dX, dX], "x0mu" [M, dX], "x0sigma" [M, dX, dX]}
    """
    from gps_core.fit.dynamics import fit_initial_state

    X, U = np.asarray(X, dtype=np.float64), np.asarray(U, dtype=np.float64)
    M, N, T, dX = X.shape
    Fm, fv = np.zeros((M, T, dX, dX + U.shape[-1])), np.zeros((M, T, dX))
    covar, x0mu, x0sigma = np.zeros((M, T, dX, dX)), np.zeros((M, dX)), np.zeros((M, dX, dX))
    for m in range(M):
        Fm[m], fv[m] = linearise_trajectory(sim, m, X[m].mean(axis=0), U[m].mean(axis=0))
        z = np.concatenate([X[m, :, :-1], U[m, :, :-1]], axis=-1)  # [N, T-1, D]
        e = X[m, :, 1:] - np.einsum("txd,ntd->ntx", Fm[m, :-1], z) - fv[m, :-1]
        covar[m, :-1] = np.einsum("ntx,nty->txy", e, e) / N
        x0mu[m], x0sigma[m] = fit_initial_state(X[m], None, initial_state_var, 1.0)
        if progress is not None:
            progress(m + 1, M)
    return {"Fm": Fm, "fv": fv, "dyn_covar": covar, "x0mu": x0mu, "x0sigma": x0sigma}
