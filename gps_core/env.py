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
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Callable

import mujoco
import numpy as np

ASSETS = resources.files("gps_core") / "assets"
_DIVERGENCE_WARNINGS = (
    mujoco.mjtWarning.mjWARN_BADQPOS,
    mujoco.mjtWarning.mjWARN_BADQVEL,
    mujoco.mjtWarning.mjWARN_BADQACC,
    mujoco.mjtWarning.mjWARN_BADCTRL,
)


# The blind peg task runs the peg model; only the global policy's observation differs.
TASK_MODELS = {"obstacle": "obstacle", "peg": "peg", "peg_blind": "peg"}


def model_path(task: str) -> str:
    return str(ASSETS / f"{TASK_MODELS[task]}.xml")


class SimulationDiverged(FloatingPointError):
    """NaN, Inf or an unstable state in episode `episode` of the batch, at or before step t."""

    def __init__(self, episode: int, condition: int, t: int, what: str):
        super().__init__(
            f"simulation diverged (NaN, Inf or unstable {what}) in episode {episode} of the batch "
            f"(condition {condition}) at or before t={t}"
        )
        self.episode, self.condition, self.t, self.what = episode, condition, t, what


@dataclass
class Rollouts:
    """X: [B, T, dX], U: [B, T, dU], ee_jac: [B, T, 3·S, nq] (site Jacobians w.r.t. qpos)."""

    X: np.ndarray
    U: np.ndarray
    ee_jac: np.ndarray


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
        """
        B = len(conditions)
        X = np.zeros((B, T, self.dX))
        U = np.zeros((B, T, self.dU))
        J = np.zeros((B, T, 3 * self.n_sites, self.nq))
        datas = [self._reset(m) for m in conditions]
        models = [self.models[m] for m in conditions]
        for b, (model, data) in enumerate(zip(models, datas)):
            X[b, 0], J[b, 0] = self._state(model, data, None)
        for t in range(T):
            U[:, t] = act(t, X[:, t])
            if not np.all(np.isfinite(U[:, t])):
                self._diverged(conditions, ~np.all(np.isfinite(U[:, t]), axis=-1), t, "action")
            if t + 1 == T:
                break
            for b, (model, data) in enumerate(zip(models, datas)):
                for _ in range(self.substeps):
                    mujoco.mj_step1(model, data)
                    data.ctrl[:] = U[b, t]
                    mujoco.mj_step2(model, data)
                X[b, t + 1], J[b, t + 1] = self._state(model, data, X[b, t])
            if not np.all(np.isfinite(X[:, t + 1])):
                self._diverged(conditions, ~np.all(np.isfinite(X[:, t + 1]), axis=-1), t + 1, "state")
            if progress is not None:
                progress(t + 1, T)
        # MuJoCo resets a diverging simulation instead of returning NaN and counts a
        # warning; reading the counters is slow, so they are checked once per rollout.
        unstable = np.array([any(d.warning[w].number for w in _DIVERGENCE_WARNINGS) for d in datas])
        if unstable.any():
            self._diverged(conditions, unstable, T - 1, "state (MuJoCo reset the simulation)")
        if progress is not None:
            progress(T, T)
        return Rollouts(X=X, U=U, ee_jac=J)

    @staticmethod
    def _diverged(conditions: np.ndarray, bad: np.ndarray, t: int, what: str):
        b = int(np.flatnonzero(bad)[0])
        raise SimulationDiverged(b, int(conditions[b]), t, what)
