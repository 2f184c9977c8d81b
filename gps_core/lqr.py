"""C-step: KL-constrained LQR against fitted linear-Gaussian dynamics.

Problem (one condition, z_t = [x_t; u_t], D = dX + dU):

    min_p  Σ_t E_p[ℓ_t(z_t)]   s.t.   KL(p(τ) ‖ q(τ)) ≤ ε,     ε = kl_step · step_mult · T
    ℓ_t(z) ≈ cc_t + cv_tᵀ z + ½ zᵀ Cm_t z                        (cost model)
    x_{t+1} ~ N(Fm_t z_t + fv_t, W_t),  x_0 ~ N(x0mu, x0sigma)   (fitted dynamics)

For MDGPS the reference q is the global-policy linearisation π̄. Dividing the
Lagrangian by the dual variable η gives a maximum-entropy LQR with surrogate

    C̃_t = Cm_t / η + M_q,    c̃_t = cv_t / η + v_q        ((M_q, v_q) from lingauss)

solved by the backward recursion (V_T = 0, v_T = 0)

    Q_zz = C̃_t + Fm_tᵀ V_{t+1} Fm_t,     q_z = c̃_t + Fm_tᵀ (v_{t+1} + V_{t+1} fv_t)
    Σ_t = Q_uu⁻¹,  K_t = −Q_uu⁻¹ Q_ux,  k_t = −Q_uu⁻¹ q_u
    V_t = Q_xx + Q_xu K_t,  v_t = q_x + Q_xu k_t

If some Q_uu is not positive definite, η is raised from its original value by
δ, 2δ, 4δ, ... (δ = del0) and the sweep restarts. η itself is found by a
bracketing search in log η until |KL − ε| < tol · ε.

The forward pass propagates Gaussian state-action marginals (μ_t, S_t) under the
fitted dynamics; with them the trajectory KL is Σ_t E_p(x_t)[KL(p(u|x) ‖ q(u|x))]
and the Laplace cost estimate is Σ_t cc_t + ½ tr(S_t Cm_t) + ½ μ_tᵀ Cm_t μ_t + μ_tᵀ cv_t.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gps_core.lingauss import LinearGaussianPolicy, quadratic_form


def _sym(A: np.ndarray) -> np.ndarray:
    return 0.5 * (A + np.swapaxes(A, -1, -2))


@dataclass(frozen=True)
class Dynamics:
    """Fitted linear-Gaussian dynamics of one condition.

    Fm: [T, dX, dX+dU], fv: [T, dX], covar: [T, dX, dX], x0mu: [dX], x0sigma: [dX, dX].
    """

    Fm: np.ndarray
    fv: np.ndarray
    covar: np.ndarray
    x0mu: np.ndarray
    x0sigma: np.ndarray


@dataclass(frozen=True)
class QuadraticCost:
    """Cost model ℓ_t(z) ≈ cc_t + cv_tᵀ z + ½ zᵀ Cm_t z.

    Cm: [T, D, D], cv: [T, D], cc: [T].
    """

    Cm: np.ndarray
    cv: np.ndarray
    cc: np.ndarray


@dataclass(frozen=True)
class TrajOptConfig:
    min_eta: float = 1e-4
    max_eta: float = 1e16
    del0: float = 1e-4
    max_iterations: int = 50
    tolerance: float = 0.1


@dataclass(frozen=True)
class CStepResult:
    policy: LinearGaussianPolicy
    eta: float  # warm start for the next iteration
    kl: float  # achieved KL(p ‖ q)
    kl_bound: float  # ε
    converged: bool
    dual_iterations: int


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


def estimate_cost(pol: LinearGaussianPolicy, dyn: Dynamics, cost: QuadraticCost) -> float:
    """Laplace estimate of the expected total cost of pol under dyn and the cost model."""
    mu, S = forward_pass(pol, dyn)
    per_step = (
        cost.cc
        + 0.5 * np.einsum("tij,tji->t", S, cost.Cm)
        + 0.5 * np.einsum("ti,tij,tj->t", mu, cost.Cm, mu)
        + np.einsum("ti,ti->t", mu, cost.cv)
    )
    return float(np.sum(per_step))


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


def c_step(
    cost: QuadraticCost,
    reference: LinearGaussianPolicy,
    dyn: Dynamics,
    kl_bound: float,
    eta: float,
    cfg: TrajOptConfig,
) -> CStepResult:
    """Dual search on η so that KL(p ‖ reference) ≈ kl_bound (ALGORITHM §7.6)."""
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
