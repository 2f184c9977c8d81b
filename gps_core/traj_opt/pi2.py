"""PI2: path-integral policy improvement of a controller's feedforward terms and covariance.

Model-free: no dynamics are fitted. Of a time-varying linear-Gaussian controller (lingauss.py)
u_t ~ N(K_t x_t + k_t, Σ_t), only k and Σ change; the feedback gains K are carried over. With N
samples of one condition, the feedforward control sample i used at step t is

    f_it = u_it − K_t x_it                                 (feedforward_controls)

and its cost-to-go is S_it = Σ_{s ≥ t} ℓ_is, the sum of its per-step costs from t to the end
(costs_to_go). Each step is updated on its own, from weights over the samples

    w_ti = exp(−(S_it − min_j S_jt) / η_t) / Σ_j exp(−(S_jt − min_j S_jt) / η_t)     (pi2_weights)

(low cost-to-go, high weight; subtracting the minimum keeps every exponent ≤ 0, so the sum is ≥ 1
and nothing overflows). The new mean is the weighted mean, the maximum-likelihood covariance the
weighted, normalised, biased covariance about it:

    k_t = Σ_i w_ti f_it,        Σ_ML,t = Σ_i w_ti (f_it − k_t)(f_it − k_t)ᵀ

Temperature (pi2_temperatures). η_t is the minimiser over η ≥ min_temperature of the REPS dual

    g_t(η) = η ε − m_t + η log( (1/N) Σ_i exp(−(S_it − m_t) / η) ),    m_t = min_i S_it,

with ε = kl_threshold. Its derivative is g'(η) = ε − KL(w(η) ‖ uniform), and the KL decreases
monotonically in η (d KL / d log η = −Var_w[S/η]), from log(N / #samples at the minimum) as η → 0
to 0 as η → ∞, so g is convex and its minimiser is the η where the weights' KL to uniform equals ε.
It is found exactly, by a safeguarded Newton iteration in log η, all steps at once. Where the
bound cannot be reached (KL(w(min_temperature)) ≤ ε: all costs-to-go equal, which gives uniform
weights at every η, or ε ≥ log N with a single best sample), g is increasing and the minimiser is
the lower bound: η_t = min_temperature, and the weights' KL is below ε.

The reference (cbfinn/gps, TrajOptPI2.update_pi2) minimises the same dual by L-BFGS-B from 10.0
with a finite-difference gradient, which stops short of the minimiser (measured on random problems:
η within 3e-5 relative, 6e-4 where η is within 1% of min_temperature; its dual value is never below
the one here). The error grows with the costs' scale, far from its start at 10.0: on PILQR's
random problems (pilqr.py) the median was 3e-6 and the 90th percentile 2e-5, but where the
costs-to-go spanned 1e7 (η ≈ 6e5) it reached 4.5e-2. The temperatures here differ from its by that
solver error only, and so do the weights and the updated controller (k and Σ within 2e-5 relative,
2e-4 near the floor, on problems of moderate scale; up to 2e-3 in PILQR's whole update on those
random problems). With temperatures
given, the two agree to round-off. The old feedforward terms take no part (the reference's mean_old
gives only a shape).

Covariance damping (PI2Config.covariance_damping = d). With d > 0 the new covariance is a scalar
multiple of the old one,

    Σ_t = Σ_old,t · (tr(Σ_old,t⁻¹ Σ_ML,t) / dU)^(1/d),

which keeps exploration from collapsing (d > 1 slows the shrinking); with d ≤ 0 it is Σ_ML,t itself.

Positive definiteness. With d > 0 the new covariance is positive definite whenever Σ_ML,t ≠ 0, even
with N ≤ dU samples (Σ_ML is then singular, but only its trace enters). Σ_ML,t = 0 happens when the
weights put all their mass on one sample (others underflow) or all samples coincide at t. With
d ≤ 0, Σ_ML,t has rank at most N − 1, so N ≤ dU samples can never give a positive definite
covariance: pi2_feedforward_update refuses them with a ValueError. Otherwise, where the new
covariance has no Cholesky factor, η_t is raised as the reference does, by δ, 2δ, 4δ, ...
(δ = ETA_RAISE_START, cumulatively) to spread the weights, until it has one; at η ≥ ETA_RAISE_LIMIT
(identical samples, for instance) it is a ValueError naming the step. The reference applies that
raise only to given temperatures (it raises them in the caller's array); for fitted ones its retry
re-fits the same η each round and ends in a ValueError, so raising here is a safeguard of ours (the raised η keeps the weights' KL below
ε). `temperature_raised` records where it acted. A Cholesky factor is the reference's criterion, and
it does not make the covariance well-conditioned: weights that are one-hot up to 1e-200, or samples
that differ by round-off only, pass it with a covariance of that size (e.g. Σ_old · 1e-16). So a
step counts as failed too where the new covariance has collapsed against the old one: its smallest
generalised eigenvalue λ_min(Σ_old,t⁻¹ Σ_t) is below PI2Config.min_covariance_ratio (default 1e-6;
0 is the reference's Cholesky criterion alone), and η_t is raised the same way. Measured on Gymnasium's
Pusher with MDGPS-PILQR and 5 samples: weights one-hot on the residual gave Σ ≈ 1e-17 at some steps,
then S-step losses of 1e14 and NaN at the next iteration; with the floor those steps spread their
weights, or (PILQR, `on_fault: recover`) fall back to the LQR step's controller.

Given temperatures (pi2_feedforward_update(..., temperatures=η)): PILQR (Chebotar et al. 2017, the
reference's TrajOptPILQR) fits η on the samples' full cost and then weights the samples by their
residual cost (sampled minus the LQR model's prediction) at that η; the weights' KL to uniform is
then not bounded by ε. Its feedforward samples are the samples re-expressed with the LQR step's
controller, k_lqr + chol(Σ_lqr)ᵀ ε_i (resampled_feedforward), and Σ_old is that controller's covariance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from gps_core.configs import PI2Config
from gps_core.traj_opt.lingauss import LinearGaussianPolicy
from gps_core.traj_opt.lqr import cholesky_per_item

# The raise of η where the new covariance is not positive definite: the reference's del0 and its limit.
ETA_RAISE_START = 1e-4
ETA_RAISE_LIMIT = 1e16
# The temperature solve stops when |KL − ε| ≤ KL_TOLERANCE · max(ε, 1), or when its bracket in log η
# is as narrow as double precision allows.
KL_TOLERANCE = 1e-13
MAX_NEWTON_ITERATIONS = 200


@dataclass(frozen=True)
class PI2Result:
    """One condition's PI2 update.

    k: [T, dU] new feedforward terms; covar: [T, dU, dU] new covariance (symmetric positive definite);
    temperatures: [T] the η_t the weights were computed with (fitted, given, or raised);
    weights: [T, N] each step's sample weights (each row sums to 1);
    weights_kl: [T] KL(weights_t ‖ uniform), = kl_threshold where the bound is reached and η fitted;
    ml_covar: [T, dU, dU] the weighted maximum-likelihood covariance before damping;
    temperature_raised: [T] bool, where η was raised to make the covariance positive definite;
    K: [T, dU, dX] the feedback gains carried over (pi2_update), None from pi2_feedforward_update.
    """

    k: np.ndarray
    covar: np.ndarray
    temperatures: np.ndarray
    weights: np.ndarray
    weights_kl: np.ndarray
    ml_covar: np.ndarray
    temperature_raised: np.ndarray
    K: Optional[np.ndarray] = None

    @property
    def policy(self) -> LinearGaussianPolicy:
        """The updated controller (K carried over, new k and covariance); only from pi2_update."""
        if self.K is None:
            raise ValueError("PI2Result.policy needs the feedback gains: use pi2_update, or build "
                             "LinearGaussianPolicy(K, result.k, result.covar)")
        return LinearGaussianPolicy(K=self.K, k=self.k, covar=self.covar)


# --------------------------------------------------------------------------- samples and costs


def feedforward_controls(K: np.ndarray, X: np.ndarray, U: np.ndarray) -> np.ndarray:
    """The samples' feedforward controls u_it − K_t x_it: K [T, dU, dX], X [N, T, dX], U [N, T, dU] -> [N, T, dU]."""
    return U - np.einsum("tux,ntx->ntu", K, X)


def resampled_feedforward(k: np.ndarray, covar: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """The feedforward controls the samples would have had under another controller (k, covar) with
    their own exploration noise: k_t + chol(Σ_t)ᵀ ε_it (chol upper, as lingauss.py samples).

    k [T, dU], covar [T, dU, dU], noise [N, T, dU] -> [N, T, dU].
    """
    lower = np.linalg.cholesky(covar)  # chol(Σ)ᵀ = lower factor
    return k + np.einsum("tuv,ntv->ntu", lower, noise)


def costs_to_go(costs: np.ndarray) -> np.ndarray:
    """Each sample's cost from step t to the end, S_it = Σ_{s ≥ t} ℓ_is: costs [N, T] -> [T, N]."""
    return np.cumsum(costs[:, ::-1], axis=1)[:, ::-1].T


# --------------------------------------------------------------------------- temperatures and weights


def _log_weights(costs_to_go: np.ndarray, eta: np.ndarray):
    """z = −(S − min S) / η [T, N] (every entry ≤ 0, the best sample's 0) and log Σ_i exp(z_i) [T] (≥ 0)."""
    z = (np.min(costs_to_go, axis=1, keepdims=True) - costs_to_go) / eta[:, None]
    return z, np.log(np.sum(np.exp(z), axis=1))


def _weights_and_kl(costs_to_go: np.ndarray, eta: np.ndarray):
    """Weights [T, N], their KL to uniform [T] and Var_w[z] [T] (= −d KL / d log η) at temperatures η [T]."""
    z, lse = _log_weights(costs_to_go, eta)
    weights = np.exp(z - lse[:, None])
    mean_z = np.sum(weights * z, axis=1)
    # KL(w ‖ 1/N) = Σ w (log w + log N) = E_w[z] − lse + log N; ≥ 0 up to round-off.
    kl = np.maximum(mean_z - lse + np.log(costs_to_go.shape[1]), 0.0)
    var_z = np.sum(weights * (z - mean_z[:, None]) ** 2, axis=1)
    return weights, kl, var_z


def pi2_weights(costs_to_go: np.ndarray, eta: np.ndarray) -> np.ndarray:
    """Each step's softmax of −cost-to-go / η_t over the samples: costs_to_go [T, N], eta [T] -> [T, N]."""
    z, lse = _log_weights(costs_to_go, np.asarray(eta, dtype=float))
    return np.exp(z - lse[:, None])


def weights_kl(weights: np.ndarray) -> np.ndarray:
    """KL of each step's weights to uniform, Σ_i w_i log(N w_i): [T, N] -> [T] (0 · log 0 = 0)."""
    N = weights.shape[1]
    with np.errstate(divide="ignore"):
        terms = np.where(weights > 0, weights * np.log(N * np.where(weights > 0, weights, 1.0)), 0.0)
    return np.sum(terms, axis=1)


def pi2_dual(costs_to_go: np.ndarray, eta: np.ndarray, kl_threshold: float) -> np.ndarray:
    """The REPS dual g_t(η_t) of the module docstring: costs_to_go [T, N], eta [T] -> [T]."""
    eta = np.asarray(eta, dtype=float)
    _, lse = _log_weights(costs_to_go, eta)
    return eta * kl_threshold - np.min(costs_to_go, axis=1) + eta * (lse - np.log(costs_to_go.shape[1]))


def pi2_temperatures(costs_to_go: np.ndarray, kl_threshold: float, min_temperature: float) -> np.ndarray:
    """Each step's temperature η_t ≥ min_temperature minimising the REPS dual, i.e. the η at which
    KL(weights ‖ uniform) = kl_threshold; min_temperature where that KL stays below the threshold at
    every η (module docstring). costs_to_go [T, N] -> eta [T].

    Safeguarded Newton on f(s) = KL(e^s) − ε in s = log η, all steps at once: a bracket
    [log min_temperature, log(range / ε)] (KL ≤ (max S − min S) / η, so the upper end has KL ≤ ε)
    is narrowed every iteration, and a Newton step that leaves it is replaced by bisection.
    Deterministic; the KL meets ε to KL_TOLERANCE.
    """
    S = np.asarray(costs_to_go, dtype=float)
    if S.ndim != 2 or S.shape[1] < 1:
        raise ValueError(f"costs_to_go must be [T, N], got shape {S.shape}")
    if not np.all(np.isfinite(S)):
        raise ValueError("costs_to_go must be finite")
    if not kl_threshold > 0 or not min_temperature > 0:
        raise ValueError(f"kl_threshold ({kl_threshold}) and min_temperature ({min_temperature}) must be > 0")
    T = S.shape[0]
    eta = np.full(T, float(min_temperature))
    _, kl_floor, _ = _weights_and_kl(S, eta)
    open_ = kl_floor > kl_threshold  # the bound is reached above min_temperature
    if not np.any(open_):
        return eta
    Sv = S[open_]
    cost_range = np.ptp(Sv, axis=1)  # > 0: equal costs give KL 0 ≤ ε at the floor
    lo = np.full(Sv.shape[0], np.log(min_temperature))  # KL(lo) > ε
    hi = np.maximum(np.log(cost_range / kl_threshold), lo)  # KL(hi) ≤ ε
    # Start from the large-η expansion KL ≈ Var_uniform[S] / (2 η²), clipped into the bracket.
    guess = np.log(np.sqrt(np.var(Sv, axis=1) / (2.0 * kl_threshold)))
    s = np.clip(guess, lo, hi)
    tolerance = KL_TOLERANCE * max(kl_threshold, 1.0)
    active = np.ones(Sv.shape[0], dtype=bool)
    for _ in range(MAX_NEWTON_ITERATIONS):
        idx = np.flatnonzero(active)
        if idx.size == 0:
            break
        _, kl, var_z = _weights_and_kl(Sv[idx], np.exp(s[idx]))
        excess = kl - kl_threshold
        above = excess > 0  # KL too large: η must grow
        lo[idx] = np.where(above, s[idx], lo[idx])
        hi[idx] = np.where(above, hi[idx], s[idx])
        narrow = hi[idx] - lo[idx] <= 4 * np.finfo(float).eps * np.maximum(np.abs(s[idx]), 1.0)
        done = (np.abs(excess) <= tolerance) | narrow
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # var_z ≈ 0: not inside, bisected
            newton = s[idx] + excess / var_z  # f'(s) = −Var_w[z]
        inside = np.isfinite(newton) & (newton > lo[idx]) & (newton < hi[idx])
        step = np.where(inside, newton, 0.5 * (lo[idx] + hi[idx]))
        s[idx] = np.where(done, s[idx], step)
        active[idx[done]] = False
    eta[open_] = np.exp(s)
    return eta


# --------------------------------------------------------------------------- the update


def _failed_covariance(covar: np.ndarray, covar_old: np.ndarray, min_ratio: float) -> np.ndarray:
    """[T] bool: where covar [T, dU, dU] has no Cholesky factor, or its smallest eigenvalue relative to
    covar_old (λ_min(Σ_old⁻¹ Σ), through Σ_old's Cholesky factor) is below min_ratio."""
    failed = ~cholesky_per_item(covar)
    if min_ratio > 0 and not failed.all():
        ok = np.flatnonzero(~failed)
        L = np.linalg.cholesky(covar_old[ok])
        A = np.linalg.solve(L, np.swapaxes(np.linalg.solve(L, covar[ok]), -1, -2))  # L⁻¹ Σ L⁻ᵀ
        failed[ok] = np.linalg.eigvalsh(0.5 * (A + np.swapaxes(A, -1, -2)))[:, 0] < min_ratio
    return failed


def _weighted_moments(ffw: np.ndarray, weights: np.ndarray, covar_old: np.ndarray, damping: float):
    """Weighted mean [T, dU], ML covariance [T, dU, dU] and the (damped) new covariance [T, dU, dU] of
    feedforward samples ffw [N, T, dU] under weights [T, N]."""
    mean = np.einsum("tn,ntu->tu", weights, ffw)
    dev = ffw - mean  # [N, T, dU]
    ml = np.einsum("tn,ntu,ntv->tuv", weights, dev, dev)
    ml = 0.5 * (ml + np.swapaxes(ml, -1, -2))  # the einsum's products are not exactly symmetric
    if damping > 0:
        dU = ffw.shape[2]
        ratio = np.trace(np.linalg.solve(covar_old, ml), axis1=-2, axis2=-1) / dU
        scale = np.power(np.maximum(ratio, 0.0), 1.0 / damping)  # tr(PD⁻¹ PSD) ≥ 0 up to round-off
        covar = scale[:, None, None] * covar_old
        covar = 0.5 * (covar + np.swapaxes(covar, -1, -2))
    else:
        covar = ml
    return mean, ml, covar


def pi2_feedforward_update(
    ffw: np.ndarray,
    costs: np.ndarray,
    covar_old: np.ndarray,
    cfg: PI2Config,
    temperatures: Optional[np.ndarray] = None,
) -> PI2Result:
    """PI2 on feedforward samples: ffw [N, T, dU], per-step costs [N, T], the old covariance
    covar_old [T, dU, dU] (only the damping uses it) -> PI2Result (K None).

    temperatures: None fits each step's η to cfg.kl_threshold (pi2_temperatures); given ([T] or a
    scalar), the weights use them as they are (PILQR: η fitted on the full cost, the residual cost
    here). Either may be raised where the new covariance would not be positive definite.
    """
    ffw = np.asarray(ffw, dtype=float)
    costs = np.asarray(costs, dtype=float)
    covar_old = np.asarray(covar_old, dtype=float)
    if ffw.ndim != 3:
        raise ValueError(f"feedforward samples must be [N, T, dU], got shape {ffw.shape}")
    N, T, dU = ffw.shape
    if costs.shape != (N, T):
        raise ValueError(f"costs must be [N, T] = {(N, T)}, got {costs.shape}")
    if covar_old.shape != (T, dU, dU):
        raise ValueError(f"covar_old must be [T, dU, dU] = {(T, dU, dU)}, got {covar_old.shape}")
    if not (np.all(np.isfinite(ffw)) and np.all(np.isfinite(costs))):
        raise ValueError("PI2 needs finite samples and costs")
    damping = cfg.covariance_damping if cfg.covariance_damping is not None else 0.0
    if damping <= 0 and N <= dU:
        raise ValueError(f"PI2 with {N} samples and dU = {dU}: the maximum-likelihood covariance is singular "
                         f"(rank ≤ N − 1); use covariance_damping > 0 or more than dU samples")

    S = costs_to_go(costs)
    if temperatures is None:
        eta = pi2_temperatures(S, cfg.kl_threshold, cfg.min_temperature)
    else:
        eta = np.broadcast_to(np.asarray(temperatures, dtype=float), (T,)).copy()
        if not np.all(eta > 0) or not np.all(np.isfinite(eta)):
            raise ValueError("given PI2 temperatures must be finite and > 0")
    weights = pi2_weights(S, eta)
    k, ml, covar = _weighted_moments(ffw, weights, covar_old, damping)

    # Where the new covariance has no Cholesky factor or has collapsed, spread the weights (module docstring).
    raised = np.zeros(T, dtype=bool)
    bad = _failed_covariance(covar, covar_old, cfg.min_covariance_ratio)
    delta = np.full(T, ETA_RAISE_START)
    while np.any(bad):
        t_bad = np.flatnonzero(bad)
        raised[t_bad] = True
        eta[t_bad] += delta[t_bad]
        delta[t_bad] *= 2.0
        if np.any(eta[t_bad] >= ETA_RAISE_LIMIT):
            t = int(t_bad[np.argmax(eta[t_bad] >= ETA_RAISE_LIMIT)])
            raise ValueError(f"PI2 step {t}: no temperature below {ETA_RAISE_LIMIT:g} gives a positive definite "
                             f"covariance (do the samples vary at that step?)")
        w_t = pi2_weights(S[t_bad], eta[t_bad])
        k_t, ml_t, covar_t = _weighted_moments(ffw[:, t_bad], w_t, covar_old[t_bad], damping)
        weights[t_bad], k[t_bad], ml[t_bad], covar[t_bad] = w_t, k_t, ml_t, covar_t
        bad[t_bad] = _failed_covariance(covar_t, covar_old[t_bad], cfg.min_covariance_ratio)

    return PI2Result(k=k, covar=covar, temperatures=eta, weights=weights, weights_kl=weights_kl(weights),
                     ml_covar=ml, temperature_raised=raised)


def pi2_update(
    K: np.ndarray,
    X: np.ndarray,
    U: np.ndarray,
    costs: np.ndarray,
    covar_old: np.ndarray,
    cfg: PI2Config,
    temperatures: Optional[np.ndarray] = None,
) -> PI2Result:
    """PI2's update of one condition's controller from its samples: K [T, dU, dX] (carried over),
    X [N, T, dX], U [N, T, dU], per-step costs [N, T], covar_old [T, dU, dU] -> PI2Result with K set
    (result.policy is the new controller). The samples' feedforward controls are u_it − K_t x_it.
    """
    K, X, U = np.asarray(K), np.asarray(X), np.asarray(U)
    if X.shape[:2] != U.shape[:2] or K.shape != (U.shape[1], U.shape[2], X.shape[2]):
        raise ValueError(f"shapes do not match: K {K.shape}, X {X.shape}, U {U.shape}")
    result = pi2_feedforward_update(feedforward_controls(K, X, U), costs, covar_old, cfg, temperatures)
    return PI2Result(k=result.k, covar=result.covar, temperatures=result.temperatures, weights=result.weights,
                     weights_kl=result.weights_kl, ml_covar=result.ml_covar,
                     temperature_raised=result.temperature_raised, K=K)
