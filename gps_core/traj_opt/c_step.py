"""The C-step: the dual search over η of KL-constrained LQR, for M conditions at once, and its safeguards.

Problem of one condition (notation of gps_core/traj_opt/lqr.py):

    min_p  Σ_t E_p[ℓ_t(z_t)]   s.t.   KL(p(τ) ‖ q(τ)) ≤ ε,     ε = kl_step · step_mult · T

For MDGPS the reference q is the global-policy linearisation π̄. Dividing the Lagrangian by the
dual variable η gives the maximum-entropy LQR of lqr.mdgps_backward_batched; η is found by a
bracketing search in log η until |KL − ε| < tol · ε (ALGORITHM §7.6). c_step_batched runs it for
all conditions at once: every round, the conditions that have not converged are solved together,
each with its own η, bracket, non-PD raising of η and convergence test; converged ones drop out.
Inputs are lists of per-condition objects (QuadraticCost, LinearGaussianPolicy, Dynamics) and
kl_bounds [M], etas [M]; the result is a BatchCStepResult (K [M, T, dU, dX], k [M, T, dU],
covar [M, T, dU, dU], eta, kl, kl_bound, converged, dual_iterations, safeguard [M]).

Safeguards (TrajOptConfig.on_fault; gps_core.configs.ON_FAULT). When Q_uu stays indefinite while η
is raised to 1e16, the reference code aborts ("abort" keeps that). The cause is not the problem
but its coordinates: with the KL reference u = K̄x + k̄ + δu, the surrogate's KL term is ½ δuᵀ P̄ δu
(P̄ = Σ̄⁻¹) whatever x is, but written in z = [x; u] it is M_q = [[K̄ᵀP̄K̄, −K̄ᵀP̄], [−P̄K̄, P̄]], and the
backward pass cancels its x-part (V_t = Q_xx + Q_xu K_t) only up to round-off of size ε|K̄ᵀP̄K̄|.
Fitted models that grow by 1e10–1e16 over the horizon amplify that residue past P̄, at every η.
"recover" (the default) then, for that condition only:

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

c_step_batched optionally takes a `surrogate` hook (lqr.SurrogateCost) that replaces the MDGPS
surrogate by another η-dependent cost (BADMM, gps_core/badmm/algorithm.py): it returns the per-step cost in
units common to all t, solved by the same backward recursion, and the per-step factor by which
Q_uu⁻¹ is scaled to give the controller covariance. Without the hook nothing changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from gps_core.configs import TrajOptConfig
from gps_core.traj_opt.lingauss import LinearGaussianPolicy
from gps_core.traj_opt.lqr import (
    ConditionError, Dynamics, HopelessConditions, QuadraticCost, SurrogateCost, forward_pass_batched,
    matvec, mdgps_backward_batched, mT, quadratic_form_batched, traj_kl_batched,
)


@dataclass(frozen=True)
class CStepResult:
    """One condition's C-step result (BatchCStepResult[m]): its controller (K [T, dU, dX], ...) and the search's outcome."""

    policy: LinearGaussianPolicy
    eta: float  # warm start for the next iteration
    kl: float  # achieved KL(p ‖ q)
    kl_bound: float  # ε
    converged: bool
    dual_iterations: int


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


def _check_finite(conditions, arrays: dict[str, tuple]) -> None:
    """Raise ConditionError for the first condition whose inputs contain NaN or Inf."""
    for i, m in enumerate(conditions):
        for name, value in arrays.items():
            if not all(np.all(np.isfinite(a[i])) for a in value):
                raise ConditionError(int(m), f"the {name} contains NaN or Inf")


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
    TmT = mT(Tm)
    return TmT @ Cm @ Tm, matvec(TmT, cv + matvec(Cm, t0)), Fm @ Tm, fv + matvec(Fm, t0)


def relative_kl_batched(
    mu_x: np.ndarray, S_xx: np.ndarray, Kd: np.ndarray, kd: np.ndarray, covar: np.ndarray,
    P: np.ndarray, logdet_q: np.ndarray,
) -> np.ndarray:
    """Per-step E_x[KL(p(u|x) ‖ q(u|x))] for p's controller given relative to q's mean (δu = K_δx + k_δ):

        ½ [(K_δμ + k_δ)ᵀ P̄ (K_δμ + k_δ) + tr(K_δᵀ P̄ K_δ S_xx) + tr(P̄ Σ) − dU + log|Σ̄| − log|Σ|]

    mu_x [B, T, dX], S_xx [B, T, dX, dX], Kd [B, T, dU, dX], kd [B, T, dU], covar Σ [B, T, dU, dU],
    P = Σ̄⁻¹ [B, T, dU, dU], logdet_q = log|Σ̄| [B, T] -> [B, T], clipped at 0. A sum of terms that are
    each ≥ 0, so unlike lqr.traj_kl_batched it does not lose KL = 0 to cancellation when |K̄| or S_xx are large.
    """
    dU = kd.shape[-1]
    mean = matvec(Kd, mu_x) + kd
    gain = mT(Kd) @ P @ Kd
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

    relative=False: the reference arithmetic (backward pass on Cm/η + M_q, lqr.traj_kl_batched). With
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
    """The C-step of M conditions at once (ALGORITHM §7.6), vectorised across conditions, with the
    safeguards of the module docstring.

    Every round, the conditions that have not converged yet are solved together with their
    own η (backward pass with per-condition non-PD raising of η, forward pass, trajectory KL);
    then each updates its own bracket [η_lo, η_hi] and η by the rule of the reference code
    (η ← max(√(η_lo η_hi), η_hi/10) if the KL is too small, else min(√(η_lo η_hi), 10 η_lo)).
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
