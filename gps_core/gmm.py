"""Gaussian mixture model fitted by EM, and the Normal-inverse-Wishart prior it induces.

Used by both the dynamics prior (ALGORITHM §5.2) and the policy prior (§6).

Mixture
    p(y) = Σ_k π_k N(y; μ_k, Σ_k),   y ∈ R^D,  k = 1…K,   stored as log π_k.

(Re)initialisation (§5.3), when there is no previous fit or K changed:
    c_n ~ Uniform{0…K−1}                       (rng.integers(0, K, size=N))
    μ_k = mean of the points with c_n = k
    Σ_k = (1/K) Σ_{n: c_n=k} (y_n − μ_k)(y_n − μ_k)ᵀ + 2e−6 I     (scatter / K, not / count)
    π_k = 1/K,   N_gmm = N   (the only place N_gmm is set)
Otherwise the previous parameters (and N_gmm) are the warm start.

EM loop, at most `max_iter` iterations:
    L_nk = log N(y_n; μ_k, Σ_k) + log π_k                      (Cholesky of Σ_k)
    ll   = Σ_n logsumexp_k L_nk
    stop if ll < ll_prev            (no roll-back)
    stop if |ll − ll_prev| < 1e−5 · ll_prev   (never fires for ll_prev < 0)
    r_nk = exp(L_nk − logsumexp_k L_nk)
    π_k  = Σ_n r_nk / N
    w_nk = r_nk / Σ_n r_nk ;  w_nk = 1/N for all n if π_k < 1e−4 / K   ("reboot")
    μ_k  = Σ_n w_nk y_n
    Σ_k  = sym(Σ_n w_nk (y_n − μ_k)(y_n − μ_k)ᵀ) + 1e−6 I

Prior evaluation (§5.2) for query points y_1…y_N:
    w_k   = (1/N) Σ_n r_nk
    μ0    = Σ_k w_k μ_k
    Φ_mix = Σ_k w_k [Σ_k + (μ_k − μ0)(μ_k − μ0)ᵀ]
    m = strength,   n0 = strength (N_gmm − 2 − D) / N_gmm,   Φ = m Φ_mix
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg
from scipy.special import logsumexp

INIT_COVARIANCE_JITTER = 2e-6
EM_COVARIANCE_JITTER = 1e-6
EM_RELATIVE_TOLERANCE = 1e-5
REBOOT_MASS_FRACTION = 1e-4


@dataclass(frozen=True)
class GMM:
    """Fitted mixture.

    mu: [K, D] cluster means; sigma: [K, D, D] cluster covariances;
    logmass: [K] log mixing weights; n_init: number of points at the last
    (re)initialisation (N_gmm of ALGORITHM §5.2).
    """

    mu: np.ndarray
    sigma: np.ndarray
    logmass: np.ndarray
    n_init: int

    @property
    def n_clusters(self) -> int:
        return int(self.mu.shape[0])

    @property
    def dim(self) -> int:
        return int(self.mu.shape[1])


def num_clusters(n_points: int, max_clusters: int, min_samples_per_cluster: int) -> int:
    """K = max(2, min(max_clusters, ⌊n_points / min_samples_per_cluster⌋))."""
    return int(max(2, min(int(max_clusters), int(n_points) // int(min_samples_per_cluster))))


def _log_joint(mu: np.ndarray, sigma: np.ndarray, logmass: np.ndarray, points: np.ndarray) -> np.ndarray:
    """L[..., n, k] = log N(y_n; μ_k, Σ_k) + log π_k.

    mu: [K, D], sigma: [K, D, D], logmass: [K], points: [..., N, D] -> [..., N, K].
    """
    n_clusters, dim = mu.shape
    batch_shape = points.shape[:-1]
    chol_lower = np.linalg.cholesky(sigma)  # [K, D, D], L Lᵀ = Σ
    half_logdet = np.sum(np.log(np.diagonal(chol_lower, axis1=-2, axis2=-1)), axis=-1)  # [K]
    chol_inv = scipy.linalg.solve_triangular(
        chol_lower, np.broadcast_to(np.eye(dim), chol_lower.shape), lower=True
    )  # [K, D, D], L⁻¹
    flat = points.reshape(-1, dim)  # [M, D]
    diff = flat[None, :, :] - mu[:, None, :]  # [K, M, D]
    whitened = diff @ np.swapaxes(chol_inv, 1, 2)  # [K, M, D], rows L⁻¹ (y − μ_k)
    mahalanobis = np.sum(whitened**2, axis=2)  # [K, M]
    log_density = -0.5 * dim * np.log(2.0 * np.pi) - half_logdet[:, None] - 0.5 * mahalanobis
    log_joint = log_density.T + logmass[None, :]  # [M, K]
    return log_joint.reshape(*batch_shape, n_clusters)


def _initial_parameters(data: np.ndarray, n_clusters: int, rng: np.random.Generator):
    """Random hard assignment (§5.3). data: [N, D] -> mu [K, D], sigma [K, D, D], logmass [K].

    A cluster that receives no point (possible when N is small) gets the overall data
    mean and zero scatter, i.e. Σ_k = 2e−6 I (the reference code would produce NaNs).
    """
    n_points, dim = data.shape
    assignment = rng.integers(0, n_clusters, size=n_points)
    one_hot = (assignment[:, None] == np.arange(n_clusters)[None, :]).astype(np.float64)  # [N, K]
    counts = one_hot.sum(axis=0)  # [K]
    sums = one_hot.T @ data  # [K, D]
    overall_mean = data.mean(axis=0)
    mu = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1.0)[:, None], overall_mean[None, :])
    diff = (data[None, :, :] - mu[:, None, :]) * one_hot.T[:, :, None]  # [K, N, D], zero off-cluster
    scatter = np.swapaxes(diff, 1, 2) @ diff  # [K, D, D]
    sigma = scatter / n_clusters + INIT_COVARIANCE_JITTER * np.eye(dim)[None]
    logmass = np.full(n_clusters, np.log(1.0 / n_clusters))
    return mu, sigma, logmass


def _m_step(data: np.ndarray, log_resp: np.ndarray):
    """One M-step. data: [N, D], log_resp: [N, K] -> mu [K, D], sigma [K, D, D], logmass [K]."""
    n_points, dim = data.shape
    n_clusters = log_resp.shape[1]
    log_cluster_total = logsumexp(log_resp, axis=0)  # [K]
    logmass = log_cluster_total - logsumexp(log_cluster_total)
    reboot = np.exp(logmass) < REBOOT_MASS_FRACTION / n_clusters  # [K]
    safe_total = np.where(reboot, 0.0, log_cluster_total)
    weights = np.exp(log_resp - safe_total[None, :])  # [N, K]
    weights = np.where(reboot[None, :], 1.0 / n_points, weights)
    mu = weights.T @ data  # [K, D]
    diff = data[None, :, :] - mu[:, None, :]  # [K, N, D]
    weighted = diff * np.sqrt(weights.T)[:, :, None]
    cov = np.swapaxes(weighted, 1, 2) @ weighted  # [K, D, D]
    sigma = 0.5 * (cov + np.swapaxes(cov, 1, 2)) + EM_COVARIANCE_JITTER * np.eye(dim)[None]
    return mu, sigma, logmass


def _fit_gmm_with_history(
    data: np.ndarray,
    n_clusters: int,
    rng: np.random.Generator,
    prev: GMM | None = None,
    max_iter: int = 100,
) -> tuple[GMM, list[float]]:
    """fit_gmm that also returns the log-likelihood computed at every E-step (incl. the stopping one)."""
    data = np.asarray(data, dtype=np.float64)
    if data.ndim != 2:
        raise ValueError(f"data must be [N, D], got shape {data.shape}")
    n_points, dim = data.shape
    warm = prev is not None and prev.mu.shape == (n_clusters, dim)
    if warm:
        mu, sigma, logmass = prev.mu, prev.sigma, prev.logmass
        n_init = prev.n_init
    else:
        mu, sigma, logmass = _initial_parameters(data, n_clusters, rng)
        n_init = n_points

    history: list[float] = []
    ll_prev = -np.inf
    for _ in range(max_iter):
        log_joint = _log_joint(mu, sigma, logmass, data)  # [N, K]
        log_norm = logsumexp(log_joint, axis=1)  # [N]
        ll = float(np.sum(log_norm))
        history.append(ll)
        if ll < ll_prev:
            break
        if abs(ll - ll_prev) < EM_RELATIVE_TOLERANCE * ll_prev:
            break
        ll_prev = ll
        mu, sigma, logmass = _m_step(data, log_joint - log_norm[:, None])

    gmm = GMM(mu=np.array(mu), sigma=np.array(sigma), logmass=np.array(logmass), n_init=int(n_init))
    return gmm, history


def fit_gmm(
    data: np.ndarray,
    n_clusters: int,
    rng: np.random.Generator,
    prev: GMM | None = None,
    max_iter: int = 100,
) -> GMM:
    """EM fit of a K-cluster GMM (§5.3).

    data: [N, D]. Warm start from `prev` when it has `n_clusters` clusters of dimension D
    (n_init is then carried over); otherwise random re-initialisation via
    rng.integers(0, K, size=N) and n_init = N.
    """
    gmm, _ = _fit_gmm_with_history(data, n_clusters, rng, prev=prev, max_iter=max_iter)
    return gmm


def gmm_log_likelihood(gmm: GMM, data: np.ndarray) -> float:
    """Σ_n logsumexp_k [log N(y_n; μ_k, Σ_k) + log π_k]. data: [N, D]."""
    log_joint = _log_joint(gmm.mu, gmm.sigma, gmm.logmass, np.asarray(data, dtype=np.float64))
    return float(np.sum(logsumexp(log_joint, axis=-1)))


def niw_prior(
    gmm: GMM, points: np.ndarray, strength: float
) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Normal-inverse-Wishart prior from the GMM for a set of query points (§5.2).

    points: [..., N, D] (leading batch dims, e.g. time) ->
    mu0 [..., D], Phi [..., D, D], m (float), n0 (float).
    """
    points = np.asarray(points, dtype=np.float64)
    log_joint = _log_joint(gmm.mu, gmm.sigma, gmm.logmass, points)  # [..., N, K]
    log_resp = log_joint - logsumexp(log_joint, axis=-1, keepdims=True)
    cluster_weights = np.mean(np.exp(log_resp), axis=-2)  # [..., K]
    mu0 = cluster_weights @ gmm.mu  # [..., D]
    dim = gmm.dim
    offset = gmm.mu - mu0[..., None, :]  # [..., K, D]
    within = (cluster_weights @ gmm.sigma.reshape(gmm.n_clusters, dim * dim)).reshape(*mu0.shape, dim)
    between = np.swapaxes(offset * cluster_weights[..., None], -1, -2) @ offset  # Σ_k w_k d_k d_kᵀ
    phi_mix = within + between  # [..., D, D]
    m = float(strength)
    n0 = float(strength) * (gmm.n_init - 2.0 - dim) / gmm.n_init
    phi = m * phi_mix
    return mu0, phi, m, n0
