"""PILQR's model-based pieces (Chebotar et al., ICML 2017; the reference's TrajOptPILQR and
AlgorithmTrajOptPILQR): the LQR step with one KL constraint per time step, the cost each sample is
predicted to have under the linear-quadratic model, and the `res_percent` step rule.

Notation of gps_core/traj_opt/lqr.py (z_t = [x_t; u_t], D = dX + dU); the PI2 step that follows the
LQR step is gps_core/traj_opt/pi2.py.

1. LQR step with per-step constraints (lqr_step_batched). For each condition

       min_p Σ_t E_p[ℓ_t]   s.t.   KL_t(p ‖ q) ≤ ε_t = base_kl_step_t · step_mult_t   for every t

   (no factor T: per_step_kl_bounds), q the KL reference (the previous controller for PILQR alone,
   the global policy's linearisation for MDGPS-PILQR). One dual variable η_t per step; the
   backward pass (per_step_backward_batched) differs from the scalar C-step's in two ways, both the
   reference's: the value function is the cost-to-go of the *unaugmented* cost under the new
   controller's mean (V_t = sym(Q_xx + KᵀQ_uu K + 2 Q_xu K), v_t = q_x + Kᵀq_u + KᵀQ_uu k + Q_xu k), and
   only the action block at step t sees η_t:

       A_t = Q_uu/η_t + P̄_t,   K_t = −A_t⁻¹ (Q_ux/η_t − P̄_t K̄_t),   k_t = −A_t⁻¹ (q_u/η_t − P̄_t k̄_t),
       Σ_t = A_t⁻¹                                                      (P̄ = Σ̄⁻¹ of the reference)

   So a large η_t keeps step t at the reference, a small one takes the greedy LQR action with a
   covariance shrinking like η_t Q_uu⁻¹. KL_t is lqr.traj_kl_batched under the new controller's own
   state-action marginals (the reference's default, use_prev_distr off). The search, as the
   reference's: up to `bisection_iterations` rounds in which every η_t moves in its own bracket
   [min_eta, max_eta] by the scalar C-step's rule (§7.6), then, if some step is still off, up to
   `adam_iterations` Adam steps on η_0 … η_{T−2} with gradient KL_t − ε_t (η_{T−1} keeps its
   last bracketed value: the reference's choice, kept). Converged when |KL_t − ε_t| < tolerance·ε_t at
   every t. The η carried out is the search's last state: at convergence the η of the returned
   controller, otherwise the next one it would have tried (the reference's warm start).

2. predicted_costs: each sample's per-step cost as the model predicts it, rolling the sampling
   controller through the mean fitted dynamics from x0mu with that sample's own exploration noise
   (no dynamics noise, no covariance trace term), and residual_costs = sampled − predicted.

3. The `res_percent` step rule (res_percent_ratios, res_percent_step): the share of the cost to go
   that the model misses decides per step whether the KL step halves, doubles or stays.

4. The whole update (pilqr_update_batched, pilqr_update): the LQR step (1), the residual (2), then PI2
   (gps_core/traj_opt/pi2.py) on the samples re-expressed with the LQR step's controller, its
   temperatures fitted on the full sampled cost and applied to the residual; K and the η carried
   from the LQR step, k and the covariance from PI2.

Where the reference is ill-defined we chose (documented at each function): a non-PD action block at
t = 0 raises η_0 like any other step (the reference's pass stops there with its t = 0 entries NaN,
its failure flag being the step index 0, and its KL then ends the run in a ValueError "array must not
contain infs or NaNs"); a step rule ratio that is NaN (0/0) keeps the multiplier (as the reference's
comparisons do); non-PD raising of η_t is η_t + δ, + 2δ, + 4δ, … cumulatively (the reference's
in-place update, δ reset to del0 by every backward pass).

Checked against the reference's own code run (TrajOptLQRPython.update with cons_per_step,
traj_distr_kl, approximated_cost, AlgorithmTrajOptPILQR._stepadjust, TrajOptPILQR.update; the
traj-opt form and the MDGPS form, whose KL reference is the policy linearisation
pol_info.traj_distr() while the residual still rolls the sampling controller; with cons_per_step its
compute_costs(augment=False) hands the backward pass the plain Cm, cv: the policy-KL terms and
max_ent_traj of its MDGPS compute_costs take no part) on random problems
(T 5-20, dX 2-6, dU 1-3, N 5-20, 2 conditions; 80 problems, 70135 reference backward passes, 91 of
them with a non-PD raise at t > 0): K, k, covariance, η and per-step KL of the LQR step agree to
1e-11 relative, the predicted costs, residuals and step-rule ratios to 3e-15, the new step_mult
exactly; in the whole update K and the carried η to 1e-11, k and the covariance to 1e-11 given the
reference's PI2 temperatures and otherwise by its L-BFGS-B error (pi2.py). Where the reference
fails (an action block still indefinite at η = 1e16), ours raises HopelessConditions (on_fault
"abort"; "recover": Safeguards below) for the same conditions (checked one by one on three such
problems), except the t = 0 case above; with the reference's flag made truthy at t = 0 (its own
raise applied there), it too succeeds on those problems and equals ours to round-off (8 problems
checked).
tests/test_pilqr.py keeps one such case (tests/data/pilqr_reference_case.npz).

Safeguards (PILQRConfig.on_fault; gps_core.configs.ON_FAULT), per condition, so that a run never
stops on numerics. "abort" raises where the reference fails (HopelessConditions, ConditionError).
"recover" (the default):
  (1) an action block still indefinite at η_t = ETA_LIMIT in the LQR step: that condition keeps its KL
      reference controller (the η → ∞ limit of every step: KL 0, the conservative answer); its η is
      carried as the search left it (the last η a backward pass completed with, not the raised one),
      its kl is 0, converged False, and PI2 is not run for it (safeguard "kl_reference");
  (2) PI2 failing on the residual (non-finite predicted costs, or weights so concentrated, e.g.
      one-hot under a residual off by 1e20, that no temperature below 1e16 gives a positive definite
      covariance): that condition takes the LQR step's controller, PILQR without its PI2 correction
      (safeguard "lqr_step"). A configuration PI2 refuses whatever the numbers (N ≤ dU without
      damping) still raises;
  (3) an LQR step whose search ended without converging and with Σ_t KL_t > PILQRConfig.max_kl_overshoot (10) ×
      Σ_t ε_t: also the KL reference (safeguard "kl_reference", kl 0, converged False). Measured on
      Pusher (MDGPS-PILQR, 5 samples): 25 of 360 condition-iterations ended above 100× their bound, up
      to Σ KL 1.7e6 against 30, and the S-step then trained the network on those controllers. The
      reference keeps them.
In the LQR step itself, an action block A_t that has a Cholesky factor but whose inverse (the step's
covariance) has none counts as indefinite and raises η_t (per_step_backward_batched,
_usable_action_blocks): the reference's KL then stops on that covariance; elsewhere nothing changes.
The conditions a safeguard acted on have NaN in the PI2 fields of the result (temperatures, weights,
weights_kl, ml_covar) and temperature_raised False. Where no safeguard acts the result is the same,
bit for bit, under either setting. A cheaper, better-founded answer to (1) would be c_step.py's: the
backward pass in coordinates relative to the KL reference, whose action block is P̄ + O(1/η) and so
becomes positive definite at a finite η; not built here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gps_core.configs import PI2Config, PILQRConfig
from gps_core.traj_opt.lingauss import LinearGaussianPolicy
from gps_core.traj_opt.lqr import (
    ConditionError, Dynamics, HopelessConditions, QuadraticCost, cholesky_per_item, forward_pass_batched, matvec,
    mT, quadratic_form_batched, sym, traj_kl_batched,
)
from gps_core.traj_opt.pi2 import costs_to_go, pi2_feedforward_update, pi2_temperatures, resampled_feedforward

# η_t at which a step whose action block stays indefinite is given up (the reference's 1e16).
ETA_LIMIT = 1e16

# What the PILQR update did for a condition (module docstring, "Safeguards"); `safeguard` [M] holds the index.
SAFEGUARDS = ("none", "kl_reference", "lqr_step")
NO_SAFEGUARD, KL_REFERENCE, LQR_STEP = 0, 1, 2


# --------------------------------------------------------------------------- KL bounds and schedules


def schedule(endpoints: tuple[float, float], T: int) -> np.ndarray:
    """A per-step schedule [T] linear from endpoints[0] at t = 0 to endpoints[1] at t = T−1.

    The reference writes its schedules as np.linspace(a, b, 100), which fits only T = 100; this is
    the same array there and stretches to any other T.
    """
    return np.linspace(float(endpoints[0]), float(endpoints[1]), T)


def per_step_kl_bounds(base_kl_step: np.ndarray, step_mult: np.ndarray) -> np.ndarray:
    """ε_t = base_kl_step_t · step_mult_t (no factor T, unlike the scalar C-step's ε = kl·mult·T).

    base_kl_step [T] (or scalar), step_mult [..., T] (or scalar) -> [..., T].
    """
    return np.asarray(base_kl_step, dtype=np.float64) * np.asarray(step_mult, dtype=np.float64)


# --------------------------------------------------------------------------- 1. the LQR step, per-step KL


def per_step_backward_batched(
    eta: np.ndarray, Cm: np.ndarray, cv: np.ndarray, Kq: np.ndarray, kq: np.ndarray, Pq: np.ndarray,
    Fm: np.ndarray, fv: np.ndarray, del0: float, conditions: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Backward pass with one η per step (module docstring, 1) for B problems.

    eta [B, T] (not modified); cost Cm [B, T, D, D], cv [B, T, D]; reference K̄ = Kq [B, T, dU, dX],
    k̄ = kq [B, T, dU], P̄ = Σ̄⁻¹ = Pq [B, T, dU, dU]; dynamics Fm [B, T, dX, D], fv [B, T, dX] ->
    K [B, T, dU, dX], k [B, T, dU], covar [B, T, dU, dU], eta used [B, T].

    Where A_t = Q_uu/η_t + P̄_t is not positive definite, η_t is raised in place of the step
    (η_t + δ, then + 2δ, + 4δ, … cumulatively, δ = del0) until it is; the steps after t do not
    depend on η_t, so this is the reference's re-run of the whole pass, without re-running it.
    A step whose η_t reaches ETA_LIMIT raises HopelessConditions (`conditions` [B] name them).
    """
    eta = np.array(eta, dtype=np.float64)
    B, T, D, _ = Cm.shape
    dU, dX = Kq.shape[-2], Kq.shape[-1]
    conditions = np.arange(B) if conditions is None else np.asarray(conditions)
    K = np.zeros((B, T, dU, dX))
    k = np.zeros((B, T, dU))
    covar = np.zeros((B, T, dU, dU))
    V = np.zeros((B, dX, dX))
    v = np.zeros((B, dX))
    # P̄K̄ and P̄k̄ are the reference's pull on the gains; they do not depend on η.
    PK, Pk = Pq @ Kq, matvec(Pq, kq)
    for t in range(T - 1, -1, -1):
        Qzz, qz = Cm[:, t], cv[:, t]
        if t < T - 1:
            FT = mT(Fm[:, t])
            FtV = FT @ V
            Qzz = Qzz + FtV @ Fm[:, t]
            qz = qz + (matvec(FT, v) + matvec(FtV, fv[:, t]))
        Qzz = sym(Qzz)
        Quu, Qux, qu = Qzz[:, dX:, dX:], Qzz[:, dX:, :dX], qz[:, dX:]
        inv_eta = 1.0 / eta[:, t]
        A = inv_eta[:, None, None] * Quu + Pq[:, t]
        usable = _usable_action_blocks(A)
        for b in np.flatnonzero(~usable):
            delta = float(del0)
            while not _usable_action_blocks(A[b:b + 1])[0]:
                eta[b, t] += delta
                delta *= 2.0
                if eta[b, t] >= ETA_LIMIT:
                    raise HopelessConditions(
                        int(conditions[b]),
                        f"Q_uu/eta + Sigma_ref^-1 at step {t} stayed non-positive-definite while "
                        "eta was raised to 1e16 (the fitted dynamics or cost are numerically degenerate)",
                        np.array([b]),
                    )
                A[b] = (1.0 / eta[b, t]) * Quu[b] + Pq[b, t]
        inv_eta = 1.0 / eta[:, t]
        L = np.linalg.cholesky(A)
        L_inv = np.linalg.inv(L)
        A_inv = mT(L_inv) @ L_inv
        Kt = -A_inv @ (inv_eta[:, None, None] * Qux - PK[:, t])
        kt = -matvec(A_inv, inv_eta[:, None] * qu - Pk[:, t])
        K[:, t], k[:, t], covar[:, t] = Kt, kt, A_inv
        # The unaugmented cost-to-go of the new controller's mean: Q at u = K x + k.
        Qxu = Qzz[:, :dX, dX:]
        KtT = mT(Kt)
        V = sym(Qzz[:, :dX, :dX] + KtT @ Quu @ Kt + 2.0 * (Qxu @ Kt))
        v = qz[:, :dX] + matvec(KtT, qu) + matvec(KtT @ Quu, kt) + matvec(Qxu, kt)
    return K, k, covar, eta


def _usable_action_blocks(A: np.ndarray) -> np.ndarray:
    """[B] bool: A [B, dU, dU] has a Cholesky factor, and so has its inverse, the step's new covariance.

    The reference raises η only where A has none. A can pass that and still be so ill-conditioned
    (measured on Pusher: condition 1.3e17) that its inverse has none; the reference's KL then fails on
    that covariance (numpy's LinAlgError, the run stops). Here such a step raises η the same way, which
    changes nothing where the reference runs through. Batched first, item by item only on a failure."""
    try:
        L = np.linalg.cholesky(A)
    except np.linalg.LinAlgError:
        ok = cholesky_per_item(A)
        if ok.any():
            ok[ok] = _usable_action_blocks(A[ok])
        return ok
    L_inv = np.linalg.inv(L)
    covar = mT(L_inv) @ L_inv
    try:
        np.linalg.cholesky(covar)
        return np.ones(A.shape[0], dtype=bool)
    except np.linalg.LinAlgError:
        return cholesky_per_item(covar)


@dataclass(frozen=True)
class PerStepLQRResult:
    """The per-step LQR step of M conditions: K [M, T, dU, dX], k [M, T, dU], covar [M, T, dU, dU];
    eta, kl, kl_bound [M, T]; converged, bisection_rounds, adam_rounds [M]; safeguard [M] int8 (index
    into SAFEGUARDS: NO_SAFEGUARD, or KL_REFERENCE where the step was hopeless and the controller is
    the KL reference).

    eta is the warm start of the next iteration (module docstring, 1); kl the per-step KL of the
    returned controller against the reference; a round is one backward and forward pass.
    """

    K: np.ndarray
    k: np.ndarray
    covar: np.ndarray
    eta: np.ndarray
    kl: np.ndarray
    kl_bound: np.ndarray
    converged: np.ndarray
    bisection_rounds: np.ndarray
    adam_rounds: np.ndarray
    safeguard: np.ndarray

    def __len__(self) -> int:
        return int(self.K.shape[0])

    def policy(self, m: int) -> LinearGaussianPolicy:
        """Condition m's controller."""
        return LinearGaussianPolicy(K=self.K[m], k=self.k[m], covar=self.covar[m])


def _stack(objs, field: str) -> np.ndarray:
    return np.stack([np.asarray(getattr(o, field), dtype=np.float64) for o in objs])


def lqr_step_batched(
    costs: list[QuadraticCost],
    references: list[LinearGaussianPolicy],
    dyns: list[Dynamics],
    kl_bounds: np.ndarray,
    etas: np.ndarray | float | None,
    cfg: PILQRConfig,
) -> PerStepLQRResult:
    """PILQR's LQR step with per-step KL constraints (module docstring, 1) for M conditions at once.

    costs, references (the KL reference q of each condition), dyns: lists of M; kl_bounds ε [M, T]
    (per_step_kl_bounds; anything that broadcasts); etas: the warm start [M, T] (a scalar or None:
    that value, or 1.0, at every step, as the reference's first iteration). Conditions that have
    converged leave the search; the others go on, each with its own brackets and Adam state.
    Raises ConditionError for NaN/Inf input. An action block that stays indefinite raises
    HopelessConditions under cfg.on_fault "abort" (the reference aborts there too); under "recover"
    that condition leaves the search with its KL reference as controller (module docstring,
    "Safeguards"), the others go on.
    """
    if cfg.on_fault not in ("recover", "abort"):
        raise ValueError(f"on_fault must be 'recover' or 'abort', got {cfg.on_fault!r}")
    M = len(costs)
    Cm, cv = _stack(costs, "Cm"), _stack(costs, "cv")
    Kq, kq, Sq = _stack(references, "K"), _stack(references, "k"), _stack(references, "covar")
    Fm, fv, W = _stack(dyns, "Fm"), _stack(dyns, "fv"), _stack(dyns, "covar")
    x0mu, x0sigma = _stack(dyns, "x0mu"), _stack(dyns, "x0sigma")
    T, dX = Kq.shape[1], Kq.shape[-1]
    for m in range(M):  # numpy's Cholesky returns NaN rather than failing on NaN input
        for name, arrays in (("dynamics", (Fm, fv, W)), ("cost model", (Cm, cv)), ("reference controller", (Kq, kq, Sq))):
            if not all(np.all(np.isfinite(a[m])) for a in arrays):
                raise ConditionError(m, f"the {name} contains NaN or Inf")
    eps = np.broadcast_to(np.asarray(kl_bounds, dtype=np.float64), (M, T)).copy()
    eta = np.broadcast_to(np.asarray(1.0 if etas is None else etas, dtype=np.float64), (M, T)).copy()
    q_terms = quadratic_form_batched(Kq, kq, Sq)
    Pq = q_terms[0][..., dX:, dX:]  # Σ̄⁻¹, the action block of M_q

    out_K, out_k, out_covar = np.zeros(Kq.shape), np.zeros(kq.shape), np.zeros(Sq.shape)
    out_kl = np.full((M, T), np.inf)
    converged = np.zeros(M, dtype=bool)
    hopeless = np.zeros(M, dtype=bool)
    rounds = {"bisection": np.zeros(M, dtype=np.int64), "adam": np.zeros(M, dtype=np.int64)}

    def solve(active: np.ndarray, phase: str) -> np.ndarray:
        """One round for the conditions `active`: backward and forward pass, per-step KL; returns
        KL_t − ε_t [len(active), T] and drops converged conditions from the search. Under "recover"
        a hopeless condition is marked, given its reference, and its row of KL_t − ε_t is 0."""
        full = active
        while True:
            a = slice(None) if active.size == M else active
            try:
                Ka, ka, Sa, eta_a = per_step_backward_batched(
                    eta[a], Cm[a], cv[a], Kq[a], kq[a], Pq[a], Fm[a], fv[a], cfg.del0, conditions=active)
                break
            except HopelessConditions as err:
                if cfg.on_fault == "abort":
                    raise
                bad = active[np.asarray(err.positions)]
                hopeless[bad] = True
                out_K[bad], out_k[bad], out_covar[bad], out_kl[bad] = Kq[bad], kq[bad], Sq[bad], 0.0
                active = active[~hopeless[active]]
                if not active.size:
                    return np.zeros((full.size, T))
        mu, S = forward_pass_batched(Ka, ka, Sa, Fm[a], fv[a], W[a], x0mu[a], x0sigma[a])
        kl = traj_kl_batched(mu, S, quadratic_form_batched(Ka, ka, Sa), tuple(q[a] for q in q_terms))
        eta[a] = eta_a
        out_K[a], out_k[a], out_covar[a], out_kl[a] = Ka, ka, Sa, kl
        rounds[phase][a] += 1
        con = kl - eps[a]
        converged[a] = np.all(np.abs(con) < cfg.tolerance * eps[a], axis=1)
        if active.size == full.size:
            return con
        con_full = np.zeros((full.size, T))
        con_full[~hopeless[full]] = con
        return con_full

    # Phase 1: every η_t in its own bracket, moved by the scalar C-step's rule.
    lo = np.full((M, T), float(cfg.min_eta))
    hi = np.full((M, T), float(cfg.max_eta))
    active = np.arange(M)
    for _ in range(cfg.bisection_iterations):
        if not active.size:
            break
        con = solve(active, "bisection")
        keep = ~(converged[active] | hopeless[active])
        active, con = active[keep], con[keep]
        if not active.size:
            break
        e = eta[active]
        small = con < 0  # KL too small: η_t too large
        hi[active] = np.where(small, e, hi[active])
        lo[active] = np.where(small, lo[active], e)
        geo = np.sqrt(lo[active] * hi[active])
        eta[active] = np.where(small, np.maximum(geo, 0.1 * hi[active]), np.minimum(geo, 10.0 * lo[active]))

    # Phase 2: Adam on η_0 … η_{T−2} (ascent on KL_t − ε_t: too much KL raises η_t).
    m_b = np.zeros((M, T - 1))
    v_b = np.zeros((M, T - 1))
    b1, b2 = cfg.adam_beta1, cfg.adam_beta2
    for itr in range(cfg.adam_iterations):
        if not active.size:
            break
        con = solve(active, "adam")
        keep = ~(converged[active] | hopeless[active])
        active, con = active[keep], con[keep][:, :-1]
        if not active.size:
            break
        m_b[active] = b1 * m_b[active] + (1.0 - b1) * con
        v_b[active] = b2 * v_b[active] + (1.0 - b2) * np.square(con)
        m_u = m_b[active] / (1.0 - b1 ** (itr + 1))
        v_u = v_b[active] / (1.0 - b2 ** (itr + 1))
        step = eta[active, :-1] + cfg.adam_lr * m_u / (np.sqrt(v_u) + cfg.adam_eps)
        eta[active, :-1] = np.minimum(np.maximum(step, cfg.min_eta), cfg.max_eta)

    if cfg.on_fault == "recover":
        # (3) a search that ended far outside its trust region: the KL reference, as for (1).
        overshot = ~converged & ~hopeless & (out_kl.sum(axis=1) > cfg.max_kl_overshoot * eps.sum(axis=1))
        out_K[overshot], out_k[overshot], out_covar[overshot], out_kl[overshot] = (
            Kq[overshot], kq[overshot], Sq[overshot], 0.0)
        hopeless |= overshot
    return PerStepLQRResult(
        K=out_K, k=out_k, covar=out_covar, eta=eta, kl=out_kl, kl_bound=eps, converged=converged,
        bisection_rounds=rounds["bisection"], adam_rounds=rounds["adam"],
        safeguard=np.where(hopeless, KL_REFERENCE, NO_SAFEGUARD).astype(np.int8),
    )


# --------------------------------------------------------------------------- 2. predicted and residual costs


def predicted_costs_batched(
    K: np.ndarray, k: np.ndarray, chol: np.ndarray, Fm: np.ndarray, fv: np.ndarray, x0mu: np.ndarray,
    noise: np.ndarray, Cm: np.ndarray, cv: np.ndarray, cc: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Each sample's per-step cost as the linear-quadratic model predicts it, for B conditions.

    Sampling controllers K [B, T, dU, dX], k [B, T, dU], chol [B, T, dU, dU] (upper Cholesky factor
    of their covariance); mean dynamics Fm [B, T, dX, D], fv [B, T, dX]; x0mu [B, dX]; the samples'
    exploration noise [B, N, T, dU]; cost model Cm [B, T, D, D], cv [B, T, D], cc [B, T] ->
    z [B, N, T, D] (the predicted states and actions) and cost [B, N, T], with

        x_0 = x0mu,  u_t = K_t x_t + k_t + chol_tᵀ ε_t,  x_{t+1} = Fm_t z_t + fv_t,
        cost_t = cc_t + ½ z_tᵀ Cm_t z_t + z_tᵀ cv_t

    (no dynamics noise and no covariance trace: the model's prediction for that noise sequence).
    """
    B, N, T, dU = noise.shape
    dX = K.shape[-1]
    z = np.zeros((B, N, T, dX + dU))
    x = np.broadcast_to(np.asarray(x0mu, dtype=np.float64)[:, None, :], (B, N, dX))
    for t in range(T):
        u = (np.einsum("bux,bnx->bnu", K[:, t], x) + k[:, t, None, :]
             + np.einsum("bvu,bnv->bnu", chol[:, t], noise[:, :, t]))
        z[:, :, t, :dX], z[:, :, t, dX:] = x, u
        if t < T - 1:
            x = np.einsum("bxd,bnd->bnx", Fm[:, t], z[:, :, t]) + fv[:, t, None, :]
    cost = (
        np.asarray(cc, dtype=np.float64)[:, None, :]
        + 0.5 * np.einsum("bnti,btij,bntj->bnt", z, Cm, z)
        + np.einsum("bnti,bti->bnt", z, cv)
    )
    return z, cost


def predicted_costs(pol: LinearGaussianPolicy, dyn: Dynamics, cost: QuadraticCost, noise: np.ndarray) -> np.ndarray:
    """predicted_costs_batched of one condition: the sampling controller pol, its fitted dynamics
    (mean part and x0mu), cost model, and the samples' noise [N, T, dU] -> predicted cost [N, T]."""
    arrays = (pol.K, pol.k, pol.chol, dyn.Fm, dyn.fv, dyn.x0mu, noise, cost.Cm, cost.cv, cost.cc)
    _, c = predicted_costs_batched(*(np.asarray(a, dtype=np.float64)[None] for a in arrays))
    return c[0]


def sampling_residual(
    costs: list[QuadraticCost], sampling: list[LinearGaussianPolicy], dyns: list[Dynamics], sampled: np.ndarray,
    noise: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """predicted [M, N, T] (predicted_costs_batched of the controllers that drew the samples, through each
    condition's mean dynamics from its x0mu, with each sample's noise [M, N, T, dU]) and residual [M, N, T] =
    sampled − predicted, of M conditions: what PILQR's PI2 step and its res_percent rule both use."""
    chol = np.stack([np.asarray(p.chol, dtype=np.float64) for p in sampling])
    _, predicted = predicted_costs_batched(
        _stack(sampling, "K"), _stack(sampling, "k"), chol, _stack(dyns, "Fm"), _stack(dyns, "fv"),
        _stack(dyns, "x0mu"), np.asarray(noise, dtype=np.float64), _stack(costs, "Cm"), _stack(costs, "cv"),
        _stack(costs, "cc"))
    return predicted, residual_costs(sampled, predicted)


def residual_costs(sampled: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """What the model misses: sampled [..., N, T] − predicted [..., N, T] (the cost PI2 then optimises)."""
    return np.asarray(sampled, dtype=np.float64) - np.asarray(predicted, dtype=np.float64)


# --------------------------------------------------------------------------- 3. the res_percent step rule


@dataclass(frozen=True)
class StepRuleResult:
    """The res_percent rule's decision: ratio, step_mult and direction [T] (or [] with per-step
    constraints off). direction: −1 halved, +1 doubled, 0 kept, before the clip to the schedules."""

    ratio: np.ndarray
    step_mult: np.ndarray
    direction: np.ndarray


def res_percent_ratios(residual: np.ndarray, sampled: np.ndarray, per_step: bool = True) -> np.ndarray:
    """The residual's share of the cost to go: residual, sampled [N, T] -> ratio [T] (per_step) or [].

        ratio_t = mean_i Σ_{s≥t} |residual_is| / mean_i Σ_{s≥t} |sampled_is|

    per_step=False: ratio_0, the whole trajectory's share. The sign of the residual does not matter
    (the reference takes predicted − sampled here). Summed slice by slice as the reference does, so
    a ratio at a threshold decides the same way; 0/0 gives NaN, which res_percent_step keeps.
    """
    res, act = np.abs(np.asarray(residual, dtype=np.float64)), np.abs(np.asarray(sampled, dtype=np.float64))
    starts = range(res.shape[1]) if per_step else (0,)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.array([np.mean(np.sum(res[:, t:], axis=1)) / np.mean(np.sum(act[:, t:], axis=1)) for t in starts])
    return ratio if per_step else ratio[0]


def res_percent_step(
    ratio: np.ndarray, step_mult: np.ndarray, min_step_mult: np.ndarray, max_step_mult: np.ndarray,
    dec: float, inc: float,
) -> StepRuleResult:
    """The step rule: ratio > dec halves step_mult, ratio < inc doubles it (strict inequalities;
    a NaN ratio keeps it); then min(·, max_step_mult), then max(·, min_step_mult), so where the
    schedules cross the floor wins (as the reference).

    ratio, step_mult, min_step_mult, max_step_mult: [T] (or scalars; they broadcast).
    """
    ratio = np.asarray(ratio, dtype=np.float64)
    direction = np.where(ratio > dec, -1, np.where(ratio < inc, 1, 0)).astype(np.int8)
    factor = np.where(direction < 0, 0.5, np.where(direction > 0, 2.0, 1.0))
    new = np.maximum(np.minimum(factor * np.asarray(step_mult, dtype=np.float64), max_step_mult), min_step_mult)
    return StepRuleResult(ratio=ratio, step_mult=new, direction=direction)


def res_percent_rule(
    residual: np.ndarray, sampled: np.ndarray, step_mult: np.ndarray, cfg: PILQRConfig,
) -> StepRuleResult:
    """res_percent_ratios then res_percent_step with cfg's thresholds and schedules (stretched to T),
    per step or for the whole trajectory as cfg.cons_per_step says. residual, sampled [N, T] are of the
    current samples, the residual taken with the controller that drew them; step_mult [T] or scalar."""
    T = np.shape(sampled)[1]
    ratio = res_percent_ratios(residual, sampled, per_step=cfg.cons_per_step)
    lo, hi = schedule(cfg.min_step_mult, T), schedule(cfg.max_step_mult, T)
    if not cfg.cons_per_step:
        # One multiplier of ε = Σ_t kl_t · mult: the schedules' means bound it (the reference's
        # array schedules would make it an array here, and its scalar C-step then fails).
        lo, hi = float(np.mean(lo)), float(np.mean(hi))
    return res_percent_step(ratio, step_mult, lo, hi, cfg.step_rule_res_ratio_dec, cfg.step_rule_res_ratio_inc)


# --------------------------------------------------------------------------- 4. the whole PILQR update


@dataclass(frozen=True)
class PILQRResult:
    """The PILQR update of M conditions (pilqr_update_batched), with what a run needs to check it.

    The new controllers: K [M, T, dU, dX] (the LQR step's), k [M, T, dU] and covar [M, T, dU, dU]
    (PI2's); eta [M, T], the η to carry to the next iteration (the LQR step's).
    lqr: the LQR step (PerStepLQRResult: its controller K, k, covar before PI2, its eta, per-step kl
    and kl_bound [M, T], converged and rounds [M]).
    predicted [M, N, T]: each sample's cost as the model predicts it under the sampling controller;
    residual [M, N, T] = sampled − predicted; residual_ratio [M, T]: the residual's share of the cost
    to go from each step (res_percent_ratios; ratio_0 is the whole trajectory's share).
    fitted_temperatures [M, T]: PI2's η_t fitted on the full sampled cost (their weights of the full
    cost have KL kl_threshold to uniform, or less at min_temperature); temperatures [M, T]: the η_t
    the residual's weights were computed with (the fitted ones, raised where temperature_raised
    [M, T] says the covariance was not positive definite); weights [M, T, N]: those weights;
    weights_kl [M, T]: their KL to uniform, NOT bounded by kl_threshold (up to log N);
    ml_covar [M, T, dU, dU]: PI2's weighted maximum-likelihood covariance before damping.
    safeguard [M] int8: index into SAFEGUARDS of what acted (module docstring, "Safeguards"); where
    one did, the controller is the KL reference or the LQR step's and the PI2 fields are NaN.
    """

    K: np.ndarray
    k: np.ndarray
    covar: np.ndarray
    eta: np.ndarray
    lqr: PerStepLQRResult
    predicted: np.ndarray
    residual: np.ndarray
    residual_ratio: np.ndarray
    fitted_temperatures: np.ndarray
    temperatures: np.ndarray
    temperature_raised: np.ndarray
    weights: np.ndarray
    weights_kl: np.ndarray
    ml_covar: np.ndarray
    safeguard: np.ndarray

    def __len__(self) -> int:
        return int(self.K.shape[0])

    def policy(self, m: int) -> LinearGaussianPolicy:
        """Condition m's new controller."""
        return LinearGaussianPolicy(K=self.K[m], k=self.k[m], covar=self.covar[m])


def pilqr_update_batched(
    costs: list[QuadraticCost],
    sampling: list[LinearGaussianPolicy],
    dyns: list[Dynamics],
    sampled_costs: np.ndarray,
    noise: np.ndarray,
    kl_bounds: np.ndarray,
    etas: np.ndarray | float | None,
    cfg: PILQRConfig,
    pi2_cfg: PI2Config,
    references: list[LinearGaussianPolicy] | None = None,
) -> PILQRResult:
    """PILQR's update of M conditions (Chebotar et al. 2017; the reference's TrajOptPILQR.update).

    costs: the quadratic cost models (Cm, cv, cc) of the M conditions; sampling: the controllers the
    samples were drawn with (u = K x + k + chol(Σ)ᵀ ε, chol upper); dyns: the fitted dynamics (mean,
    covariance, x0mu, x0sigma); sampled_costs [M, N, T]: each sample's per-step cost as the cost
    function gave it (including any term the model does not have); noise [M, N, T, dU]: each sample's
    exploration noise ε; kl_bounds [M, T] (per_step_kl_bounds, anything that broadcasts); etas: the
    LQR step's warm start [M, T] (None: 1.0, the first iteration); references: the KL reference of the
    LQR step (None: the sampling controllers, PILQR alone; the global policy's linearisation for
    MDGPS-PILQR). N is the same for every condition.

    1. The LQR step (lqr_step_batched) from the reference against it, per-step bounds, warm start etas.
    2. predicted = predicted_costs_batched with the SAMPLING controller (the reference's
       approximated_cost(samples, prev_traj_distr, traj_info): the controller the samples were drawn
       with, not the LQR step's) through the mean dynamics from the fitted x0mu (traj_info.x0mu, the
       same x0mu the LQR step's forward pass starts from, not the samples' own initial states);
       residual = sampled − predicted (the reference's cs − c_approx).
    3. PI2 (pi2_feedforward_update) on the feedforward samples k_lqr + chol(Σ_lqr)ᵀ ε_i
       (resampled_feedforward). The reference forms them as U_lqr − K_lqr x with
       U_lqr = K_lqr x + k_lqr + chol_lqrᵀ ε, so only the LQR step's controller enters, its K cancels,
       and the samples' states and actions are not needed. The damping's old covariance is the LQR
       step's. The temperatures are fitted on the costs-to-go of the FULL sampled cost
       (pi2_temperatures with pi2_cfg.kl_threshold and min_temperature) and then applied to the
       costs-to-go of the RESIDUAL. Quirk of the reference, kept: the weights actually used then have
       a KL to uniform that kl_threshold does not bound (anything up to log N: a residual that is
       large against the full cost's spread concentrates them); result.weights_kl exposes it.
       Where PI2's covariance has no Cholesky factor, that step's η is raised (pi2.py; the
       reference raises the given temperatures the same way).
    4. K is the LQR step's (not the sampling controller's), k and the covariance PI2's, and the η
       carried is the LQR step's (PI2's temperatures are not carried: they are re-fitted every time).

    Choice: the reference fits the temperatures through a first full PI2 update on the full cost whose
    controller it discards; here only the temperatures are computed (pi2_temperatures), so that
    discarded update's covariance cannot fail (the reference would then end in a ValueError after
    raising a re-fitted η), and the temperatures are exact where the reference's L-BFGS-B stops
    about 1e-5 relative short (pi2.py).

    When the dynamics are exactly linear-Gaussian with no noise beyond the controller's, the samples
    start at x0mu, and the cost is the quadratic model, the residual is zero up to round-off, the
    weights are uniform, and the result is the LQR step's controller with k_t = k_lqr,t +
    chol_lqr,tᵀ mean_i ε_it and the covariance PI2's rule gives from uniform weights.

    Raises ConditionError naming the condition for NaN/Inf input and for N ≤ dU without damping;
    under cfg.on_fault "abort" also for a PI2 step that fails (pi2.py's ValueError: non-finite
    residual, no positive definite covariance) and what lqr_step_batched raises. Under "recover"
    those fall back per condition (module docstring, "Safeguards"; result.safeguard).
    """
    M = len(costs)
    if not (len(sampling) == len(dyns) == M) or (references is not None and len(references) != M):
        raise ValueError(f"costs, sampling, dyns (and references) must have one entry per condition ({M})")
    sampled = np.asarray(sampled_costs, dtype=np.float64)
    noise = np.asarray(noise, dtype=np.float64)
    K0 = _stack(sampling, "K")
    T, dU, dX = K0.shape[1:]
    if noise.ndim != 4 or noise.shape[0] != M or noise.shape[2:] != (T, dU):
        raise ValueError(f"noise must be [M, N, T, dU] = [{M}, N, {T}, {dU}], got {noise.shape}")
    N = noise.shape[1]
    if sampled.shape != (M, N, T):
        raise ValueError(f"sampled_costs must be [M, N, T] = {(M, N, T)}, got {sampled.shape}")
    for m in range(M):
        if not (np.all(np.isfinite(sampled[m])) and np.all(np.isfinite(noise[m]))):
            raise ConditionError(m, "the sampled costs or the exploration noise contain NaN or Inf")

    # 1. The LQR step.
    lqr = lqr_step_batched(costs, list(sampling) if references is None else list(references), dyns,
                           kl_bounds, etas, cfg)
    return pi2_after_lqr(costs, sampling, dyns, sampled, noise, lqr, cfg, pi2_cfg)


def pi2_after_lqr(
    costs: list[QuadraticCost],
    sampling: list[LinearGaussianPolicy],
    dyns: list[Dynamics],
    sampled_costs: np.ndarray,
    noise: np.ndarray,
    lqr: PerStepLQRResult,
    cfg: PILQRConfig,
    pi2_cfg: PI2Config,
) -> PILQRResult:
    """Steps 2-4 of pilqr_update_batched (its docstring) given the LQR step's result `lqr`: the residual
    under the sampling controllers, PI2 on it around the LQR step's controllers, and the new controllers.
    The pipeline runs the LQR step and this in two stages (lqr_step.h5 holds `lqr`); the arguments are
    pilqr_update_batched's."""
    M = len(costs)
    if not (len(sampling) == len(dyns) == len(lqr) == M):
        raise ValueError(f"costs, sampling, dyns and lqr must have one entry per condition ({M})")
    sampled = np.asarray(sampled_costs, dtype=np.float64)
    noise = np.asarray(noise, dtype=np.float64)
    K0 = _stack(sampling, "K")
    T, dU = K0.shape[1:3]
    N = noise.shape[1]
    if noise.shape != (M, N, T, dU) or sampled.shape != (M, N, T):
        raise ValueError(f"noise [M, N, T, dU] and sampled_costs [M, N, T] must match: {noise.shape}, {sampled.shape}")
    for m in range(M):
        if not (np.all(np.isfinite(sampled[m])) and np.all(np.isfinite(noise[m]))):
            raise ConditionError(m, "the sampled costs or the exploration noise contain NaN or Inf")

    # 2. The residual, with the sampling controller.
    predicted, residual = sampling_residual(costs, sampling, dyns, sampled, noise)
    ratio = np.stack([res_percent_ratios(residual[m], sampled[m]) for m in range(M)])

    # 3. PI2 on the samples under the LQR step's controller: η from the full cost, weights from the residual.
    fitted = np.stack([pi2_temperatures(costs_to_go(sampled[m]), pi2_cfg.kl_threshold, pi2_cfg.min_temperature)
                       for m in range(M)])
    damping = pi2_cfg.covariance_damping if pi2_cfg.covariance_damping is not None else 0.0
    safeguard = lqr.safeguard.copy()
    pi2 = []
    for m in range(M):
        if safeguard[m] == KL_REFERENCE:  # (1): the KL reference, no PI2 on top
            pi2.append(None)
            continue
        ffw = resampled_feedforward(lqr.k[m], lqr.covar[m], noise[m])
        try:
            pi2.append(pi2_feedforward_update(ffw, residual[m], lqr.covar[m], pi2_cfg, temperatures=fitted[m]))
        except ValueError as err:
            if cfg.on_fault == "abort" or (damping <= 0 and N <= dU):
                raise ConditionError(m, f"PILQR's PI2 step: {err}") from err
            pi2.append(None)  # (2): the LQR step's controller
            safeguard[m] = LQR_STEP

    # 4. K and η from the LQR step, k and the covariance from PI2 (the LQR step's where PI2 did not run).
    k = lqr.k.copy()
    covar = lqr.covar.copy()
    temperatures, weights, wkl = np.full((M, T), np.nan), np.full((M, T, N), np.nan), np.full((M, T), np.nan)
    raised, ml = np.zeros((M, T), dtype=bool), np.full((M, T, dU, dU), np.nan)
    for m, r in enumerate(pi2):
        if r is not None:
            k[m], covar[m], temperatures[m], weights[m] = r.k, r.covar, r.temperatures, r.weights
            wkl[m], raised[m], ml[m] = r.weights_kl, r.temperature_raised, r.ml_covar
    return PILQRResult(
        K=lqr.K.copy(), k=k, covar=covar,
        eta=lqr.eta.copy(), lqr=lqr, predicted=predicted, residual=residual, residual_ratio=ratio,
        fitted_temperatures=fitted, temperatures=temperatures, temperature_raised=raised,
        weights=weights, weights_kl=wkl, ml_covar=ml, safeguard=safeguard,
    )


def pilqr_update(
    cost: QuadraticCost,
    sampling: LinearGaussianPolicy,
    dyn: Dynamics,
    sampled_costs: np.ndarray,
    noise: np.ndarray,
    kl_bound: np.ndarray,
    eta: np.ndarray | float | None,
    cfg: PILQRConfig,
    pi2_cfg: PI2Config,
    reference: LinearGaussianPolicy | None = None,
) -> PILQRResult:
    """pilqr_update_batched of one condition: sampled_costs [N, T], noise [N, T, dU], kl_bound [T]
    (or scalar), eta [T] (or scalar, or None) -> PILQRResult of M = 1 (result.policy(0))."""
    return pilqr_update_batched(
        [cost], [sampling], [dyn], np.asarray(sampled_costs)[None], np.asarray(noise)[None],
        np.asarray(kl_bound, dtype=np.float64)[None] if np.ndim(kl_bound) else kl_bound,
        None if eta is None else (np.asarray(eta, dtype=np.float64)[None] if np.ndim(eta) else eta),
        cfg, pi2_cfg, None if reference is None else [reference])
