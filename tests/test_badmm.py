"""BADMM core (gps_core/badmm/algorithm.py, ALGORITHM §10): surrogate, S-step data, duals, weights, schedules,
inner loop, step adjustment, and the c_step.c_step_batched surrogate hook (MDGPS unchanged)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import multivariate_normal

from gps_core import configs

from gps_core.badmm import algorithm as badmm
from gps_core.badmm.algorithm import BadmmSurrogate
from gps_core.badmm.duals import DualState, init_duals
from gps_core.configs import BadmmConfig
from gps_core.traj_opt.lingauss import LinearGaussianPolicy
from gps_core.traj_opt.c_step import c_step_batched
from gps_core.traj_opt.lqr import Dynamics, QuadraticCost, estimate_cost, mdgps_backward_batched, quadratic_form_batched
from gps_core.configs import TrajOptConfig
from gps_core.mdgps import new_step_mult
from gps_core.mdgps import s_step_dataset as mdgps_s_step_dataset
from gps_core.policy.s_step import policy_variance, process_weights
import reference_impl
from reference_impl import backward_pass, c_step_reference, forward_pass, traj_kl

CODE_DEFAULTS = BadmmConfig(fixed_lg_step=0, ent_reg_schedule=0.0)
"""The gps code's ALG_BADMM defaults (not what the paper ran)."""

TASK_CONFIGS: dict[str, BadmmConfig] = {
    "obstacle": BadmmConfig(init_pol_wt=0.005),
    "peg": BadmmConfig(),
    "peg_blind": BadmmConfig(),
}
"""The CR settings of the paper's three tasks (names as configs/<task>.yaml)."""

dX, dU, T = 3, 2, 10
D = dX + dU


# --------------------------------------------------------------------------- random problems


def spd(rng, n, scale=1.0, floor=0.2):
    A = rng.standard_normal((n, n))
    return scale * (A @ A.T / n + floor * np.eye(n))


def random_controller(rng, scale=0.3, cov=0.5):
    return LinearGaussianPolicy(
        K=scale * rng.standard_normal((T, dU, dX)),
        k=scale * rng.standard_normal((T, dU)),
        covar=np.stack([spd(rng, dU, cov) for _ in range(T)]),
    )


def random_condition(rng):
    A = np.eye(dX) + 0.1 * rng.standard_normal((dX, dX))
    B = 0.3 * rng.standard_normal((dX, dU))
    Fm = np.broadcast_to(np.concatenate([A, B], axis=1), (T, dX, D)).copy()
    Fm[-1] = 0.0
    dyn = Dynamics(Fm=Fm, fv=0.05 * rng.standard_normal((T, dX)),
                   covar=np.broadcast_to(0.01 * np.eye(dX), (T, dX, dX)).copy(),
                   x0mu=rng.standard_normal(dX), x0sigma=0.01 * np.eye(dX))
    Cm = np.stack([spd(rng, D, 1.0, 0.3) for _ in range(T)])
    cost = QuadraticCost(Cm=Cm, cv=0.3 * rng.standard_normal((T, D)), cc=rng.standard_normal(T))
    return dyn, cost, random_controller(rng), random_controller(rng)  # dynamics, cost, p̄, π̄


def random_duals(rng, M, nu_scale=0.5, lam_scale=0.3):
    return DualState(
        lam_k=lam_scale * rng.standard_normal((M, T, dU)),
        lam_K=lam_scale * rng.standard_normal((M, T, dU, dX)),
        pol_wt=nu_scale * rng.uniform(0.2, 2.0, (M, T)),  # varies with t, so β_t ≠ 1
    )


def problems(seed, M=3):
    rng = np.random.default_rng(seed)
    conds = [random_condition(rng) for _ in range(M)]
    dyns, costs, prevs, lins = (list(x) for x in zip(*conds))
    return dyns, costs, prevs, lins, random_duals(rng, M), rng


def hook_backward(eta, costs, dyns, surrogate):
    """lqr.mdgps_backward_batched at fixed η [M] with a surrogate hook -> K, k, covar, η used."""
    Cm, cv = np.stack([c.Cm for c in costs]), np.stack([c.cv for c in costs])  # shapes only, with a hook
    return mdgps_backward_batched(eta, Cm, cv, None, None, np.stack([d.Fm for d in dyns]), np.stack([d.fv for d in dyns]),
                                  dX, TrajOptConfig(), surrogate=surrogate)


# --------------------------------------------------------------------------- the surrogate is the Lagrangian


def lagrangian_integrand(z, t, cost, lam_K, lam_k, prev, lin, nu, eta):
    """ℓ_t(z) − uᵀλ_t(x) − η log p̄(u|x) − ν_t log π̄(u|x), evaluated directly (scipy densities)."""
    x, u = z[:dX], z[dX:]
    ell = cost.cc[t] + cost.cv[t] @ z + 0.5 * z @ cost.Cm[t] @ z
    lam = lam_K[t] @ x + lam_k[t]
    log_p = multivariate_normal.logpdf(u, prev.K[t] @ x + prev.k[t], prev.covar[t])
    log_pi = multivariate_normal.logpdf(u, lin.K[t] @ x + lin.k[t], lin.covar[t])
    return ell - u @ lam - eta * log_p - nu[t] * log_pi


@pytest.mark.parametrize("eta", [0.05, 1.0, 30.0])
def test_surrogate_is_the_lagrangian_integrand_up_to_a_constant(eta):
    dyns, costs, prevs, lins, duals, rng = problems(1, M=1)
    cost, prev, lin = costs[0], prevs[0], lins[0]
    lam_K, lam_k, nu = duals.lam_K[0], duals.lam_k[0], duals.pol_wt[0]
    Cs, cs = reference_impl.badmm_surrogate(eta, cost, lam_K, lam_k, prev, lin, nu)
    for t in (0, 4, T - 1):
        diffs = []
        for _ in range(8):
            z = 2.0 * rng.standard_normal(D)
            direct = lagrangian_integrand(z, t, cost, lam_K, lam_k, prev, lin, nu, eta)
            quad = (eta + nu[t]) * (0.5 * z @ Cs[t] @ z + cs[t] @ z)
            diffs.append(direct - quad)
        # Only the log-normalisers and cc remain: the same constant for every z.
        np.testing.assert_allclose(diffs, diffs[0], rtol=0, atol=1e-9 * max(1.0, abs(diffs[0])))


def test_lagrangian_cost_expectation_matches_monte_carlo():
    """E_{z~N(μ,S)}[ℓ(z) − uᵀ(λ_K x + λ_k)] in closed form from (Cm', cv') equals a Monte-Carlo average."""
    rng = np.random.default_rng(2)
    _, cost, _, _ = random_condition(rng)
    lam_K, lam_k = rng.standard_normal((T, dU, dX)), rng.standard_normal((T, dU))
    lc = badmm.lagrangian_cost(cost, lam_K, lam_k)
    t = 3
    mu, S = rng.standard_normal(D), spd(rng, D, 0.5)
    closed = lc.cc[t] + lc.cv[t] @ mu + 0.5 * mu @ lc.Cm[t] @ mu + 0.5 * np.trace(S @ lc.Cm[t])
    z = rng.multivariate_normal(mu, S, size=400_000)
    x, u = z[:, :dX], z[:, dX:]
    ell = cost.cc[t] + z @ cost.cv[t] + 0.5 * np.einsum("ni,ij,nj->n", z, cost.Cm[t], z)
    mc = ell - np.einsum("nu,nu->n", u, x @ lam_K[t].T + lam_k[t])
    assert closed == pytest.approx(mc.mean(), abs=4 * mc.std() / np.sqrt(len(mc)))


def test_lambda_rewards_actions_along_lambda():
    """−uᵀλ in the C-step cost: with λ_k = 0.5 at every step the expected Σ_t λᵀu_t of the new
    controller grows (the optimum of cost − linear reward moves along the reward), and at the last
    step, which has no future, the offset moves by Σ_t λ/(η + ν_t)."""
    dyns, costs, prevs, lins, duals, _ = problems(3, M=1)
    zero = DualState(lam_k=np.zeros((1, T, dU)), lam_K=np.zeros((1, T, dU, dX)), pol_wt=duals.pol_wt)
    push = DualState(lam_k=np.full((1, T, dU), 0.5), lam_K=zero.lam_K, pol_wt=duals.pol_wt)
    eta = np.array([1.0])
    out = [hook_backward(eta, costs, dyns, BadmmSurrogate(costs, prevs, lins, d)) for d in (zero, push)]
    mu0 = forward_pass(LinearGaussianPolicy(out[0][0][0], out[0][1][0], out[0][2][0]), dyns[0])[0][:, dX:]
    mu1 = forward_pass(LinearGaussianPolicy(out[1][0][0], out[1][1][0], out[1][2][0]), dyns[0])[0][:, dX:]
    assert np.sum(0.5 * (mu1 - mu0)) > 0
    dk = out[1][1][0, -1] - out[0][1][0, -1]
    np.testing.assert_allclose(dk, out[1][2][0, -1] @ np.full(dU, 0.5) / (1.0 + duals.pol_wt[0, -1]), rtol=1e-9)


# --------------------------------------------------------------------------- C-step: hook vs literal §10.3


@pytest.mark.parametrize("eta", [0.01, 0.7, 25.0])
def test_hook_backward_equals_literal_rescaled_backward(eta):
    dyns, costs, prevs, lins, duals, _ = problems(4)
    M = len(costs)
    K, k, covar, eta_used = hook_backward(np.full(M, eta), costs, dyns, BadmmSurrogate(costs, prevs, lins, duals))
    for m in range(M):
        ref, e = reference_impl.badmm_backward_reference(eta, costs[m], duals.lam_K[m], duals.lam_k[m], prevs[m], lins[m],
                                                duals.pol_wt[m], dyns[m], TrajOptConfig())
        assert eta_used[m] == e
        np.testing.assert_allclose(K[m], ref.K, rtol=1e-9, atol=1e-11)
        np.testing.assert_allclose(k[m], ref.k, rtol=1e-9, atol=1e-11)
        np.testing.assert_allclose(covar[m], ref.covar, rtol=1e-9, atol=1e-12)


def test_value_rescaling_matters_when_weights_vary():
    """β_t ≠ 1: dropping it changes the solution (so the test above is not vacuous)."""
    dyns, costs, prevs, lins, duals, _ = problems(5, M=1)
    eta = 0.3
    Cs, cs = reference_impl.badmm_surrogate(eta, costs[0], duals.lam_K[0], duals.lam_k[0], prevs[0], lins[0], duals.pol_wt[0])
    beta = reference_impl.value_rescaling(eta, duals.pol_wt[0])
    np.testing.assert_allclose(beta[:-1], (eta + duals.pol_wt[0, 1:]) / (eta + duals.pol_wt[0, :-1]))
    assert beta[-1] == 1.0
    with_beta = reference_impl.backward_pass_rescaled(Cs, cs, beta, dyns[0], dX)
    without = backward_pass(Cs, cs, dyns[0], dX)
    np.testing.assert_allclose(reference_impl.backward_pass_rescaled(Cs, cs, np.ones(T), dyns[0], dX).K, without.K, atol=1e-12)
    assert np.max(np.abs(with_beta.K - without.K)) > 1e-3


def test_large_eta_returns_previous_controller_and_large_weight_returns_linearisation():
    dyns, costs, prevs, lins, duals, _ = problems(6, M=1)
    lam0 = DualState(lam_k=np.zeros((1, T, dU)), lam_K=np.zeros((1, T, dU, dX)), pol_wt=duals.pol_wt)
    pol, _ = reference_impl.badmm_backward_reference(1e12, costs[0], lam0.lam_K[0], lam0.lam_k[0], prevs[0], lins[0],
                                            lam0.pol_wt[0], dyns[0], TrajOptConfig())
    for a, b in ((pol.K, prevs[0].K), (pol.k, prevs[0].k), (pol.covar, prevs[0].covar)):
        np.testing.assert_allclose(a, b, atol=1e-6)
    heavy = np.full(T, 1e12)
    pol, _ = reference_impl.badmm_backward_reference(1.0, costs[0], lam0.lam_K[0], lam0.lam_k[0], prevs[0], lins[0],
                                            heavy, dyns[0], TrajOptConfig())
    for a, b in ((pol.K, lins[0].K), (pol.k, lins[0].k), (pol.covar, lins[0].covar)):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_badmm_c_step_matches_reference_and_meets_the_bound_against_previous_controller():
    dyns, costs, prevs, lins, duals, _ = problems(7)
    M = len(costs)
    bounds = np.array([0.5, 2.0, 5.0])
    etas = np.array([1.0, 0.1, 10.0])
    cfg = TrajOptConfig()
    res = badmm.badmm_c_step(costs, prevs, lins, dyns, duals, bounds, etas, cfg)
    for m in range(M):
        ref = reference_impl.badmm_c_step_reference(costs[m], duals.lam_K[m], duals.lam_k[m], prevs[m], lins[m],
                                           duals.pol_wt[m], dyns[m], bounds[m], etas[m], cfg)
        assert res.converged[m] and ref.converged
        assert res.dual_iterations[m] == ref.dual_iterations
        assert res.eta[m] == pytest.approx(ref.eta, rel=1e-9)
        np.testing.assert_allclose(res.K[m], ref.policy.K, rtol=1e-7, atol=1e-9)
        np.testing.assert_allclose(res.covar[m], ref.policy.covar, rtol=1e-7, atol=1e-9)
        pol = res[m].policy
        mu, S = forward_pass(pol, dyns[m])
        kl = np.sum(traj_kl(mu, S, pol, prevs[m]))  # measured against p̄, not π̄
        assert kl == pytest.approx(res.kl[m], rel=1e-9)
        assert abs(kl - bounds[m]) < cfg.tolerance * bounds[m]


def test_no_hook_and_an_mdgps_hook_leave_the_mdgps_c_step_unchanged():
    """The optional surrogate parameter of c_step_batched does not change MDGPS results."""
    dyns, costs, prevs, lins, duals, _ = problems(8)
    M = len(costs)
    bounds, etas, cfg = np.array([1.0, 3.0, 8.0]), np.ones(M), TrajOptConfig()
    plain = c_step_batched(costs, lins, dyns, bounds, etas, cfg)
    for m in range(M):
        ref = c_step_reference(costs[m], lins[m], dyns[m], bounds[m], etas[m], cfg)
        np.testing.assert_allclose(plain.K[m], ref.policy.K, atol=1e-8)
        assert plain.eta[m] == pytest.approx(ref.eta, rel=1e-12)
    Cm, cv = np.stack([c.Cm for c in costs]), np.stack([c.cv for c in costs])
    Mq, vq = quadratic_form_batched(np.stack([p.K for p in lins]), np.stack([p.k for p in lins]),
                                    np.stack([p.covar for p in lins]))[:2]

    def mdgps_hook(eta, conds):
        e = eta[:, None, None]
        return Cm[conds] / e[..., None] + Mq[conds], cv[conds] / e + vq[conds], None

    hooked = c_step_batched(costs, lins, dyns, bounds, etas, cfg, surrogate=mdgps_hook)
    for name in ("K", "k", "covar", "eta", "kl", "converged", "dual_iterations"):
        assert np.array_equal(getattr(plain, name), getattr(hooked, name)), name


def test_badmm_without_duals_and_weights_is_the_mdgps_c_step_against_the_previous_controller():
    dyns, costs, prevs, lins, _, _ = problems(9)
    M = len(costs)
    none = init_duals(M, T, dU, dX, 1.0)
    none = DualState(lam_k=none.lam_k, lam_K=none.lam_K, pol_wt=np.zeros((M, T)))
    bounds, etas, cfg = np.array([1.0, 3.0, 8.0]), np.ones(M), TrajOptConfig()
    a = badmm.badmm_c_step(costs, prevs, lins, dyns, none, bounds, etas, cfg)
    b = c_step_batched(costs, prevs, dyns, bounds, etas, cfg)
    for name in ("K", "k", "covar", "eta", "kl", "dual_iterations"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name


def test_surrogate_rejects_nan_and_names_the_condition():
    dyns, costs, prevs, lins, duals, _ = problems(10)
    bad = DualState(lam_k=duals.lam_k.copy(), lam_K=duals.lam_K, pol_wt=duals.pol_wt)
    bad.lam_k[2, 3, 0] = np.nan
    with pytest.raises(FloatingPointError, match="condition 2"):
        BadmmSurrogate(costs, prevs, lins, bad)


# --------------------------------------------------------------------------- S-step data


def tiny_samples(rng, M=2, N=3):
    X = rng.standard_normal((M, N, T, dX))
    return X, X[..., :2] + 1.0  # observations: any function of the state


def test_s_step_dataset_targets_precisions_weights():
    rng = np.random.default_rng(11)
    M, N = 2, 3
    pols = [random_controller(rng) for _ in range(M)]
    X, O = tiny_samples(rng, M, N)
    duals = random_duals(rng, M)
    obs, target, prc, wt = badmm.s_step_dataset(pols, X, O, duals, "coded")
    obs0, target0, prc0, _ = mdgps_s_step_dataset(pols, X, O)
    np.testing.assert_array_equal(obs, obs0)
    np.testing.assert_array_equal(prc, prc0)
    for m, n, t in ((0, 0, 0), (1, 2, 7), (1, 0, T - 1)):
        r = m * N + n
        x = X[m, n, t]
        lam = duals.lam_K[m, t] @ x + duals.lam_k[m, t]
        nu = duals.pol_wt[m, t]
        expected = pols[m].K[t] @ x + pols[m].k[t] - nu * pols[m].covar[t] @ lam  # as coded: × ν
        np.testing.assert_allclose(target[r, t], expected, atol=1e-12)
        assert wt[r, t] == nu
        np.testing.assert_allclose(prc[r, t], np.linalg.inv(pols[m].covar[t]), atol=1e-10)
    # λ = 0: the MDGPS targets
    zero = DualState(np.zeros_like(duals.lam_k), np.zeros_like(duals.lam_K), duals.pol_wt)
    np.testing.assert_array_equal(badmm.s_step_dataset(pols, X, O, zero)[1], target0)


def test_derived_target_is_the_policy_step_stationary_point_and_modes_differ_by_nu():
    """'derived': ν Σ⁻¹(μ* − μ_p) + λ = 0, the minimiser of E_π[uᵀλ] + ν KL(π‖p) over the mean."""
    rng = np.random.default_rng(12)
    M, N = 2, 2
    pols = [random_controller(rng) for _ in range(M)]
    X, O = tiny_samples(rng, M, N)
    duals = random_duals(rng, M)
    mu_p = mdgps_s_step_dataset(pols, X, O)[1].reshape(M, N, T, dU)
    lam = badmm.lambda_at(duals, X)
    tgt = {mode: badmm.s_step_dataset(pols, X, O, duals, mode)[1].reshape(M, N, T, dU) for mode in configs.TARGET_SHIFTS}
    prc = np.stack([p.inv_covar for p in pols])
    nu = duals.pol_wt[:, None, :, None]
    grad = nu * np.einsum("mtuv,mntv->mntu", prc, tgt["derived"] - mu_p) + lam
    np.testing.assert_allclose(grad, 0.0, atol=1e-10)
    np.testing.assert_allclose(mu_p - tgt["coded"], nu**2 * (mu_p - tgt["derived"]), atol=1e-12)
    np.testing.assert_allclose(mu_p - tgt["sub"], nu * (mu_p - tgt["derived"]), atol=1e-12)


def test_controller_for_uses_new_controllers_after_the_first_inner_iteration():
    prev, new = ["p̄"], ["new"]
    assert badmm.controller_for(0, prev, new) is prev
    assert badmm.controller_for(0, prev, None) is prev
    assert badmm.controller_for(2, prev, new) is new
    with pytest.raises(ValueError):
        badmm.controller_for(1, prev, None)


# --------------------------------------------------------------------------- dual step (hand-computed)


def const_controller(K, k, covar):
    return LinearGaussianPolicy(K=np.broadcast_to(K, (T, *np.shape(K))).copy(),
                                k=np.broadcast_to(k, (T, len(k))).copy(),
                                covar=np.broadcast_to(covar, (T, *np.shape(covar))).copy())


def test_dual_step_mean_term_hand_computed():
    # One condition, dU = 2, dX = 3, N = 2 samples. Σ = [[2, 1], [1, 1]] ⇒ Σ⁻¹ = [[1, −1], [−1, 2]].
    K = np.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    pol = const_controller(K, np.array([1.0, -1.0]), np.array([[2.0, 1.0], [1.0, 1.0]]))
    X = np.zeros((1, 2, T, dX))
    X[0, 0, :] = [1.0, 1.0, 5.0]   # K x + k = (2, 1)
    X[0, 1, :] = [3.0, 0.0, -2.0]  # K x + k = (4, −1)
    U_pol = np.zeros((1, 2, T, dU))
    U_pol[0, 0, :] = [1.0, 1.0]
    U_pol[0, 1, :] = [1.0, -3.0]   # residuals (1, 0), (3, 2): mean (2, 1)
    duals = DualState(lam_k=np.full((1, T, dU), 0.25), lam_K=np.zeros((1, T, dU, dX)), pol_wt=np.full((1, T), 0.5))
    cfg = BadmmConfig(policy_dual_rate=0.1, policy_dual_rate_covar=0.0)
    np.testing.assert_allclose(badmm.constraint_residual([pol], X, U_pol)[0], np.tile([2.0, 1.0], (T, 1)))
    new = badmm.dual_step(duals, [pol], X, U_pol, np.zeros((1, T, dU, dX)), cfg)
    # Σ⁻¹ (2, 1) = (1, 0); λ_k ← 0.25 − 0.1 · 0.5 · (1, 0) = (0.2, 0.25)
    np.testing.assert_allclose(new.lam_k[0], np.tile([0.2, 0.25], (T, 1)), atol=1e-14)
    np.testing.assert_array_equal(new.lam_K, duals.lam_K)
    np.testing.assert_array_equal(new.pol_wt, duals.pol_wt)
    assert duals.lam_k[0, 0, 0] == 0.25  # the input is not modified


def test_dual_step_covariance_term_hand_computed_and_off_by_default():
    pol = const_controller(np.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]]), np.zeros(2), np.array([[2.0, 1.0], [1.0, 1.0]]))
    lin_K = np.zeros((1, T, dU, dX))
    lin_K[0, :] = [[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]]  # K_c − K̄ = [[1, 0, −1], [0, 1, 0]]
    X = np.zeros((1, 1, T, dX))
    U_pol = np.zeros((1, 1, T, dU))
    duals = init_duals(1, T, dU, dX, 0.5)
    on = badmm.dual_step(duals, [pol], X, U_pol, lin_K, BadmmConfig(policy_dual_rate=0.0, policy_dual_rate_covar=0.2))
    # Σ⁻¹ (K_c − K̄) = [[1, −1, −1], [−1, 2, 1]]; λ_K ← 0 − 0.2 · 0.5 · that
    np.testing.assert_allclose(on.lam_K[0, 4], -0.1 * np.array([[1.0, -1.0, -1.0], [-1.0, 2.0, 1.0]]), atol=1e-14)
    off = badmm.dual_step(duals, [pol], X, U_pol, lin_K, BadmmConfig())
    np.testing.assert_array_equal(off.lam_K, 0.0)


def test_dual_step_is_ascent_on_the_lagrangian():
    """∂ℒ/∂λ_k,t = E_π[u] − E_p[u] = −residual; the step has a positive inner product with it."""
    rng = np.random.default_rng(13)
    M, N = 2, 4
    pols = [random_controller(rng) for _ in range(M)]
    X = rng.standard_normal((M, N, T, dX))
    U_pol = rng.standard_normal((M, N, T, dU))
    duals = random_duals(rng, M)
    new = badmm.dual_step(duals, pols, X, U_pol, np.zeros((M, T, dU, dX)), BadmmConfig())
    grad = -badmm.constraint_residual(pols, X, U_pol)
    assert np.all(np.einsum("mtu,mtu->mt", new.lam_k - duals.lam_k, grad) > 0)


# --------------------------------------------------------------------------- policy KL and weights


def test_policy_kl_equals_mean_of_exact_gaussian_kls():
    rng = np.random.default_rng(14)
    M, N = 2, 3
    prevs = [random_controller(rng) for _ in range(M)]
    X = rng.standard_normal((M, N, T, dX))
    U_pol = rng.standard_normal((M, N, T, dU))
    var = np.array([0.3, 1.7])
    kl = badmm.policy_kl(prevs, X, U_pol, var)
    Sp = np.diag(var)
    for m, t in ((0, 0), (1, 6)):
        S = prevs[m].covar[t]
        vals = []
        for n in range(N):
            d = U_pol[m, n, t] - (prevs[m].K[t] @ X[m, n, t] + prevs[m].k[t])
            # KL(N(a, S) ‖ N(b, Sp)) = ½[tr(Sp⁻¹S) + (b−a)ᵀSp⁻¹(b−a) − dU + log|Sp|/|S|]
            vals.append(0.5 * (np.trace(np.linalg.solve(Sp, S)) + d @ np.linalg.solve(Sp, d) - dU
                               + np.log(np.linalg.det(Sp) / np.linalg.det(S))))
        assert kl[m, t] == pytest.approx(np.mean(vals), rel=1e-12)


def test_weight_rule_3_over_several_iterations_hand_computed():
    """The paper's rule at the last inner iteration of four successive iterations (T = 4)."""
    cfg = BadmmConfig(fixed_lg_step=3)
    nu = np.full((1, 4), 0.01)
    prev_kl = None
    expected = [
        [0.01, 0.01, 0.01, 0.01],    # no previous KL yet: unchanged, KL recorded
        [0.01, 0.01, 0.01, 0.02],    # kl (0,0,0,4): mean 1, std √3; hi = 1 + ½√3 ≈ 1.87 → t=3 ×2
        [0.005, 0.01, 0.01, 0.04],   # kl (0,2,2,4): mean 2, std √2; lo ≈ 0.59 → t=0 ×½; hi ≈ 2.71 → t=3 ×2
        [0.01, 0.02, 0.02, 0.08],    # kl (1,1,1,1): std 0, lo = hi = 1, kl ≥ hi everywhere → all ×2 (quirk)
    ]
    for kl, want in zip(([5.0, 0, 0, 0], [0, 0, 0, 4.0], [0, 2.0, 2.0, 4.0], [1.0, 1, 1, 1]), expected):
        kl = np.array([kl])
        nu = badmm.update_pol_wt(nu, kl, prev_kl, cfg, lg_step=123.0)  # lg_step unused by rule 3
        prev_kl = kl
        np.testing.assert_allclose(nu[0], want, rtol=1e-15)


def test_weight_rule_3_band_coefficients_and_factors():
    cfg = BadmmConfig(fixed_lg_step=3, exp_step_lower=0.0, exp_step_upper=0.0, exp_step_decrease=0.25, exp_step_increase=3.0)
    nu = badmm.update_pol_wt(np.ones((2, 3)), np.array([[1.0, 2.0, 3.0], [3.0, 3.0, 0.0]]), np.ones((2, 3)), cfg, 0.0)
    # band collapses to the mean per condition: below ×0.25, at/above ×3
    np.testing.assert_allclose(nu, [[0.25, 3.0, 3.0], [3.0, 3.0, 0.25]])


def test_weight_rules_0_1_2_hand_computed():
    nu = np.array([[0.1, 0.2, 0.3]])
    kl = np.array([[0.5, 0.9, 1.2]])
    np.testing.assert_allclose(badmm.update_pol_wt(nu, kl, None, BadmmConfig(fixed_lg_step=0), 2.0), [[1.1, 2.0, 2.7]])
    np.testing.assert_allclose(badmm.update_pol_wt(nu, kl, None, BadmmConfig(fixed_lg_step=1), -0.15), [[0.0, 0.05, 0.15]])
    rule2 = BadmmConfig(fixed_lg_step=2)
    np.testing.assert_array_equal(badmm.update_pol_wt(nu, kl, None, rule2, 0.0), nu)
    np.testing.assert_allclose(badmm.update_pol_wt(nu, kl, np.ones((1, 3)), rule2, 0.0), [[0.05, 0.2, 0.6]])


def test_dual_and_weight_step_updates_weights_only_when_asked_and_records_kl():
    rng = np.random.default_rng(15)
    M, N = 2, 3
    prevs = [random_controller(rng) for _ in range(M)]
    news = [random_controller(rng) for _ in range(M)]
    X = rng.standard_normal((M, N, T, dX))
    U_pol = rng.standard_normal((M, N, T, dU))
    var = np.array([0.5, 0.8])
    cfg = BadmmConfig(fixed_lg_step=0)
    duals = init_duals(M, T, dU, dX, 0.01)
    mid, kl = badmm.dual_and_weight_step(duals, news, prevs, X, U_pol, var, np.zeros((M, T, dU, dX)), cfg, 0.5, False)
    np.testing.assert_array_equal(mid.pol_wt, duals.pol_wt)
    assert mid.prev_kl is None
    np.testing.assert_array_equal(mid.lam_k, badmm.dual_step(duals, news, X, U_pol, None, cfg).lam_k)
    np.testing.assert_array_equal(kl, badmm.policy_kl(prevs, X, U_pol, var))  # KL of p̄, not of the new controller
    last, kl2 = badmm.dual_and_weight_step(mid, news, prevs, X, U_pol, var, np.zeros((M, T, dU, dX)), cfg, 0.5, True)
    # λ first (with the old ν), then ν
    np.testing.assert_array_equal(last.lam_k, badmm.dual_step(mid, news, X, U_pol, None, cfg).lam_k)
    np.testing.assert_allclose(last.pol_wt, np.maximum(0.01 + 0.5 * kl2, 0.0))
    np.testing.assert_array_equal(last.prev_kl, kl2)


# --------------------------------------------------------------------------- schedules


def test_entropy_schedule_indexing_peg_12_iterations():
    cfg = TASK_CONFIGS["peg"]
    assert cfg.ent_reg_schedule == (1e-3, 1e-3, 1e-2, 1e-2)
    # u = (itr + 1)/11, knots at 0, 1/3, 2/3, 1; log-linear between 1/3 and 2/3
    want = {0: 1e-3, 2: 1e-3, 3: 10 ** (-3 + 1 / 11), 5: 10 ** (-3 + 7 / 11), 6: 10 ** (-3 + 10 / 11),
            7: 1e-2, 10: 1e-2, 11: 1e-2}
    for itr, value in want.items():
        assert badmm.ent_reg_at(cfg, itr, 12) == pytest.approx(value, rel=1e-12), itr
    assert badmm.schedule_position(0, 12) == pytest.approx(1 / 11)
    assert badmm.schedule_position(10, 12) == 1.0 and badmm.schedule_position(11, 12) == 1.0


def test_entropy_schedule_obstacle_15_iterations_and_scalars():
    cfg = TASK_CONFIGS["obstacle"]
    assert badmm.ent_reg_at(cfg, 4, 15) == pytest.approx(10 ** (-3 + 1 / 14), rel=1e-12)  # u = 5/14
    assert badmm.ent_reg_at(cfg, 3, 15) == pytest.approx(1e-3, rel=1e-12)  # u = 4/14 < 1/3
    assert badmm.ent_reg_at(CODE_DEFAULTS, 5, 15) == 0.0
    assert badmm.lg_step_at(cfg, 0, 15) == 10.0
    two = BadmmConfig(lg_step_schedule=(1.0, 100.0))
    assert badmm.lg_step_at(two, 0, 5) == pytest.approx(10 ** 0.5)  # u = 1/4 → 10^(2/4)
    assert badmm.schedule_position(0, 1) == 1.0  # one iteration: the end of the schedule


# --------------------------------------------------------------------------- inner loop order


def test_inner_plan_iteration_zero_and_later():
    p0 = badmm.inner_plan(0, 4)
    assert [s.s_step for s in p0] == [False, True, True, True]
    assert [s.dual_step for s in p0] == [False, True, True, True]
    assert [s.update_pol_wt for s in p0] == [False, False, False, True]
    assert [s.controller for s in p0] == ["prev", "new", "new", "new"]
    p1 = badmm.inner_plan(3, 4)
    assert [s.s_step for s in p1] == [True] * 4
    assert [s.dual_step for s in p1] == [True] * 4
    assert [s.update_pol_wt for s in p1] == [False, False, False, True]
    assert all(s.refit_policy and s.c_step for s in p0 + p1)


def test_run_inner_loop_calls_in_order():
    calls = []

    class Ops:
        def s_step(self, s): calls.append(("S", s.inner, s.controller))
        def refit_policy(self, s): calls.append(("fit", s.inner))
        def dual_step(self, s): calls.append(("dual", s.inner, s.update_pol_wt))
        def c_step(self, s): calls.append(("C", s.inner))

    badmm.run_inner_loop(0, BadmmConfig(inner_iterations=2), Ops())
    assert calls == [("fit", 0), ("C", 0), ("S", 1, "new"), ("fit", 1), ("dual", 1, True), ("C", 1)]
    calls.clear()
    badmm.run_inner_loop(1, BadmmConfig(inner_iterations=2), Ops())
    assert calls == [("S", 0, "prev"), ("fit", 0), ("dual", 0, False), ("C", 0),
                     ("S", 1, "new"), ("fit", 1), ("dual", 1, True), ("C", 1)]


# --------------------------------------------------------------------------- step adjustment


def test_augmented_kl_is_the_expected_kl_plus_du():
    rng = np.random.default_rng(16)
    dyn, cost, pol, lin = random_condition(rng)
    J, kl = badmm.augmented_laplace(pol, dyn, cost, lin)
    mu, S = forward_pass(pol, dyn)
    np.testing.assert_allclose(kl - dU, traj_kl(mu, S, pol, lin), rtol=1e-10, atol=1e-12)
    assert np.sum(J) == pytest.approx(estimate_cost(pol, dyn, cost), rel=1e-12)


def test_badmm_step_estimates_and_new_mult():
    rng = np.random.default_rng(17)
    dyn_prev, cost_prev, p_prev, lin_prev = random_condition(rng)
    dyn_cur, cost_cur, p_cur, lin_cur = random_condition(rng)
    args = (p_prev, p_cur, lin_prev, lin_cur, dyn_prev, cost_prev, dyn_cur, cost_cur)
    plain = badmm.badmm_step_estimates(*args, np.zeros(T))
    assert plain.prev == pytest.approx(estimate_cost(p_prev, dyn_prev, cost_prev), rel=1e-12)
    assert plain.predicted == pytest.approx(estimate_cost(p_cur, dyn_prev, cost_prev), rel=1e-12)
    assert plain.actual == pytest.approx(estimate_cost(p_cur, dyn_cur, cost_cur), rel=1e-12)
    nu = rng.uniform(0.0, 0.1, T)
    est = badmm.badmm_step_estimates(*args, nu)
    kl_of = lambda p, d, c, lin: badmm.augmented_laplace(p, d, c, lin)[1]  # noqa: E731
    assert est.prev == pytest.approx(plain.prev + nu @ kl_of(p_prev, dyn_prev, cost_prev, lin_prev), rel=1e-12)
    assert est.predicted == pytest.approx(plain.predicted + nu @ kl_of(p_cur, dyn_prev, cost_prev, lin_prev), rel=1e-12)
    assert est.actual == pytest.approx(plain.actual + nu @ kl_of(p_cur, dyn_cur, cost_cur, lin_cur), rel=1e-12)
    # hand-computed multiplier from predicted 4, actual 1: r = 4 / (2·3) = 2/3
    assert new_step_mult(4.0, 1.0, 0.9, 0.01, 1.0) == pytest.approx(0.6)


# --------------------------------------------------------------------------- hyperparameters


def test_task_configs_and_validation():
    peg, blind, obs = (TASK_CONFIGS[k] for k in ("peg", "peg_blind", "obstacle"))
    assert peg == blind
    assert (peg.init_pol_wt, obs.init_pol_wt) == (0.01, 0.005)
    for c in (peg, obs):
        assert (c.fixed_lg_step, c.policy_dual_rate, c.policy_dual_rate_covar, c.inner_iterations) == (3, 0.1, 0.0, 4)
        assert c.target_shift == "coded"
    assert CODE_DEFAULTS.fixed_lg_step == 0 and CODE_DEFAULTS.ent_reg_schedule == 0.0
    # the values BadmmConfig may not take are refused where params load: tests/test_params_validation.py


def test_dual_state_shapes_are_checked():
    d = init_duals(2, T, dU, dX, 0.01)
    assert d.lam_k.shape == (2, T, dU) and d.lam_K.shape == (2, T, dU, dX) and np.all(d.pol_wt == 0.01)
    with pytest.raises(ValueError):
        DualState(lam_k=np.zeros((2, T, dU + 1)), lam_K=d.lam_K, pol_wt=d.pol_wt)
    with pytest.raises(ValueError):
        DualState(lam_k=d.lam_k, lam_K=d.lam_K, pol_wt=d.pol_wt, prev_kl=np.zeros(T))


# --------------------------------------------------------------------------- end to end: duals drive agreement


class LinearPolicyProblem:
    """A double integrator (dX = 2, dU = 1, T = 20, 2 conditions) whose global policy is linear and
    time-invariant, u = G x + g, shared by the conditions and fit in closed form (weighted least
    squares with the S-step's precisions and processed weights); the local optimum is time-varying,
    so the policy cannot represent it and agreement needs the local controllers to move too."""

    T, dX, dU, M, N = 20, 2, 1, 2, 20

    def __init__(self, seed=0):
        T, dX, dU, M = self.T, self.dX, self.dU, self.M
        dt = 0.2
        self.A, self.B = np.array([[1.0, dt], [0.0, 1.0]]), np.array([[0.0], [dt]])
        Fm = np.broadcast_to(np.concatenate([self.A, self.B], 1), (T, dX, dX + dU)).copy()
        Fm[-1] = 0.0
        self.x0 = np.array([[-1.0, 0.0], [1.0, 0.0]])
        self.dyns = [Dynamics(Fm=Fm, fv=np.zeros((T, dX)), covar=np.broadcast_to(1e-4 * np.eye(dX), (T, dX, dX)).copy(),
                              x0mu=x0, x0sigma=1e-6 * np.eye(dX)) for x0 in self.x0]
        Q, target = np.diag([1.0, 0.1]), np.array([0.5, 0.0])
        Cm = np.zeros((T, 3, 3))
        Cm[:, :2, :2], Cm[:, 2, 2] = Q, 0.01
        cv = np.zeros((T, 3))
        cv[:, :2] = -Q @ target
        self.costs = [QuadraticCost(Cm=Cm, cv=cv, cc=np.full(T, 0.5 * target @ Q @ target))] * M
        self.prev = [LinearGaussianPolicy(K=np.zeros((T, dU, dX)), k=np.zeros((T, dU)),
                                          covar=np.broadcast_to(0.3 * np.eye(dU), (T, dU, dU)).copy()) for _ in range(M)]
        self.X = self.rollout(self.prev, np.random.default_rng(seed))

    def rollout(self, pols, rng):
        X = np.zeros((self.M, self.N, self.T, self.dX))
        for m in range(self.M):
            x = np.tile(self.x0[m], (self.N, 1))
            for t in range(self.T):
                X[m, :, t] = x
                u = x @ pols[m].K[t].T + pols[m].k[t] + rng.standard_normal((self.N, self.dU)) @ pols[m].chol[t]
                x = x @ self.A.T + u @ self.B.T + 1e-2 * rng.standard_normal((self.N, self.dX))
        return X

    def run(self, cfg: BadmmConfig, itr=1, iterations=12, kl_step=0.05):
        """One sample batch of BADMM with run_inner_loop; returns the constraint residual after each C-step."""
        T, dX, dU, M = self.T, self.dX, self.dU, self.M
        X, prev = self.X, self.prev
        s = dict(G=np.zeros((dU, dX)), g=np.zeros(dU), var=np.full(dU, 0.1), new=None, eta=np.ones(M),
                 duals=init_duals(M, T, dU, dX, cfg.init_pol_wt), residuals=[])

        def lins():
            return [LinearGaussianPolicy(K=np.broadcast_to(s["G"], (T, dU, dX)).copy(), k=np.broadcast_to(s["g"], (T, dU)).copy(),
                                         covar=np.broadcast_to(np.diag(s["var"]), (T, dU, dU)).copy()) for _ in range(M)]

        problem = self

        class Ops:
            def s_step(self, step):
                pols = badmm.controller_for(step.inner, prev, s["new"])
                obs, tgt, prc, wt = badmm.s_step_dataset(pols, X, X, s["duals"], cfg.target_shift)
                s["G"], s["g"], w = problem.fit_linear(obs, tgt, prc, wt)
                s["var"] = policy_variance(prc, w, badmm.ent_reg_at(cfg, itr, iterations))

            def refit_policy(self, step):
                s["lins"], s["U_pol"] = lins(), X @ s["G"].T + s["g"]  # exact linearisation of a linear policy

            def dual_step(self, step):
                pols = badmm.controller_for(step.inner, prev, s["new"])
                s["duals"], _ = badmm.dual_and_weight_step(
                    s["duals"], pols, prev, X, s["U_pol"], s["var"], np.stack([p.K for p in s["lins"]]), cfg,
                    badmm.lg_step_at(cfg, itr, iterations), step.update_pol_wt)

            def c_step(self, step):
                res = badmm.badmm_c_step(problem.costs, prev, s["lins"], problem.dyns, s["duals"],
                                         np.full(M, kl_step * T), s["eta"], TrajOptConfig())
                # With a heavy ν the π̄ term can keep KL(p ‖ p̄) below the bound even at the smallest η.
                assert np.all(res.converged | (res.kl < res.kl_bound))
                s["eta"], s["new"] = res.eta, [res[m].policy for m in range(M)]
                s["residuals"].append(float(np.mean(badmm.constraint_residual(s["new"], X, s["U_pol"]) ** 2)))

        badmm.run_inner_loop(itr, cfg, Ops())
        return np.array(s["residuals"]), s["duals"]

    def fit_linear(self, obs, target, prec, weight):
        """argmin_θ Σ_r w_r (θ φ_r − μ*_r)ᵀ P_r (θ φ_r − μ*_r), φ = [o; 1], θ = [G | g] (closed form)."""
        w = process_weights(weight)
        dO, dU = obs.shape[-1], self.dU
        phi = np.concatenate([obs, np.ones(obs.shape[:2] + (1,))], -1).reshape(-1, dO + 1)
        P = (prec * w[..., None, None]).reshape(-1, dU, dU)
        H = np.einsum("rab,rj,rk->ajbk", P, phi, phi).reshape(dU * (dO + 1), dU * (dO + 1))
        b = np.einsum("rab,rb,rj->aj", P, target.reshape(-1, dU), phi).reshape(-1)
        theta = np.linalg.solve(H, b).reshape(dU, dO + 1)
        return theta[:, :dO], theta[:, dO], w


def test_inner_iterations_with_duals_drive_controller_and_linear_policy_to_agree():
    problem = LinearPolicyProblem()
    cfg = BadmmConfig(init_pol_wt=1.0, policy_dual_rate=1.0, inner_iterations=6)
    with_duals, duals = problem.run(cfg)
    without, frozen = problem.run(BadmmConfig(init_pol_wt=1.0, policy_dual_rate=0.0, inner_iterations=6))
    np.testing.assert_array_equal(frozen.lam_k, 0.0)
    assert with_duals[0] == without[0]  # the duals enter after the first C-step
    # Agreement improves over the inner iterations and ends far better than without the duals,
    # which stall where the ν-weighted KL term alone leaves them.
    assert np.all(np.diff(with_duals) < 0)
    assert with_duals[-1] < 0.02 * with_duals[0]
    assert with_duals[-1] < 0.1 * without[-1]
    assert np.abs(duals.lam_k).max() > 0.1


def test_paper_weights_also_reduce_mismatch_slowly():
    """With the paper's ν = 0.01 and α = 0.1 the duals still help, only slightly (ν α Σ⁻¹ is tiny)."""
    problem = LinearPolicyProblem()
    a, _ = problem.run(BadmmConfig(init_pol_wt=0.01, policy_dual_rate=0.1, inner_iterations=6))
    b, _ = problem.run(BadmmConfig(init_pol_wt=0.01, policy_dual_rate=0.0, inner_iterations=6))
    assert a[-1] < b[-1] < b[0]
