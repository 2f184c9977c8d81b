"""BADMM guided policy search, the paper's baseline (ALGORITHM §10, camera-ready "CR" profile).

One condition, time step t, z = [x; u], D = dX + dU. Dual variables λ_t(x) = λ_K,t x + λ_k,t
(lam_K [T, dU, dX], lam_k [T, dU]) and a policy weight ν_t ≥ 0 (pol_wt [T]) per condition.
p is the local linear-Gaussian controller, π_θ the network, π̄ its linearisation at the samples,
p̄ the local controller at the start of the iteration (the one that drew the samples).

Lagrangian (§10.1), relaxing the mean-action agreement E_p[u_t] = E_π[u_t] under p(x_t):

    ℒ = Σ_t E_p(x,u)[ℓ_t(x, u) − uᵀ λ_t(x)] + Σ_t E_p(x)π(u|x)[uᵀ λ_t(x)] + Σ_t ν_t φ_t
    φ_t = E_p(x)[KL(p(u|x) ‖ π̄(u|x))]   in the local (C-) step,
    φ_t = E_p(x)[KL(π_θ(u|x) ‖ p(u|x))]  in the policy (S-) step,

plus the trust region KL(p(τ) ‖ p̄(τ)) ≤ ε = kl_step · step_mult · T on the local step.

C-step (§10.3). With (M_p̄, v_p̄) and (M̄, v̄) the quadratic forms of p̄ and π̄ (lingauss):

    Cm' = Cm − [[0, λ_Kᵀ], [λ_K, 0]],   cv' = cv − [0; λ_k]              (adds −uᵀ λ(x) to ℓ)
    C̃_t = (Cm'_t + η M_p̄,t + ν_t M̄_t) / (η + ν_t),   c̃_t = (cv'_t + η v_p̄,t + ν_t v̄_t) / (η + ν_t)

i.e. (η + ν_t) (½ zᵀ C̃_t z + zᵀ c̃_t) = ℓ_t − uᵀλ_t − η log p̄ − ν_t log π̄ + const. The
max-entropy backward pass (lqr, §7.3) then carries the value of step t+1 into step t scaled by
β_t = (η + ν_{t+1}) / (η + ν_t), because each step's cost is in units of its own η + ν_t. The
same recursion with β = 1 on Ĉ_t = ((η + ν_t)/η) C̃_t = Cm'_t/η + M_p̄,t + (ν_t/η) M̄_t (and
ĉ_t likewise) gives the same K_t, k_t and V_t scaled by (η + ν_t)/η, so Σ_t = ((η + ν_t)/η) Q̂_uu⁻¹:
that is how BadmmSurrogate plugs into c_step.c_step_batched (surrogate hook); with ν = 0, λ = 0 it
is the MDGPS C-step against p̄. η is searched so that KL(p ‖ p̄) ≈ ε (§7.6). The literal form (C̃ with
the β rescaling, one condition) is the reference it is tested against: tests/reference_impl.py.

S-step (§10.4). Controller c = the latest C-step output of this iteration (inner > 0), else p̄:

    target μ*_{n,t} = K_c,t x_{n,t} + k_c,t − s_t Σ_c,t λ_t(x_{n,t}),   precision Σ_c,t⁻¹,   weight ν_t
    s_t = ν_t ("coded", CR = HEAD, normative) | 1/ν_t ("derived": the minimiser of
          E_π[uᵀλ] + ν_t KL(π ‖ p) over the policy mean) | 1 ("sub", May-2016 code)

and the policy variance uses ent_reg(itr) (s_step.policy_variance).

Dual step (§10.5), α = policy_dual_rate, α_K = policy_dual_rate_covar, ū = network means:

    λ_k,t ← λ_k,t − α ν_t Σ_c,t⁻¹ mean_n(K_c,t x_{n,t} + k_c,t − ū_{n,t})
    λ_K,t ← λ_K,t − α_K ν_t Σ_c,t⁻¹ (K_c,t − K̄_t)

(dual ascent: ∂ℒ/∂λ_k,t = E_π[u] − E_p[u], preconditioned by ν_t Σ_c⁻¹). Weight update, at the
last inner iteration only, from the Monte-Carlo KL(p̄ ‖ π_θ) per step (Σ_π = diag(var)):

    kl_t = mean_n[½ tr(Σ_π⁻¹ Σ_p̄,t) − ½ dU − ½ log|Σ_p̄,t| + ½ log|Σ_π| + ½ dᵀ Σ_π⁻¹ d],
    d = μ_θ(o_{n,t}) − K_p̄,t x_{n,t} − k_p̄,t
    rule 0: ν_t ← max(ν_t + lg_step kl_t, 0)          rule 1: ν_t ← max(ν_t + lg_step, 0)
    rule 2: ν_t ×0.5 if kl_t/kl_prev,t < 0.8, ×2 if ≥ 0.95
    rule 3: lo, hi = mean(kl) − lower·std(kl), mean(kl) + upper·std(kl)  (population std over t)
            ν_t ×decrease if kl_t < lo, else ×increase if kl_t ≥ hi       (the paper's rule)

Rules 2 and 3 need the kl of the previous weight update and leave ν unchanged without one (as
in the code: the first weight update, at the end of iteration 0, only records kl).

Schedules (§10.5): u = min((itr + 1)/(K_iter − 1), 1); a schedule (s_0 … s_{L−1}) has the value
exp(interp(u, linspace(0, 1, L), log s)); a scalar is constant.

Inner loop (§10.2), per sample batch, for inner = 0 … inner_iterations − 1:
S-step (skipped at itr = 0, inner = 0) → re-linearise π̄ → dual step (same skip; ν updated at the
last inner only) → C-step against p̄ with warm-started η. See inner_plan.

Step adjustment (§10.6), itr ≥ 1, per condition, with ν^cur the weights at the start of itr:

    E_B(c, info, π̄) = Σ_t Ĵ_t + Σ_t ν^cur_t KL̂_t        (Ĵ: Laplace cost, lqr.predicted_cost)
    KL̂_t = ½ (μ_u − K̄ μ_x − k̄)ᵀ S̄⁻¹ (…) + ½ tr(Σ_c S̄⁻¹) + ½ tr(S_xx (K_c − K̄)ᵀ S̄⁻¹ (K_c − K̄))
           + ½ log|S̄| − ½ log|Σ_c| + ½ dU           (the code's +½ dU; cancels in differences)
    prev = E_B(p̄_prev, info_prev, π̄_prev), predicted = E_B(p̄_cur, info_prev, π̄_prev),
    actual = E_B(p̄_cur, info_cur, π̄_cur), then mdgps.new_step_mult.

Arrays stacked over conditions carry a leading M axis (lam_k [M, T, dU], pol_wt [M, T], samples
X [M, N, T, dX]); controllers are lists of lingauss.LinearGaussianPolicy, as elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol, Sequence

import numpy as np

from gps_core.configs import TARGET_SHIFTS, BadmmConfig, Schedule, TrajOptConfig
from gps_core.badmm.duals import DualState
from gps_core.traj_opt.c_step import BatchCStepResult, c_step_batched
from gps_core.traj_opt.lingauss import LinearGaussianPolicy
from gps_core.traj_opt.lqr import ConditionError, Dynamics, QuadraticCost, controller_marginals, predicted_cost, quadratic_form_batched
from gps_core.mdgps import StepEstimates
from gps_core.mdgps import s_step_dataset as _mdgps_s_step_dataset

# --------------------------------------------------------------------------- schedules


def schedule_position(itr: int, iterations: int) -> float:
    """u = min((itr + 1)/(iterations − 1), 1) for 0-based itr; 1 when iterations ≤ 1."""
    if iterations <= 1:
        return 1.0
    return min((itr + 1.0) / (iterations - 1.0), 1.0)


def schedule_value(schedule: Schedule, itr: int, iterations: int) -> float:
    """Value of a schedule at iteration itr of `iterations`: constant if scalar, else
    exp(interp(u, linspace(0, 1, L), log schedule)) with u = schedule_position(itr, iterations)."""
    if np.ndim(schedule) == 0:
        return float(schedule)
    values = np.asarray(schedule, dtype=np.float64)
    u = schedule_position(itr, iterations)
    return float(np.exp(np.interp(u, np.linspace(0.0, 1.0, values.size), np.log(values))))


def ent_reg_at(cfg: BadmmConfig, itr: int, iterations: int) -> float:
    """S-step entropy regulariser of iteration itr (feeds configs.SStepConfig.ent_reg)."""
    return schedule_value(cfg.ent_reg_schedule, itr, iterations)


def lg_step_at(cfg: BadmmConfig, itr: int, iterations: int) -> float:
    """Step of weight rules 0/1 at iteration itr."""
    return schedule_value(cfg.lg_step_schedule, itr, iterations)


# --------------------------------------------------------------------------- C-step surrogate


def lagrangian_cost(cost: QuadraticCost, lam_K: np.ndarray, lam_k: np.ndarray) -> QuadraticCost:
    """ℓ_t(z) − uᵀ(λ_K,t x + λ_k,t) as a quadratic: Cm'_{u,x} = Cm_{u,x} − λ_K, Cm'_{x,u} = Cm_{x,u} − λ_Kᵀ,
    cv'_u = cv_u − λ_k, cc unchanged. cost: Cm [T, D, D], cv [T, D]; lam_K [T, dU, dX], lam_k [T, dU]."""
    dU, dX = lam_K.shape[-2:]
    Cm = np.array(cost.Cm, dtype=np.float64, copy=True)
    cv = np.array(cost.cv, dtype=np.float64, copy=True)
    Cm[..., dX:, :dX] -= lam_K
    Cm[..., :dX, dX:] -= np.swapaxes(lam_K, -1, -2)
    cv[..., dX:] -= lam_k
    return QuadraticCost(Cm=Cm, cv=cv, cc=np.asarray(cost.cc, dtype=np.float64))


def _stack(pols: Sequence[LinearGaussianPolicy]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (
        np.stack([np.asarray(p.K, dtype=np.float64) for p in pols]),
        np.stack([np.asarray(p.k, dtype=np.float64) for p in pols]),
        np.stack([np.asarray(p.covar, dtype=np.float64) for p in pols]),
    )


class BadmmSurrogate:
    """The BADMM C-step cost of M conditions as an lqr.SurrogateCost hook of c_step.c_step_batched.

    costs: M cost models (Cm [T, D, D], cv [T, D]); prevs: p̄ per condition (the KL reference);
    lins: π̄ per condition; duals: λ, ν of the M conditions. Called with η [B] and condition
    indices [B], it returns Ĉ = Cm'/η + M_p̄ + (ν/η) M̄ [B, T, D, D], ĉ = cv'/η + v_p̄ + (ν/η) v̄
    [B, T, D] and the covariance factor (η + ν_t)/η [B, T] (module docstring: this equals the
    §10.3 normalised surrogate with the β rescaling). Raises lqr.ConditionError on NaN/Inf.
    """

    def __init__(
        self,
        costs: Sequence[QuadraticCost],
        prevs: Sequence[LinearGaussianPolicy],
        lins: Sequence[LinearGaussianPolicy],
        duals: DualState,
    ):
        M = len(costs)
        if not (len(prevs) == len(lins) == duals.M == M):
            raise ValueError(f"{M} cost models, {len(prevs)} previous controllers, {len(lins)} linearisations, {duals.M} dual sets")
        lcs = [lagrangian_cost(costs[m], duals.lam_K[m], duals.lam_k[m]) for m in range(M)]
        self.Cm = np.stack([c.Cm for c in lcs])
        self.cv = np.stack([c.cv for c in lcs])
        Kp, kp, Sp = _stack(prevs)
        Kl, kl, Sl = _stack(lins)
        self.pol_wt = np.asarray(duals.pol_wt, dtype=np.float64)
        for m in range(M):
            for name, arrays in (
                ("cost model or dual variables", (self.Cm[m], self.cv[m])),
                ("previous controller", (Kp[m], kp[m], Sp[m])),
                ("policy linearisation", (Kl[m], kl[m], Sl[m])),
                ("policy weight", (self.pol_wt[m],)),
            ):
                if not all(np.all(np.isfinite(a)) for a in arrays):
                    raise ConditionError(m, f"the {name} contains NaN or Inf")
        self.Mp, self.vp = quadratic_form_batched(Kp, kp, Sp)[:2]
        self.Ml, self.vl = quadratic_form_batched(Kl, kl, Sl)[:2]

    def __call__(self, eta: np.ndarray, conditions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        c = np.asarray(conditions)
        e = np.asarray(eta, dtype=np.float64)[:, None]  # [B, 1]
        r = self.pol_wt[c] / e  # ν_t/η, [B, T]
        Cs = self.Cm[c] / e[..., None, None] + self.Mp[c] + r[..., None, None] * self.Ml[c]
        cs = self.cv[c] / e[..., None] + self.vp[c] + r[..., None] * self.vl[c]
        return Cs, cs, 1.0 + r


def badmm_c_step(
    costs: Sequence[QuadraticCost],
    prevs: Sequence[LinearGaussianPolicy],
    lins: Sequence[LinearGaussianPolicy],
    dyns: Sequence[Dynamics],
    duals: DualState,
    kl_bounds: np.ndarray,
    etas: np.ndarray,
    cfg: TrajOptConfig,
) -> BatchCStepResult:
    """BADMM C-step of M conditions (§10.3): c_step.c_step_batched with the BADMM surrogate and the
    KL measured against p̄ = prevs. kl_bounds [M] = kl_step · step_mult · T; etas [M] warm starts
    (the η of this condition's previous C-step, also across inner iterations)."""
    return c_step_batched(list(costs), list(prevs), list(dyns), kl_bounds, etas, cfg,
                          surrogate=BadmmSurrogate(costs, prevs, lins, duals))


# --------------------------------------------------------------------------- S-step


def controller_for(inner: int, prev: Sequence[LinearGaussianPolicy], new: Sequence[LinearGaussianPolicy] | None):
    """The controllers whose actions the S-step and the dual step use: this iteration's latest
    C-step output (`new`) once one exists (inner > 0), else p̄ (`prev`)."""
    if inner > 0:
        if new is None:
            raise ValueError("inner > 0 needs this iteration's C-step output")
        return new
    return prev


def lambda_at(duals: DualState, X: np.ndarray) -> np.ndarray:
    """λ_t(x) = λ_K,t x + λ_k,t at the samples: X [M, N, T, dX] -> [M, N, T, dU]."""
    return np.einsum("mtux,mntx->mntu", duals.lam_K, X) + duals.lam_k[:, None]


def target_shift(pols: Sequence[LinearGaussianPolicy], X: np.ndarray, duals: DualState, mode: str = "coded") -> np.ndarray:
    """s_t Σ_c,t λ_t(x_{n,t}) subtracted from the S-step targets: [M, N, T, dU].

    s_t = ν_t ('coded'), 1/ν_t ('derived'), 1 ('sub'); pols: the controllers c; X [M, N, T, dX].
    """
    if mode not in TARGET_SHIFTS:
        raise ValueError(f"target shift mode must be one of {TARGET_SHIFTS}, got {mode!r}")
    covar = np.stack([np.asarray(p.covar, dtype=np.float64) for p in pols])  # [M, T, dU, dU]
    shift = np.einsum("mtuv,mntv->mntu", covar, lambda_at(duals, X))
    nu = np.asarray(duals.pol_wt, dtype=np.float64)[:, None, :, None]  # [M, 1, T, 1]
    if mode == "coded":
        return nu * shift
    if mode == "derived":
        return shift / nu
    return shift


def s_step_dataset(
    pols: Sequence[LinearGaussianPolicy],
    X: np.ndarray,
    O: np.ndarray,
    duals: DualState,
    mode: str = "coded",
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The BADMM S-step data (§10.4) in the layout of mdgps.s_step_dataset / s_step.train_policy.

    pols: controllers c (controller_for); X [M, N, T, dX]; O [M, N, T, dO] ->
    obs [M·N, T, dO], target [M·N, T, dU] = K_c x + k_c − s Σ_c λ(x), precision [M·N, T, dU, dU] = Σ_c⁻¹,
    weight [M·N, T] = ν_t of the sample's condition (train_policy renormalises it by its median).
    """
    obs, target, precision, _ = _mdgps_s_step_dataset(list(pols), X, O)
    M, N, T, _ = np.shape(X)
    dU = target.shape[-1]
    target = target - target_shift(pols, X, duals, mode).reshape(M * N, T, dU)
    weight = np.repeat(np.asarray(duals.pol_wt, dtype=np.float64), N, axis=0)  # [M·N, T], condition-major
    return obs, target, precision, weight


# --------------------------------------------------------------------------- dual and weight updates


def constraint_residual(pols: Sequence[LinearGaussianPolicy], X: np.ndarray, U_pol: np.ndarray) -> np.ndarray:
    """mean_n(K_c,t x_{n,t} + k_c,t − ū_{n,t}): the violated agreement E_p[u] − E_π[u], [M, T, dU].

    X [M, N, T, dX], U_pol [M, N, T, dU] (network means at the samples)."""
    mean = np.stack([pols[m].mean_action(X[m]) for m in range(len(pols))])
    return np.mean(mean - U_pol, axis=1)


def dual_step(
    duals: DualState,
    pols: Sequence[LinearGaussianPolicy],
    X: np.ndarray,
    U_pol: np.ndarray,
    lin_K: np.ndarray,
    cfg: BadmmConfig,
) -> DualState:
    """λ update of §10.5 (ν and prev_kl unchanged). pols: controllers c (controller_for);
    X [M, N, T, dX]; U_pol [M, N, T, dU] network means; lin_K [M, T, dU, dX] gains of π̄.

    λ_k ← λ_k − α ν Σ_c⁻¹ mean_n(K_c x + k_c − ū),  λ_K ← λ_K − α_K ν Σ_c⁻¹ (K_c − K̄).
    """
    prc = np.stack([p.inv_covar for p in pols])  # [M, T, dU, dU]
    nu = np.asarray(duals.pol_wt, dtype=np.float64)
    resid = constraint_residual(pols, X, U_pol)
    lam_k = duals.lam_k - cfg.policy_dual_rate * nu[..., None] * np.einsum("mtuv,mtv->mtu", prc, resid)
    lam_K = duals.lam_K
    if cfg.policy_dual_rate_covar != 0:
        K_c = np.stack([np.asarray(p.K, dtype=np.float64) for p in pols])
        lam_K = lam_K - cfg.policy_dual_rate_covar * nu[..., None, None] * (prc @ (K_c - lin_K))
    return replace(duals, lam_k=lam_k, lam_K=np.array(lam_K, copy=True))


def policy_kl(prevs: Sequence[LinearGaussianPolicy], X: np.ndarray, U_pol: np.ndarray, pol_var: np.ndarray) -> np.ndarray:
    """Monte-Carlo E_n[KL(p̄(u|x_{n,t}) ‖ π_θ(u|o_{n,t}))] per step: [M, T].

    prevs: p̄ (the controllers at the start of the iteration); X [M, N, T, dX]; U_pol [M, N, T, dU]
    network means μ_θ(o); pol_var [dU] network variance (Σ_π = diag(pol_var)).
    """
    var = np.asarray(pol_var, dtype=np.float64)
    prec = 1.0 / var
    dU = var.size
    K, k, covar = _stack(prevs)
    logdet_p = np.stack([p.logdet_covar for p in prevs])  # [M, T]
    mean = np.einsum("mtux,mntx->mntu", K, X) + k[:, None]
    d = U_pol - mean
    maha = np.mean(np.einsum("mntu,u,mntu->mnt", d, prec, d), axis=1)  # [M, T]
    trace = np.einsum("mtuu,u->mt", covar, prec)
    return 0.5 * trace - 0.5 * dU - 0.5 * logdet_p + 0.5 * np.sum(np.log(var)) + 0.5 * maha


def update_pol_wt(
    pol_wt: np.ndarray, kl: np.ndarray, prev_kl: np.ndarray | None, cfg: BadmmConfig, lg_step: float
) -> np.ndarray:
    """New weights ν [M, T] by rule cfg.fixed_lg_step (module docstring) from kl [M, T].

    Rules 2 and 3 return ν unchanged when prev_kl is None. lg_step: lg_step_at(cfg, itr, K_iter)
    (rules 0/1 only). mean/std of rule 3 are per condition over t (population std).
    """
    nu = np.array(pol_wt, dtype=np.float64, copy=True)
    kl = np.asarray(kl, dtype=np.float64)
    rule = cfg.fixed_lg_step
    if rule == 0:
        return np.maximum(nu + lg_step * kl, 0.0)
    if rule == 1:
        return np.maximum(nu + lg_step, 0.0)
    if prev_kl is None:
        return nu
    if rule == 2:
        with np.errstate(divide="ignore", invalid="ignore"):
            change = kl / np.asarray(prev_kl, dtype=np.float64)
        down = change < 0.8
        up = ~down & (change >= 0.95)
        return np.where(down, 0.5 * nu, np.where(up, 2.0 * nu, nu))
    mean = np.mean(kl, axis=-1, keepdims=True)
    std = np.std(kl, axis=-1, keepdims=True)
    lo = mean - cfg.exp_step_lower * std
    hi = mean + cfg.exp_step_upper * std
    down = kl < lo
    up = ~down & (kl >= hi)
    return np.where(down, cfg.exp_step_decrease * nu, np.where(up, cfg.exp_step_increase * nu, nu))


def dual_and_weight_step(
    duals: DualState,
    pols: Sequence[LinearGaussianPolicy],
    prevs: Sequence[LinearGaussianPolicy],
    X: np.ndarray,
    U_pol: np.ndarray,
    pol_var: np.ndarray,
    lin_K: np.ndarray,
    cfg: BadmmConfig,
    lg_step: float,
    update_weights: bool,
) -> tuple[DualState, np.ndarray]:
    """The whole §10.5 step of one inner iteration: λ (dual_step with controllers `pols`), then the
    policy KL against p̄ = `prevs` and, if update_weights (last inner iteration), ν by the weight
    rule and prev_kl ← kl. Returns the new state and kl [M, T] (also when ν is not updated)."""
    new = dual_step(duals, pols, X, U_pol, lin_K, cfg)
    kl = policy_kl(prevs, X, U_pol, pol_var)
    if update_weights:
        new = replace(new, pol_wt=update_pol_wt(new.pol_wt, kl, new.prev_kl, cfg, lg_step), prev_kl=kl)
    return new, kl


# --------------------------------------------------------------------------- inner loop


@dataclass(frozen=True)
class InnerStep:
    """What one inner iteration does, in this order: S-step (if s_step), re-linearise π̄, dual step
    (if dual_step; ν too if update_pol_wt), C-step against p̄.

    controller: 'prev' (p̄, the iteration's starting controller) or 'new' (this iteration's latest
    C-step output): the controllers whose actions the S-step targets and the dual step use.
    """

    inner: int
    s_step: bool
    dual_step: bool
    update_pol_wt: bool
    controller: str
    refit_policy: bool = True
    c_step: bool = True


def inner_plan(itr: int, inner_iterations: int) -> tuple[InnerStep, ...]:
    """The inner loop of iteration itr (§10.2): at itr = 0, inner = 0 there is no S-step and no
    dual step (the first C-step runs against the untrained network's linearisation); ν is
    updated at the last inner iteration only."""
    steps = []
    for inner in range(inner_iterations):
        active = itr > 0 or inner > 0
        steps.append(InnerStep(
            inner=inner,
            s_step=active,
            dual_step=active,
            update_pol_wt=active and inner == inner_iterations - 1,
            controller="new" if inner > 0 else "prev",
        ))
    return tuple(steps)


class InnerOps(Protocol):
    """The operations run_inner_loop calls; each acts on the caller's state."""

    def s_step(self, step: InnerStep) -> None: ...

    def refit_policy(self, step: InnerStep) -> None: ...

    def dual_step(self, step: InnerStep) -> None: ...

    def c_step(self, step: InnerStep) -> None: ...


def run_inner_loop(itr: int, cfg: BadmmConfig, ops: InnerOps) -> tuple[InnerStep, ...]:
    """Run the inner_plan of iteration itr through `ops`, in order; returns the plan."""
    plan = inner_plan(itr, cfg.inner_iterations)
    for step in plan:
        if step.s_step:
            ops.s_step(step)
        if step.refit_policy:
            ops.refit_policy(step)
        if step.dual_step:
            ops.dual_step(step)
        if step.c_step:
            ops.c_step(step)
    return plan


# --------------------------------------------------------------------------- step adjustment


def augmented_laplace(
    pol: LinearGaussianPolicy, dyn: Dynamics, cost: QuadraticCost, lin: LinearGaussianPolicy
) -> tuple[np.ndarray, np.ndarray]:
    """Per-step Laplace cost Ĵ [T] and policy KL KL̂ [T] of controller pol (§10.6) under dyn/cost,
    against the linearisation lin = π̄ (covariance S̄). KL̂ carries the code's +½ dU (it equals
    E_p(x)[KL(p(u|x) ‖ π̄(u|x))] + dU)."""
    mu, S = controller_marginals(pol, dyn)
    dX = pol.dX
    J = predicted_cost(mu[None], S[None], np.asarray(cost.Cm)[None], np.asarray(cost.cv)[None],
                       np.asarray(cost.cc, dtype=np.float64)[None])[0]
    Sinv = lin.inv_covar
    diff = mu[:, dX:] - (np.einsum("tux,tx->tu", lin.K, mu[:, :dX]) + lin.k)
    dK = pol.K - lin.K
    kl = (
        0.5 * np.einsum("tu,tuv,tv->t", diff, Sinv, diff)
        + 0.5 * np.einsum("tuv,tvu->t", pol.covar, Sinv)
        + 0.5 * np.einsum("txy,tyx->t", S[:, :dX, :dX], np.swapaxes(dK, -1, -2) @ Sinv @ dK)
        + 0.5 * lin.logdet_covar
        - 0.5 * pol.logdet_covar
        + 0.5 * pol.dU
    )
    return J, kl


def augmented_estimate(
    pol: LinearGaussianPolicy, dyn: Dynamics, cost: QuadraticCost, lin: LinearGaussianPolicy, pol_wt: np.ndarray
) -> float:
    """E_B = Σ_t Ĵ_t + Σ_t ν_t KL̂_t (§10.6); pol_wt [T]."""
    J, kl = augmented_laplace(pol, dyn, cost, lin)
    return float(np.sum(J) + np.sum(np.asarray(pol_wt) * kl))


def badmm_step_estimates(
    prev_prev: LinearGaussianPolicy,
    prev: LinearGaussianPolicy,
    lin_prev: LinearGaussianPolicy,
    lin_cur: LinearGaussianPolicy,
    dyn_prev: Dynamics,
    cost_prev: QuadraticCost,
    dyn_cur: Dynamics,
    cost_cur: QuadraticCost,
    pol_wt: np.ndarray,
) -> StepEstimates:
    """The three augmented Laplace estimates of BADMM's step rule (§10.6) for one condition at itr ≥ 1.

    prev_prev: p̄_prev, the controller that drew iteration itr−1's samples; prev: p̄_cur, the one
    that drew this iteration's (itr−1's final C-step output); lin_prev: the last π̄ of itr−1;
    lin_cur: π̄ of the current network at this iteration's samples; pol_wt [T]: ν at the start of
    itr. Feed predicted/actual_improvement to mdgps.new_step_mult.
    """
    return StepEstimates(
        prev=augmented_estimate(prev_prev, dyn_prev, cost_prev, lin_prev, pol_wt),
        predicted=augmented_estimate(prev, dyn_prev, cost_prev, lin_prev, pol_wt),
        actual=augmented_estimate(prev, dyn_cur, cost_cur, lin_cur, pol_wt),
    )
