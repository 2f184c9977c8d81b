"""Initial controllers: LQR that holds the initial configuration.

Guessed dynamics on x = [q (dU), q̇ (dU), rest], with G = diag(init_gains):

    q' = q + Δt q̇ + Δt² G u,   q̇' = q̇ + Δt G u,   rest' = 0

Cost ½ (z − z0)ᵀ L (z − z0) with z0 = [x0; 0] and
L = diag(stiffness·1, stiffness·stiffness_vel·1, 0, 1) / init_var, multiplied by
final_weight at t = T−1. The LQR solution has mean action 0 at x0 and covariance
Q_uu⁻¹ (smaller than init_var because Q_uu contains the value curvature).
"""

from __future__ import annotations


import numpy as np

from gps_core.traj_opt.lingauss import LinearGaussianPolicy
from gps_core.traj_opt.lqr import backward_pass_batched
from gps_core.configs import InitLQRConfig


def init_lqr(x0: np.ndarray, dU: int, T: int, cfg: InitLQRConfig) -> LinearGaussianPolicy:
    """Initial controller for one condition: x0 [dX] -> controller with K [T, dU, dX]."""
    dX = x0.shape[0]
    dt = cfg.dt
    gains = np.ones(dU) if cfg.init_gains is None else np.asarray(cfg.init_gains, dtype=float)
    G = np.diag(gains)
    F = np.zeros((dX, dX + dU))
    F[:dU, :dU] = np.eye(dU)
    F[:dU, dU : 2 * dU] = dt * np.eye(dU)
    F[dU : 2 * dU, dU : 2 * dU] = np.eye(dU)
    F[:dU, dX:] = dt**2 * G
    F[dU : 2 * dU, dX:] = dt * G
    diag = np.concatenate(
        [cfg.stiffness * np.ones(dU), cfg.stiffness * cfg.stiffness_vel * np.ones(dU), np.zeros(dX - 2 * dU), np.ones(dU)]
    )
    L = np.diag(diag) / cfg.init_var
    l = -L @ np.concatenate([x0, np.zeros(dU)])
    Ls = np.broadcast_to(L, (T, dX + dU, dX + dU)).copy()
    ls = np.broadcast_to(l, (T, dX + dU)).copy()
    Ls[-1] *= cfg.final_weight
    ls[-1] *= cfg.final_weight
    Fm = np.broadcast_to(F, (1, T, dX, dX + dU))
    K, k, covar, failed = backward_pass_batched(Ls[None], ls[None], Fm, np.zeros((1, T, dX)), dX)
    if failed[0]:  # cannot happen with init_var > 0 (the schema's check): L_uu and so Q_uu are PD
        raise FloatingPointError("the initial LQR's Q_uu is not positive definite")
    return LinearGaussianPolicy(K=K[0], k=k[0], covar=covar[0])
