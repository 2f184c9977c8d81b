"""Time-varying linear-Gaussian dynamics fitted with a GMM prior (ALGORITHM §5).

Model, for t = 0 … T−2 (entries at t = T−1 are zeros):

    x_{t+1} ~ N(Fm_t [x_t; u_t] + fv_t, W_t)

Per condition a buffer of whole trajectories is kept; each iteration the N new ones are
appended and only the last `max_samples − 1` are kept (sic, §5.2). A GMM with
K = max(2, min(max_clusters, ⌊N_buf (T−1) / min_samples_per_cluster⌋)) clusters is refitted
on all buffered transitions y = [x_t; u_t; x_{t+1}] (warm start when K is unchanged).

For each t the N current transitions query the GMM for a Normal-inverse-Wishart prior
(gmm.niw_prior_batched) and the joint Gaussian is fitted and conditioned on [x_t; u_t]
(regression.gauss_fit_joint_prior, `regularization` added to every entry of the
(dX+dU)×(dX+dU) input block).

Initial state (§5.4, as coded, including the unnormalised Φ0):

    x0mu    = mean_n x_{n,0}
    x0sigma = diag(max(var_n x_{n,0}, initial_state_var))                  (population var)
    μ00 = mean of x_0 over the buffer,  Φ0 = dX · strength · diag(var of x_0 over the buffer)
    m0 = n0 = dX · strength
    x0sigma ← x0sigma + Φ0 + (N m0 / (N + m0)) (x0mu − μ00)(x0mu − μ00)ᵀ / (N + n0)

fit_all_dynamics does all of it for the M conditions of an iteration at once: samples
X [M, N, T, dX], U [M, N, T, dU] -> Fm [M, T, dX, dX+dU], fv [M, T, dX], dyn_covar [M, T, dX, dX],
x0mu [M, dX], x0sigma [M, dX, dX] and one DynamicsPrior per condition.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from gps_core.fit.gmm import GMM, fit_gmm_batched, niw_prior_batched, num_clusters
from gps_core.fit.regression import gauss_fit_joint_prior
from gps_core.configs import PriorConfig


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


def _buffer(prior: DynamicsPrior | None, X: np.ndarray, U: np.ndarray, cfg: PriorConfig) -> tuple[np.ndarray, np.ndarray]:
    """The trajectory buffer of one condition: the last max_samples − 1 of (old buffer, new samples)."""
    if cfg.max_samples < 2:
        raise ValueError("max_samples must be >= 2 (the buffer keeps max_samples - 1 trajectories)")
    if prior is not None and prior.X.shape[0] > 0:
        X = np.concatenate([prior.X, X], axis=0)
        U = np.concatenate([prior.U, U], axis=0)
    keep = cfg.max_samples - 1
    return X[-keep:].copy(), U[-keep:].copy()


def update_dynamics_priors(
    priors: list[DynamicsPrior | None],
    X: np.ndarray,
    U: np.ndarray,
    cfg: PriorConfig,
    rng: np.random.Generator,
    progress: Callable[[int, int], None] | None = None,
) -> list[DynamicsPrior]:
    """Append the new trajectories to each condition's buffer, keep the last max_samples − 1, refit the GMMs.

    priors: one per condition (or None); X: [M, N, T, dX], U: [M, N, T, dU] new samples. Returns the
    new priors, with buffers X [Nb, T, dX], U [Nb, T, dU], Nb = min(N_total, max_samples − 1). The
    GMM EM of all conditions runs together (fit_gmm_batched; random (re)initialisations draw from rng
    in condition order); with buffers of different lengths each condition's EM is a batch of one.
    `progress(done, M)`, if given, follows the GMM fits.
    """
    X = np.asarray(X, dtype=np.float64)
    U = np.asarray(U, dtype=np.float64)
    n_cond = X.shape[0]
    buffers = [_buffer(priors[m], X[m], U[m], cfg) for m in range(n_cond)]
    prevs = [None if p is None else p.gmm for p in priors]
    if len({bx.shape for bx, _ in buffers}) == 1 and len({bu.shape for _, bu in buffers}) == 1:
        groups = [list(range(n_cond))]  # the EM of all conditions together
    else:
        # Buffers of different lengths cannot be stacked: one GMM fit per condition, in condition order
        # (they share rng), each a batch of one.
        groups = [[m] for m in range(n_cond)]
    gmms: list[GMM] = []
    for group in groups:
        data = _transitions_batched(np.stack([buffers[m][0] for m in group]), np.stack([buffers[m][1] for m in group]))
        data = data.reshape(len(group), -1, data.shape[-1])  # [B, Nb (T−1), D], sample-major
        n_clusters = num_clusters(data.shape[1], cfg.max_clusters, cfg.min_samples_per_cluster)
        fitted, _ = fit_gmm_batched(data, n_clusters, rng, prevs=[prevs[m] for m in group],
                                    progress=progress if len(groups) == 1 else None)
        gmms.extend(fitted)
        if progress is not None and len(groups) > 1:
            progress(group[-1] + 1, n_cond)
    return [DynamicsPrior(X=buffers[m][0], U=buffers[m][1], gmm=gmms[m]) for m in range(n_cond)]


def fit_dynamics_batched(
    X: np.ndarray,
    U: np.ndarray,
    priors: list[DynamicsPrior],
    strength: float,
    regularization: float,
    regularization_shape: str = "all_entries",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-time-step regression of x_{t+1} on [x_t; u_t] with the GMM prior (§5.1–5.2), for M conditions.

    X: [M, N, T, dX], U: [M, N, T, dU] current samples; priors[m]: condition m's (updated) prior ->
    Fm [M, T, dX, dX+dU], fv [M, T, dX], dyn_covar [M, T, dX, dX]; entries at t = T−1 are zeros.
    Where priors[m].gmm is None the prior is dropped (Φ = 0, m = n0 = 0).
    """
    X = np.asarray(X, dtype=np.float64)
    U = np.asarray(U, dtype=np.float64)
    n_cond, _, T, dX = X.shape
    dU = U.shape[-1]
    Fm = np.zeros((n_cond, T, dX, dX + dU))
    fv = np.zeros((n_cond, T, dX))
    dyn_covar = np.zeros((n_cond, T, dX, dX))
    reg = np.full(T - 1, float(regularization))
    # Prior and regressions condition by condition (each already batched over t): stacking
    # the conditions as well makes the temporaries outgrow the cache and is slower.
    for m in range(n_cond):
        points = np.swapaxes(_transitions(X[m], U[m]), 0, 1)  # [T−1, N, D]
        if priors[m].gmm is not None:
            mu0, Phi, m_prior, n0 = niw_prior_batched([priors[m].gmm], points[None], strength)
            mu0, Phi, n0 = mu0[0], Phi[0], float(n0[0])
        else:
            dim = points.shape[-1]
            mu0, Phi, m_prior, n0 = np.zeros((T - 1, dim)), np.zeros((T - 1, dim, dim)), 0.0, 0.0
        Fm[m, :-1], fv[m, :-1], dyn_covar[m, :-1] = gauss_fit_joint_prior(
            points, mu0, Phi, m_prior, n0, reg, dX + dU, regularization_shape
        )
    return Fm, fv, dyn_covar


def fit_all_dynamics(
    priors: list[DynamicsPrior | None],
    X: np.ndarray,
    U: np.ndarray,
    cfg: PriorConfig,
    regularization: float,
    regularization_shape: str,
    initial_state_var: float,
    rng: np.random.Generator,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list[DynamicsPrior], dict[str, np.ndarray]]:
    """The fit-dynamics step for all M conditions at once: update_dynamics_priors, then
    fit_dynamics_batched and fit_initial_state with the new priors.

    X: [M, N, T, dX], U: [M, N, T, dU] current samples; priors: one per condition (or None).
    `progress(done, M)`, if given, follows the GMM fits. The one-condition reference is
    tests/reference_impl.py (update_dynamics_prior, fit_dynamics).
    Returns the new priors and the arrays Fm [M, T, dX, dX+dU], fv [M, T, dX],
    dyn_covar [M, T, dX, dX], x0mu [M, dX], x0sigma [M, dX, dX].
    """
    X = np.asarray(X, dtype=np.float64)
    U = np.asarray(U, dtype=np.float64)
    new_priors = update_dynamics_priors(priors, X, U, cfg, rng, progress)
    Fm, fv, dyn_covar = fit_dynamics_batched(X, U, new_priors, cfg.strength, regularization, regularization_shape)
    x0 = [fit_initial_state(X[m], new_priors[m], initial_state_var, cfg.strength) for m in range(X.shape[0])]
    out = {
        "Fm": Fm,
        "fv": fv,
        "dyn_covar": dyn_covar,
        "x0mu": np.stack([x[0] for x in x0]),
        "x0sigma": np.stack([x[1] for x in x0]),
    }
    return new_priors, out


def _transitions_batched(X: np.ndarray, U: np.ndarray) -> np.ndarray:
    """_transitions with a leading condition axis: X [M, N, T, dX], U [M, N, T, dU] -> [M, N, T−1, 2dX+dU]."""
    return np.concatenate([X[..., :-1, :], U[..., :-1, :], X[..., 1:, :]], axis=-1)
