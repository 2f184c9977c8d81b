"""Drawing samples: local controllers or the global policy acting in the simulator.

Each episode gets its own smoothed noise ε [T, dU]. A local controller acts as
u = K_t x + k_t + chol(Σ_t)ᵀ ε_t, the global policy as u = μ_θ(x[:dO]) + √var ∘ ε_t.
Evaluation rollouts use ε = 0. All episodes of a stage run in one lockstep loop
with the actions computed for the whole batch at once.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from gps_core.env import Rollouts, SimulationDiverged, Simulator
from gps_core.lingauss import LinearGaussianPolicy
from gps_core.policy_net import PolicyParams, policy_mean


Progress = Callable[[int, int], None]


def _run(sim: Simulator, act, M: int, N: int, T: int, progress: Progress | None = None) -> Rollouts:
    """Episodes of all conditions in one batch (condition-major); arrays [M, N, T, ...]."""
    try:
        r = sim.rollout(np.repeat(np.arange(M), N), act, T, progress)
    except SimulationDiverged as exc:
        m, n = divmod(exc.episode, N)
        raise FloatingPointError(
            f"simulation diverged (NaN, Inf or unstable {exc.what}) in condition {m}, sample {n}, at or before t={exc.t}"
        ) from None
    return Rollouts(*(a.reshape(M, N, *a.shape[1:]) for a in (r.X, r.U, r.ee_jac)))


def rollout_controllers(
    sim: Simulator, pols: Sequence[LinearGaussianPolicy], noise: np.ndarray, progress: Progress | None = None
) -> Rollouts:
    """Controller m acts in condition m. noise: [M, N, T, dU] -> arrays [M, N, T, ...].

    progress: optional progress(time steps done, T) after each step of the lockstep batch.
    """
    M, N, T, _ = noise.shape
    cond = np.repeat(np.arange(M), N)
    K = np.stack([p.K for p in pols])[cond]  # [B, T, dU, dX]
    k = np.stack([p.k for p in pols])[cond]
    chol = np.stack([p.chol for p in pols])[cond]
    eps = noise.reshape(M * N, T, -1)

    def act(t, x):
        return np.einsum("bux,bx->bu", K[:, t], x) + k[:, t] + np.einsum("bv,bvu->bu", eps[:, t], chol[:, t])

    return _run(sim, act, M, N, T, progress)


def rollout_policy(
    sim: Simulator, params: PolicyParams, noise: np.ndarray, obs_dim: int, progress: Progress | None = None
) -> Rollouts:
    """The global policy acts in every condition. noise: [M, N, T, dU] -> arrays [M, N, T, ...].

    progress: optional progress(time steps done, T) after each step of the lockstep batch.
    """
    M, N, T, _ = noise.shape
    eps = noise.reshape(M * N, T, -1) * np.sqrt(params.var)

    def act(t, x):
        return policy_mean(params, x[:, :obs_dim]) + eps[:, t]

    return _run(sim, act, M, N, T, progress)
