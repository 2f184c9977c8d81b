"""PILQR (gps_core/traj_opt/pilqr.py): the LQR step with per-step KL constraints, the predicted and
residual sample costs, the res_percent step rule, and the whole update (LQR step, then PI2 on the residual)."""

import numpy as np
import pytest

from gps_core.configs import PI2Config, PILQRConfig
from gps_core.traj_opt.lingauss import LinearGaussianPolicy
from gps_core.traj_opt.lqr import (
    ConditionError, Dynamics, HopelessConditions, QuadraticCost, backward_pass_batched, estimate_cost,
)
from gps_core.traj_opt.pi2 import costs_to_go, pi2_temperatures, pi2_weights, weights_kl
from gps_core.traj_opt.pilqr import (
    KL_REFERENCE, LQR_STEP, NO_SAFEGUARD, SAFEGUARDS, lqr_step_batched, per_step_backward_batched, per_step_kl_bounds, pilqr_update, pilqr_update_batched,
    predicted_costs, predicted_costs_batched, res_percent_ratios, res_percent_rule, res_percent_step,
    residual_costs, schedule,
)

dX, dU, T = 3, 2, 10
D = dX + dU


def random_problem(seed=0, dyn_noise=0.01):
    """Stable-ish affine dynamics, a quadratic cost pulling x to a target, a random reference controller."""
    rng = np.random.default_rng(seed)
    A = np.eye(dX) + 0.1 * rng.standard_normal((dX, dX))
    B = 0.3 * rng.standard_normal((dX, dU))
    Fm = np.broadcast_to(np.concatenate([A, B], axis=1), (T, dX, D)).copy()
    fv = 0.05 * rng.standard_normal((T, dX))
    W = np.broadcast_to(dyn_noise * np.eye(dX), (T, dX, dX)).copy()
    dyn = Dynamics(Fm=Fm, fv=fv, covar=W, x0mu=rng.standard_normal(dX), x0sigma=0.01 * np.eye(dX))
    Q = np.diag(rng.uniform(0.5, 2.0, dX))
    Cm = np.zeros((T, D, D))
    Cm[:, :dX, :dX] = Q
    Cm[:, dX:, dX:] = np.diag(rng.uniform(0.1, 0.5, dU))
    Cm[:, :dX, dX:] = 0.05  # a small x-u coupling
    Cm[:, dX:, :dX] = 0.05
    target = np.array([1.0, -0.5, 0.2])
    cv = np.zeros((T, D))
    cv[:, :dX] = -Q @ target
    cv[:, dX:] = 0.1 * rng.standard_normal((T, dU))
    cost = QuadraticCost(Cm=Cm, cv=cv, cc=np.full(T, 0.5 * target @ Q @ target))
    L = 0.3 * rng.standard_normal((T, dU, dU))
    ref = LinearGaussianPolicy(
        K=0.1 * rng.standard_normal((T, dU, dX)),
        k=0.1 * rng.standard_normal((T, dU)),
        covar=np.eye(dU) + L @ L.transpose(0, 2, 1),
    )
    return dyn, cost, ref


# --------------------------------------------------------------------------- an independent, loop-by-loop
# transliteration of the reference's per-step search (one condition, plain numpy, no batching), the oracle
# of the batched implementation.


def _loop_backward(eta, cost, ref, dyn, del0):
    eta = eta.copy()
    Pbar = np.linalg.inv(ref.covar)
    delta = np.full(T, del0)
    while True:
        K, k, covar = np.zeros((T, dU, dX)), np.zeros((T, dU)), np.zeros((T, dU, dU))
        V, v, fail = np.zeros((dX, dX)), np.zeros(dX), None
        for t in range(T - 1, -1, -1):
            Q, q = cost.Cm[t].copy(), cost.cv[t].copy()
            if t < T - 1:
                F = dyn.Fm[t]
                Q += F.T @ V @ F
                q += F.T @ (v + V @ dyn.fv[t])
            Q = 0.5 * (Q + Q.T)
            Qxx, Qxu, Qux, Quu = Q[:dX, :dX], Q[:dX, dX:], Q[dX:, :dX], Q[dX:, dX:]
            inv_term = Quu / eta[t] + Pbar[t]
            try:
                np.linalg.cholesky(inv_term)
            except np.linalg.LinAlgError:
                fail = t
                break
            covar[t] = np.linalg.inv(inv_term)
            K[t] = -covar[t] @ (Qux / eta[t] - Pbar[t] @ ref.K[t])
            k[t] = -covar[t] @ (q[dX:] / eta[t] - Pbar[t] @ ref.k[t])
            V = Qxx + K[t].T @ Quu @ K[t] + 2 * Qxu @ K[t]
            V = 0.5 * (V + V.T)
            v = q[:dX] + K[t].T @ q[dX:] + K[t].T @ Quu @ k[t] + Qxu @ k[t]
        if fail is None:
            return LinearGaussianPolicy(K=K, k=k, covar=covar), eta
        eta[fail] += delta[fail]
        delta[fail] *= 2


def _loop_kl(pol, ref, dyn):
    """Per-step E_x[KL(pol(u|x) ‖ ref(u|x))] under pol's own state marginals, written out term by term."""
    mu, Sxx = dyn.x0mu.copy(), dyn.x0sigma.copy()
    kl = np.zeros(T)
    for t in range(T):
        Pq = np.linalg.inv(ref.covar[t])
        dK, dk = pol.K[t] - ref.K[t], pol.k[t] - ref.k[t]
        mean = dK @ mu + dk
        kl[t] = max(0.0, 0.5 * (
            np.trace(Pq @ pol.covar[t]) - dU + np.linalg.slogdet(ref.covar[t])[1] - np.linalg.slogdet(pol.covar[t])[1]
            + mean @ Pq @ mean + np.trace(dK.T @ Pq @ dK @ Sxx)))
        u_mu = pol.K[t] @ mu + pol.k[t]
        S = np.block([[Sxx, Sxx @ pol.K[t].T], [pol.K[t] @ Sxx, pol.K[t] @ Sxx @ pol.K[t].T + pol.covar[t]]])
        F = dyn.Fm[t]
        mu = F @ np.concatenate([mu, u_mu]) + dyn.fv[t]
        Sxx = F @ S @ F.T + dyn.covar[t]
    return kl


def _loop_search(cost, ref, dyn, eps, cfg):
    eta = np.ones(T)
    lo, hi = np.full(T, cfg.min_eta), np.full(T, cfg.max_eta)
    rounds = [0, 0]
    for _ in range(cfg.bisection_iterations):
        pol, eta = _loop_backward(eta, cost, ref, dyn, cfg.del0)
        kl = _loop_kl(pol, ref, dyn)
        rounds[0] += 1
        con = kl - eps
        if all(abs(con[t]) < cfg.tolerance * eps[t] for t in range(T)):
            return pol, eta, kl, True, rounds
        for t in range(T):
            if con[t] < 0:
                hi[t] = eta[t]
                eta[t] = max(np.sqrt(lo[t] * hi[t]), 0.1 * hi[t])
            else:
                lo[t] = eta[t]
                eta[t] = min(np.sqrt(lo[t] * hi[t]), 10.0 * lo[t])
    m_b, v_b = np.zeros(T - 1), np.zeros(T - 1)
    for itr in range(cfg.adam_iterations):
        pol, eta = _loop_backward(eta, cost, ref, dyn, cfg.del0)
        kl = _loop_kl(pol, ref, dyn)
        rounds[1] += 1
        con = kl - eps
        if all(abs(con[t]) < cfg.tolerance * eps[t] for t in range(T)):
            return pol, eta, kl, True, rounds
        m_b = cfg.adam_beta1 * m_b + (1 - cfg.adam_beta1) * con[:-1]
        m_u = m_b / (1 - cfg.adam_beta1 ** (itr + 1))
        v_b = cfg.adam_beta2 * v_b + (1 - cfg.adam_beta2) * con[:-1] ** 2
        v_u = v_b / (1 - cfg.adam_beta2 ** (itr + 1))
        eta[:-1] = np.clip(eta[:-1] + cfg.adam_lr * m_u / (np.sqrt(v_u) + cfg.adam_eps), cfg.min_eta, cfg.max_eta)
    return pol, eta, kl, False, rounds


def test_per_step_search_matches_loop_transliteration():
    """Three conditions searched together: one converges while bracketing, one needs the Adam phase,
    one never converges (all 20 + 200 rounds). Each equals its own loop search."""
    cfg = PILQRConfig()
    probs = [random_problem(seed) for seed in (1, 0, 3)]
    eps = np.stack([per_step_kl_bounds(schedule((0.4, 0.2), T), 2.0)] * 2 + [np.full(T, 0.05)])
    res = lqr_step_batched([p[1] for p in probs], [p[2] for p in probs], [p[0] for p in probs], eps, None, cfg)
    assert list(res.converged) == [True, True, False]
    assert list(res.adam_rounds) == [0, 19, 200] and list(res.bisection_rounds) == [7, 20, 20]
    for m, (dyn, cost, ref) in enumerate(probs):
        pol, eta, kl, conv, rounds = _loop_search(cost, ref, dyn, eps[m], cfg)
        assert conv == res.converged[m]
        assert rounds == [res.bisection_rounds[m], res.adam_rounds[m]]
        np.testing.assert_allclose(res.K[m], pol.K, rtol=1e-7, atol=1e-9)
        np.testing.assert_allclose(res.k[m], pol.k, rtol=1e-7, atol=1e-9)
        np.testing.assert_allclose(res.covar[m], pol.covar, rtol=1e-7, atol=1e-9)
        np.testing.assert_allclose(res.eta[m], eta, rtol=1e-7)
        np.testing.assert_allclose(res.kl[m], kl, rtol=1e-6, atol=1e-10)


@pytest.mark.parametrize("mult", [0.25, 1.0, 5.0])
def test_every_step_meets_its_own_bound_and_warm_start_stays(mult):
    dyn, cost, ref = random_problem(1)
    eps = per_step_kl_bounds(schedule((0.4, 0.2), T), mult * np.linspace(0.5, 1.5, T))
    res = lqr_step_batched([cost], [ref], [dyn], eps[None], None, PILQRConfig())
    assert res.converged[0]
    kl = _loop_kl(res.policy(0), ref, dyn)  # measured independently
    np.testing.assert_allclose(res.kl[0], kl, rtol=1e-8, atol=1e-12)
    assert np.all(np.abs(kl - eps) < 0.1 * eps)
    # The step lowers the model's expected cost below the reference's (a wrong sign would raise it).
    assert estimate_cost(res.policy(0), dyn, cost) < estimate_cost(ref, dyn, cost)
    # Started from its own η, the search stops after one round with the same controller.
    again = lqr_step_batched([cost], [ref], [dyn], eps[None], res.eta, PILQRConfig())
    assert again.converged[0] and again.bisection_rounds[0] == 1
    np.testing.assert_array_equal(again.K, res.K)
    np.testing.assert_array_equal(again.eta, res.eta)


def test_large_equal_bounds_approach_unconstrained_lqr():
    dyn, cost, ref = random_problem(2)
    K, k, _, failed = backward_pass_batched(cost.Cm[None], cost.cv[None], dyn.Fm[None], dyn.fv[None], dX)
    assert not failed[0]
    dist = {}
    for e in (0.5, 3.0, 10.0):
        res = lqr_step_batched([cost], [ref], [dyn], np.full((1, T), e), None, PILQRConfig())
        assert res.converged[0]
        dist[e] = max(np.abs(res.K[0] - K[0]).max(), np.abs(res.k[0] - k[0]).max())
    assert dist[10.0] < 5e-3 < dist[3.0] < dist[0.5]


def test_tiny_bounds_stay_at_the_reference():
    dyn, cost, ref = random_problem(3)
    res = lqr_step_batched([cost], [ref], [dyn], np.full((1, T), 1e-6), None, PILQRConfig())
    assert res.converged[0]
    np.testing.assert_allclose(res.K[0], ref.K, atol=1e-2)
    np.testing.assert_allclose(res.k[0], ref.k, atol=1e-2)
    np.testing.assert_allclose(res.covar[0], ref.covar, atol=1e-2)


def _backward_inputs(cost, ref, dyn):
    P = np.linalg.inv(ref.covar)
    return (cost.Cm[None], cost.cv[None], ref.K[None], ref.k[None], P[None], dyn.Fm[None], dyn.fv[None])


def test_indefinite_action_block_raises_that_steps_eta_only():
    dyn, cost, ref = random_problem(4)
    Cm = cost.Cm.copy()
    Cm[[0, T - 1], dX:, dX:] = -np.eye(dU)  # Q_uu = −I at the last step; at t = 0 too (the reference's blind spot)
    cost = QuadraticCost(Cm=Cm, cv=cost.cv, cc=cost.cc)
    ref = LinearGaussianPolicy(K=ref.K, k=ref.k, covar=np.broadcast_to(np.eye(dU), (T, dU, dU)).copy())
    eta0 = np.full((1, T), 1e-3)
    K, k, covar, eta = per_step_backward_batched(eta0, *_backward_inputs(cost, ref, dyn), del0=1e-4)
    # A_{T−1} = −I/η + I is PD once η > 1: η = 1e-3 + 1e-4·(2^j − 1) for the first such j.
    j = int(np.ceil(np.log2((1.0 - 1e-3) / 1e-4 + 1)))
    assert eta[0, T - 1] == pytest.approx(1e-3 + 1e-4 * (2 ** j - 1))
    assert eta[0, T - 1] > 1.0 and eta[0, 0] > 1e-3
    np.testing.assert_array_equal(eta[0, 1:T - 1], eta0[0, 1:T - 1])
    np.testing.assert_array_equal(eta0, 1e-3)  # the caller's array is not modified
    assert np.all(np.isfinite(K)) and np.all(np.linalg.eigvalsh(covar) > 0)


def test_hopeless_action_block_names_the_condition():
    dyn, cost, ref = random_problem(5)
    Cm = cost.Cm.copy()
    Cm[T - 1, dX:, dX:] = -np.eye(dU)
    cost = QuadraticCost(Cm=Cm, cv=cost.cv, cc=cost.cc)
    wide = LinearGaussianPolicy(K=ref.K, k=ref.k, covar=np.broadcast_to(1e30 * np.eye(dU), (T, dU, dU)).copy())
    with pytest.raises(HopelessConditions, match="condition 7"):
        per_step_backward_batched(np.ones((1, T)), *_backward_inputs(cost, wide, dyn), del0=1e-4,
                                  conditions=np.array([7]))


# --------------------------------------------------------------------------- predicted and residual costs


def _simulate(pol, Fm, fv, x0, noise):
    """Samples with no dynamics noise, one by one: X [N, T, dX], U [N, T, dU]."""
    N = noise.shape[0]
    X, U = np.zeros((N, T, dX)), np.zeros((N, T, dU))
    for i in range(N):
        x = x0.copy()
        for t in range(T):
            u = pol.K[t] @ x + pol.k[t] + pol.chol[t].T @ noise[i, t]
            X[i, t], U[i, t] = x, u
            x = Fm[t] @ np.concatenate([x, u]) + fv[t]
    return X, U


def _true_cost(X, U, cost, extra=0.0):
    Z = np.concatenate([X, U], axis=-1)
    return (cost.cc + 0.5 * np.einsum("nti,tij,ntj->nt", Z, cost.Cm, Z) + np.einsum("nti,ti->nt", Z, cost.cv)
            + extra * np.sin(Z[..., 0]))


def test_residual_vanishes_for_linear_gaussian_dynamics_and_quadratic_cost():
    dyn, cost, ref = random_problem(6)
    noise = np.random.default_rng(0).standard_normal((7, T, dU))
    X, U = _simulate(ref, dyn.Fm, dyn.fv, dyn.x0mu, noise)
    sampled = _true_cost(X, U, cost)
    pred = predicted_costs(ref, dyn, cost, noise)
    assert pred.shape == (7, T)
    np.testing.assert_allclose(residual_costs(sampled, pred), 0.0, atol=1e-10 * np.abs(sampled).max())
    # A cost the model does not have shows up in the residual, with its sign.
    off = _true_cost(X, U, cost, extra=0.3)
    np.testing.assert_allclose(residual_costs(off, pred), 0.3 * np.sin(X[..., 0]), atol=1e-9)
    # Batched over conditions: each condition as alone.
    dyn2, cost2, ref2 = random_problem(7)
    noise2 = np.random.default_rng(1).standard_normal((7, T, dU))
    stack = lambda a, b: np.stack([np.asarray(a, dtype=float), np.asarray(b, dtype=float)])  # noqa: E731
    z, both = predicted_costs_batched(
        stack(ref.K, ref2.K), stack(ref.k, ref2.k), stack(ref.chol, ref2.chol), stack(dyn.Fm, dyn2.Fm),
        stack(dyn.fv, dyn2.fv), stack(dyn.x0mu, dyn2.x0mu), stack(noise, noise2), stack(cost.Cm, cost2.Cm),
        stack(cost.cv, cost2.cv), stack(cost.cc, cost2.cc))
    np.testing.assert_allclose(both[0], pred, rtol=1e-12)
    np.testing.assert_allclose(both[1], predicted_costs(ref2, dyn2, cost2, noise2), rtol=1e-12)
    np.testing.assert_allclose(z[0, :, :, :dX], X, atol=1e-12)


def test_residual_is_sampled_minus_predicted_by_hand():
    """T = 2, dX = dU = 1. x1 = x0 + u0 + 0.5; u = K x + k + 2 ε (covariance 4, so chol 2);
    cost cc + ½ zᵀ[[2, 1], [1, 4]] z + zᵀ[1, −1] = 0.5 + x² + x u + 2u² + x − u.
    Sample 1, ε = (0.25, −0.5): u0 = 2·1 + 0.5 + 0.5 = 3, x1 = 4.5, u1 = 4.5 − 1 − 1 = 2.5;
      costs 0.5 + 1 + 3 + 18 + 1 − 3 = 20.5 and 0.5 + 20.25 + 11.25 + 12.5 + 4.5 − 2.5 = 46.5.
    Sample 2, ε = 0: u0 = 2.5, x1 = 4, u1 = 3; costs 0.5 + 1 + 2.5 + 12.5 + 1 − 2.5 = 15 and
      0.5 + 16 + 12 + 18 + 4 − 3 = 47.5.
    """
    pol = LinearGaussianPolicy(K=np.array([[[2.0]], [[1.0]]]), k=np.array([[0.5], [-1.0]]),
                               covar=np.array([[[4.0]], [[4.0]]]))
    dyn = Dynamics(Fm=np.array([[[1.0, 1.0]], [[7.0, 7.0]]]), fv=np.array([[0.5], [9.0]]),
                   covar=np.ones((2, 1, 1)), x0mu=np.array([1.0]), x0sigma=np.ones((1, 1)))
    cost = QuadraticCost(Cm=np.array([[[2.0, 1.0], [1.0, 4.0]]] * 2), cv=np.array([[1.0, -1.0]] * 2),
                         cc=np.array([0.5, 0.5]))
    noise = np.array([[[0.25], [-0.5]], [[0.0], [0.0]]])
    pred = predicted_costs(pol, dyn, cost, noise)
    np.testing.assert_allclose(pred, [[20.5, 46.5], [15.0, 47.5]], rtol=1e-14)
    sampled = np.array([[20.0, 50.0], [15.0, 40.0]])
    np.testing.assert_allclose(residual_costs(sampled, pred), [[-0.5, 3.5], [0.0, -7.5]], rtol=1e-14)


# --------------------------------------------------------------------------- the res_percent step rule


def test_ratios_by_hand():
    """|sampled| rows (1, 2, 3) and (3, 2, 1): tails (6, 5, 3) and (6, 3, 1), means 6, 4, 2."""
    sampled = np.array([[1.0, -2.0, 3.0], [3.0, 2.0, -1.0]])
    residual = np.array([[0.6, 0.0, 0.2], [-0.6, 0.2, -0.2]])
    # |residual| tails: (0.8, 0.2, 0.2) and (1.0, 0.4, 0.2); means 0.9, 0.3, 0.2.
    np.testing.assert_allclose(res_percent_ratios(residual, sampled), [0.9 / 6, 0.3 / 4, 0.2 / 2], rtol=1e-14)
    np.testing.assert_allclose(res_percent_ratios(-residual, sampled), res_percent_ratios(residual, sampled))
    assert res_percent_ratios(residual, sampled, per_step=False) == pytest.approx(0.9 / 6, rel=1e-14)


def test_step_changes_exactly_at_the_thresholds_and_clips():
    dec, inc = 0.2, 0.05
    up, down = 1 + 1e-12, 1 - 1e-12
    ratio = np.array([dec * up, dec, dec * down, inc * up, inc, inc * down, 0.0, 5.0, np.nan])
    res = res_percent_step(ratio, np.ones(9), np.full(9, 0.01), np.full(9, 10.0), dec, inc)
    np.testing.assert_array_equal(res.direction, [-1, 0, 0, 0, 0, 1, 1, -1, 0])
    np.testing.assert_array_equal(res.step_mult, [0.5, 1, 1, 1, 1, 2, 2, 0.5, 1])
    # Clipped to the per-step schedules; where the floor is above the ceiling, the floor wins.
    res = res_percent_step(np.array([0.0, 1.0, 0.0, 1.0]), np.array([8.0, 0.015, 1.0, 1.0]),
                           np.array([0.01, 0.01, 0.01, 3.0]), np.array([10.0, 10.0, 1.5, 2.0]), dec, inc)
    np.testing.assert_array_equal(res.step_mult, [10.0, 0.01, 1.5, 3.0])
    np.testing.assert_array_equal(res.direction, [1, -1, 1, -1])


def test_rule_with_the_reference_defaults():
    cfg = PILQRConfig()
    assert (cfg.step_rule_res_ratio_dec, cfg.step_rule_res_ratio_inc) == (0.2, 0.05)
    np.testing.assert_array_equal(schedule(cfg.kl_step, 100), np.linspace(0.4, 0.2, 100))
    T5 = 5
    sampled = np.ones((4, T5))
    residual = np.zeros((4, T5))
    residual[:, -1] = 0.9  # tail shares 0.18, 0.225, 0.3, 0.45, 0.9: halve all but t = 0
    residual[:, 0] = -0.02  # t = 0: (0.9 + 0.02) / 5 = 0.184, kept
    res = res_percent_rule(residual, sampled, np.full(T5, 1.0), cfg)
    np.testing.assert_array_equal(res.direction, [0, -1, -1, -1, -1])
    # Halved to 0.5, then floored by the min_step_mult schedule 0.01 -> 0.5 stretched to T = 5.
    np.testing.assert_allclose(res.step_mult, np.maximum([1.0, 0.5, 0.5, 0.5, 0.5], np.linspace(0.01, 0.5, T5)))
    small = res_percent_rule(np.zeros((4, T5)), sampled, np.full(T5, 4.0), cfg)
    np.testing.assert_allclose(small.step_mult, np.minimum(8.0, np.linspace(10.0, 5.0, T5)))  # doubled, capped
    whole = res_percent_rule(residual, sampled, 1.0, PILQRConfig(cons_per_step=False))
    assert whole.ratio.shape == () and whole.direction == 0 and whole.step_mult == 1.0


# --------------------------------------------------------------------------- the whole update


def _samples(seed, N=8, antithetic=False, extra=0.0):
    """A problem, its sampling controller's noise-free-dynamics samples from x0mu, and their costs [N, T]
    (the quadratic model's, plus extra · sin(x_0) if asked)."""
    dyn, cost, pol = random_problem(seed)
    rng = np.random.default_rng(100 + seed)
    noise = rng.standard_normal((N // 2 if antithetic else N, T, dU))
    if antithetic:  # mean noise exactly zero at every step
        noise = np.concatenate([noise, -noise])
    X, U = _simulate(pol, dyn.Fm, dyn.fv, dyn.x0mu, noise)
    return dyn, cost, pol, noise, X, U, _true_cost(X, U, cost, extra)


EPS = per_step_kl_bounds(schedule((0.4, 0.2), T), 1.0)


def test_linear_gaussian_quadratic_gives_the_lqr_step():
    """Residual zero, weights uniform, K exactly the LQR step's, k = k_lqr + chol_lqrᵀ mean(ε), covariance
    the damped rule's from uniform weights, η the LQR step's; temperatures fitted on the full cost."""
    dyn, cost, pol, noise, X, U, sampled = _samples(0)
    cfg, pcfg = PILQRConfig(), PI2Config()
    res = pilqr_update(cost, pol, dyn, sampled, noise, EPS, None, cfg, pcfg)
    lqr = lqr_step_batched([cost], [pol], [dyn], EPS[None], None, cfg)
    assert lqr.converged[0]
    np.testing.assert_array_equal(res.K, lqr.K)
    np.testing.assert_array_equal(res.eta, lqr.eta)
    np.testing.assert_array_equal(res.lqr.k, lqr.k)
    np.testing.assert_array_equal(res.lqr.kl, lqr.kl)
    assert np.abs(res.K[0] - pol.K).max() > 1e-2  # the LQR step's gains, not the sampling controller's
    np.testing.assert_allclose(res.residual[0], 0.0, atol=1e-10 * np.abs(sampled).max())
    np.testing.assert_allclose(res.residual_ratio[0], 0.0, atol=1e-10)
    np.testing.assert_allclose(res.weights[0], 1.0 / 8, rtol=1e-9)
    assert res.weights.shape == (1, T, 8) and np.all(res.weights_kl[0] < 1e-15)
    full = pi2_temperatures(costs_to_go(sampled), pcfg.kl_threshold, pcfg.min_temperature)
    np.testing.assert_array_equal(res.fitted_temperatures[0], full)
    np.testing.assert_array_equal(res.temperatures[0], full)
    assert np.all(full > 10 * pcfg.min_temperature) and not res.temperature_raised.any()
    # k and the covariance from uniform weights over k_lqr + chol_lqrᵀ ε_i.
    L = np.linalg.cholesky(lqr.covar[0])
    dev = np.einsum("tuv,ntv->ntu", L, noise - noise.mean(axis=0))
    np.testing.assert_allclose(res.k[0], lqr.k[0] + np.einsum("tuv,tv->tu", L, noise.mean(axis=0)), atol=1e-10)
    ml = np.einsum("ntu,ntv->tuv", dev, dev) / 8
    np.testing.assert_allclose(res.ml_covar[0], ml, rtol=1e-8, atol=1e-12)
    scale = (np.trace(np.linalg.solve(lqr.covar[0], ml), axis1=1, axis2=2) / dU) ** (1 / pcfg.covariance_damping)
    np.testing.assert_allclose(res.covar[0], scale[:, None, None] * lqr.covar[0], rtol=1e-8)
    # Antithetic noise (mean exactly 0): k is the LQR step's own.
    dyn, cost, pol, noise, X, U, sampled = _samples(0, antithetic=True)
    res = pilqr_update(cost, pol, dyn, sampled, noise, EPS, None, cfg, pcfg)
    np.testing.assert_allclose(res.k, lqr.k, atol=1e-10)
    np.testing.assert_array_equal(res.K, lqr.K)


def test_unmodelled_penalty_is_in_the_residual_and_pushes_k_away():
    """A step-function penalty P on the state region only the sample with the largest final x_0 reaches:
    the residual is +P there and 0 elsewhere; that sample's weight falls below 1/N at every step, and the
    new k moves away from its feedforward control, by exactly the reweighting."""
    N, P = 8, 5.0
    dyn, cost, pol, noise, X, U, sampled = _samples(1, N=N)
    j = int(np.argmax(X[:, -1, 0]))
    penalised = sampled.copy()
    penalised[:, -1] += P * (X[:, -1, 0] >= X[j, -1, 0])  # CostBinaryRegion-like: no derivatives
    cfg, pcfg = PILQRConfig(), PI2Config()
    base = pilqr_update(cost, pol, dyn, sampled, noise, EPS, None, cfg, pcfg)
    res = pilqr_update(cost, pol, dyn, penalised, noise, EPS, None, cfg, pcfg)
    expect = np.zeros((N, T))
    expect[j, -1] = P
    np.testing.assert_allclose(res.residual[0], expect, atol=1e-9)
    assert res.residual_ratio[0, -1] > res.residual_ratio[0, 0] > 0
    np.testing.assert_array_equal(res.K, base.K)  # the LQR step does not see samples' costs
    # Weights: the penalised sample's cost-to-go is P higher at every t ≤ T−1.
    eta = res.temperatures[0]
    w_j = np.exp(-P / eta) / (N - 1 + np.exp(-P / eta))
    np.testing.assert_allclose(res.weights[0, :, j], w_j, rtol=1e-9)
    assert np.all(res.weights[0, :, j] < 1.0 / N)
    # The new k against the uniform one: k − k_unif = Σ_i (w_i − 1/N) f_i = (N w_j − 1)/(N − 1) · (f_j − k_unif).
    f = res.lqr.k[0] + np.einsum("tuv,ntv->ntu", np.linalg.cholesky(res.lqr.covar[0]), noise)
    k_unif = f.mean(axis=0)
    np.testing.assert_allclose(base.k[0], k_unif, atol=1e-9)
    move, away = res.k[0] - k_unif, f[j] - k_unif
    np.testing.assert_allclose(move, ((N * w_j - 1) / (N - 1))[:, None] * away, rtol=1e-7, atol=1e-12)
    assert np.all(np.einsum("tu,tu->t", move, away) < 0)
    np.testing.assert_array_equal(res.fitted_temperatures[0],
                                  pi2_temperatures(costs_to_go(penalised), pcfg.kl_threshold, pcfg.min_temperature))


def test_weights_kl_is_not_bounded_by_the_threshold():
    """The reference's quirk, exposed: a cost whose samples differ little (the fitted η is small) while
    the model's prediction differs a lot (a large residual spread) gives nearly one-hot weights, a KL
    far above kl_threshold, below log N."""
    N = 8
    dyn, cost, pol, noise, X, U, model = _samples(5, N=N)
    flat = model.mean(axis=0) + 0.01 * np.random.default_rng(0).standard_normal((N, T))
    pcfg = PI2Config()
    res = pilqr_update(cost, pol, dyn, flat, noise, EPS, None, PILQRConfig(), pcfg)
    np.testing.assert_allclose(res.residual[0], flat - model, atol=1e-9)
    np.testing.assert_allclose(res.weights_kl[0], weights_kl(res.weights[0]), rtol=1e-12)
    assert np.all(res.weights_kl[0] > 1.5 * pcfg.kl_threshold) and np.all(res.weights_kl[0] <= np.log(N))
    # The same temperatures on the full cost meet the threshold.
    np.testing.assert_allclose(weights_kl(pi2_weights(costs_to_go(flat), res.fitted_temperatures[0])),
                               pcfg.kl_threshold, rtol=1e-9)


def test_mdgps_reference_batching_warm_start_and_determinism():
    """With a KL reference other than the sampling controller, the LQR step is against the reference and
    the prediction still rolls the sampling controller; two conditions at once equal each alone; the
    warm start reaches the LQR step; the same call gives the same arrays."""
    cfg, pcfg = PILQRConfig(), PI2Config()
    a = _samples(2, extra=0.2)
    b = _samples(3, extra=-0.1)
    _, _, other = random_problem(9)
    refs = [other, b[2]]
    eta0 = np.stack([np.full(T, 0.5), np.linspace(0.1, 2.0, T)])
    eps = np.stack([EPS, 2.0 * EPS])
    args = ([a[1], b[1]], [a[2], b[2]], [a[0], b[0]], np.stack([a[6], b[6]]), np.stack([a[3], b[3]]), eps, eta0,
            cfg, pcfg)
    res = pilqr_update_batched(*args, references=refs)
    lqr = lqr_step_batched([a[1], b[1]], refs, [a[0], b[0]], eps, eta0, cfg)
    np.testing.assert_array_equal(res.K, lqr.K)
    np.testing.assert_array_equal(res.eta, lqr.eta)
    np.testing.assert_array_equal(res.lqr.bisection_rounds, lqr.bisection_rounds)
    for m, (dyn, cost, pol, noise, X, U, sampled) in enumerate((a, b)):
        np.testing.assert_allclose(res.predicted[m], predicted_costs(pol, dyn, cost, noise), rtol=1e-12)
        np.testing.assert_allclose(res.residual[m], 0.2 * (1 - 1.5 * m) * np.sin(X[..., 0]), atol=1e-9)
        one = pilqr_update(cost, pol, dyn, sampled, noise, eps[m], eta0[m], cfg, pcfg, reference=refs[m])
        for field in ("K", "k", "covar", "eta", "weights", "temperatures", "residual"):
            np.testing.assert_allclose(getattr(one, field)[0], getattr(res, field)[m], rtol=1e-12, atol=1e-14)
    # The reference matters: against the sampling controller the LQR step differs.
    own = pilqr_update_batched(*args)
    assert np.abs(own.K[0] - res.K[0]).max() > 1e-3
    np.testing.assert_array_equal(own.K[1], res.K[1])
    again = pilqr_update_batched(*args, references=refs)
    for field in ("K", "k", "covar", "eta", "weights", "weights_kl", "temperatures", "residual", "residual_ratio"):
        np.testing.assert_array_equal(getattr(again, field), getattr(res, field))


def test_update_refuses_bad_input_by_condition():
    dyn, cost, pol, noise, X, U, sampled = _samples(4)
    cfg, pcfg = PILQRConfig(), PI2Config()
    bad = sampled.copy()
    bad[2, 3] = np.nan
    with pytest.raises(FloatingPointError, match="condition 0"):
        pilqr_update(cost, pol, dyn, bad, noise, EPS, None, cfg, pcfg)
    with pytest.raises(ValueError, match="sampled_costs"):
        pilqr_update(cost, pol, dyn, sampled[:, :-1], noise, EPS, None, cfg, pcfg)
    # Two samples with dU = 2 and no damping: PI2's covariance would be singular.
    with pytest.raises(FloatingPointError, match="condition 0: PILQR's PI2 step"):
        pilqr_update(cost, pol, dyn, sampled[:2], noise[:2], EPS, None, cfg, PI2Config(covariance_damping=0.0))


# --------------------------------------------------------------------------- against the reference's own numbers
# tests/data/pilqr_reference_case.npz: a 2-condition problem (T 8, dX 3, dU 2, N 10; condition 0's cost has an
# indefinite action block at late steps, so the reference raised some η_t > 0 in its backward pass) and what the
# reference's own code (cbfinn/gps 82fa6cc: TrajOptLQRPython.update with cons_per_step, traj_distr_kl,
# approximated_cost, AlgorithmTrajOptPILQR._stepadjust, TrajOptPILQR.update; run under Python 3 with only
# xrange/res.x[0] edits) computed from it, as TrajOpt-PILQR (a: KL to the sampling controller) and as
# MDGPS-PILQR (b: KL to the policy linearisation pol). Its search converged for one of the four LQR steps.
# upd_*_temps are the PI2 temperatures its L-BFGS-B fitted; ours are the exact minimiser (pi2.py).


def _reference_case():
    from pathlib import Path
    f = dict(np.load(Path(__file__).parent / "data" / "pilqr_reference_case.npz"))
    costs = [QuadraticCost(Cm=f[f"Cm{m}"], cv=f[f"cv{m}"], cc=f[f"cc{m}"]) for m in range(2)]
    dyns = [Dynamics(Fm=f[f"Fm{m}"], fv=f[f"fv{m}"], covar=f[f"W{m}"], x0mu=f[f"x0mu{m}"], x0sigma=f[f"x0sigma{m}"])
            for m in range(2)]
    samp = [LinearGaussianPolicy(K=f[f"samp_K{m}"], k=f[f"samp_k{m}"], covar=f[f"samp_covar{m}"]) for m in range(2)]
    pols = [LinearGaussianPolicy(K=f[f"pol_K{m}"], k=f[f"pol_k{m}"], covar=f[f"pol_covar{m}"]) for m in range(2)]
    T_ = f["cc0"].shape[0]
    eps = np.stack([per_step_kl_bounds(schedule(PILQRConfig().kl_step, T_), f[f"step_mult{m}"]) for m in range(2)])
    return f, costs, dyns, samp, pols, eps


@pytest.mark.parametrize("form", ["a", "b"])
def test_lqr_step_equals_the_reference_run(form):
    f, costs, dyns, samp, pols, eps = _reference_case()
    eta0 = np.stack([f["eta00"], f["eta01"]])
    res = lqr_step_batched(costs, pols if form == "b" else samp, dyns, eps, eta0, PILQRConfig())
    for m in range(2):
        for ours, key in ((res.K, "K"), (res.k, "k"), (res.covar, "covar"), (res.eta, "eta"), (res.kl, "kl")):
            ref = f[f"lqr_{form}_{key}{m}"]
            np.testing.assert_allclose(ours[m], ref, rtol=1e-9, atol=1e-12 * np.abs(ref).max(), err_msg=f"{key}{m}")
    assert res.converged.sum() == (1 if form == "a" else 0)


def test_predicted_costs_and_step_rule_equal_the_reference_run():
    f, costs, dyns, samp, pols, eps = _reference_case()
    cfg = PILQRConfig()
    for m in range(2):
        noise = f[f"noise{m}"]
        pred = predicted_costs(samp[m], dyns[m], costs[m], noise)
        np.testing.assert_allclose(pred, f[f"predicted{m}"], rtol=1e-12, atol=1e-12 * np.abs(pred).max())
        rule = res_percent_rule(residual_costs(f[f"cs{m}"], pred), f[f"cs{m}"], f[f"step_mult{m}"], cfg)
        np.testing.assert_array_equal(rule.step_mult, f[f"step_mult_new{m}"])


@pytest.mark.parametrize("form", ["a", "b"])
def test_whole_update_equals_the_reference_run(form):
    """K and η to round-off; the PI2 temperatures differ by the reference's L-BFGS-B error only, and with its
    temperatures k and the covariance are its own to round-off."""
    from gps_core.traj_opt.pi2 import pi2_feedforward_update, resampled_feedforward

    f, costs, dyns, samp, pols, eps = _reference_case()
    pcfg = PI2Config()
    res = pilqr_update_batched(costs, samp, dyns, np.stack([f["cs0"], f["cs1"]]), np.stack([f["noise0"], f["noise1"]]),
                               eps, np.stack([f["eta00"], f["eta01"]]), PILQRConfig(), pcfg,
                               references=pols if form == "b" else None)
    for m in range(2):
        g = lambda key: f[f"upd_{form}_{key}{m}"]  # noqa: E731
        np.testing.assert_allclose(res.K[m], g("K"), rtol=1e-9, atol=1e-12 * np.abs(g("K")).max())
        np.testing.assert_allclose(res.eta[m], g("eta"), rtol=1e-9)
        np.testing.assert_allclose(res.fitted_temperatures[m], g("temps"), rtol=1e-3)
        np.testing.assert_allclose(res.k[m], g("k"), rtol=1e-3, atol=1e-4 * np.abs(g("k")).max())
        np.testing.assert_allclose(res.covar[m], g("covar"), rtol=1e-3)
        ffw = resampled_feedforward(res.lqr.k[m], res.lqr.covar[m], f[f"noise{m}"])
        same = pi2_feedforward_update(ffw, res.residual[m], res.lqr.covar[m], pcfg, temperatures=g("temps"))
        np.testing.assert_allclose(same.k, g("k"), rtol=1e-9, atol=1e-12 * np.abs(g("k")).max())
        np.testing.assert_allclose(same.covar, g("covar"), rtol=1e-9)


# --------------------------------------------------------------------------- safeguards (PILQRConfig.on_fault)


def _hopeless(problem, t=4):
    """Q_uu = −1e20·I at step t against a unit-covariance reference: Q_uu/η + I needs η > 1e20."""
    dyn, cost, ref = problem
    Cm = cost.Cm.copy()
    Cm[t, dX:, dX:] = -1e20 * np.eye(dU)
    unit = LinearGaussianPolicy(K=ref.K, k=ref.k, covar=np.broadcast_to(np.eye(dU), (T, dU, dU)).copy())
    return dyn, QuadraticCost(Cm=Cm, cv=cost.cv, cc=cost.cc), unit


def test_safeguard_names():
    assert SAFEGUARDS[NO_SAFEGUARD] == "none"
    assert SAFEGUARDS[KL_REFERENCE] == "kl_reference" and SAFEGUARDS[LQR_STEP] == "lqr_step"
    dyn, cost, ref = random_problem(0)
    with pytest.raises(ValueError, match="on_fault"):
        lqr_step_batched([cost], [ref], [dyn], EPS[None], None, PILQRConfig(on_fault="ignore"))


def test_hopeless_lqr_step_keeps_the_kl_reference_for_that_condition_only():
    probs = [_hopeless(random_problem(20)), random_problem(21), _hopeless(random_problem(22)), random_problem(23)]
    dyns, costs, refs = [p[0] for p in probs], [p[1] for p in probs], [p[2] for p in probs]
    eps = np.full((4, T), 0.3)
    with pytest.raises(HopelessConditions, match="condition 0"):
        lqr_step_batched(costs, refs, dyns, eps, None, PILQRConfig(on_fault="abort"))
    res = lqr_step_batched(costs, refs, dyns, eps, None, PILQRConfig())
    np.testing.assert_array_equal(res.safeguard, [KL_REFERENCE, NO_SAFEGUARD, KL_REFERENCE, NO_SAFEGUARD])
    assert res.safeguard.dtype == np.int8
    for m in (0, 2):  # the η → ∞ limit: the reference itself, KL 0, η as the search left it (the first pass failed)
        np.testing.assert_array_equal(res.K[m], refs[m].K)
        np.testing.assert_array_equal(res.k[m], refs[m].k)
        np.testing.assert_array_equal(res.covar[m], refs[m].covar)
        np.testing.assert_array_equal(res.kl[m], 0.0)
        np.testing.assert_array_equal(res.eta[m], 1.0)
        assert not res.converged[m]
    # The healthy conditions are solved as if alone.
    alone = lqr_step_batched([costs[1], costs[3]], [refs[1], refs[3]], [dyns[1], dyns[3]], eps[[1, 3]], None,
                             PILQRConfig())
    for name in ("K", "k", "covar", "eta", "kl", "converged", "bisection_rounds", "adam_rounds"):
        np.testing.assert_array_equal(getattr(res, name)[[1, 3]], getattr(alone, name), err_msg=name)
    assert np.all(alone.safeguard == NO_SAFEGUARD)


@pytest.mark.parametrize("mdgps", [False, True])
def test_hopeless_whole_update_returns_the_kl_reference(mdgps):
    dyn, cost, pol, noise, X, U, sampled = _samples(6)
    _, bad_cost, unit = _hopeless((dyn, cost, pol))
    sampling = unit if not mdgps else pol
    reference = unit if mdgps else None
    with pytest.raises(HopelessConditions, match="condition 0"):
        pilqr_update(bad_cost, sampling, dyn, sampled, noise, EPS, None, PILQRConfig(on_fault="abort"), PI2Config(),
                     reference=reference)
    res = pilqr_update(bad_cost, sampling, dyn, sampled, noise, EPS, 0.5, PILQRConfig(), PI2Config(), reference=reference)
    assert res.safeguard[0] == KL_REFERENCE and res.lqr.safeguard[0] == KL_REFERENCE
    np.testing.assert_array_equal(res.K[0], unit.K)
    np.testing.assert_array_equal(res.k[0], unit.k)
    np.testing.assert_array_equal(res.covar[0], unit.covar)
    np.testing.assert_array_equal(res.eta[0], 0.5)
    for name in ("temperatures", "weights", "weights_kl", "ml_covar"):  # PI2 did not run
        assert np.all(np.isnan(getattr(res, name))), name
    assert not np.any(res.temperature_raised)


def _runaway_fit(seed=0, growth=20.0):
    """Samples from the true dynamics, fitted dynamics that grow 20^9 ≈ 5e11 over the horizon: the model's
    predicted costs are off by ~1e24 (the peg failure's 7e23), the residual's weights one-hot."""
    dyn, cost, pol, noise, X, U, sampled = _samples(seed)
    fit = Dynamics(Fm=growth * dyn.Fm, fv=dyn.fv, covar=dyn.covar, x0mu=dyn.x0mu, x0sigma=dyn.x0sigma)
    return fit, cost, pol, noise, sampled


# The runaway fit's LQR step ends far above its bound: safeguard (3) would keep the KL reference before PI2 runs.
NO_OVERSHOOT_CHECK = PILQRConfig(max_kl_overshoot=np.inf)


def test_pi2_failure_falls_back_to_the_lqr_step():
    fit, cost, pol, noise, sampled = _runaway_fit()
    with pytest.raises(ConditionError, match="condition 0: PILQR's PI2 step: PI2 step"):
        pilqr_update(cost, pol, fit, sampled, noise, EPS, None, PILQRConfig(on_fault="abort"), PI2Config())
    res = pilqr_update(cost, pol, fit, sampled, noise, EPS, None, NO_OVERSHOOT_CHECK, PI2Config())
    assert res.safeguard[0] == LQR_STEP and res.lqr.safeguard[0] == NO_SAFEGUARD
    assert np.abs(res.residual).max() > 1e20
    # The failure: the residual's weights one-hot at every step at the fitted temperatures, even raised to 1e16.
    S = costs_to_go(res.residual[0])
    for eta in (res.fitted_temperatures[0], np.full(T, 1e16)):
        assert np.all(np.sort(pi2_weights(S, eta), axis=1)[:, -1] == 1.0)
    lqr = lqr_step_batched([cost], [pol], [fit], EPS[None], None, NO_OVERSHOOT_CHECK)
    for name in ("K", "k", "covar", "eta"):
        np.testing.assert_array_equal(getattr(res, name), getattr(lqr, name), err_msg=name)
    assert all(np.all(np.isfinite(a)) for a in (res.K, res.k, res.covar, res.eta))
    assert np.all(np.linalg.eigvalsh(res.covar[0]) > 0)
    for name in ("temperatures", "weights", "weights_kl", "ml_covar"):
        assert np.all(np.isnan(getattr(res, name))), name


def test_safeguards_act_per_condition_in_a_batch():
    """A hopeless condition, a PI2 failure and a healthy one together; the healthy one as if alone."""
    healthy = _samples(7)
    fit, cost1, pol1, noise1, sampled1 = _runaway_fit(8)
    dyn2, cost2, pol2, noise2, X2, U2, sampled2 = _samples(9)
    _, bad_cost2, unit2 = _hopeless((dyn2, cost2, pol2))
    costs, pols, dyns = [healthy[1], cost1, bad_cost2], [healthy[2], pol1, unit2], [healthy[0], fit, dyn2]
    sampled, noise = np.stack([healthy[6], sampled1, sampled2]), np.stack([healthy[3], noise1, noise2])
    res = pilqr_update_batched(costs, pols, dyns, sampled, noise, EPS, None, NO_OVERSHOOT_CHECK, PI2Config())
    np.testing.assert_array_equal(res.safeguard, [NO_SAFEGUARD, LQR_STEP, KL_REFERENCE])
    np.testing.assert_array_equal(res.K[2], unit2.K)
    np.testing.assert_array_equal(res.k[1], res.lqr.k[1])
    one = pilqr_update(healthy[1], healthy[2], healthy[0], healthy[6], healthy[3], EPS, None, NO_OVERSHOOT_CHECK, PI2Config())
    for name in ("K", "k", "covar", "eta", "weights", "temperatures"):
        np.testing.assert_array_equal(getattr(res, name)[0], getattr(one, name)[0], err_msg=name)
    with pytest.raises(HopelessConditions, match="condition 2"):
        pilqr_update_batched(costs, pols, dyns, sampled, noise, EPS, None, PILQRConfig(on_fault="abort"), PI2Config())


@pytest.mark.parametrize("seed", [0, 3])
def test_healthy_update_is_bit_identical_with_and_without_safeguards(seed):
    a, b = _samples(seed, extra=0.3), _samples(seed + 1, extra=0.3)
    refs = [random_problem(seed + 2)[2], random_problem(seed + 3)[2]]
    args = ([a[1], b[1]], [a[2], b[2]], [a[0], b[0]], np.stack([a[6], b[6]]), np.stack([a[3], b[3]]),
            np.stack([EPS, 0.5 * EPS]), np.full((2, T), 0.3))
    for references in (None, refs):
        on = pilqr_update_batched(*args, PILQRConfig(), PI2Config(), references=references)
        off = pilqr_update_batched(*args, PILQRConfig(on_fault="abort"), PI2Config(), references=references)
        np.testing.assert_array_equal(on.safeguard, NO_SAFEGUARD)
        np.testing.assert_array_equal(off.safeguard, NO_SAFEGUARD)
        for name in ("K", "k", "covar", "eta", "predicted", "residual", "residual_ratio", "fitted_temperatures",
                     "temperatures", "temperature_raised", "weights", "weights_kl", "ml_covar"):
            x, y = getattr(on, name), getattr(off, name)
            assert x.dtype == y.dtype and x.tobytes() == y.tobytes(), name
        for name in ("K", "k", "covar", "eta", "kl", "converged", "bisection_rounds", "adam_rounds"):
            assert getattr(on.lqr, name).tobytes() == getattr(off.lqr, name).tobytes(), name


def test_an_lqr_step_far_outside_its_trust_region_keeps_the_kl_reference():
    """Safeguard (3): the runaway fit's search ends unconverged with Σ KL more than 10 × Σ ε; under recover the
    condition keeps its KL reference (KL 0) and PI2 does not run; without the check the reference's result."""
    fit, cost, pol, noise, sampled = _runaway_fit()
    loose = lqr_step_batched([cost], [pol], [fit], EPS[None], None, NO_OVERSHOOT_CHECK)
    assert not loose.converged[0] and loose.kl[0].sum() > 10 * loose.kl_bound[0].sum()
    res = pilqr_update(cost, pol, fit, sampled, noise, EPS, None, PILQRConfig(), PI2Config())
    assert res.safeguard[0] == KL_REFERENCE and res.lqr.safeguard[0] == KL_REFERENCE and not res.lqr.converged[0]
    np.testing.assert_array_equal(res.K[0], pol.K)
    np.testing.assert_array_equal(res.covar[0], pol.covar)
    assert res.lqr.kl[0].sum() == 0 and np.all(np.isnan(res.weights[0]))
    np.testing.assert_array_equal(res.lqr.eta, loose.eta)  # the search itself is the same


def test_an_action_block_whose_inverse_has_no_cholesky_factor_is_not_usable():
    """A PD matrix of condition ~1e17 whose inverse (the new covariance) numpy cannot factor: the reference's
    KL stops there, so the LQR step raises η at such a step as at an indefinite one."""
    from gps_core.traj_opt.pilqr import _usable_action_blocks

    rng = np.random.default_rng(0)  # rotations of diag(1e15..1e18, 1, 0.5): the third draw is such a matrix
    for _ in range(3):
        R, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        A = R @ np.diag([10 ** rng.uniform(15, 18), 1.0, 0.5]) @ R.T
        A = 0.5 * (A + A.T)
    np.linalg.cholesky(A)  # it has a factor
    with pytest.raises(np.linalg.LinAlgError):
        L_inv = np.linalg.inv(np.linalg.cholesky(A))
        np.linalg.cholesky(L_inv.T @ L_inv)
    healthy = np.eye(3) + 0.1
    np.testing.assert_array_equal(_usable_action_blocks(np.stack([healthy, A, -healthy])), [True, False, False])
