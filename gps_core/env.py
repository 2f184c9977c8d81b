"""MuJoCo simulation of the tasks: initial states, batched rollouts, site Jacobians.

State layout: x = [qpos (nq), qvel (nv), site positions (3·S), site velocities (3·S)]
with site velocities the finite difference (p_{t+1} − p_t)/Δt (zero at t = 0).
The observation of the global policy is the first dO entries of the state.

Stepping reproduces the original wrapper: each of the `substeps` physics steps
is mj_step1 (positions and sites of the current state), set the control,
mj_step2 (Euler integration). Sites and Jacobians read after a control step
therefore belong to the state before the last substep (0.01 s stale) while
qpos and qvel are current; at t = 0 they are exact (mj_forward).

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

ASSETS = resources.files("gps_core") / "assets"
# The warnings MuJoCo counts when it resets a diverging simulation (or rejects its controls).
_DIVERGENCE_WARNINGS = [
    int(mujoco.mjtWarning.mjWARN_BADQPOS),
    int(mujoco.mjtWarning.mjWARN_BADQVEL),
    int(mujoco.mjtWarning.mjWARN_BADQACC),
    int(mujoco.mjtWarning.mjWARN_BADCTRL),
]


# The blind peg task runs the peg model; only the global policy's observation differs.
TASK_MODELS = {"obstacle": "obstacle", "peg": "peg", "peg_blind": "peg"}


def model_path(task: str) -> str:
    return str(ASSETS / f"{TASK_MODELS[task]}.xml")


@dataclass(frozen=True)
class ModelDims:
    """The sizes of a model that the settings must agree with (see the state layout above)."""

    nq: int  # joint positions
    nv: int  # joint velocities
    nu: int  # actuators (the action size dU)
    nsite: int  # sites, each 3 positions and 3 velocities in the state
    nbody: int  # bodies, the world (body 0) included
    timestep: float  # seconds per physics step

    @property
    def dX(self) -> int:
        """State size: qpos, qvel, site positions, site velocities."""
        return self.nq + self.nv + 6 * self.nsite

    @property
    def sites(self) -> tuple[int, int]:
        """[start, stop) of the site positions in the state."""
        return self.nq + self.nv, self.nq + self.nv + 3 * self.nsite


def model_dims(xml_path: str) -> ModelDims:
    """The dimensions of the model in xml_path (compiles it: about 1 ms for the task models)."""
    model = mujoco.MjModel.from_xml_path(xml_path)
    return ModelDims(nq=int(model.nq), nv=int(model.nv), nu=int(model.nu), nsite=int(model.nsite),
                     nbody=int(model.nbody), timestep=float(model.opt.timestep))


# Why an episode diverged (Rollouts.cause indexes this); each name completes "NaN, Inf or unstable ...".
CAUSES = ("", "action", "state", "state (MuJoCo reset the simulation)")
FINE, BAD_ACTION, BAD_STATE, MUJOCO_RESET = range(len(CAUSES))


@dataclass
class Rollouts:
    """X: [B, T, dX], U: [B, T, dU], ee_jac: [B, T, 3·S, nq] (site Jacobians w.r.t. qpos),
    diverged_at: [B] int, the first step whose action or state is bad (-1: the episode is fine),
    cause: [B] int8, index into CAUSES (FINE for a fine episode).

    From step diverged_at on, a diverged episode's rows hold its last good state and
    Jacobian and a zero action. gps_core.sampling reshapes the leading [B] to [M, N].
    """

    X: np.ndarray
    U: np.ndarray
    ee_jac: np.ndarray
    diverged_at: np.ndarray
    cause: np.ndarray


class Simulator:
    """One MjModel per condition (the base body shifted by that condition's offset)."""

    def __init__(
        self,
        xml_path: str,
        qpos0: np.ndarray,
        dt: float,
        substeps: int,
        body_offsets: np.ndarray | None = None,
        offset_body: int = 1,
    ):
        base = mujoco.MjModel.from_xml_path(xml_path)
        self.qpos0 = np.asarray(qpos0, dtype=float)  # [M, nq]
        self.M = self.qpos0.shape[0]
        # Copied before the loop: the first condition reuses `base`, and shifting it
        # in place must not shift the conditions after it.
        base_pos = base.body_pos[offset_body].copy()
        self.models = []
        for m in range(self.M):
            model = mujoco.MjModel.from_xml_path(xml_path) if m else base
            if body_offsets is not None:
                model.body_pos[offset_body] = base_pos + np.asarray(body_offsets[m])
            self.models.append(model)
        self.dt = dt
        self.substeps = substeps
        self.nq, self.nv, self.nu = base.nq, base.nv, base.nu
        self.n_sites = base.nsite
        if self.nq != self.nv:
            raise ValueError("only models with nq == nv (hinge and slide joints) are supported")
        if abs(base.opt.timestep * substeps - dt) > 1e-12:
            raise ValueError(f"dt={dt} must equal substeps ({substeps}) x model timestep ({base.opt.timestep})")
        # A reset shows as a time short of (t + 1)·dt by at least one timestep (see _step).
        self._time_tolerance = 0.5 * base.opt.timestep
        # MuJoCo zeroes every control of a step (mjWARN_BADCTRL) when one is beyond mjMAXVAL after
        # clamping to its range; _bad_actions flags such commands first. Ranges within mjMAXVAL need no check.
        clamps = not base.opt.disableflags & mujoco.mjtDisableBit.mjDSBL_CLAMPCTRL
        clamped = base.actuator_ctrllimited.astype(bool) & clamps
        lo = np.where(clamped, base.actuator_ctrlrange[:, 0], -np.inf)
        hi = np.where(clamped, base.actuator_ctrlrange[:, 1], np.inf)
        self._ctrl_range = (lo, hi) if np.any(np.maximum(-lo, hi) > mujoco.mjMAXVAL) else None

    @property
    def dX(self) -> int:
        return self.nq + self.nv + 6 * self.n_sites

    @property
    def dU(self) -> int:
        return self.nu

    def _sites_and_jac(self, model, data) -> tuple[np.ndarray, np.ndarray]:
        jac = np.zeros((3 * self.n_sites, self.nv))
        for s in range(self.n_sites):
            mujoco.mj_jacSite(model, data, jac[3 * s : 3 * s + 3], None, s)
        return data.site_xpos.reshape(-1).copy(), jac

    def _reset(self, m: int) -> mujoco.MjData:
        data = mujoco.MjData(self.models[m])
        data.qpos[:] = self.qpos0[m]
        data.qvel[:] = 0.0
        mujoco.mj_forward(self.models[m], data)
        return data

    def _state(self, model, data, x_prev: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """State x [dX] and site Jacobian [3·S, nq] as recorded; site velocities from x_prev (zero at t = 0)."""
        nq, nv, nS3 = self.nq, self.nv, 3 * self.n_sites
        sites, jac = self._sites_and_jac(model, data)
        x = np.zeros(self.dX)
        x[:nq], x[nq : nq + nv], x[nq + nv : nq + nv + nS3] = data.qpos, data.qvel, sites
        if x_prev is not None:
            x[nq + nv + nS3 :] = (sites - x_prev[nq + nv : nq + nv + nS3]) / self.dt
        return x, jac

    def initial_states(self) -> np.ndarray:
        """x0 of every condition: [M, dX]."""
        return np.stack([self._state(self.models[m], self._reset(m), None)[0] for m in range(self.M)])

    def rollout(
        self,
        conditions: np.ndarray,
        act: Callable[[int, np.ndarray], np.ndarray],
        T: int,
        progress: Callable[[int, int], None] | None = None,
    ) -> Rollouts:
        """Run len(conditions) episodes in lockstep.

        conditions: [B] condition index of each episode; act(t, x [B, dX]) -> u [B, dU].
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
        U = np.zeros((B, T, self.dU))
        J = np.zeros((B, T, 3 * self.n_sites, self.nq))
        diverged_at = np.full(B, -1, dtype=np.int64)
        cause = np.zeros(B, dtype=np.int8)
        datas = [self._reset(m) for m in conditions]
        models = [self.models[m] for m in conditions]
        for b, (model, data) in enumerate(zip(models, datas)):
            X[b, 0], J[b, 0] = self._state(model, data, None)
        live = list(range(B))  # the episodes still simulated
        held = np.zeros(B, dtype=bool)  # the diverged ones, whose rows hold
        for t in range(T):
            U[:, t] = act(t, X[:, t])
            bad = self._bad_actions(U[:, t]) & ~held
            if bad.any():
                diverged_at[bad], cause[bad] = t, BAD_ACTION
                held |= bad
                live = [b for b in live if not bad[b]]
            if len(live) < B:
                U[held, t] = 0.0
            if t + 1 == T:
                break
            reset = self._step(models, datas, live, X, J, U, t)
            if len(live) < B:
                X[held, t + 1], J[held, t + 1] = X[held, t], J[held, t]
            # MuJoCo calls a value bad beyond mjMAXVAL; NaN fails the comparison too.
            bad = ~np.all(np.abs(X[:, t + 1]) <= mujoco.mjMAXVAL, axis=-1) & ~held
            if reset or bad.any():
                cause[bad] = BAD_STATE
                bad[reset] = True
                cause[reset] = MUJOCO_RESET
                diverged_at[bad] = t + 1
                X[bad, t + 1], J[bad, t + 1] = X[bad, t], J[bad, t]
                held |= bad
                live = [b for b in live if not bad[b]]
            if progress is not None:
                progress(t + 1, T)
        self._confirm_with_warnings(datas, live, X, U, J, diverged_at, cause)
        if progress is not None:
            progress(T, T)
        return Rollouts(X=X, U=U, ee_jac=J, diverged_at=diverged_at, cause=cause)

    def _bad_actions(self, u: np.ndarray) -> np.ndarray:
        """u: [B, dU] -> [B] True where an action is NaN or Inf, or one MuJoCo would reject."""
        bad = ~np.all(np.isfinite(u), axis=-1)
        if self._ctrl_range is not None:
            bad |= np.any(np.abs(np.clip(u, *self._ctrl_range)) > mujoco.mjMAXVAL, axis=-1)
        return bad

    def _step(self, models, datas, live: list[int], X: np.ndarray, J: np.ndarray, U: np.ndarray, t: int) -> list[int]:
        """Step the episodes `live` from t to t + 1 (rows t + 1 of X [B, T, dX], J [B, T, 3·S, nq]).

        Returns the episodes MuJoCo reset on the way: a reset sets data.time back to 0, so the
        time after the substeps falls short of (t + 1)·dt. Comparing it costs one attribute read
        per episode, where the warning counters cost ten times more.
        """
        expected, reset = (t + 1) * self.dt, []
        for b in live:
            model, data = models[b], datas[b]
            for _ in range(self.substeps):
                mujoco.mj_step1(model, data)
                data.ctrl[:] = U[b, t]
                mujoco.mj_step2(model, data)
            X[b, t + 1], J[b, t + 1] = self._state(model, data, X[b, t])
            if abs(data.time - expected) > self._time_tolerance:
                reset.append(b)
        return reset

    @staticmethod
    def _confirm_with_warnings(datas, live, X, U, J, diverged_at, cause) -> None:
        """Hold the episodes of `live` whose warning counters show a reset that the time missed.

        A reset in the very first substep of the rollout leaves the time at dt as usual, so only
        MuJoCo's counters see it; it spoiled x_1 on. The counters are read once per rollout.
        """
        for b in live:
            if np.any(datas[b].warning.number[_DIVERGENCE_WARNINGS]):
                diverged_at[b], cause[b] = 1, MUJOCO_RESET
                X[b, 1:], J[b, 1:], U[b, 1:] = X[b, 0], J[b, 0], 0.0
