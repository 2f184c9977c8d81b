"""Reference implementations the production code is tested (and benchmarked) against.

One condition at a time, written as the algorithm states it (Python loops over t, no batching),
so that the batched production code of gps_core (a single condition is a batch of one there) can
be checked against them to floating-point round-off (tests/test_batched.py, test_badmm.py,
benchmarks/micro.py):

    quadratic_form            lingauss form (M [T, D, D], v [T, D], c [T]) of one controller
    backward_pass, forward_pass, traj_kl, mdgps_backward, c_step_reference
                              the C-step of one condition      (gps_core.traj_opt.lqr / gps_core.traj_opt.c_step)
    badmm_surrogate, value_rescaling, backward_pass_rescaled, badmm_backward_reference,
    badmm_c_step_reference    the BADMM C-step of §10.3 as written  (gps_core.badmm.algorithm.badmm_c_step)
    _log_joint, _m_step, _fit_gmm_with_history, fit_gmm, gmm_log_likelihood, niw_prior
                              GMM EM and prior of one data set [N, D]  (gps_core.fit.gmm, batched)
    update_dynamics_prior, fit_dynamics     the dynamics fit of one condition (dynamics.fit_all_dynamics)
    fit_policy_linearisation  the policy linearisation of one condition (policy_lin.fit_policy_linearisations)

Nothing in gps_core or stages imports this module.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
from scipy.special import logsumexp

from gps_core.badmm.algorithm import lagrangian_cost
from gps_core.traj_opt.c_step import CStepResult
from gps_core.configs import PriorConfig, TrajOptConfig
from gps_core.fit.dynamics import DynamicsPrior, _transitions
from gps_core.fit.gmm import EM_COVARIANCE_JITTER, EM_RELATIVE_TOLERANCE, GMM, REBOOT_MASS_FRACTION, _initial_parameters, num_clusters
from gps_core.traj_opt.lingauss import LinearGaussianPolicy
from gps_core.traj_opt.lqr import Dynamics, QuadraticCost
from gps_core.fit.policy_lin import FIRST_STEP_REGULARIZATION
from gps_core.fit.regression import gauss_fit_joint_prior


# --------------------------------------------------------------------------- lingauss, one controller

def quadratic_form(pol: LinearGaussianPolicy) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(M, v, c) of −log pol(u|x) without the log-determinant term.

    Returns M: [T, dX+dU, dX+dU], v: [T, dX+dU], c: [T].
    """
    P = pol.inv_covar
    PK = P @ pol.K  # [T, dU, dX]
    Pk = np.einsum("tuv,tv->tu", P, pol.k)
    KT = np.swapaxes(pol.K, -1, -2)
    top = np.concatenate([KT @ PK, -np.swapaxes(PK, -1, -2)], axis=-1)
    bottom = np.concatenate([-PK, P], axis=-1)
    M = np.concatenate([top, bottom], axis=-2)
    v = np.concatenate([np.einsum("txu,tu->tx", KT, Pk), -Pk], axis=-1)
    c = 0.5 * np.einsum("tu,tu->t", pol.k, Pk)
    return M, v, c


# --------------------------------------------------------------------------- lqr, one condition

def _sym(A: np.ndarray) -> np.ndarray:
    return 0.5 * (A + np.swapaxes(A, -1, -2))


class NotPositiveDefinite(Exception):
    """Q_uu lost positive definiteness at step t."""

    def __init__(self, t: int):
        super().__init__(f"Q_uu not positive definite at t={t}")
        self.t = t


def backward_pass(Cs: np.ndarray, cs: np.ndarray, dyn: Dynamics, dX: int) -> LinearGaussianPolicy:
    """Max-entropy LQR for the surrogate cost (Cs: [T, D, D], cs: [T, D]).

    Raises NotPositiveDefinite if any Q_uu is not positive definite.
    """
    T, D, _ = Cs.shape
    dU = D - dX
    K = np.zeros((T, dU, dX))
    k = np.zeros((T, dU))
    covar = np.zeros((T, dU, dU))
    V = np.zeros((dX, dX))
    v = np.zeros(dX)
    eye = np.eye(dU)
    for t in range(T - 1, -1, -1):
        Qzz = Cs[t].copy()
        qz = cs[t].copy()
        if t < T - 1:
            F = dyn.Fm[t]
            FtV = F.T @ V
            Qzz += FtV @ F
            qz += F.T @ v + FtV @ dyn.fv[t]
        Qzz = _sym(Qzz)
        Quu = Qzz[dX:, dX:]
        try:
            L = np.linalg.cholesky(Quu)
        except np.linalg.LinAlgError:
            raise NotPositiveDefinite(t) from None
        L_inv = np.linalg.solve(L, eye)
        Quu_inv = L_inv.T @ L_inv
        K[t] = -Quu_inv @ Qzz[dX:, :dX]
        k[t] = -Quu_inv @ qz[dX:]
        covar[t] = Quu_inv
        Qxu = Qzz[:dX, dX:]
        V = _sym(Qzz[:dX, :dX] + Qxu @ K[t])
        v = qz[:dX] + Qxu @ k[t]
    return LinearGaussianPolicy(K=K, k=k, covar=covar)


def forward_pass(pol: LinearGaussianPolicy, dyn: Dynamics) -> tuple[np.ndarray, np.ndarray]:
    """State-action marginals of pol under dyn: μ [T, D], S [T, D, D]."""
    T, dU, dX = pol.K.shape
    D = dX + dU
    mu = np.zeros((T, D))
    S = np.zeros((T, D, D))
    mu_x = dyn.x0mu.copy()
    S_xx = dyn.x0sigma.copy()
    for t in range(T):
        K = pol.K[t]
        SxxKt = S_xx @ K.T
        mu[t, :dX] = mu_x
        mu[t, dX:] = K @ mu_x + pol.k[t]
        S[t, :dX, :dX] = S_xx
        S[t, :dX, dX:] = SxxKt
        S[t, dX:, :dX] = SxxKt.T
        S[t, dX:, dX:] = K @ SxxKt + pol.covar[t]
        if t < T - 1:
            F = dyn.Fm[t]
            S_xx = _sym(F @ S[t] @ F.T + dyn.covar[t])
            mu_x = F @ mu[t] + dyn.fv[t]
    return mu, S


def traj_kl(mu: np.ndarray, S: np.ndarray, p: LinearGaussianPolicy, q: LinearGaussianPolicy) -> np.ndarray:
    """Per-step E_p(x_t)[KL(p(u|x) ‖ q(u|x))] under marginals (μ, S) of p, clipped at 0: [T]."""
    Mp, vp, cp = quadratic_form(p)
    Mq, vq, cq = quadratic_form(q)
    dM = Mq - Mp
    kl = (
        0.5 * np.einsum("ti,tij,tj->t", mu, dM, mu)
        + np.einsum("ti,ti->t", mu, vq - vp)
        + cq
        - cp
        + 0.5 * np.einsum("tij,tji->t", S, dM)
        + 0.5 * q.logdet_covar
        - 0.5 * p.logdet_covar
    )
    return np.maximum(kl, 0.0)


def mdgps_backward(
    eta: float, cost: QuadraticCost, reference: LinearGaussianPolicy, dyn: Dynamics, cfg: TrajOptConfig
) -> tuple[LinearGaussianPolicy, float]:
    """Backward pass of the MDGPS surrogate at η, raising η while Q_uu is not PD.

    Returns the controller and the η actually used.
    """
    # numpy's Cholesky returns NaN rather than failing on NaN input, so check first.
    for name, value in (("dynamics", (dyn.Fm, dyn.fv, dyn.covar)), ("cost model", (cost.Cm, cost.cv)),
                        ("reference controller", (reference.K, reference.k, reference.covar))):
        if not all(np.all(np.isfinite(v)) for v in value):
            raise FloatingPointError(f"the {name} contains NaN or Inf")
    Mq, vq, _ = quadratic_form(reference)
    eta0, delta = eta, cfg.del0
    while True:
        try:
            return backward_pass(cost.Cm / eta + Mq, cost.cv / eta + vq, dyn, reference.dX), eta
        except NotPositiveDefinite:
            eta = eta0 + delta
            delta *= 2.0
            if eta >= 1e16:
                raise FloatingPointError(
                    "Q_uu stayed non-positive-definite while eta was raised to 1e16 "
                    "(the fitted dynamics or the policy linearisation are numerically degenerate)"
                ) from None


def c_step_reference(
    cost: QuadraticCost,
    reference: LinearGaussianPolicy,
    dyn: Dynamics,
    kl_bound: float,
    eta: float,
    cfg: TrajOptConfig,
) -> CStepResult:
    """Dual search on η so that KL(p ‖ reference) ≈ kl_bound (ALGORITHM §7.6).

    The straightforward one-condition implementation (a Python loop over t per
    sweep). `c_step_batched` computes the same thing for all conditions at once
    and is what the pipeline uses; this one is kept as its reference in the tests
    and in benchmarks/micro.py.
    """
    eta_lo, eta_hi = cfg.min_eta, cfg.max_eta
    pol, kl, converged, itr = None, np.inf, False, 0
    for itr in range(1, cfg.max_iterations + 1):
        pol, eta = mdgps_backward(eta, cost, reference, dyn, cfg)
        mu, S = forward_pass(pol, dyn)
        kl = float(np.sum(traj_kl(mu, S, pol, reference)))
        con = kl - kl_bound
        if abs(con) < cfg.tolerance * kl_bound:
            converged = True
            break
        if con < 0:  # KL too small: η too large
            eta_hi = eta
            eta = max(np.sqrt(eta_lo * eta_hi), 0.1 * eta_hi)
        else:
            eta_lo = eta
            eta = min(np.sqrt(eta_lo * eta_hi), 10.0 * eta_lo)
    return CStepResult(
        policy=pol, eta=float(eta), kl=kl, kl_bound=kl_bound, converged=converged, dual_iterations=itr
    )


# --------------------------------------------------------------------------- BADMM C-step, one condition, as written

def badmm_surrogate(
    eta: float,
    cost: QuadraticCost,
    lam_K: np.ndarray,
    lam_k: np.ndarray,
    prev: LinearGaussianPolicy,
    lin: LinearGaussianPolicy,
    pol_wt: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """The §10.3 surrogate of one condition as written: C̃ [T, D, D], c̃ [T, D].

    C̃_t = (Cm'_t + η M_p̄,t + ν_t M̄_t)/(η + ν_t), c̃_t = (cv'_t + η v_p̄,t + ν_t v̄_t)/(η + ν_t), with
    (Cm', cv') = lagrangian_cost, p̄ = prev, π̄ = lin, ν = pol_wt [T]. Solve with β = value_rescaling.
    """
    lc = lagrangian_cost(cost, lam_K, lam_k)
    Mp, vp, _ = quadratic_form(prev)
    Ml, vl, _ = quadratic_form(lin)
    nu = np.asarray(pol_wt, dtype=np.float64)
    den = eta + nu
    Cs = (lc.Cm + eta * Mp + nu[:, None, None] * Ml) / den[:, None, None]
    cs = (lc.cv + eta * vp + nu[:, None] * vl) / den[:, None]
    return Cs, cs


def value_rescaling(eta: float, pol_wt: np.ndarray) -> np.ndarray:
    """β_t = (η + ν_{t+1})/(η + ν_t) for t < T−1 (β_{T−1} = 1, unused): [T]."""
    den = eta + np.asarray(pol_wt, dtype=np.float64)
    beta = np.ones_like(den)
    beta[:-1] = den[1:] / den[:-1]
    return beta


def backward_pass_rescaled(Cs: np.ndarray, cs: np.ndarray, beta: np.ndarray, dyn: Dynamics, dX: int) -> LinearGaussianPolicy:
    """§7.3 backward pass with the next step's value scaled by β_t (one condition, loop over t).

    Cs [T, D, D], cs [T, D], beta [T]. Raises lqr.NotPositiveDefinite. With β = 1 it is
    lqr.backward_pass.
    """
    T, D, _ = Cs.shape
    dU = D - dX
    K, k, covar = np.zeros((T, dU, dX)), np.zeros((T, dU)), np.zeros((T, dU, dU))
    V, v = np.zeros((dX, dX)), np.zeros(dX)
    for t in range(T - 1, -1, -1):
        Qzz, qz = Cs[t].copy(), cs[t].copy()
        if t < T - 1:
            F = dyn.Fm[t]
            Qzz += beta[t] * (F.T @ V @ F)
            qz += beta[t] * (F.T @ (v + V @ dyn.fv[t]))
        Qzz = 0.5 * (Qzz + Qzz.T)
        Quu = Qzz[dX:, dX:]
        try:
            L = np.linalg.cholesky(Quu)
        except np.linalg.LinAlgError:
            raise NotPositiveDefinite(t) from None
        L_inv = np.linalg.solve(L, np.eye(dU))
        Quu_inv = L_inv.T @ L_inv
        K[t] = -Quu_inv @ Qzz[dX:, :dX]
        k[t] = -Quu_inv @ qz[dX:]
        covar[t] = Quu_inv
        Qxu = Qzz[:dX, dX:]
        V = Qzz[:dX, :dX] + Qxu @ K[t]
        V = 0.5 * (V + V.T)
        v = qz[:dX] + Qxu @ k[t]
    return LinearGaussianPolicy(K=K, k=k, covar=covar)


def badmm_backward_reference(
    eta: float,
    cost: QuadraticCost,
    lam_K: np.ndarray,
    lam_k: np.ndarray,
    prev: LinearGaussianPolicy,
    lin: LinearGaussianPolicy,
    pol_wt: np.ndarray,
    dyn: Dynamics,
    cfg: TrajOptConfig,
) -> tuple[LinearGaussianPolicy, float]:
    """BADMM backward pass at η exactly as §10.3/§7.3 state it (normalised C̃, β rescaling), with the
    non-PD handling η ← η0 + δ, δ ← 2δ. Reference for BadmmSurrogate + lqr.c_step_batched."""
    eta0, delta = eta, cfg.del0
    while True:
        Cs, cs = badmm_surrogate(eta, cost, lam_K, lam_k, prev, lin, pol_wt)
        try:
            return backward_pass_rescaled(Cs, cs, value_rescaling(eta, pol_wt), dyn, prev.dX), eta
        except NotPositiveDefinite:
            eta = eta0 + delta
            delta *= 2.0
            if eta >= 1e16:
                raise FloatingPointError("Q_uu stayed non-positive-definite while eta was raised to 1e16") from None


def badmm_c_step_reference(
    cost: QuadraticCost,
    lam_K: np.ndarray,
    lam_k: np.ndarray,
    prev: LinearGaussianPolicy,
    lin: LinearGaussianPolicy,
    pol_wt: np.ndarray,
    dyn: Dynamics,
    kl_bound: float,
    eta: float,
    cfg: TrajOptConfig,
) -> CStepResult:
    """One condition's BADMM C-step: the §7.6 dual search on η with KL(p ‖ p̄) ≈ kl_bound, using
    badmm_backward_reference (the literal form). badmm_c_step is the batched version."""
    eta_lo, eta_hi = cfg.min_eta, cfg.max_eta
    pol, kl, converged, itr = None, np.inf, False, 0
    for itr in range(1, cfg.max_iterations + 1):
        pol, eta = badmm_backward_reference(eta, cost, lam_K, lam_k, prev, lin, pol_wt, dyn, cfg)
        mu, S = forward_pass(pol, dyn)
        kl = float(np.sum(traj_kl(mu, S, pol, prev)))
        con = kl - kl_bound
        if abs(con) < cfg.tolerance * kl_bound:
            converged = True
            break
        if con < 0:
            eta_hi = eta
            eta = max(np.sqrt(eta_lo * eta_hi), 0.1 * eta_hi)
        else:
            eta_lo = eta
            eta = min(np.sqrt(eta_lo * eta_hi), 10.0 * eta_lo)
    return CStepResult(policy=pol, eta=float(eta), kl=kl, kl_bound=kl_bound, converged=converged, dual_iterations=itr)


# --------------------------------------------------------------------------- GMM EM, one data set

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


# --------------------------------------------------------------------------- dynamics and policy linearisation, one condition

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


def fit_policy_linearisation(
    X: np.ndarray,
    U_pol: np.ndarray,
    pol_var: np.ndarray,
    gmm_prev: GMM | None,
    cfg: PriorConfig,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, GMM]:
    """Fit π̄ by per-time-step regression with a GMM prior.

    X: [N, T, dX] sample states; U_pol: [N, T, dU] network mean actions at those states;
    pol_var: [dU] network diagonal variance; gmm_prev: previous policy-prior GMM or None.
    Returns K [T, dU, dX], k [T, dU], pol_covar [T, dU, dU], gmm (the refitted prior GMM).
    """
    X = np.asarray(X, dtype=np.float64)
    U_pol = np.asarray(U_pol, dtype=np.float64)
    pol_var = np.asarray(pol_var, dtype=np.float64)
    n_samples, T, dX = X.shape
    dU = U_pol.shape[2]

    points = np.concatenate([X, U_pol], axis=-1)  # [N, T, dX+dU]
    data = points.reshape(n_samples * T, dX + dU)  # sample-major
    n_clusters = num_clusters(n_samples * T, cfg.max_clusters, cfg.min_samples_per_cluster)
    gmm = fit_gmm(data, n_clusters, rng, prev=gmm_prev)

    per_step = np.swapaxes(points, 0, 1)  # [T, N, dX+dU]
    mu0, Phi, m, n0 = niw_prior(gmm, per_step, cfg.strength)
    reg = np.zeros(T)
    reg[0] = FIRST_STEP_REGULARIZATION
    gain, offset, cond_cov = gauss_fit_joint_prior(per_step, mu0, Phi, m, n0, reg, dX)
    pol_covar = cond_cov + np.diag(pol_var)[None, :, :]
    return gain, offset, pol_covar, gmm
