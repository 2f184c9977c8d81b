"""Gaussian mixture model fitted by EM, and the Normal-inverse-Wishart prior it induces.

Used by both the dynamics prior (ALGORITHM §5.2) and the policy prior (§6). Every function fits or
queries B mixtures at once (one per condition; a single data set is a batch of one): data
[B, N, D], per mixture mu [K, D], sigma [K, D, D], logmass [K] (GMM). The one-data-set reference
the batched code is tested against is tests/reference_impl.py (fit_gmm, niw_prior).

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
from typing import Callable

import numpy as np
from scipy.linalg.lapack import dtrtrs as _dtrtrs


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
    sigma = _factorable(scatter / n_clusters + INIT_COVARIANCE_JITTER * np.eye(dim)[None])
    logmass = np.full(n_clusters, np.log(1.0 / n_clusters))
    return mu, sigma, logmass


# --------------------------------------------------------------------------- EM and prior, batched over data sets
#
# The functions below run EM and the prior evaluation for B data sets at once (one per
# condition), with a leading batch axis on every array. Per data set they perform the
# numpy/LAPACK operations of the one-data-set reference (tests/reference_impl.py), so the results
# agree to round-off (in practice bit for bit), and the random initialisation draws from the rng
# in condition order, as a loop over conditions would.


def logsumexp_np(a: np.ndarray, axis: int, keepdims: bool = False) -> np.ndarray:
    """scipy.special.logsumexp(a, axis) for real input, computed the same way with numpy only.

    The maximum is split off (log1p of the rest), as scipy does, so that the two agree
    to the last bit; non-finite results fall back to log(Σ exp(a)) as in scipy.
    """
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        a_max = np.max(a, axis=axis, keepdims=True)
        is_max = a == a_max
        count = np.sum(is_max, axis=axis, keepdims=True, dtype=a.dtype)
        rest = np.where(is_max, -np.inf, a)
        s = np.sum(np.exp(rest - a_max), axis=axis, keepdims=True, dtype=a.dtype)
        s = np.where(s == 0, s, s / count)
        out = np.log1p(s) + np.log(count) + a_max
        finite = np.isfinite(out)
        if not np.all(finite):
            out = np.where(finite, out, np.log(np.sum(np.exp(a), axis=axis, keepdims=True)))
    return out if keepdims else np.squeeze(out, axis=axis)


def _lower_triangular_inverse(chol_lower: np.ndarray) -> np.ndarray:
    """L⁻¹ of stacked lower-triangular matrices [..., D, D].

    scipy.linalg.solve_triangular(L, I, lower=True) loops over the stack in Python and
    validates every slice; this calls the same LAPACK routine (?trtrs on the transposed,
    C-ordered factor, exactly as solve_triangular does) directly, so the result is identical.
    """
    dim = chol_lower.shape[-1]
    if not np.all(np.isfinite(chol_lower)):  # solve_triangular's check_finite
        raise ValueError("array must not contain infs or NaNs")
    flat = np.ascontiguousarray(chol_lower).reshape(-1, dim, dim)
    out = np.empty_like(flat)
    eye = np.eye(dim)
    for i in range(flat.shape[0]):
        x, info = _dtrtrs(flat[i].T, eye, lower=0, trans=1)
        if info > 0:
            raise np.linalg.LinAlgError(f"singular matrix: resolution failed at diagonal {info - 1}")
        out[i] = x
    return out.reshape(chol_lower.shape)


def _factorable(sigma: np.ndarray) -> np.ndarray:
    """sigma [..., D, D] itself if numpy factors every matrix (Cholesky); else a copy in which each matrix it
    cannot factor has jitter · I added, from 1e-12 of its largest diagonal entry up by tens until it factors.

    EM adds EM_COVARIANCE_JITTER · I to every covariance, which keeps those of data of ordinary scale positive
    definite. With samples of scale 1e10 (Pusher, whose iLQR controllers had gains of 5e5 at a joint limit)
    the covariance's round-off exceeds that jitter: the E-step's Cholesky, and the next iteration's check of
    the stored prior, stopped the run. Where numpy factors every matrix (every run before that one) the
    numbers are unchanged.
    """
    try:
        np.linalg.cholesky(sigma)
        return sigma
    except np.linalg.LinAlgError:
        pass
    dim = sigma.shape[-1]
    out = sigma.reshape(-1, dim, dim).copy()
    eye = np.eye(dim)
    for i, s in enumerate(out):
        scale = max(float(np.max(np.abs(np.diagonal(s)))), 1.0)
        jitter = 0.0
        while True:
            try:
                np.linalg.cholesky(s + jitter * eye)
                break
            except np.linalg.LinAlgError:
                jitter = 1e-12 * scale if jitter == 0.0 else 10.0 * jitter
                if jitter > scale or not np.isfinite(jitter):
                    raise
        out[i] = s + jitter * eye
    return out.reshape(sigma.shape)


def log_joint_batched(mu: np.ndarray, sigma: np.ndarray, logmass: np.ndarray, points: np.ndarray) -> np.ndarray:
    """L[b, ..., n, k] = log N(y_n; μ_bk, Σ_bk) + log π_bk for B mixtures at once (Cholesky of Σ).

    mu [B, K, D], sigma [B, K, D, D], logmass [B, K], points [B, ..., N, D] -> [B, ..., N, K]
    (points of batch entry b are scored under mixture b).
    """
    n_batch, n_clusters, dim = mu.shape
    batch_shape = points.shape[1:-1]
    chol_lower = np.linalg.cholesky(sigma)  # [B, K, D, D]: factorable (_factorable at every M-step)
    half_logdet = np.sum(np.log(np.diagonal(chol_lower, axis1=-2, axis2=-1)), axis=-1)  # [B, K]
    chol_inv = _lower_triangular_inverse(chol_lower)  # [B, K, D, D], L⁻¹
    flat = points.reshape(n_batch, -1, dim)  # [B, P, D]
    diff = flat[:, None, :, :] - mu[:, :, None, :]  # [B, K, P, D]
    whitened = diff @ np.swapaxes(chol_inv, -1, -2)
    mahalanobis = np.sum(np.square(whitened, out=whitened), axis=-1)  # [B, K, P]
    log_density = -0.5 * dim * np.log(2.0 * np.pi) - half_logdet[:, :, None] - 0.5 * mahalanobis
    log_joint = np.swapaxes(log_density, -1, -2) + logmass[:, None, :]  # [B, P, K]
    return log_joint.reshape(n_batch, *batch_shape, n_clusters)


def _m_step_batched(data: np.ndarray, log_resp: np.ndarray):
    """One M-step (module docstring) for B data sets: data [B, N, D], log_resp [B, N, K] -> mu [B, K, D], sigma [B, K, D, D], logmass [B, K]."""
    _, n_points, dim = data.shape
    n_clusters = log_resp.shape[-1]
    log_cluster_total = logsumexp_np(log_resp, axis=-2)  # [B, K]
    logmass = log_cluster_total - logsumexp_np(log_cluster_total, axis=-1, keepdims=True)
    reboot = np.exp(logmass) < REBOOT_MASS_FRACTION / n_clusters  # [B, K]
    safe_total = np.where(reboot, 0.0, log_cluster_total)
    weights = np.exp(log_resp - safe_total[:, None, :])  # [B, N, K]
    weights = np.where(reboot[:, None, :], 1.0 / n_points, weights)
    weights_t = np.swapaxes(weights, -1, -2)  # [B, K, N]
    mu = weights_t @ data  # [B, K, D]
    diff = data[:, None, :, :] - mu[:, :, None, :]  # [B, K, N, D]
    weighted = diff * np.sqrt(weights_t)[..., None]
    cov = np.swapaxes(weighted, -1, -2) @ weighted  # [B, K, D, D]
    sigma = _factorable(0.5 * (cov + np.swapaxes(cov, -1, -2)) + EM_COVARIANCE_JITTER * np.eye(dim))
    return mu, sigma, logmass


def _em_batched(data, mu, sigma, logmass, histories, max_iter: int) -> None:
    """The EM loop (module docstring) for B data sets [B, N, D]; updates mu, sigma, logmass
    [B, ...] in place and appends every E-step's log-likelihood to histories[b]."""
    n_batch = data.shape[0]
    ll_prev = np.full(n_batch, -np.inf)
    active = np.arange(n_batch)
    for _ in range(max_iter):
        if active.size == 0:
            break
        a = slice(None) if active.size == n_batch else active
        log_joint = log_joint_batched(mu[a], sigma[a], logmass[a], data[a])  # [Ba, N, K]
        log_norm = np.ascontiguousarray(logsumexp_np(log_joint, axis=-1))  # [Ba, N]
        ll = np.sum(log_norm, axis=-1)  # [Ba]
        for b, value in zip(active, ll):
            histories[b].append(float(value))
        with np.errstate(invalid="ignore"):
            stop = (ll < ll_prev[a]) | (np.abs(ll - ll_prev[a]) < EM_RELATIVE_TOLERANCE * ll_prev[a])
        go = ~stop
        if not np.any(go):
            break
        ll_prev[active[go]] = ll[go]
        new_mu, new_sigma, new_logmass = _m_step_batched(data[active[go]], log_joint[go] - log_norm[go][:, :, None])
        mu[active[go]], sigma[active[go]], logmass[active[go]] = new_mu, new_sigma, new_logmass
        active = active[go]


def fit_gmm_batched(
    data: np.ndarray,
    n_clusters: int,
    rng: np.random.Generator,
    prevs: list[GMM | None] | None = None,
    max_iter: int = 100,
    chunk_bytes: int = 1 << 21,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list[GMM], list[list[float]]]:
    """EM fit of a K-cluster GMM (§5.3) on each of B data sets (one per condition) at once: data [B, N, D].

    Data set b is warm-started from prevs[b] when that has n_clusters clusters of dimension D
    (its n_init is then carried over); otherwise it is re-initialised at random and n_init = N:
    the data sets that need a random (re)initialisation draw from rng in the order b = 0…B−1;
    then EM runs on groups of data sets together, each with its own stopping test (a data set
    that has stopped keeps its parameters while the others continue). A group holds as many
    data sets as keep the [K, N, D] temporaries of one EM step within `chunk_bytes`: for the
    peg problems that is one condition, since stacking more outgrows the cache and is slower.
    Returns the GMMs and, per data set, the log-likelihood of every E-step.
    `progress(done, B)`, if given, is called after each group of data sets.
    """
    data = np.asarray(data, dtype=np.float64)
    if data.ndim != 3:
        raise ValueError(f"data must be [B, N, D], got shape {data.shape}")
    n_batch, n_points, dim = data.shape
    prevs = [None] * n_batch if prevs is None else list(prevs)
    mu = np.empty((n_batch, n_clusters, dim))
    sigma = np.empty((n_batch, n_clusters, dim, dim))
    logmass = np.empty((n_batch, n_clusters))
    n_init = np.empty(n_batch, dtype=np.int64)
    for b, prev in enumerate(prevs):
        if prev is not None and prev.mu.shape == (n_clusters, dim):
            mu[b], sigma[b], logmass[b], n_init[b] = prev.mu, prev.sigma, prev.logmass, prev.n_init
        else:
            mu[b], sigma[b], logmass[b] = _initial_parameters(data[b], n_clusters, rng)
            n_init[b] = n_points

    histories: list[list[float]] = [[] for _ in range(n_batch)]
    per_set = n_clusters * n_points * dim * 8
    chunk = int(max(1, min(n_batch, chunk_bytes // max(per_set, 1))))
    for lo in range(0, n_batch, chunk):
        part = slice(lo, min(lo + chunk, n_batch))
        _em_batched(data[part], mu[part], sigma[part], logmass[part], histories[part], max_iter)
        if progress is not None:
            progress(part.stop, n_batch)

    gmms = [GMM(mu=mu[b].copy(), sigma=sigma[b].copy(), logmass=logmass[b].copy(), n_init=int(n_init[b])) for b in range(n_batch)]
    return gmms, histories


def stack_gmms(gmms: list[GMM]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """mu [B, K, D], sigma [B, K, D, D], logmass [B, K], n_init [B] of GMMs with equal K and D."""
    return (
        np.stack([g.mu for g in gmms]),
        np.stack([g.sigma for g in gmms]),
        np.stack([g.logmass for g in gmms]),
        np.array([g.n_init for g in gmms], dtype=np.float64),
    )


def niw_prior_batched(
    gmms: list[GMM], points: np.ndarray, strength: float
) -> tuple[np.ndarray, np.ndarray, float, np.ndarray]:
    """Normal-inverse-Wishart prior (§5.2) from each of B mixtures of equal size for its query points:
    points [B, ..., N, D] (entry b queries gmms[b]; leading dims e.g. time) ->
    mu0 [B, ..., D], Phi [B, ..., D, D], m (float), n0 [B]."""
    points = np.asarray(points, dtype=np.float64)
    mu, sigma, logmass, n_init = stack_gmms(gmms)
    n_batch, n_clusters, dim = mu.shape
    log_joint = log_joint_batched(mu, sigma, logmass, points)  # [B, ..., N, K]
    log_resp = log_joint - logsumexp_np(log_joint, axis=-1, keepdims=True)
    cluster_weights = np.mean(np.exp(log_resp), axis=-2)  # [B, ..., K]
    extra = cluster_weights.ndim - 2  # number of query batch dims (e.g. time)
    flat_w = cluster_weights.reshape(n_batch, -1, n_clusters)  # [B, Q, K]
    mu0 = flat_w @ mu  # [B, Q, D]
    offset = mu[:, None, :, :] - mu0[:, :, None, :]  # [B, Q, K, D]
    within = (flat_w @ sigma.reshape(n_batch, n_clusters, dim * dim)).reshape(*mu0.shape, dim)
    between = np.swapaxes(offset * flat_w[..., None], -1, -2) @ offset
    phi_mix = within + between  # [B, Q, D, D]
    m = float(strength)
    n0 = float(strength) * (n_init - 2.0 - dim) / n_init
    phi = m * phi_mix
    query_shape = cluster_weights.shape[1 : 1 + extra]
    return mu0.reshape(n_batch, *query_shape, dim), phi.reshape(n_batch, *query_shape, dim, dim), m, n0
