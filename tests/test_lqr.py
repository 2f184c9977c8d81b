"""C-step: backward/forward passes, trajectory KL, dual search, Laplace estimate."""

import numpy as np
import pytest

from gps_core.traj_opt.c_step import c_step_batched
from gps_core.traj_opt.lingauss import LinearGaussianPolicy
from gps_core.configs import TrajOptConfig
from gps_core.traj_opt.lqr import (
    Dynamics, QuadraticCost, backward_pass_batched, controller_marginals, estimate_cost, mdgps_backward_batched,
    quadratic_form_batched, traj_kl_batched,
)

# The primitives of gps_core.traj_opt.lqr work on batches of problems; these tests use batches of one.


def backward_pass(Cs, cs, dyn, dX):
    """backward_pass_batched of one problem: Cs [T, D, D], cs [T, D] -> controller (Q_uu is PD here)."""
    K, k, covar, failed = backward_pass_batched(Cs[None], cs[None], dyn.Fm[None], dyn.fv[None], dX)
    assert not failed[0]
    return LinearGaussianPolicy(K=K[0], k=k[0], covar=covar[0])


def forward_pass(pol, dyn):
    return controller_marginals(pol, dyn)


def quadratic_form(pol):
    """(M [T, D, D], v [T, D], c [T]) of −log pol(u|x) without the log-determinant."""
    M, v, c, _ = quadratic_form_batched(pol.K, pol.k, pol.covar)
    return M, v, c


def traj_kl(mu, S, p, q):
    """traj_kl_batched of one problem: μ [T, D], S [T, D, D] -> [T]."""
    p_terms, q_terms = (quadratic_form_batched(c.K[None], c.k[None], c.covar[None]) for c in (p, q))
    return traj_kl_batched(mu[None], S[None], p_terms, q_terms)[0]


def mdgps_backward(eta, cost, ref, dyn, cfg):
    """mdgps_backward_batched of one problem at η -> (controller, η used)."""
    Mq, vq, _, _ = quadratic_form_batched(ref.K[None], ref.k[None], ref.covar[None])
    K, k, covar, eta_used = mdgps_backward_batched(
        np.array([eta]), cost.Cm[None], cost.cv[None], Mq, vq, dyn.Fm[None], dyn.fv[None], ref.dX, cfg)
    return LinearGaussianPolicy(K=K[0], k=k[0], covar=covar[0]), float(eta_used[0])

dX, dU, T = 3, 2, 12


def random_problem(seed=0, noise=0.01):
    rng = np.random.default_rng(seed)
    A = np.eye(dX) + 0.1 * rng.standard_normal((dX, dX))
    B = 0.3 * rng.standard_normal((dX, dU))
    Fm = np.broadcast_to(np.concatenate([A, B], axis=1), (T, dX, dX + dU)).copy()
    fv = 0.05 * rng.standard_normal((T, dX))
    W = np.broadcast_to(noise * np.eye(dX), (T, dX, dX)).copy()
    dyn = Dynamics(Fm=Fm, fv=fv, covar=W, x0mu=rng.standard_normal(dX), x0sigma=0.01 * np.eye(dX))
    Q = np.diag(rng.uniform(0.5, 2.0, dX))
    R = np.diag(rng.uniform(0.1, 0.5, dU))
    Cm = np.zeros((T, dX + dU, dX + dU))
    Cm[:, :dX, :dX] = Q
    Cm[:, dX:, dX:] = R
    target = np.array([1.0, -0.5, 0.2])
    cv = np.zeros((T, dX + dU))
    cv[:, :dX] = -Q @ target
    cc = np.full(T, 0.5 * target @ Q @ target)
    cost = QuadraticCost(Cm=Cm, cv=cv, cc=cc)
    ref = LinearGaussianPolicy(
        K=0.1 * rng.standard_normal((T, dU, dX)),
        k=0.1 * rng.standard_normal((T, dU)),
        covar=np.broadcast_to(np.eye(dU), (T, dU, dU)).copy(),
    )
    return dyn, cost, ref, (A, B, Q, R, target)


def riccati_gains(A, B, Q, R, target, fv):
    """Textbook discrete-time LQR on the affine system x' = A x + B u + f with cost ½(x−x*)ᵀQ(x−x*) + ½uᵀRu."""
    P, p = np.zeros((dX, dX)), np.zeros(dX)
    K, k = np.zeros((T, dU, dX)), np.zeros((T, dU))
    for t in range(T - 1, -1, -1):
        if t == T - 1:
            Pn, pn = np.zeros((dX, dX)), np.zeros(dX)
        else:
            Pn, pn = P, p
        H = R + B.T @ Pn @ B
        K[t] = -np.linalg.solve(H, B.T @ Pn @ A)
        k[t] = -np.linalg.solve(H, B.T @ (Pn @ fv[t] + pn)) if t < T - 1 else 0.0
        Acl = A + B @ K[t]
        P = Q + K[t].T @ R @ K[t] + Acl.T @ Pn @ Acl
        p = -Q @ target + K[t].T @ R @ k[t] + Acl.T @ (Pn @ (B @ k[t] + (fv[t] if t < T - 1 else 0)) + pn)
    return K, k


def test_backward_pass_equals_riccati():
    dyn, cost, _, (A, B, Q, R, target) = random_problem()
    pol = backward_pass(cost.Cm, cost.cv, dyn, dX)
    K, k = riccati_gains(A, B, Q, R, target, dyn.fv)
    np.testing.assert_allclose(pol.K, K, atol=1e-10)
    np.testing.assert_allclose(pol.k, k, atol=1e-10)
    # The max-entropy solution's covariance is Q_uu⁻¹; at the last step Q_uu = R.
    np.testing.assert_allclose(pol.covar[-1], np.linalg.inv(R), atol=1e-12)


def test_loose_kl_bound_gives_riccati_solution():
    dyn, cost, ref, (A, B, Q, R, target) = random_problem()
    res = c_step_batched([cost], [ref], [dyn], np.array([1e9]), np.array([1.0]), TrajOptConfig())[0]
    assert res.eta == pytest.approx(1e-4)
    K, k = riccati_gains(A, B, Q, R, target, dyn.fv)
    np.testing.assert_allclose(res.policy.K, K, atol=1e-3)
    np.testing.assert_allclose(res.policy.k, k, atol=1e-3)


@pytest.mark.parametrize("bound", [0.5, 3.0, 20.0])
def test_finite_kl_bound_is_met_within_ten_percent(bound):
    dyn, cost, ref, _ = random_problem(seed=1)
    res = c_step_batched([cost], [ref], [dyn], np.array([bound]), np.array([1.0]), TrajOptConfig())[0]
    assert res.converged
    mu, S = forward_pass(res.policy, dyn)
    kl = traj_kl(mu, S, res.policy, ref).sum()
    assert kl == pytest.approx(res.kl)
    assert abs(kl - bound) < 0.1 * bound
    # The constrained controller is cheaper than the reference and dearer than unconstrained LQR.
    lqr = backward_pass(cost.Cm, cost.cv, dyn, dX)
    free = LinearGaussianPolicy(K=lqr.K, k=lqr.k, covar=np.broadcast_to(1e-9 * np.eye(dU), lqr.covar.shape))
    assert estimate_cost(free, dyn, cost) <= estimate_cost(res.policy, dyn, cost) <= estimate_cost(ref, dyn, cost)


def test_huge_eta_returns_reference():
    dyn, cost, ref, _ = random_problem()
    pol, eta = mdgps_backward(1e12, cost, ref, dyn, TrajOptConfig())
    np.testing.assert_allclose(pol.K, ref.K, atol=1e-6)
    np.testing.assert_allclose(pol.k, ref.k, atol=1e-6)
    np.testing.assert_allclose(pol.covar, ref.covar, atol=1e-6)
    mu, S = forward_pass(pol, dyn)
    assert traj_kl(mu, S, pol, ref).sum() < 1e-8


def test_traj_kl_of_identical_policies_is_zero():
    dyn, _, ref, _ = random_problem()
    mu, S = forward_pass(ref, dyn)
    np.testing.assert_allclose(traj_kl(mu, S, ref, ref), 0.0, atol=1e-12)


def _log_density(pol, t, x, u):
    mean = x @ pol.K[t].T + pol.k[t]
    r = u - mean
    P = np.linalg.inv(pol.covar[t])
    _, logdet = np.linalg.slogdet(pol.covar[t])
    return -0.5 * np.einsum("ni,ij,nj->n", r, P, r) - 0.5 * logdet - 0.5 * dU * np.log(2 * np.pi)


def simulate(pol, dyn, n, seed):
    """Monte Carlo under the linear-Gaussian dynamics: yields (t, z_t [n, dX+dU]) for t = 0 … T−1."""
    rng = np.random.default_rng(seed)
    x = rng.multivariate_normal(dyn.x0mu, dyn.x0sigma, size=n)
    for t in range(T):
        u = x @ pol.K[t].T + pol.k[t] + rng.standard_normal((n, dU)) @ pol.chol[t]
        z = np.concatenate([x, u], axis=1)
        yield t, z
        x = z @ dyn.Fm[t].T + dyn.fv[t] + rng.multivariate_normal(np.zeros(dX), dyn.covar[t], size=n)


def test_traj_kl_matches_monte_carlo():
    dyn, cost, ref, _ = random_problem(seed=2, noise=0.05)
    p = c_step_batched([cost], [ref], [dyn], np.array([5.0]), np.array([1.0]), TrajOptConfig())[0].policy
    mu, S = forward_pass(p, dyn)
    kl = traj_kl(mu, S, p, ref)
    mc = np.zeros(T)
    for t, z in simulate(p, dyn, 100_000, seed=0):
        x, u = z[:, :dX], z[:, dX:]
        mc[t] = np.mean(_log_density(p, t, x, u) - _log_density(ref, t, x, u))
    assert kl.sum() == pytest.approx(mc.sum(), rel=0.03)
    np.testing.assert_allclose(kl, mc, atol=0.05 * kl.max())


def test_forward_pass_matches_monte_carlo_moments():
    dyn, _, ref, _ = random_problem(seed=3, noise=0.05)
    mu, S = forward_pass(ref, dyn)
    n = 200_000
    for t, z in simulate(ref, dyn, n, seed=1):
        standard_error = np.sqrt(np.diag(S[t]) / n)
        assert np.all(np.abs(z.mean(0) - mu[t]) < 5 * standard_error)
        np.testing.assert_allclose(np.cov(z.T), S[t], rtol=0.02, atol=0.01)


def test_laplace_estimate_matches_monte_carlo_cost():
    dyn, cost, ref, _ = random_problem(seed=4, noise=0.05)
    est = estimate_cost(ref, dyn, cost)
    total = 0.0
    for t, z in simulate(ref, dyn, 100_000, seed=2):
        total = total + cost.cc[t] + z @ cost.cv[t] + 0.5 * np.einsum("ni,ij,nj->n", z, cost.Cm[t], z)
    assert est == pytest.approx(total.mean(), rel=0.01)


def test_non_pd_q_uu_raises_eta():
    dyn, cost, ref, _ = random_problem()
    # A concave action cost makes Q_uu indefinite unless the KL term (weight η) dominates.
    bad = QuadraticCost(Cm=cost.Cm.copy(), cv=cost.cv, cc=cost.cc)
    bad.Cm[:, dX:, dX:] = -3.0 * np.eye(dU)
    pol, eta = mdgps_backward(1e-3, bad, ref, dyn, TrajOptConfig())
    assert eta > 1e-3
    assert np.all(np.linalg.eigvalsh(pol.covar) > 0)
    # η was raised by doubling increments del0·(1 + 2 + 4 + ...) above the original η, so η − η0 = del0·2^j.
    j = np.log2((eta - 1e-3) / 1e-4)
    assert j == pytest.approx(round(j))


def test_quadratic_form_is_negative_log_density():
    _, _, ref, _ = random_problem()
    M, v, c = quadratic_form(ref)
    rng = np.random.default_rng(3)
    x, u = rng.standard_normal((5, dX)), rng.standard_normal((5, dU))
    t = 4
    z = np.concatenate([x, u], axis=1)
    expected = -_log_density(ref, t, x, u) - 0.5 * ref.logdet_covar[t] - 0.5 * dU * np.log(2 * np.pi)
    got = 0.5 * np.einsum("ni,ij,nj->n", z, M[t], z) + z @ v[t] + c[t]
    np.testing.assert_allclose(got, expected, atol=1e-10)


def test_hopeless_non_pd_problem_raises_floating_point_error():
    dyn, cost, ref, _ = random_problem()
    bad = QuadraticCost(Cm=cost.Cm.copy(), cv=cost.cv, cc=cost.cc)
    bad.Cm[:, dX:, dX:] = -1e20 * np.eye(dU)  # no finite η makes Q_uu positive definite
    with pytest.raises(FloatingPointError, match="non-positive-definite"):
        mdgps_backward(1.0, bad, ref, dyn, TrajOptConfig())
    nan_dyn = Dynamics(Fm=np.full_like(dyn.Fm, np.nan), fv=dyn.fv, covar=dyn.covar, x0mu=dyn.x0mu, x0sigma=dyn.x0sigma)
    with pytest.raises(FloatingPointError, match="NaN"):  # the C-step checks its inputs before any pass
        c_step_batched([cost], [ref], [nan_dyn], np.array([1.0]), np.array([1.0]), TrajOptConfig())
