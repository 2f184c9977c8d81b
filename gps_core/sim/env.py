"""MuJoCo simulation of a task (gps_core.sim.task): initial states, batched rollouts, point Jacobians.

The state x and the observation o are the task's blocks, read after each control
step; velocity blocks are finite differences (b_{t+1} − b_t)/Δt (zero at t = 0).

Stepping (task.stepping): `split` reproduces the paper's wrapper, each of the
`substeps` physics steps being mj_step1 (positions and sites of the current
state), set the control, mj_step2 (Euler integration); `mj_step` sets the
control and runs MuJoCo's own step with the model's integrator, as Gymnasium
does. Either way points and Jacobians read after a control step belong to the
positions before the last substep (one physics step stale) while qpos and qvel
are current; at t = 0 they are exact (mj_forward).

Controls are clipped by MuJoCo to the actuator range; the recorded actions are
the unclipped commands, as the dynamics fit and the costs expect.

A rollout never raises on a diverging episode: it records where the episode
went bad (a bad action or state, or MuJoCo resetting the simulation) and holds
it there (Simulator.rollout); the caller decides what a divergence means.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Callable

import mujoco
import numpy as np

from gps_core.sim.task import Conditions, Point, Task, plain_task

ASSETS = resources.files("gps_core") / "assets"
# The warnings MuJoCo counts when it resets a diverging simulation (or rejects its controls).
_DIVERGENCE_WARNINGS = [
    int(mujoco.mjtWarning.mjWARN_BADQPOS),
    int(mujoco.mjtWarning.mjWARN_BADQVEL),
    int(mujoco.mjtWarning.mjWARN_BADQACC),
    int(mujoco.mjtWarning.mjWARN_BADCTRL),
]


def control_step(model, data, u: np.ndarray, substeps: int, split: bool) -> None:
    """One control step in place: `substeps` physics steps under the command u [dU]. split: the paper's
    wrapper (mj_step1, set the control, mj_step2, per substep); else MuJoCo's own mj_step."""
    if split:
        for _ in range(substeps):
            mujoco.mj_step1(model, data)
            data.ctrl[:] = u
            mujoco.mj_step2(model, data)
    else:
        data.ctrl[:] = u
        mujoco.mj_step(model, data, nstep=substeps)


def model_path(name: str) -> str:
    """A model file shipped with gps_core (gps_core/assets/<name>.xml: obstacle, peg)."""
    return str(ASSETS / f"{name}.xml")


# Why an episode diverged (Rollouts.cause indexes this); each name completes "NaN, Inf or unstable ...".
CAUSES = ("", "action", "state", "state (MuJoCo reset the simulation)")
FINE, BAD_ACTION, BAD_STATE, MUJOCO_RESET = range(len(CAUSES))


@dataclass
class Rollouts:
    """X: [B, T, dX], O: [B, T, dO] observations, U: [B, T, dU], ee_jac: [B, T, n_jac, dU] (Jacobians of the
    state's point-like blocks w.r.t. the configuration joints), diverged_at: [B] int, the first step whose action
    or state is bad (-1: the episode is fine), cause: [B] int8, index into CAUSES (FINE for a fine episode).

    From step diverged_at on, a diverged episode's rows hold its last good state, observation and
    Jacobian and a zero action. gps_core.sim.sampling reshapes the leading [B] to [M, N].
    """

    X: np.ndarray
    O: np.ndarray
    U: np.ndarray
    ee_jac: np.ndarray
    diverged_at: np.ndarray
    cause: np.ndarray


class BlockReader:
    """Reads a task's blocks from MjData: the state, the observation and the point Jacobians.

    Called after every control step of every episode, so what can be decided once is decided here.
    """

    XYZ = (0, 1, 2)

    def __init__(self, task: Task):
        self.task = task
        self.dt = task.dt
        self.jac_blocks = [task.block(n) for n in task.jac_rows]
        self.same_obs = task.observation == task.state  # o is x (the peg and obstacle tasks)
        self._jac = np.zeros((task.n_jac, task.nv))  # reused: the caller copies it into its arrays
        # The configuration joints are often all the model's, in order: then no column selection.
        self.cols = None if np.array_equal(task.config_dofs, np.arange(task.nv)) else task.config_dofs

    @staticmethod
    def _position(data, p: Point) -> np.ndarray:
        return data.site_xpos[p.id] if p.kind == "site" else data.xpos[p.id]

    @staticmethod
    def _jacobian_into(model, data, p: Point, out: np.ndarray) -> None:
        if p.kind == "site":
            mujoco.mj_jacSite(model, data, out, None, p.id)
        else:
            mujoco.mj_jacBody(model, data, out, None, p.id)

    def values(self, data, prev: dict[str, np.ndarray] | None) -> dict[str, np.ndarray]:
        """Every block the task needs: name -> [size]; prev: the values of the step before (None at t = 0)."""
        out: dict[str, np.ndarray] = {}
        for b in self.task.blocks:
            if b.kind == "qpos":
                v = data.qpos[b.qadr]
            elif b.kind == "qvel":
                v = data.qvel[b.dadr]
            elif b.kind == "cos":
                v = np.cos(data.qpos[b.qadr])
            elif b.kind == "sin":
                v = np.sin(data.qpos[b.qadr])
            elif b.kind == "constraint_force":  # from MuJoCo's last forward pass, as the points (docstring)
                v = data.qfrc_constraint[b.dadr]
            elif b.kind == "position":
                if b.axes == self.XYZ:
                    v = np.concatenate([self._position(data, p) for p in b.points])
                else:
                    v = np.concatenate([self._position(data, p)[list(b.axes)] for p in b.points])
            elif b.kind == "relative":
                v = (self._position(data, b.points[0]) - self._position(data, b.points[1]))[list(b.axes)]
            else:  # velocity
                v = np.zeros(b.size) if prev is None else (out[b.of] - prev[b.of]) / self.dt
            out[b.name] = v if b.clip is None else np.clip(v, *b.clip)
        return out

    def jacobian(self, model, data) -> np.ndarray:
        """[n_jac, dU]: d(point-like state blocks)/d(configuration joints). A buffer the next call overwrites."""
        jac, row = self._jac, 0
        for b in self.jac_blocks:
            if b.kind == "position" and b.axes == self.XYZ:
                for p in b.points:
                    self._jacobian_into(model, data, p, jac[row : row + 3])
                    row += 3
                continue
            tmp = np.zeros((3, model.nv))
            if b.kind == "position":
                for p in b.points:
                    self._jacobian_into(model, data, p, tmp)
                    jac[row : row + len(b.axes)] = tmp[list(b.axes)]
                    row += len(b.axes)
            else:
                other = np.zeros((3, model.nv))
                self._jacobian_into(model, data, b.points[0], tmp)
                self._jacobian_into(model, data, b.points[1], other)
                jac[row : row + len(b.axes)] = (tmp - other)[list(b.axes)]
                row += len(b.axes)
        return jac if self.cols is None else jac[:, self.cols]


class Simulator:
    """One MjModel per condition (the task's offset body shifted by that condition's offset).

    conditions: the task's training conditions (task.train) unless given (task.test for held-out ones).
    """

    def __init__(self, task: Task, conditions: Conditions | None = None):
        conditions = task.train if conditions is None else conditions
        self.task = task
        xml_path = task.model_path
        base = mujoco.MjModel.from_xml_path(xml_path)
        self.qpos0 = conditions.qpos0  # [M, nq]
        self.M = len(conditions)
        # Copied before the loop: the first condition reuses `base`, and shifting it
        # in place must not shift the conditions after it.
        body = task.offset_body
        base_pos = base.body_pos[body].copy() if body is not None else None
        self.models = []
        for m in range(self.M):
            model = mujoco.MjModel.from_xml_path(xml_path) if m else base
            if conditions.offsets is not None:
                model.body_pos[body] = base_pos + conditions.offsets[m]
            self.models.append(model)
        self.dt = task.dt
        self.substeps = task.substeps
        self.split = task.stepping == "split"
        self.nq, self.nv, self.nu = base.nq, base.nv, base.nu
        self._reader = BlockReader(task)  # dt = substeps x timestep: checked by gps_core.sim.task.compile_task
        # A reset shows as a time short of (t + 1)·dt by at least one timestep (see _step).
        self._time_tolerance = 0.5 * base.opt.timestep
        # MuJoCo zeroes every control of a step (mjWARN_BADCTRL) when one is beyond mjMAXVAL after
        # clamping to its range; _bad_actions flags such commands first. Ranges within mjMAXVAL need no check.
        lo, hi = task.action_low, task.action_high
        self._ctrl_range = (lo, hi) if np.any(np.maximum(-lo, hi) > mujoco.mjMAXVAL) else None

    @classmethod
    def for_model(cls, xml_path: str, qpos0: np.ndarray, dt: float, substeps: int,
                  body_offsets: np.ndarray | None = None, offset_body: int = 1, stepping: str = "split") -> "Simulator":
        """A simulator of a model with the paper tasks' layout (gps_core.sim.task.plain_task)."""
        return cls(plain_task(xml_path, qpos0, dt, substeps, body_offsets, offset_body, stepping))

    @property
    def dX(self) -> int:
        return self.task.dX

    @property
    def dO(self) -> int:
        return self.task.dO

    @property
    def dU(self) -> int:
        return self.nu

    def _reset(self, m: int) -> mujoco.MjData:
        data = mujoco.MjData(self.models[m])
        data.qpos[:] = self.qpos0[m]
        data.qvel[:] = 0.0
        mujoco.mj_forward(self.models[m], data)
        return data

    def _read(self, model, data, prev: dict | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
        """State x [dX], observation o [dO], Jacobian [n_jac, dU] and the block values (for the next step's velocities)."""
        task, reader = self.task, self._reader
        values = reader.values(data, prev)
        x = np.concatenate([values[n] for n in task.state])
        o = x if reader.same_obs else np.concatenate([values[n] for n in task.observation])
        return x, o, reader.jacobian(model, data), values

    def initial_states(self) -> np.ndarray:
        """x0 of every condition: [M, dX]."""
        return np.stack([self._read(self.models[m], self._reset(m), None)[0] for m in range(self.M)])

    def initial_observations(self) -> np.ndarray:
        """o0 of every condition: [M, dO]."""
        return np.stack([self._read(self.models[m], self._reset(m), None)[1] for m in range(self.M)])

    def rollout(
        self,
        conditions: np.ndarray,
        act: Callable[[int, np.ndarray, np.ndarray], np.ndarray],
        T: int,
        progress: Callable[[int, int], None] | None = None,
    ) -> Rollouts:
        """Run len(conditions) episodes in lockstep.

        conditions: [B] condition index of each episode; act(t, x [B, dX], o [B, dO]) -> u [B, dU].
        progress: optional progress(steps done, T), called after each time step.

        An episode diverges at step t when its action u_t or its state x_t is bad (NaN, Inf,
        or beyond what MuJoCo accepts), or when MuJoCo reset its simulation on the way to x_t
        (MuJoCo resets a diverging simulation to the model's defaults instead of returning
        NaN). It is not stepped after that; its rows from t on hold its last good state and a
        zero action. act still sees it, at that state, so the batch keeps its shape; the other
        episodes come out bit for bit as if it had gone on.
        """
        B = len(conditions)
        X = np.zeros((B, T, self.dX))
        O = np.zeros((B, T, self.dO))
        U = np.zeros((B, T, self.dU))
        J = np.zeros((B, T, self.task.n_jac, self.dU))
        diverged_at = np.full(B, -1, dtype=np.int64)
        cause = np.zeros(B, dtype=np.int8)
        datas = [self._reset(m) for m in conditions]
        models = [self.models[m] for m in conditions]
        values: list[dict | None] = [None] * B
        for b, (model, data) in enumerate(zip(models, datas)):
            X[b, 0], O[b, 0], J[b, 0], values[b] = self._read(model, data, None)
        live = list(range(B))  # the episodes still simulated
        held = np.zeros(B, dtype=bool)  # the diverged ones, whose rows hold
        for t in range(T):
            U[:, t] = act(t, X[:, t], O[:, t])
            bad = self._bad_actions(U[:, t]) & ~held
            if bad.any():
                diverged_at[bad], cause[bad] = t, BAD_ACTION
                held |= bad
                live = [b for b in live if not bad[b]]
            if len(live) < B:
                U[held, t] = 0.0
            if t + 1 == T:
                break
            reset = self._step(models, datas, live, X, O, J, U, values, t)
            if len(live) < B:
                X[held, t + 1], O[held, t + 1], J[held, t + 1] = X[held, t], O[held, t], J[held, t]
            # MuJoCo calls a value bad beyond mjMAXVAL; NaN fails the comparison too.
            bad = ~np.all(np.abs(X[:, t + 1]) <= mujoco.mjMAXVAL, axis=-1) & ~held
            if reset or bad.any():
                cause[bad] = BAD_STATE
                bad[reset] = True
                cause[reset] = MUJOCO_RESET
                diverged_at[bad] = t + 1
                X[bad, t + 1], O[bad, t + 1], J[bad, t + 1] = X[bad, t], O[bad, t], J[bad, t]
                held |= bad
                live = [b for b in live if not bad[b]]
            if progress is not None:
                progress(t + 1, T)
        self._confirm_with_warnings(datas, live, X, O, U, J, diverged_at, cause)
        if progress is not None:
            progress(T, T)
        return Rollouts(X=X, O=O, U=U, ee_jac=J, diverged_at=diverged_at, cause=cause)

    def _bad_actions(self, u: np.ndarray) -> np.ndarray:
        """u: [B, dU] -> [B] True where an action is NaN or Inf, or one MuJoCo would reject."""
        bad = ~np.all(np.isfinite(u), axis=-1)
        if self._ctrl_range is not None:
            bad |= np.any(np.abs(np.clip(u, *self._ctrl_range)) > mujoco.mjMAXVAL, axis=-1)
        return bad

    def _step(self, models, datas, live: list[int], X, O, J, U, values, t: int) -> list[int]:
        """Step the episodes `live` from t to t + 1 (rows t + 1 of X, O and J).

        Returns the episodes MuJoCo reset on the way: a reset sets data.time back to 0, so the
        time after the substeps falls short of (t + 1)·dt. Comparing it costs one attribute read
        per episode, where the warning counters cost ten times more.
        """
        expected, reset = (t + 1) * self.dt, []
        for b in live:
            model, data = models[b], datas[b]
            control_step(model, data, U[b, t], self.substeps, self.split)
            X[b, t + 1], O[b, t + 1], J[b, t + 1], values[b] = self._read(model, data, values[b])
            if abs(data.time - expected) > self._time_tolerance:
                reset.append(b)
        return reset

    @staticmethod
    def _confirm_with_warnings(datas, live, X, O, U, J, diverged_at, cause) -> None:
        """Hold the episodes of `live` whose warning counters show a reset that the time missed.

        A reset in the very first substep of the rollout leaves the time at dt as usual, so only
        MuJoCo's counters see it; it spoiled x_1 on. The counters are read once per rollout.
        """
        for b in live:
            if np.any(datas[b].warning.number[_DIVERGENCE_WARNINGS]):
                diverged_at[b], cause[b] = 1, MUJOCO_RESET
                X[b, 1:], O[b, 1:], J[b, 1:], U[b, 1:] = X[b, 0], O[b, 0], J[b, 0], 0.0
