"""The batched (all conditions at once) numeric core against the one-condition reference code.

c_step_batched, fit_all_dynamics, fit_policy_linearisations, fit_gmm_batched and
niw_prior_batched must reproduce c_step_reference, update_dynamics_prior + fit_dynamics +
fit_initial_state, fit_policy_linearisation, fit_gmm and niw_prior of tests/reference_impl.py
to floating-point round-off
(checked here to 1e-8 in float64), including the random GMM initialisation drawn from a shared
rng in condition order.
"""

import numpy as np
import pytest
from scipy.special import logsumexp as scipy_logsumexp

from gps_core.traj_opt.c_step import c_step_batched
from gps_core.configs import PriorConfig, TrajOptConfig
from gps_core.fit.dynamics import DynamicsPrior, fit_all_dynamics, fit_initial_state
from gps_core.fit.gmm import fit_gmm_batched, logsumexp_np, niw_prior_batched
from gps_core.traj_opt.lingauss import LinearGaussianPolicy
from gps_core.traj_opt.lqr import (
    ConditionError, Dynamics, QuadraticCost, backward_pass_batched, forward_pass_batched, mdgps_backward_batched,
    quadratic_form_batched, traj_kl_batched,
)
from gps_core.fit.policy_lin import fit_policy_linearisations
from reference_impl import (
    NotPositiveDefinite, _fit_gmm_with_history, backward_pass, c_step_reference, fit_dynamics, fit_gmm,
    fit_policy_linearisation, forward_pass, mdgps_backward, niw_prior, quadratic_form, traj_kl, update_dynamics_prior,
)

ATOL = 1e-8


# ---------------------------------------------------------------- C-step problems


def random_condition(rng, T, dX, dU, concave_u=0.0):
    """A random stable system, a PD (or, with concave_u > 0, action-concave) cost and a reference controller."""
    D = dX + dU
    A = np.eye(dX) + 0.05 * rng.standard_normal((T, dX, dX))
    B = 0.3 * rng.standard_normal((T, dX, dU))
    Fm = np.concatenate([A, B], axis=-1)
    fv = 0.05 * rng.standard_normal((T, dX))
    G = 0.1 * rng.standard_normal((T, dX, dX))
    W = G @ np.swapaxes(G, -1, -2) + 0.01 * np.eye(dX)
    x0sigma = 0.01 * np.eye(dX)
    dyn = Dynamics(Fm=Fm, fv=fv, covar=W, x0mu=rng.standard_normal(dX), x0sigma=x0sigma)
    H = rng.standard_normal((T, D, D)) / np.sqrt(D)
    Cm = H @ np.swapaxes(H, -1, -2) + 0.1 * np.eye(D)
    Cm[-1] *= 10.0
    if concave_u:
        Cm[:, dX:, dX:] -= concave_u * np.eye(dU)
    cv = rng.standard_normal((T, D))
    cost = QuadraticCost(Cm=Cm, cv=cv, cc=rng.standard_normal(T))
    S = 0.3 * rng.standard_normal((T, dU, dU))
    ref = LinearGaussianPolicy(
        K=0.2 * rng.standard_normal((T, dU, dX)),
        k=0.2 * rng.standard_normal((T, dU)),
        covar=S @ np.swapaxes(S, -1, -2) + 0.5 * np.eye(dU),
    )
    return cost, ref, dyn


def assert_c_step_matches(costs, refs, dyns, bounds, etas, cfg):
    batch = c_step_batched(costs, refs, dyns, bounds, etas, cfg)
    for m in range(len(costs)):
        ref = c_step_reference(costs[m], refs[m], dyns[m], float(bounds[m]), float(etas[m]), cfg)
        got = batch[m]
        np.testing.assert_allclose(got.policy.K, ref.policy.K, rtol=0, atol=ATOL)
        np.testing.assert_allclose(got.policy.k, ref.policy.k, rtol=0, atol=ATOL)
        np.testing.assert_allclose(got.policy.covar, ref.policy.covar, rtol=0, atol=ATOL)
        assert got.eta == pytest.approx(ref.eta, rel=1e-12, abs=0)
        assert got.kl == pytest.approx(ref.kl, rel=0, abs=ATOL)
        assert got.kl_bound == ref.kl_bound
        assert got.converged == ref.converged
        assert got.dual_iterations == ref.dual_iterations
    return batch


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_c_step_batched_matches_reference_on_random_problems(seed):
    rng = np.random.default_rng(seed)
    T, dX, dU, M = 15, 5, 3, 5
    problems = [random_condition(rng, T, dX, dU) for _ in range(M)]
    costs, refs, dyns = map(list, zip(*problems))
    bounds = rng.uniform(0.5, 20.0, M)
    etas = np.exp(rng.uniform(np.log(1e-3), np.log(1e2), M))
    batch = assert_c_step_matches(costs, refs, dyns, bounds, etas, TrajOptConfig())
    assert batch.converged.all()


def test_c_step_batched_conditions_converge_in_different_numbers_of_rounds():
    rng = np.random.default_rng(3)
    T, dX, dU, M = 12, 4, 2, 6
    problems = [random_condition(rng, T, dX, dU) for _ in range(M)]
    costs, refs, dyns = map(list, zip(*problems))
    # Widely spread warm starts and bounds: some conditions converge at once, others need many rounds.
    etas = np.array([1e-4, 1e-2, 1.0, 1e2, 1e5, 1e8])
    bounds = np.array([0.2, 1.0, 5.0, 10.0, 30.0, 2.0])
    batch = assert_c_step_matches(costs, refs, dyns, bounds, etas, TrajOptConfig())
    assert len(set(batch.dual_iterations.tolist())) >= 3


def test_c_step_batched_non_pd_q_uu_raises_eta_per_condition():
    rng = np.random.default_rng(4)
    T, dX, dU = 10, 4, 3
    # Conditions 1 and 3 have a concave action cost: Q_uu is indefinite unless η is large enough.
    problems = [random_condition(rng, T, dX, dU, concave_u=c) for c in (0.0, 3.0, 0.0, 20.0)]
    costs, refs, dyns = map(list, zip(*problems))
    etas = np.full(4, 1e-3)
    cfg = TrajOptConfig()
    for m in (1, 3):  # the non-PD path is really taken at the warm-start η
        Mq, vq, _ = quadratic_form(refs[m])
        with pytest.raises(NotPositiveDefinite):
            backward_pass(costs[m].Cm / etas[m] + Mq, costs[m].cv / etas[m] + vq, dyns[m], dX)
    bounds = np.array([2.0, 2.0, 2.0, 2.0])
    assert_c_step_matches(costs, refs, dyns, bounds, etas, cfg)
    # The raised η of a single backward sweep matches the reference too.
    q = quadratic_form_batched(np.stack([r.K for r in refs]), np.stack([r.k for r in refs]), np.stack([r.covar for r in refs]))
    K, k, covar, eta = mdgps_backward_batched(
        etas, np.stack([c.Cm for c in costs]), np.stack([c.cv for c in costs]), q[0], q[1],
        np.stack([d.Fm for d in dyns]), np.stack([d.fv for d in dyns]), dX, cfg,
    )
    for m in range(4):
        pol, eta_ref = mdgps_backward(float(etas[m]), costs[m], refs[m], dyns[m], cfg)
        assert eta[m] == eta_ref
        np.testing.assert_allclose(K[m], pol.K, rtol=0, atol=ATOL)
        np.testing.assert_allclose(covar[m], pol.covar, rtol=0, atol=ATOL)
    assert eta[1] > etas[1] and eta[3] > eta[1] and eta[0] == etas[0]


def test_c_step_batched_matches_when_dual_search_does_not_converge():
    rng = np.random.default_rng(5)
    problems = [random_condition(rng, 10, 3, 2) for _ in range(3)]
    costs, refs, dyns = map(list, zip(*problems))
    cfg = TrajOptConfig(max_iterations=3)
    batch = assert_c_step_matches(costs, refs, dyns, np.array([1.0, 5.0, 50.0]), np.array([1e6, 1.0, 1e-4]), cfg)
    assert not batch.converged.all()


def test_c_step_wrapper_and_errors_name_the_condition():
    rng = np.random.default_rng(6)
    problems = [random_condition(rng, 8, 3, 2) for _ in range(3)]
    costs, refs, dyns = map(list, zip(*problems))
    one = c_step_batched([costs[1]], [refs[1]], [dyns[1]], np.array([3.0]), np.array([0.5]), TrajOptConfig())[0]
    ref = c_step_reference(costs[1], refs[1], dyns[1], 3.0, 0.5, TrajOptConfig())
    np.testing.assert_allclose(one.policy.K, ref.policy.K, rtol=0, atol=ATOL)
    assert one.eta == ref.eta and one.dual_iterations == ref.dual_iterations

    bad = Dynamics(Fm=np.full_like(dyns[2].Fm, np.nan), fv=dyns[2].fv, covar=dyns[2].covar, x0mu=dyns[2].x0mu, x0sigma=dyns[2].x0sigma)
    with pytest.raises(ConditionError, match="condition 2: the dynamics contains NaN"):
        c_step_batched(costs, refs, dyns[:2] + [bad], np.ones(3), np.ones(3), TrajOptConfig())
    hopeless = QuadraticCost(Cm=costs[1].Cm.copy(), cv=costs[1].cv, cc=costs[1].cc)
    hopeless.Cm[:, 3:, 3:] = -1e20 * np.eye(2)
    with pytest.raises(FloatingPointError, match="condition 1: Q_uu stayed non-positive-definite"):
        c_step_batched([costs[0], hopeless, costs[2]], refs, dyns, np.ones(3), np.ones(3), TrajOptConfig(on_fault="abort"))


def test_backward_forward_and_kl_batched_match_per_condition():
    rng = np.random.default_rng(7)
    T, dX, dU = 9, 4, 2
    problems = [random_condition(rng, T, dX, dU) for _ in range(3)]
    Cs = np.stack([p[0].Cm for p in problems])
    cs = np.stack([p[0].cv for p in problems])
    Fm = np.stack([p[2].Fm for p in problems])
    fv = np.stack([p[2].fv for p in problems])
    K, k, covar, failed = backward_pass_batched(Cs, cs, Fm, fv, dX)
    assert not failed.any()
    pols = [backward_pass(Cs[m], cs[m], problems[m][2], dX) for m in range(3)]
    for m in range(3):
        np.testing.assert_allclose(K[m], pols[m].K, rtol=0, atol=ATOL)
        np.testing.assert_allclose(k[m], pols[m].k, rtol=0, atol=ATOL)
        np.testing.assert_allclose(covar[m], pols[m].covar, rtol=0, atol=ATOL)
    dyn_arrays = [np.stack([getattr(p[2], f) for p in problems]) for f in ("Fm", "fv", "covar", "x0mu", "x0sigma")]
    mu, S = forward_pass_batched(K, k, covar, *dyn_arrays)
    refs = [p[1] for p in problems]
    kl = traj_kl_batched(
        mu, S, quadratic_form_batched(K, k, covar),
        quadratic_form_batched(*(np.stack([getattr(r, f) for r in refs]) for f in ("K", "k", "covar"))),
    )
    for m in range(3):
        mu_r, S_r = forward_pass(pols[m], problems[m][2])
        np.testing.assert_allclose(mu[m], mu_r, rtol=0, atol=ATOL)
        np.testing.assert_allclose(S[m], S_r, rtol=0, atol=ATOL)
        np.testing.assert_allclose(kl[m], traj_kl(mu_r, S_r, pols[m], refs[m]), rtol=0, atol=ATOL)

    # A problem whose Q_uu fails is flagged without disturbing the others.
    Cs_bad = Cs.copy()
    Cs_bad[1, 4, dX:, dX:] -= 1e3 * np.eye(dU)
    K2, k2, covar2, failed2 = backward_pass_batched(Cs_bad, cs, Fm, fv, dX)
    assert failed2.tolist() == [False, True, False]
    for m in (0, 2):
        np.testing.assert_array_equal(K2[m], K[m])


# ---------------------------------------------------------------- GMM


def test_logsumexp_np_equals_scipy():
    rng = np.random.default_rng(8)
    a = 30.0 * rng.standard_normal((7, 40, 9))
    a[0, 0, :] = a[0, 0, 0]  # ties at the maximum
    a[1, 1, 3] = -np.inf
    for axis in (-1, -2, 0):
        np.testing.assert_allclose(logsumexp_np(a, axis), scipy_logsumexp(a, axis=axis), rtol=1e-15, atol=0)
        np.testing.assert_allclose(logsumexp_np(a, axis, keepdims=True), scipy_logsumexp(a, axis=axis, keepdims=True), rtol=1e-15)
    allinf = np.full((2, 3), -np.inf)
    assert np.all(logsumexp_np(allinf, -1) == -np.inf)


def _clustered(rng, n, dim, centres=3):
    c = 4.0 * rng.standard_normal((centres, dim))
    return c[rng.integers(0, centres, n)] + rng.standard_normal((n, dim)) * rng.uniform(0.2, 1.0, dim)


def assert_gmm_equal(a, b):
    np.testing.assert_allclose(a.mu, b.mu, rtol=0, atol=ATOL)
    np.testing.assert_allclose(a.sigma, b.sigma, rtol=0, atol=ATOL)
    np.testing.assert_allclose(a.logmass, b.logmass, rtol=0, atol=ATOL)
    assert a.n_init == b.n_init


@pytest.mark.parametrize("chunk_bytes", [1 << 21, 1])  # all data sets in one EM batch / one at a time
def test_fit_gmm_batched_matches_loop_with_shared_rng(chunk_bytes):
    rng_data = np.random.default_rng(9)
    B, N, dim, K = 4, 150, 5, 4
    data = np.stack([_clustered(rng_data, N, dim) for _ in range(B)])
    # cold start for everyone
    rng_a, rng_b = np.random.default_rng(1), np.random.default_rng(1)
    ref = [_fit_gmm_with_history(data[b], K, rng_a) for b in range(B)]
    got, hist = fit_gmm_batched(data, K, rng_b, chunk_bytes=chunk_bytes)
    assert rng_a.bit_generator.state == rng_b.bit_generator.state
    for b in range(B):
        assert_gmm_equal(got[b], ref[b][0])
        assert len(hist[b]) == len(ref[b][1])
        np.testing.assert_allclose(hist[b], ref[b][1], rtol=1e-14)
    assert len({len(h) for h in hist}) > 1  # EM stopped after different numbers of iterations

    # mixed: warm starts, a cold start in the middle (K of the previous fit differs) and None
    data2 = data + 0.3 * rng_data.standard_normal(data.shape)
    prevs = [ref[0][0], fit_gmm(data[1], K + 1, np.random.default_rng(2)), None, ref[3][0]]
    rng_a, rng_b = np.random.default_rng(3), np.random.default_rng(3)
    ref2 = [fit_gmm(data2[b], K, rng_a, prev=prevs[b]) for b in range(B)]
    got2, _ = fit_gmm_batched(data2, K, rng_b, prevs, chunk_bytes=chunk_bytes)
    assert rng_a.bit_generator.state == rng_b.bit_generator.state
    for b in range(B):
        assert_gmm_equal(got2[b], ref2[b])

    # max_iter = 0 leaves the (initial / previous) parameters untouched
    got0, hist0 = fit_gmm_batched(data2, K, np.random.default_rng(4), prevs, max_iter=0)
    assert_gmm_equal(got0[0], prevs[0])
    assert hist0 == [[], [], [], []]


def test_fit_gmm_batched_degenerate_data():
    data = np.stack([np.tile([[1.5, -2.0, 0.25]], (50, 1)), np.random.default_rng(10).standard_normal((50, 3))])
    rng_a, rng_b = np.random.default_rng(0), np.random.default_rng(0)
    ref = [fit_gmm(data[b], 4, rng_a) for b in range(2)]
    got, _ = fit_gmm_batched(data, 4, rng_b)
    for b in range(2):
        assert_gmm_equal(got[b], ref[b])


def test_niw_prior_batched_matches_niw_prior():
    rng = np.random.default_rng(11)
    B, dim, K = 3, 6, 3
    gmms = [fit_gmm(_clustered(rng, 120, dim), K, rng) for _ in range(B)]
    gmms[1] = type(gmms[1])(mu=gmms[1].mu, sigma=gmms[1].sigma, logmass=gmms[1].logmass, n_init=77)  # differing N_gmm
    points = rng.standard_normal((B, 8, 5, dim))  # [B, T, N, D]
    mu0, Phi, m, n0 = niw_prior_batched(gmms, points, 0.7)
    for b in range(B):
        mu0_r, Phi_r, m_r, n0_r = niw_prior(gmms[b], points[b], 0.7)
        np.testing.assert_allclose(mu0[b], mu0_r, rtol=0, atol=ATOL)
        np.testing.assert_allclose(Phi[b], Phi_r, rtol=0, atol=ATOL)
        assert m == m_r and n0[b] == pytest.approx(n0_r, rel=1e-15)


# ---------------------------------------------------------------- dynamics and policy fits


def _trajectories(rng, M, N, T, dX, dU):
    X = np.cumsum(0.1 * rng.standard_normal((M, N, T, dX)), axis=2)
    X[:, :, 0] = rng.standard_normal((M, 1, dX))  # shared x0 per condition
    U = rng.standard_normal((M, N, T, dU))
    return X, U


@pytest.mark.parametrize("warm", [False, True])
def test_fit_all_dynamics_matches_loop(warm):
    rng = np.random.default_rng(13)
    M, N, T, dX, dU = 3, 5, 20, 4, 2
    cfg = PriorConfig(max_clusters=6, min_samples_per_cluster=10, max_samples=4, strength=1.0)
    X, U = _trajectories(rng, M, N, T, dX, dU)
    priors = [None] * M
    if warm:  # previous buffers and GMMs from an earlier fit of other samples
        X0, U0 = _trajectories(rng, M, N, T, dX, dU)
        priors = [update_dynamics_prior(None, X0[m], U0[m], cfg, np.random.default_rng(m)) for m in range(M)]
    rng_a, rng_b = np.random.default_rng(14), np.random.default_rng(14)
    ref = []
    for m in range(M):
        p = update_dynamics_prior(priors[m], X[m], U[m], cfg, rng_a)
        ref.append((p, fit_dynamics(X[m], U[m], p, cfg.strength, 1e-6, "all_entries"), fit_initial_state(X[m], p, 1e-6, cfg.strength)))
    new, out = fit_all_dynamics(priors, X, U, cfg, 1e-6, "all_entries", 1e-6, rng_b)
    assert rng_a.bit_generator.state == rng_b.bit_generator.state
    for m, (p, (Fm, fv, W), (x0mu, x0sigma)) in enumerate(ref):
        np.testing.assert_array_equal(new[m].X, p.X)
        np.testing.assert_array_equal(new[m].U, p.U)
        assert_gmm_equal(new[m].gmm, p.gmm)
        for name, value in (("Fm", Fm), ("fv", fv), ("dyn_covar", W), ("x0mu", x0mu), ("x0sigma", x0sigma)):
            np.testing.assert_allclose(out[name][m], value, rtol=0, atol=ATOL, err_msg=name)


def test_fit_all_dynamics_unequal_buffers_falls_back_to_loop():
    rng = np.random.default_rng(15)
    M, N, T, dX, dU = 2, 3, 12, 3, 2
    cfg = PriorConfig(max_clusters=4, min_samples_per_cluster=10, max_samples=6, strength=1.0)
    X, U = _trajectories(rng, M, N, T, dX, dU)
    X0, U0 = _trajectories(rng, M, N, T, dX, dU)
    priors = [update_dynamics_prior(None, X0[0], U0[0], cfg, np.random.default_rng(0)), None]  # buffers of 5 and 3
    rng_a, rng_b = np.random.default_rng(16), np.random.default_rng(16)
    ref = [update_dynamics_prior(priors[m], X[m], U[m], cfg, rng_a) for m in range(M)]
    new, out = fit_all_dynamics(priors, X, U, cfg, 1e-6, "identity", 1e-6, rng_b)
    for m in range(M):
        Fm, fv, W = fit_dynamics(X[m], U[m], ref[m], cfg.strength, 1e-6, "identity")
        np.testing.assert_allclose(out["Fm"][m], Fm, rtol=0, atol=ATOL)
        np.testing.assert_allclose(out["dyn_covar"][m], W, rtol=0, atol=ATOL)


@pytest.mark.parametrize("warm", [False, True])
def test_fit_policy_linearisations_matches_loop(warm):
    rng = np.random.default_rng(17)
    M, N, T, dX, dU = 3, 4, 25, 5, 2
    cfg = PriorConfig(max_clusters=5, min_samples_per_cluster=20, max_samples=20, strength=1.0)
    X, _ = _trajectories(rng, M, N, T, dX, dU)
    W = rng.standard_normal((dX, dU))
    U_pol = np.tanh(X @ W) + 0.05 * rng.standard_normal((M, N, T, dU))
    pol_var = np.array([0.1, 0.2])
    prevs = [None] * M
    if warm:
        prevs = [fit_policy_linearisation(X[m] + 0.1, U_pol[m], pol_var, None, cfg, np.random.default_rng(m))[3] for m in range(M)]
    rng_a, rng_b = np.random.default_rng(18), np.random.default_rng(18)
    ref = [fit_policy_linearisation(X[m], U_pol[m], pol_var, prevs[m], cfg, rng_a) for m in range(M)]
    K, k, covar, gmms = fit_policy_linearisations(X, U_pol, pol_var, prevs, cfg, rng_b)
    assert rng_a.bit_generator.state == rng_b.bit_generator.state
    for m in range(M):
        np.testing.assert_allclose(K[m], ref[m][0], rtol=0, atol=ATOL)
        np.testing.assert_allclose(k[m], ref[m][1], rtol=0, atol=ATOL)
        np.testing.assert_allclose(covar[m], ref[m][2], rtol=0, atol=ATOL)
        assert_gmm_equal(gmms[m], ref[m][3])


def test_dynamics_prior_objects_round_trip():
    """fit_all_dynamics returns DynamicsPrior objects usable as the next iteration's priors."""
    rng = np.random.default_rng(19)
    X, U = _trajectories(rng, 2, 3, 10, 3, 1)
    cfg = PriorConfig(max_clusters=3, min_samples_per_cluster=10, max_samples=3)
    new, _ = fit_all_dynamics([None, None], X, U, cfg, 1e-6, "all_entries", 1e-6, np.random.default_rng(0))
    assert all(isinstance(p, DynamicsPrior) and p.X.shape == (2, 10, 3) for p in new)
    again, _ = fit_all_dynamics(new, X, U, cfg, 1e-6, "all_entries", 1e-6, np.random.default_rng(1))
    assert all(a.gmm.n_init == p.gmm.n_init for a, p in zip(again, new))  # warm start kept N_gmm
