"""LQR primitives of the C-step, batched over M problems (a single condition is a batch of one).

Problem of one condition (z_t = [x_t; u_t], D = dX + dU, t = 0 … T−1):

    ℓ_t(z) ≈ cc_t + cv_tᵀ z + ½ zᵀ Cm_t z                        (cost model, QuadraticCost)
    x_{t+1} ~ N(Fm_t z_t + fv_t, W_t),  x_0 ~ N(x0mu, x0sigma)   (fitted dynamics, Dynamics)

Every function takes arrays with a leading problem axis: Cm [M, T, D, D], cv [M, T, D],
Fm [M, T, dX, D], fv [M, T, dX], W [M, T, dX, dX], x0mu [M, dX], x0sigma [M, dX, dX];
controllers K [M, T, dU, dX], k [M, T, dU], covar [M, T, dU, dU]. Every per-step operation is
one batched numpy call; only the recursions over t are Python loops.

backward_pass_batched: maximum-entropy LQR for a surrogate cost (Cs [M, T, D, D], cs [M, T, D]),
V_T = 0, v_T = 0,

    Q_zz = Cs_t + Fm_tᵀ V_{t+1} Fm_t,     q_z = cs_t + Fm_tᵀ (v_{t+1} + V_{t+1} fv_t)
    Σ_t = Q_uu⁻¹,  K_t = −Q_uu⁻¹ Q_ux,  k_t = −Q_uu⁻¹ q_u
    V_t = Q_xx + Q_xu K_t,  v_t = q_x + Q_xu k_t

mdgps_backward_batched: the same pass on MDGPS's surrogate at the dual variable η, with the KL
term of the reference controller q = (K̄, k̄, Σ̄) (the global-policy linearisation π̄),

    C̃_t = Cm_t / η + M_q,    c̃_t = cv_t / η + v_q        ((M_q, v_q) from quadratic_form_batched)

raising η from its original value by δ, 2δ, 4δ, ... (δ = del0) while some Q_uu is not positive
definite (or any other η-dependent cost given as a SurrogateCost hook, as BADMM does).

forward_pass_batched propagates the Gaussian state-action marginals μ [M, T, D], S [M, T, D, D]
under the fitted dynamics; with them traj_kl_batched is the per-step
E_p(x_t)[KL(p(u|x) ‖ q(u|x))] [M, T], and predicted_cost the per-step Laplace cost estimate
cc_t + ½ tr(S_t Cm_t) + ½ μ_tᵀ Cm_t μ_t + μ_tᵀ cv_t [M, T] (estimate_cost: its total for one
condition).

The dual search over η that uses these, and its safeguards, are gps_core/traj_opt/c_step.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from gps_core.configs import TrajOptConfig
from gps_core.traj_opt.lingauss import LinearGaussianPolicy


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


class ConditionError(FloatingPointError):
    """A FloatingPointError of one condition of a batched C-step; the message names the condition."""

    def __init__(self, condition: int, reason: str):
        super().__init__(f"condition {condition}: {reason}")
        self.condition = condition
        self.reason = reason


class HopelessConditions(ConditionError):
    """Q_uu stayed indefinite up to the η limit; names the first such condition, and `positions` holds
    every such problem's position in the batch of that backward pass."""

    def __init__(self, condition: int, reason: str, positions: np.ndarray):
        super().__init__(condition, reason)
        self.positions = positions


def mT(A: np.ndarray) -> np.ndarray:
    """Transpose of stacked matrices [..., n, m] -> [..., m, n], a view."""
    return A.mT  # = np.swapaxes(A, -1, -2), without the function-call overhead


def sym(A: np.ndarray) -> np.ndarray:
    """½ (A + Aᵀ) of stacked matrices [..., n, n]."""
    return 0.5 * (A + A.mT)


def _inv_lower(L: np.ndarray) -> np.ndarray:
    """np.linalg.solve(L, I) for stacked L: numpy's inv runs the same LAPACK gesv on the same
    identity right-hand side, so the result is identical, with less wrapper overhead."""
    return np.linalg.inv(L)


def matvec(A: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Batched A @ x: A [..., n, m], x [..., m] -> [..., n]."""
    return (A @ x[..., None])[..., 0]


def quadratic_form_batched(K: np.ndarray, k: np.ndarray, covar: np.ndarray):
    """The quadratic form (M, v, c) of −log p(u|x) (gps_core/traj_opt/lingauss.py) and log|Σ| of controllers with
    any leading batch dims.

    K [..., dU, dX], k [..., dU], covar [..., dU, dU] -> M [..., D, D], v [..., D], c [...], logdet [...].
    Same operations as LinearGaussianPolicy.inv_covar / logdet_covar.
    """
    L = np.linalg.cholesky(covar)
    logdet = 2.0 * np.sum(np.log(np.diagonal(mT(L), axis1=-2, axis2=-1)), axis=-1)
    L_inv = _inv_lower(L)
    P = mT(L_inv) @ L_inv
    PK = P @ K
    Pk = np.einsum("...uv,...v->...u", P, k)
    KT = mT(K)
    top = np.concatenate([KT @ PK, -mT(PK)], axis=-1)
    bottom = np.concatenate([-PK, P], axis=-1)
    M = np.concatenate([top, bottom], axis=-2)
    v = np.concatenate([np.einsum("...xu,...u->...x", KT, Pk), -Pk], axis=-1)
    c = 0.5 * np.einsum("...u,...u->...", k, Pk)
    return M, v, c, logdet


def cholesky_per_item(A: np.ndarray) -> np.ndarray:
    """Which of the stacked matrices A [B, n, n] have a Cholesky factor (numpy's criterion): bool [B]."""
    ok = np.ones(A.shape[0], dtype=bool)
    for b in range(A.shape[0]):
        try:
            np.linalg.cholesky(A[b])
        except np.linalg.LinAlgError:
            ok[b] = False
    return ok


def backward_pass_batched(
    Cs: np.ndarray, cs: np.ndarray, Fm: np.ndarray, fv: np.ndarray, dX: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Max-entropy LQR (module docstring) for the surrogate costs of B problems at once.

    Cs [B, T, D, D], cs [B, T, D], Fm [B, T, dX, D], fv [B, T, dX] ->
    K [B, T, dU, dX], k [B, T, dU], covar [B, T, dU, dU], failed [B] (bool).
    A problem whose Q_uu is not positive definite at some t is dropped from the sweep
    at that t (failed = True, its outputs are meaningless); the others continue.
    """
    B, T, D, _ = Cs.shape
    dU = D - dX
    K = np.zeros((B, T, dU, dX))
    k = np.zeros((B, T, dU))
    covar = np.zeros((B, T, dU, dU))
    failed = np.zeros(B, dtype=bool)
    alive = np.arange(B)
    V = np.zeros((B, dX, dX))
    v = np.zeros((B, dX))
    for t in range(T - 1, -1, -1):
        sel = slice(None) if alive.size == B else alive
        Qzz = Cs[sel, t]  # not modified in place below
        qz = cs[sel, t]
        if t < T - 1:
            F = Fm[sel, t]
            FT = mT(F)
            FtV = FT @ V
            Qzz = Qzz + FtV @ F
            qz = qz + (matvec(FT, v) + matvec(FtV, fv[sel, t]))
        Qzz = sym(Qzz)
        Quu = Qzz[:, dX:, dX:]
        try:
            L = np.linalg.cholesky(Quu)
        except np.linalg.LinAlgError:
            ok = cholesky_per_item(Quu)
            failed[alive[~ok]] = True
            alive = alive[ok]
            if alive.size == 0:
                break
            Qzz, qz = Qzz[ok], qz[ok]
            L = np.linalg.cholesky(Qzz[:, dX:, dX:])
        L_inv = _inv_lower(L)
        Quu_inv = mT(L_inv) @ L_inv
        Kt = -Quu_inv @ Qzz[:, dX:, :dX]
        kt = matvec(-Quu_inv, qz[:, dX:])
        idx = slice(None) if alive.size == B else alive
        K[idx, t] = Kt
        k[idx, t] = kt
        covar[idx, t] = Quu_inv
        Qxu = Qzz[:, :dX, dX:]
        V = sym(Qzz[:, :dX, :dX] + Qxu @ Kt)
        v = qz[:, :dX] + matvec(Qxu, kt)
    return K, k, covar, failed


def forward_pass_batched(
    K: np.ndarray, k: np.ndarray, covar: np.ndarray,
    Fm: np.ndarray, fv: np.ndarray, dyn_covar: np.ndarray, x0mu: np.ndarray, x0sigma: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """State-action marginals of B controllers under their dynamics: controllers K [B, T, dU, dX], k, covar; dynamics Fm [B, T, dX, D], fv,
    dyn_covar, x0mu [B, dX], x0sigma [B, dX, dX] -> μ [B, T, D], S [B, T, D, D]."""
    B, T, dU, dX = K.shape
    D = dX + dU
    mu = np.zeros((B, T, D))
    S = np.zeros((B, T, D, D))
    mu_x = x0mu.copy()
    S_xx = x0sigma.copy()
    for t in range(T):
        Kt = K[:, t]
        SxxKt = S_xx @ mT(Kt)
        mu[:, t, :dX] = mu_x
        mu[:, t, dX:] = matvec(Kt, mu_x) + k[:, t]
        S[:, t, :dX, :dX] = S_xx
        S[:, t, :dX, dX:] = SxxKt
        S[:, t, dX:, :dX] = mT(SxxKt)
        S[:, t, dX:, dX:] = Kt @ SxxKt + covar[:, t]
        if t < T - 1:
            F = Fm[:, t]
            S_xx = sym(F @ S[:, t] @ mT(F) + dyn_covar[:, t])
            mu_x = matvec(F, mu[:, t]) + fv[:, t]
    return mu, S


def traj_kl_batched(mu: np.ndarray, S: np.ndarray, p_terms: tuple, q_terms: tuple) -> np.ndarray:
    """Per-step E_p(x_t)[KL(p(u|x) ‖ q(u|x))] of B problems, clipped at 0: μ [B, T, D], S [B, T, D, D], (M, v, c, logdet) of p and q -> [B, T]."""
    Mp, vp, cp, ldp = p_terms
    Mq, vq, cq, ldq = q_terms
    dM = Mq - Mp
    kl = (
        0.5 * np.einsum("bti,btij,btj->bt", mu, dM, mu)
        + np.einsum("bti,bti->bt", mu, vq - vp)
        + cq
        - cp
        + 0.5 * np.einsum("btij,btji->bt", S, dM)
        + 0.5 * ldq
        - 0.5 * ldp
    )
    return np.maximum(kl, 0.0)


def predicted_cost(mu: np.ndarray, S: np.ndarray, Cm: np.ndarray, cv: np.ndarray, cc: np.ndarray) -> np.ndarray:
    """Per-step Laplace estimate of the expected cost under marginals (μ, S):
    cc_t + ½ tr(S_t Cm_t) + ½ μ_tᵀ Cm_t μ_t + μ_tᵀ cv_t.

    mu [M, T, D], S [M, T, D, D], Cm [M, T, D, D], cv [M, T, D], cc [M, T] -> [M, T].
    """
    return (
        cc
        + 0.5 * np.einsum("btij,btji->bt", S, Cm)
        + 0.5 * np.einsum("bti,btij,btj->bt", mu, Cm, mu)
        + np.einsum("bti,bti->bt", mu, cv)
    )


def controller_marginals(pol: LinearGaussianPolicy, dyn: Dynamics) -> tuple[np.ndarray, np.ndarray]:
    """forward_pass_batched of one condition's controller under its dynamics (a batch of one):
    μ [T, D], S [T, D, D]."""
    mu, S = forward_pass_batched(
        *(np.asarray(a, dtype=np.float64)[None] for a in (pol.K, pol.k, pol.covar, dyn.Fm, dyn.fv, dyn.covar, dyn.x0mu, dyn.x0sigma))
    )
    return mu[0], S[0]


def estimate_cost(pol: LinearGaussianPolicy, dyn: Dynamics, cost: QuadraticCost) -> float:
    """Laplace estimate of the expected total cost of one condition's controller pol under dyn and
    the cost model (Cm [T, D, D], cv [T, D], cc [T])."""
    mu, S = controller_marginals(pol, dyn)
    per_step = predicted_cost(mu[None], S[None], np.asarray(cost.Cm)[None], np.asarray(cost.cv)[None],
                              np.asarray(cost.cc, dtype=np.float64)[None])
    return float(np.sum(per_step[0]))


SurrogateCost = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]]
"""Optional hook of mdgps_backward_batched / c_step_batched replacing the MDGPS surrogate.

surrogate(eta [B], conditions [B]) -> (Cs [B, T, D, D], cs [B, T, D], covar_scale [B, T] or None):
the cost the backward recursion (V_T = 0, no rescaling between steps) minimises for the
conditions `conditions` (indices into the lists given to c_step_batched) at their η, and the
factor by which each step's Q_uu⁻¹ is multiplied to give the controller covariance (None = 1).
The default, no hook, is the MDGPS surrogate Cs = Cm/η + M_q, cs = cv/η + v_q, factor 1.
"""


def mdgps_backward_batched(
    eta: np.ndarray, Cm: np.ndarray, cv: np.ndarray, Mq: np.ndarray, vq: np.ndarray,
    Fm: np.ndarray, fv: np.ndarray, dX: int, cfg: TrajOptConfig, conditions: np.ndarray | None = None,
    surrogate: SurrogateCost | None = None, eta_limit: float = 1e16,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Backward pass of the MDGPS surrogate at η for B problems, raising η while Q_uu is not PD (inputs
    already checked for NaN).

    eta [B]; Cm [B, T, D, D], cv [B, T, D]; (Mq, vq) of the reference [B, T, D, D], [B, T, D];
    Fm [B, T, dX, D], fv [B, T, dX]. Each problem whose Q_uu is not PD gets its own η raised
    as η0 + δ, η0 + 2δ, η0 + 4δ, ... and is re-solved. Returns K, k, covar and the η used [B].
    `conditions` [B] are the condition numbers used in error messages (and passed to `surrogate`).
    `surrogate` (optional, see SurrogateCost) replaces Cm/η + Mq, cv/η + vq; Cm, cv, Mq, vq
    are then not used. A problem whose raised η reaches `eta_limit` (the reference's 1e16) raises
    HopelessConditions naming every such problem of that sweep.
    """
    eta = np.array(eta, dtype=np.float64)
    B = eta.shape[0]
    conditions = np.arange(B) if conditions is None else conditions
    eta0 = eta.copy()
    delta = np.full(B, float(cfg.del0))
    T, D = Cm.shape[1], Cm.shape[2]
    dU = D - dX
    K = np.zeros((B, T, dU, dX))
    k = np.zeros((B, T, dU))
    covar = np.zeros((B, T, dU, dU))
    pending = np.arange(B)
    while pending.size:
        sel = slice(None) if pending.size == B else pending
        if surrogate is None:
            e = eta[sel][:, None, None]
            Cs, cs, scale = Cm[sel] / e[..., None] + Mq[sel], cv[sel] / e + vq[sel], None
        else:
            Cs, cs, scale = surrogate(eta[sel], np.asarray(conditions)[sel])
        Kp, kp, cp, failed = backward_pass_batched(Cs, cs, Fm[sel], fv[sel], dX)
        if scale is not None:
            cp = cp * np.asarray(scale)[:, :, None, None]
        ok = ~failed
        K[pending[ok]] = Kp[ok]
        k[pending[ok]] = kp[ok]
        covar[pending[ok]] = cp[ok]
        pending = pending[failed]
        if pending.size:
            eta[pending] = eta0[pending] + delta[pending]
            delta[pending] *= 2.0
            hopeless = pending[eta[pending] >= eta_limit]
            if hopeless.size:
                limit = f"{eta_limit:.0e}".replace("e+", "e")  # 1e16, as the reference says it
                raise HopelessConditions(
                    int(conditions[hopeless[0]]),
                    f"Q_uu stayed non-positive-definite while eta was raised to {limit} "
                    "(the fitted dynamics or the policy linearisation are numerically degenerate)",
                    hopeless,
                )
    return K, k, covar, eta
