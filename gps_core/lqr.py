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

The pipeline runs the C-step of all conditions at once (c_step_batched, at the end of this
file): the same arithmetic on arrays stacked over conditions, with each condition's own dual
search. The one-condition functions (backward_pass, mdgps_backward, forward_pass, traj_kl,
c_step_reference) are the reference it is tested against; c_step is a one-condition front end
to the batched code.

Safeguards (TrajOptConfig.on_fault). When Q_uu stays indefinite while η is raised to 1e16, the
reference code aborts ("abort" keeps that). The cause is not the problem but its coordinates: with
the KL reference u = K̄x + k̄ + δu, the surrogate's KL term is ½ δuᵀ P̄ δu (P̄ = Σ̄⁻¹) whatever x is,
but written in z = [x; u] it is M_q = [[K̄ᵀP̄K̄, −K̄ᵀP̄], [−P̄K̄, P̄]], and the backward pass cancels
its x-part (V_t = Q_xx + Q_xu K_t) only up to round-off of size ε|K̄ᵀP̄K̄|. Fitted models that grow
by 1e10–1e16 over the horizon amplify that residue past P̄, at every η. "recover" (the default)
then, for that condition only:

1. solves the whole dual search again in the coordinates z' = [x; δu] (relative_problem): the
   cost Tᵀ Cm T / η + blockdiag(0, P̄), the dynamics Fm T, no cancellation, so Q_δuδu = P̄ + O(1/η)
   and raising η restores positive definiteness at a finite η; the KL is the sum of non-negative
   terms of relative_kl_batched; η may exceed max_eta (up to RELATIVE_ETA_LIMIT), which such
   models need, so out of an open bracket η steps by factors that square every round
   (_relative_eta_step). In exact arithmetic this is the same problem, so the result is the
   C-step's solution, not an approximation of it; it is kept only if its KL meets the bound
   (within the search's tolerance);
2. if that fails too (an overflowed model), keeps the KL reference itself, the η → ∞ limit of
   the C-step (KL 0, which meets any bound); its η is left at the last value tried, which the
   next iteration's dual search starts from.

A condition that does not fault is solved by the reference arithmetic alone, bit for bit as
before. `safeguard` [M] records what acted (SAFEGUARDS). With a surrogate hook (BADMM) only the
second safeguard applies (its reference is the previous controllers).

c_step_batched optionally takes a `surrogate` hook that replaces the MDGPS surrogate above by
another η-dependent cost (BADMM, gps_core/badmm.py): it returns the per-step cost in units
common to all t, solved by the same backward recursion, and the per-step factor by which
Q_uu⁻¹ is scaled to give the controller covariance. Without the hook nothing changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from gps_core.configs import TrajOptConfig
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


# --------------------------------------------------------------------------- batched over conditions
#
# The functions below compute exactly what backward_pass / mdgps_backward / forward_pass /
# traj_kl / c_step_reference compute, for B conditions at once: arrays carry a leading
# condition axis, every per-step operation is one batched numpy call, and only the
# recursions over t remain Python loops. Each condition keeps its own η, bracket,
# non-PD raising of η and convergence; the arithmetic per condition is the same as in
# the one-condition code, so results agree to floating-point round-off.


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


# What the C-step did for a condition (the `safeguard` dataset of controllers.h5 holds the index).
SAFEGUARDS = ("none", "relative_coordinates", "kl_reference")
NO_SAFEGUARD, RELATIVE_COORDINATES, KL_REFERENCE = 0, 1, 2
# The η up to which the backward pass in coordinates relative to the KL reference is raised. There
# Q_δuδu = P̄ + O(1/η) (module docstring, "Safeguards"), so positive definiteness returns at a finite
# η; the limit only stops a search whose cost or dynamics have overflowed.
RELATIVE_ETA_LIMIT = 1e300


@dataclass(frozen=True)
class BatchCStepResult:
    """C-step results of M conditions: K [M, T, dU, dX], k [M, T, dU], covar [M, T, dU, dU], the rest [M]."""

    K: np.ndarray
    k: np.ndarray
    covar: np.ndarray
    eta: np.ndarray
    kl: np.ndarray
    kl_bound: np.ndarray
    converged: np.ndarray
    dual_iterations: np.ndarray
    safeguard: np.ndarray  # [M] int8, index into SAFEGUARDS

    def __len__(self) -> int:
        return int(self.K.shape[0])

    def __getitem__(self, m: int) -> CStepResult:
        return CStepResult(
            policy=LinearGaussianPolicy(K=self.K[m], k=self.k[m], covar=self.covar[m]),
            eta=float(self.eta[m]),
            kl=float(self.kl[m]),
            kl_bound=float(self.kl_bound[m]),
            converged=bool(self.converged[m]),
            dual_iterations=int(self.dual_iterations[m]),
        )


def _mT(A: np.ndarray) -> np.ndarray:
    return A.mT  # = np.swapaxes(A, -1, -2), a view, without the function-call overhead


def _sym_b(A: np.ndarray) -> np.ndarray:
    """_sym (same arithmetic) for the batched code."""
    return 0.5 * (A + A.mT)


def _inv_lower(L: np.ndarray) -> np.ndarray:
    """np.linalg.solve(L, I) for stacked L: numpy's inv runs the same LAPACK gesv on the same
    identity right-hand side, so the result is identical, with less wrapper overhead."""
    return np.linalg.inv(L)


def _matvec(A: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Batched A @ x: A [..., n, m], x [..., m] -> [..., n]."""
    return (A @ x[..., None])[..., 0]


def quadratic_form_batched(K: np.ndarray, k: np.ndarray, covar: np.ndarray):
    """lingauss.quadratic_form and log|Σ| for controllers with any leading batch dims.

    K [..., dU, dX], k [..., dU], covar [..., dU, dU] -> M [..., D, D], v [..., D], c [...], logdet [...].
    Same operations as LinearGaussianPolicy.inv_covar / logdet_covar and quadratic_form.
    """
    L = np.linalg.cholesky(covar)
    logdet = 2.0 * np.sum(np.log(np.diagonal(_mT(L), axis1=-2, axis2=-1)), axis=-1)
    L_inv = _inv_lower(L)
    P = _mT(L_inv) @ L_inv
    PK = P @ K
    Pk = np.einsum("...uv,...v->...u", P, k)
    KT = _mT(K)
    top = np.concatenate([KT @ PK, -_mT(PK)], axis=-1)
    bottom = np.concatenate([-PK, P], axis=-1)
    M = np.concatenate([top, bottom], axis=-2)
    v = np.concatenate([np.einsum("...xu,...u->...x", KT, Pk), -Pk], axis=-1)
    c = 0.5 * np.einsum("...u,...u->...", k, Pk)
    return M, v, c, logdet


def _cholesky_per_item(A: np.ndarray) -> np.ndarray:
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
    """backward_pass for B problems at once.

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
            FT = _mT(F)
            FtV = FT @ V
            Qzz = Qzz + FtV @ F
            qz = qz + (_matvec(FT, v) + _matvec(FtV, fv[sel, t]))
        Qzz = _sym_b(Qzz)
        Quu = Qzz[:, dX:, dX:]
        try:
            L = np.linalg.cholesky(Quu)
        except np.linalg.LinAlgError:
            ok = _cholesky_per_item(Quu)
            failed[alive[~ok]] = True
            alive = alive[ok]
            if alive.size == 0:
                break
            Qzz, qz = Qzz[ok], qz[ok]
            L = np.linalg.cholesky(Qzz[:, dX:, dX:])
        L_inv = _inv_lower(L)
        Quu_inv = _mT(L_inv) @ L_inv
        Kt = -Quu_inv @ Qzz[:, dX:, :dX]
        kt = _matvec(-Quu_inv, qz[:, dX:])
        idx = slice(None) if alive.size == B else alive
        K[idx, t] = Kt
        k[idx, t] = kt
        covar[idx, t] = Quu_inv
        Qxu = Qzz[:, :dX, dX:]
        V = _sym_b(Qzz[:, :dX, :dX] + Qxu @ Kt)
        v = qz[:, :dX] + _matvec(Qxu, kt)
    return K, k, covar, failed


def forward_pass_batched(
    K: np.ndarray, k: np.ndarray, covar: np.ndarray,
    Fm: np.ndarray, fv: np.ndarray, dyn_covar: np.ndarray, x0mu: np.ndarray, x0sigma: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """forward_pass for B problems: controllers K [B, T, dU, dX], k, covar; dynamics Fm [B, T, dX, D], fv,
    dyn_covar, x0mu [B, dX], x0sigma [B, dX, dX] -> μ [B, T, D], S [B, T, D, D]."""
    B, T, dU, dX = K.shape
    D = dX + dU
    mu = np.zeros((B, T, D))
    S = np.zeros((B, T, D, D))
    mu_x = x0mu.copy()
    S_xx = x0sigma.copy()
    for t in range(T):
        Kt = K[:, t]
        SxxKt = S_xx @ _mT(Kt)
        mu[:, t, :dX] = mu_x
        mu[:, t, dX:] = _matvec(Kt, mu_x) + k[:, t]
        S[:, t, :dX, :dX] = S_xx
        S[:, t, :dX, dX:] = SxxKt
        S[:, t, dX:, :dX] = _mT(SxxKt)
        S[:, t, dX:, dX:] = Kt @ SxxKt + covar[:, t]
        if t < T - 1:
            F = Fm[:, t]
            S_xx = _sym_b(F @ S[:, t] @ _mT(F) + dyn_covar[:, t])
            mu_x = _matvec(F, mu[:, t]) + fv[:, t]
    return mu, S


def traj_kl_batched(mu: np.ndarray, S: np.ndarray, p_terms: tuple, q_terms: tuple) -> np.ndarray:
    """traj_kl for B problems: μ [B, T, D], S [B, T, D, D], (M, v, c, logdet) of p and q -> [B, T]."""
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


def _check_finite(conditions, arrays: dict[str, tuple]) -> None:
    """Raise ConditionError for the first condition whose inputs contain NaN or Inf."""
    for i, m in enumerate(conditions):
        for name, value in arrays.items():
            if not all(np.all(np.isfinite(a[i])) for a in value):
                raise ConditionError(int(m), f"the {name} contains NaN or Inf")


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
    """mdgps_backward for B problems (inputs already checked for NaN).

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


def _stack(objs, field: str) -> np.ndarray:
    return np.stack([np.asarray(getattr(o, field), dtype=np.float64) for o in objs])


def relative_problem(
    Cm: np.ndarray, cv: np.ndarray, Fm: np.ndarray, fv: np.ndarray, Kq: np.ndarray, kq: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Cost and dynamics in the coordinates z' = [x; δu] with u = K̄x + k̄ + δu (z = Tz' + t₀).

    Cm [B, T, D, D], cv [B, T, D], Fm [B, T, dX, D], fv [B, T, dX], reference K̄ = Kq [B, T, dU, dX],
    k̄ = kq [B, T, dU] -> Tᵀ Cm T, Tᵀ (cv + Cm t₀), Fm T, fv + Fm t₀ (same shapes), with
    T = [[I, 0], [K̄, I]], t₀ = [0; k̄]. The constant of the cost is dropped (it moves no controller).
    """
    B, T, D, _ = Cm.shape
    dX = Kq.shape[-1]
    Tm = np.zeros((B, T, D, D))
    Tm[..., np.arange(D), np.arange(D)] = 1.0
    Tm[..., dX:, :dX] = Kq
    t0 = np.zeros((B, T, D))
    t0[..., dX:] = kq
    TmT = _mT(Tm)
    return TmT @ Cm @ Tm, _matvec(TmT, cv + _matvec(Cm, t0)), Fm @ Tm, fv + _matvec(Fm, t0)


def relative_kl_batched(
    mu_x: np.ndarray, S_xx: np.ndarray, Kd: np.ndarray, kd: np.ndarray, covar: np.ndarray,
    P: np.ndarray, logdet_q: np.ndarray,
) -> np.ndarray:
    """Per-step E_x[KL(p(u|x) ‖ q(u|x))] for p's controller given relative to q's mean (δu = K_δx + k_δ):

        ½ [(K_δμ + k_δ)ᵀ P̄ (K_δμ + k_δ) + tr(K_δᵀ P̄ K_δ S_xx) + tr(P̄ Σ) − dU + log|Σ̄| − log|Σ|]

    mu_x [B, T, dX], S_xx [B, T, dX, dX], Kd [B, T, dU, dX], kd [B, T, dU], covar Σ [B, T, dU, dU],
    P = Σ̄⁻¹ [B, T, dU, dU], logdet_q = log|Σ̄| [B, T] -> [B, T], clipped at 0. A sum of terms that are
    each ≥ 0, so unlike traj_kl it does not lose KL = 0 to cancellation when |K̄| or S_xx are large.
    """
    dU = kd.shape[-1]
    mean = _matvec(Kd, mu_x) + kd
    gain = _mT(Kd) @ P @ Kd
    logdet_p = 2.0 * np.sum(np.log(np.diagonal(np.linalg.cholesky(covar), axis1=-2, axis2=-1)), axis=-1)
    with np.errstate(over="ignore", invalid="ignore"):
        kl = 0.5 * (
            np.einsum("btu,btuv,btv->bt", mean, P, mean)
            + np.einsum("btij,btji->bt", gain, S_xx)
            + np.einsum("btij,btji->bt", P, covar) - dU + logdet_q - logdet_p
        )
    return np.where(np.isfinite(kl), np.maximum(kl, 0.0), np.inf)


@dataclass(frozen=True)
class _Problem:
    """The stacked inputs of a batched C-step (shapes as in c_step_batched)."""

    Cm: np.ndarray
    cv: np.ndarray
    Kq: np.ndarray
    kq: np.ndarray
    Sq: np.ndarray
    Fm: np.ndarray
    fv: np.ndarray
    W: np.ndarray
    x0mu: np.ndarray
    x0sigma: np.ndarray
    q_terms: tuple
    kl_bounds: np.ndarray


def _dual_search(
    pb: _Problem, which: np.ndarray, etas: np.ndarray, cfg: TrajOptConfig, out: dict, relative: bool,
    surrogate: SurrogateCost | None = None, progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """The §7.6 dual search of the conditions `which`, written into `out`'s arrays [M, ...].

    relative=False: the reference arithmetic (backward pass on Cm/η + M_q, traj_kl). With
    cfg.on_fault "abort" a hopeless non-PD problem raises; with "recover" it leaves the search and
    is returned. relative=True: the same search in coordinates relative to the KL reference
    (relative_problem, relative_kl_batched), η raised up to RELATIVE_ETA_LIMIT. Returns the
    conditions that left the search as hopeless.
    """
    M = pb.Cm.shape[0]
    dX = pb.Kq.shape[-1]
    eta = np.array(etas, dtype=np.float64).reshape(M).copy()
    eta_lo = np.full(M, float(cfg.min_eta))
    # Relative to the reference, η above max_eta is meaningful (and needed: a fitted model that grows
    # by 1e16 over the horizon makes any departure from π̄ predict enormous cost changes).
    eta_hi = np.full(M, RELATIVE_ETA_LIMIT if relative else float(cfg.max_eta))
    Fm, fv, eta_limit, backward_cost = pb.Fm, pb.fv, 1e16, surrogate
    if relative:
        Cm_r, cv_r, Fm, fv = relative_problem(pb.Cm, pb.cv, pb.Fm, pb.fv, pb.Kq, pb.kq)
        M_rel = np.zeros_like(pb.Cm)
        M_rel[..., dX:, dX:] = pb.q_terms[0][..., dX:, dX:]  # P̄ = Σ̄⁻¹: the KL term is ½ δuᵀ P̄ δu
        eta_limit = RELATIVE_ETA_LIMIT

        def relative_cost(e, conds):
            return Cm_r[conds] / e[:, None, None, None] + M_rel[conds], cv_r[conds] / e[:, None, None], None

        backward_cost = relative_cost

    hopeless: list[int] = []
    active = np.asarray(which, dtype=np.int64)
    jump = np.full(M, 10.0)  # relative search: the factor of the next step out of an open bracket
    rnd = 0
    while rnd < cfg.max_iterations and active.size:
        a = slice(None) if active.size == M else active
        q_a = tuple(q[a] for q in pb.q_terms)
        try:
            Ka, ka, Sa, eta_a = mdgps_backward_batched(
                eta[a], pb.Cm[a], pb.cv[a], q_a[0], q_a[1], Fm[a], fv[a], dX, cfg, conditions=active,
                surrogate=backward_cost, eta_limit=eta_limit,
            )
        except HopelessConditions as exc:
            if cfg.on_fault == "abort" and not relative:
                raise
            # Leave the search; the others redo this round without them (their arithmetic per
            # condition does not depend on which conditions share the batch).
            hopeless.extend(int(m) for m in active[exc.positions])
            active = np.delete(active, exc.positions)
            continue
        rnd += 1
        if relative:
            mu, S = forward_pass_batched(Ka, ka, Sa, Fm[a], fv[a], pb.W[a], pb.x0mu[a], pb.x0sigma[a])
            kl_a = np.sum(relative_kl_batched(mu[..., :dX], S[..., :dX, :dX], Ka, ka, Sa,
                                              q_a[0][..., dX:, dX:], q_a[3]), axis=-1)
            Ka, ka = pb.Kq[a] + Ka, pb.kq[a] + ka
        else:
            mu, S = forward_pass_batched(Ka, ka, Sa, Fm[a], fv[a], pb.W[a], pb.x0mu[a], pb.x0sigma[a])
            kl_a = np.sum(traj_kl_batched(mu, S, quadratic_form_batched(Ka, ka, Sa), q_a), axis=-1)
        out["K"][active], out["k"][active], out["covar"][active] = Ka, ka, Sa
        out["kl"][active] = kl_a
        out["dual_iterations"][active] = rnd
        con = kl_a - pb.kl_bounds[a]
        done = np.abs(con) < cfg.tolerance * pb.kl_bounds[a]
        small = con < 0  # KL too small: η too large
        hi = np.where(small, eta_a, eta_hi[a])
        lo = np.where(small, eta_lo[a], eta_a)
        if relative:
            nxt = _relative_eta_step(eta_a, small, lo, hi, jump, a, cfg)
        else:
            geo = np.sqrt(lo * hi)
            nxt = np.where(small, np.maximum(geo, 0.1 * hi), np.minimum(geo, 10.0 * lo))
        eta[active] = np.where(done, eta_a, nxt)
        eta_lo[active] = np.where(done, eta_lo[a], lo)
        eta_hi[active] = np.where(done, eta_hi[a], hi)
        out["converged"][active] = done
        active = active[~done]
        if progress is not None:
            progress(M - active.size, M)
    out["eta"][np.asarray(which, dtype=np.int64)] = eta[np.asarray(which, dtype=np.int64)]
    return np.array(sorted(hopeless), dtype=np.int64)


def _relative_eta_step(
    eta: np.ndarray, small: np.ndarray, lo: np.ndarray, hi: np.ndarray, jump: np.ndarray, a, cfg: TrajOptConfig
) -> np.ndarray:
    """The next η of the relative dual search [B]: geometric bisection once the bracket [lo, hi]
    (already updated with this round's η) is closed, else a step out of its open side by a factor
    that squares every round (10, 1e2, 1e4, ...).

    The reference's rule moves η by at most 10× per round, too slow for models that need η ~ 1e50;
    this reaches any η in [min_eta, RELATIVE_ETA_LIMIT] within about ten rounds. jump [M] is updated
    in place at `a`.
    """
    open_up = ~small & (hi >= RELATIVE_ETA_LIMIT)  # KL too large and no η yet found large enough
    open_down = small & (lo <= cfg.min_eta)
    j = jump[a]
    with np.errstate(over="ignore"):  # η·jump past the limit is clipped below
        nxt = np.where(open_up, eta * j, np.where(open_down, eta / j, np.sqrt(lo) * np.sqrt(hi)))
    jump[a] = np.where(open_up | open_down, np.minimum(j * j, 1e150), j)
    return np.clip(nxt, cfg.min_eta, RELATIVE_ETA_LIMIT)


def c_step_batched(
    costs: list[QuadraticCost],
    references: list[LinearGaussianPolicy],
    dyns: list[Dynamics],
    kl_bounds: np.ndarray,
    etas: np.ndarray,
    cfg: TrajOptConfig,
    surrogate: SurrogateCost | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> BatchCStepResult:
    """c_step_reference for M conditions at once (ALGORITHM §7.6), vectorised across conditions, with
    the safeguards of the module docstring.

    Every round, the conditions that have not converged yet are solved together with their
    own η (backward pass with per-condition non-PD raising of η, forward pass, trajectory KL);
    then each updates its own bracket [η_lo, η_hi] and η exactly as c_step_reference does.
    Converged conditions drop out and keep their result. Raises ConditionError (a
    FloatingPointError naming the condition) for NaN/Inf input, and for a hopeless non-PD problem
    when cfg.on_fault is "abort". With "recover", such a condition is solved again relative to its
    KL reference (MDGPS only) or keeps the KL reference; `safeguard` [M] says which.

    `surrogate` (optional, see SurrogateCost): the η-dependent cost of the backward pass, called
    with the η and condition indices of the conditions still searching; `references` stay the KL
    reference (BADMM: the previous local controllers). The hook's own arrays are its to check for
    NaN. Without it (the default) this is the MDGPS C-step, unchanged.
    `progress(converged, M)`, if given, is called after every round of the dual search.
    """
    M = len(costs)
    Cm, cv = _stack(costs, "Cm"), _stack(costs, "cv")
    Kq, kq, Sq = _stack(references, "K"), _stack(references, "k"), _stack(references, "covar")
    Fm, fv, W = _stack(dyns, "Fm"), _stack(dyns, "fv"), _stack(dyns, "covar")
    x0mu, x0sigma = _stack(dyns, "x0mu"), _stack(dyns, "x0sigma")
    kl_bounds = np.broadcast_to(np.asarray(kl_bounds, dtype=np.float64), (M,)).copy()
    # numpy's Cholesky returns NaN rather than failing on NaN input, so check first.
    _check_finite(range(M), {"dynamics": (Fm, fv, W), "cost model": (Cm, cv), "reference controller": (Kq, kq, Sq)})
    pb = _Problem(Cm=Cm, cv=cv, Kq=Kq, kq=kq, Sq=Sq, Fm=Fm, fv=fv, W=W, x0mu=x0mu, x0sigma=x0sigma,
                  q_terms=quadratic_form_batched(Kq, kq, Sq), kl_bounds=kl_bounds)
    out = {
        "K": np.zeros(Kq.shape), "k": np.zeros(kq.shape), "covar": np.zeros(Sq.shape), "eta": np.zeros(M),
        "kl": np.full(M, np.inf), "converged": np.zeros(M, dtype=bool),
        "dual_iterations": np.zeros(M, dtype=np.int64), "safeguard": np.zeros(M, dtype=np.int8),
    }
    etas = np.array(etas, dtype=np.float64).reshape(M)
    left = _dual_search(pb, np.arange(M), etas, cfg, out, relative=False, surrogate=surrogate, progress=progress)
    if left.size and surrogate is None:
        again = _dual_search(pb, left, etas, cfg, out, relative=True)
        solved = left[~np.isin(left, again)]
        finite = [np.all(np.isfinite(out[f][solved]), axis=tuple(range(1, out[f].ndim))) for f in ("K", "k", "covar", "kl")]
        # A relative solution must meet the bound (within the search's tolerance): it is our safeguard,
        # and the KL reference is always there as a feasible point.
        feasible = out["kl"][solved] < (1.0 + cfg.tolerance) * kl_bounds[solved]
        ok = np.logical_and.reduce(finite) & feasible
        out["safeguard"][solved[ok]] = RELATIVE_COORDINATES
        left = np.concatenate([again, solved[~ok]])
    for m in left:  # the η → ∞ limit: the KL reference itself, KL 0, which meets any bound
        out["K"][m], out["k"][m], out["covar"][m] = Kq[m], kq[m], Sq[m]
        out["kl"][m], out["converged"][m] = 0.0, False  # η stays the last one tried: the next warm start
        out["safeguard"][m] = KL_REFERENCE
    return BatchCStepResult(kl_bound=kl_bounds, **out)


def c_step(
    cost: QuadraticCost,
    reference: LinearGaussianPolicy,
    dyn: Dynamics,
    kl_bound: float,
    eta: float,
    cfg: TrajOptConfig,
) -> CStepResult:
    """Dual search on η for one condition (ALGORITHM §7.6), via c_step_batched."""
    try:
        return c_step_batched([cost], [reference], [dyn], np.array([kl_bound]), np.array([eta]), cfg)[0]
    except ConditionError as exc:
        raise FloatingPointError(exc.reason) from None
