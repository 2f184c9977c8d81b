"""Time-varying linear-Gaussian dynamics fitted with a GMM prior (ALGORITHM §5).

Model, for t = 0 … T−2 (entries at t = T−1 are zeros):

    x_{t+1} ~ N(Fm_t [x_t; u_t] + fv_t, W_t)

Per condition a buffer of whole trajectories is kept; each iteration the N new ones are
appended and only the last `max_samples − 1` are kept (sic, §5.2). A GMM with
K = max(2, min(max_clusters, ⌊N_buf (T−1) / min_samples_per_cluster⌋)) clusters is refitted
on all buffered transitions y = [x_t; u_t; x_{t+1}] (warm start when K is unchanged).

For each t the N current transitions query the GMM for a Normal-inverse-Wishart prior
(gmm.niw_prior) and the joint Gaussian is fitted and conditioned on [x_t; u_t]
(regression.gauss_fit_joint_prior, `regularization` added to every entry of the
(dX+dU)×(dX+dU) input block).

Initial state (§5.4, as coded, including the unnormalised Φ0):

    x0mu    = mean_n x_{n,0}
    x0sigma = diag(max(var_n x_{n,0}, initial_state_var))                  (population var)
    μ00 = mean of x_0 over the buffer,  Φ0 = dX · strength · diag(var of x_0 over the buffer)
    m0 = n0 = dX · strength
    x0sigma ← x0sigma + Φ0 + (N m0 / (N + m0)) (x0mu − μ00)(x0mu − μ00)ᵀ / (N + n0)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gps_core.gmm import GMM, fit_gmm, niw_prior, num_clusters
from gps_core.regression import gauss_fit_joint_prior


@dataclass(frozen=True)
class PriorConfig:
    """GMM prior hyperparameters (§5.2 / §6)."""

    max_clusters: int
    min_samples_per_cluster: int
    max_samples: int
    strength: float = 1.0


@dataclass(frozen=True)
class DynamicsPrior:
    """Dynamics prior of one condition.

    X: [Nb, T, dX] and U: [Nb, T, dU] trajectory buffer; gmm: GMM over transitions
    [x_t; u_t; x_{t+1}] (dimension 2 dX + dU) or None before the first fit.
    """

    X: np.ndarray
    U: np.ndarray
    gmm: GMM | None


def _transitions(X: np.ndarray, U: np.ndarray) -> np.ndarray:
    """[x_t; u_t; x_{t+1}] for t = 0…T−2. X: [N, T, dX], U: [N, T, dU] -> [N, T−1, 2dX+dU]."""
    return np.concatenate([X[:, :-1, :], U[:, :-1, :], X[:, 1:, :]], axis=-1)


def update_dynamics_prior(
    prior: DynamicsPrior | None,
    X: np.ndarray,
    U: np.ndarray,
    cfg: PriorConfig,
    rng: np.random.Generator,
) -> DynamicsPrior:
    """Append the new trajectories, keep the last max_samples − 1, refit the GMM.

    X: [N, T, dX], U: [N, T, dU] new samples. Returns the new prior with buffer
    X: [Nb, T, dX], U: [Nb, T, dU], Nb = min(N_total, max_samples − 1).
    """
    if cfg.max_samples < 2:
        raise ValueError("max_samples must be >= 2 (the buffer keeps max_samples - 1 trajectories)")
    X = np.asarray(X, dtype=np.float64)
    U = np.asarray(U, dtype=np.float64)
    if prior is not None and prior.X.shape[0] > 0:
        buffer_X = np.concatenate([prior.X, X], axis=0)
        buffer_U = np.concatenate([prior.U, U], axis=0)
    else:
        buffer_X, buffer_U = X, U
    keep = cfg.max_samples - 1
    buffer_X = buffer_X[-keep:].copy()
    buffer_U = buffer_U[-keep:].copy()

    transitions = _transitions(buffer_X, buffer_U)  # [Nb, T−1, D], sample-major
    data = transitions.reshape(-1, transitions.shape[-1])
    n_clusters = num_clusters(data.shape[0], cfg.max_clusters, cfg.min_samples_per_cluster)
    gmm = fit_gmm(data, n_clusters, rng, prev=None if prior is None else prior.gmm)
    return DynamicsPrior(X=buffer_X, U=buffer_U, gmm=gmm)


def fit_dynamics(
    X: np.ndarray,
    U: np.ndarray,
    prior: DynamicsPrior,
    strength: float,
    regularization: float,
    regularization_shape: str = "all_entries",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-time-step regression of x_{t+1} on [x_t; u_t] with the GMM prior (§5.1–5.2).

    X: [N, T, dX], U: [N, T, dU] current samples ->
    Fm [T, dX, dX+dU], fv [T, dX], dyn_covar [T, dX, dX]; entries at t = T−1 are zeros.
    If prior.gmm is None the prior is dropped (Φ = 0, m = n0 = 0).
    """
    X = np.asarray(X, dtype=np.float64)
    U = np.asarray(U, dtype=np.float64)
    _, T, dX = X.shape
    dU = U.shape[2]
    points = np.swapaxes(_transitions(X, U), 0, 1)  # [T−1, N, D]
    if prior.gmm is not None:
        mu0, Phi, m, n0 = niw_prior(prior.gmm, points, strength)
    else:
        dim = points.shape[-1]
        mu0 = np.zeros((T - 1, dim))
        Phi = np.zeros((T - 1, dim, dim))
        m, n0 = 0.0, 0.0
    reg = np.full(T - 1, float(regularization))
    gain, offset, cond_cov = gauss_fit_joint_prior(points, mu0, Phi, m, n0, reg, dX + dU, regularization_shape)

    Fm = np.zeros((T, dX, dX + dU))
    fv = np.zeros((T, dX))
    dyn_covar = np.zeros((T, dX, dX))
    Fm[:-1] = gain
    fv[:-1] = offset
    dyn_covar[:-1] = cond_cov
    return Fm, fv, dyn_covar


def fit_initial_state(
    X: np.ndarray,
    prior: DynamicsPrior | None,
    initial_state_var: float,
    strength: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Initial-state Gaussian (§5.4, exactly as coded).

    X: [N, T, dX] current samples; prior.X: [Nb, T, dX] buffer ->
    x0mu [dX], x0sigma [dX, dX]. Without a prior (None or empty buffer) the prior term is skipped.
    """
    X = np.asarray(X, dtype=np.float64)
    n_samples, _, dX = X.shape
    x0 = X[:, 0, :]
    x0mu = x0.mean(axis=0)
    x0sigma = np.diag(np.maximum(x0.var(axis=0), initial_state_var))
    if prior is not None and prior.X.shape[0] > 0:
        buffer_x0 = prior.X[:, 0, :]
        mu00 = buffer_x0.mean(axis=0)
        m0 = n0 = dX * float(strength)
        phi0 = np.diag(buffer_x0.var(axis=0)) * m0
        shift = x0mu - mu00
        x0sigma = x0sigma + phi0 + (n_samples * m0) / (n_samples + m0) * np.outer(shift, shift) / (n_samples + n0)
    return x0mu, x0sigma
