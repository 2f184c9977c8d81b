"""PI2's update (gps_core/traj_opt/pi2.py): the temperature's dual, the weights' KL, a known answer
(the exponentially tilted Gaussian), covariance damping, costs-to-go over several steps, the safeguards."""

import numpy as np
import pytest
from scipy.special import logsumexp, softmax

from gps_core.configs import PI2Config
from gps_core.traj_opt.lingauss import LinearGaussianPolicy
from gps_core.traj_opt.pi2 import (
    costs_to_go, feedforward_controls, pi2_feedforward_update, pi2_temperatures, pi2_update, pi2_weights,
    resampled_feedforward,
)


def dual(S, eta, eps):
    """The REPS dual of one step written directly: η ε + η log((1/N) Σ exp(−S/η)); S [N], eta [G] -> [G]."""
    return eta * eps + eta * (logsumexp(-S[None, :] / eta[:, None], axis=1) - np.log(S.size))


def kl_to_uniform(S, eta):
    """KL(softmax(−S/η) ‖ uniform) of one step, written directly."""
    w = softmax(-S / eta)
    return float(np.sum(w * np.log(S.size * w)))


def gaussian_kl(mu0, S0, mu1, S1):
    """KL(N(mu0, S0) ‖ N(mu1, S1))."""
    d = mu0.size
    P1 = np.linalg.inv(S1)
    diff = mu1 - mu0
    return 0.5 * (np.trace(P1 @ S0) + diff @ P1 @ diff - d + np.linalg.slogdet(S1)[1] - np.linalg.slogdet(S0)[1])


def random_samples(rng, N, T, dU):
    ffw = rng.standard_normal((N, T, dU))
    costs = rng.random((N, T))
    A = rng.standard_normal((T, dU, dU))
    covar_old = A @ np.swapaxes(A, 1, 2) + 0.5 * np.eye(dU)
    return ffw, costs, covar_old


# --------------------------------------------------------------------------- temperature


def test_temperature_minimises_the_dual_against_a_grid():
    rng = np.random.default_rng(0)
    S = rng.standard_normal((4, 15)) * np.array([[0.01], [1.0], [30.0], [1e4]])
    eps, floor = 1.0, 1e-3
    eta = pi2_temperatures(S, eps, floor)
    grid = np.logspace(-3, 6, 90001)  # ratio 1.00023 between neighbours
    for t in range(S.shape[0]):
        g = dual(S[t], grid, eps)
        best = int(np.argmin(g))
        assert 0 < best < grid.size - 1  # an interior minimum: the bound is reached
        assert abs(np.log(eta[t] / grid[best])) <= np.log(grid[1] / grid[0])
        g_ours = dual(S[t], eta[t:t + 1], eps)[0]
        assert g_ours <= g[best] + 1e-12 * abs(g[best])
        # a minimum, not a maximum, and the weights' KL is the bound there
        assert g_ours < dual(S[t], eta[t] * np.array([0.99, 1.01]), eps).min()
        assert abs(kl_to_uniform(S[t], eta[t]) - eps) < 1e-8


def test_temperature_at_the_floor_where_the_bound_cannot_be_reached():
    floor = 1e-3
    # all costs equal: uniform weights at every η, dual η ε increasing, minimum at the floor
    S_equal = np.full((2, 7), 3.0)
    assert np.array_equal(pi2_temperatures(S_equal, 1.0, floor), [floor, floor])
    assert np.allclose(pi2_weights(S_equal, np.array([floor, floor])), 1 / 7)
    # two samples, one better: the KL is below log 2 < ε = 1 at every η
    S_two = np.array([[0.0, 1.0]])
    assert pi2_temperatures(S_two, 1.0, floor)[0] == floor
    grid = np.logspace(-3, 3, 601)
    assert np.argmin(dual(S_two[0], grid, 1.0)) == 0
    # but reachable with a smaller bound
    eta = pi2_temperatures(S_two, 0.5, floor)[0]
    assert eta > floor and abs(kl_to_uniform(S_two[0], eta) - 0.5) < 1e-8


@pytest.mark.parametrize("N", [3, 20, 500])
@pytest.mark.parametrize("eps", [0.1, 1.0, 2.0])
def test_weights_kl_equals_the_threshold(N, eps):
    rng = np.random.default_rng(N)
    scales = np.array([[1e-6], [1.0], [1e6]])
    S = scales * rng.standard_normal((3, N)) + 1e3 * scales  # an offset the shift must remove
    eta = pi2_temperatures(S, eps, 1e-3 * scales.min())
    weights = pi2_weights(S, eta)
    assert np.allclose(weights.sum(axis=1), 1.0)
    for t in range(3):
        if eps < np.log(N):  # reachable: N samples of distinct costs
            assert abs(kl_to_uniform(S[t], eta[t]) - eps) < 1e-8
    # lower cost, higher weight
    for t in range(3):
        order = np.argsort(S[t])
        assert np.all(np.diff(weights[t, order]) <= 0)


# --------------------------------------------------------------------------- known answer


def test_quadratic_cost_moves_the_feedforward_term_to_the_tilted_gaussian():
    """Samples u ~ N(k_old, Σ) with cost ½ (u − u*)ᵀ A (u − u*) and weights exp(−cost/η): as N → ∞ the
    weighted mean and covariance are those of N(k_old, Σ) · exp(−cost/η), a Gaussian of precision
    Σ⁻¹ + A/η and mean (Σ⁻¹ + A/η)⁻¹ (Σ⁻¹ k_old + A u*/η)."""
    rng = np.random.default_rng(1)
    N, dU = 200_000, 2
    k_old = np.array([0.2, -0.1])
    covar_old = np.array([[1.0, 0.3], [0.3, 0.5]])
    u_star = np.array([1.5, -1.0])
    A = np.array([[2.0, 0.5], [0.5, 1.0]])
    ffw = (k_old + rng.standard_normal((N, dU)) @ np.linalg.cholesky(covar_old).T)[:, None, :]
    diff = ffw[:, 0] - u_star
    costs = 0.5 * np.einsum("nu,uv,nv->n", diff, A, diff)[:, None]
    cfg = PI2Config(kl_threshold=0.5, covariance_damping=0.0)

    def tilted(eta):
        P = np.linalg.inv(covar_old) + A / eta
        covar = np.linalg.inv(P)
        return covar @ (np.linalg.solve(covar_old, k_old) + A @ u_star / eta), covar

    # given temperature
    mean, covar = tilted(2.0)
    result = pi2_feedforward_update(ffw, costs, covar_old[None], cfg, temperatures=2.0)
    assert np.allclose(result.k[0], mean, atol=0.01)
    assert np.allclose(result.covar[0], covar, atol=0.01)

    # fitted temperature: toward u*, by the tilted Gaussian's step, and the new controller's KL to the
    # old one is the bound (the weights' KL tends to KL(tilted ‖ old) as N grows)
    result = pi2_feedforward_update(ffw, costs, covar_old[None], cfg)
    eta = result.temperatures[0]
    mean, covar = tilted(eta)
    k_new = result.k[0]
    assert np.dot(k_new - k_old, u_star - k_old) > 0
    assert np.linalg.norm(k_new - u_star) < np.linalg.norm(k_old - u_star) - 0.3
    assert np.allclose(k_new, mean, atol=0.01)
    assert np.allclose(result.covar[0], covar, atol=0.01)
    assert abs(gaussian_kl(k_new, result.covar[0], k_old, covar_old) - cfg.kl_threshold) < 0.02
    assert abs(gaussian_kl(mean, covar, k_old, covar_old) - cfg.kl_threshold) < 0.02
    assert abs(result.weights_kl[0] - cfg.kl_threshold) < 1e-8


# --------------------------------------------------------------------------- covariance


def test_covariance_damping_scales_the_old_covariance():
    rng = np.random.default_rng(2)
    N, T, dU = 12, 3, 2
    ffw, costs, covar_old = random_samples(rng, N, T, dU)
    ml = None
    for d in (2.0, 1.0, 0.5):
        result = pi2_feedforward_update(ffw, costs, covar_old, PI2Config(covariance_damping=d))
        w = result.weights
        # the weighted mean and biased covariance, written as loops
        for t in range(T):
            mean = sum(w[t, i] * ffw[i, t] for i in range(N))
            ml_t = sum(w[t, i] * np.outer(ffw[i, t] - mean, ffw[i, t] - mean) for i in range(N))
            assert np.allclose(result.k[t], mean, rtol=1e-12, atol=1e-14)
            assert np.allclose(result.ml_covar[t], ml_t, rtol=1e-12, atol=1e-14)
            scale = (np.trace(np.linalg.inv(covar_old[t]) @ ml_t) / dU) ** (1 / d)
            assert np.allclose(result.covar[t], scale * covar_old[t], rtol=1e-12)
        ml = result.ml_covar
    for d in (0.0, -1.0):
        result = pi2_feedforward_update(ffw, costs, covar_old, PI2Config(covariance_damping=d))
        assert np.array_equal(result.covar, result.ml_covar)
        assert np.array_equal(result.ml_covar, ml)  # the temperatures do not depend on the damping
    assert np.array_equal(result.covar, np.swapaxes(result.covar, 1, 2))


def test_few_samples_need_damping():
    """N ≤ dU: the ML covariance has rank ≤ N − 1. Damped, only its trace enters and the covariance is
    positive definite; undamped it is refused."""
    rng = np.random.default_rng(3)
    ffw, costs, covar_old = random_samples(rng, 3, 2, 4)
    result = pi2_feedforward_update(ffw, costs, covar_old, PI2Config(covariance_damping=2.0))
    assert np.all(np.linalg.eigvalsh(result.covar) > 0)
    assert np.linalg.matrix_rank(result.ml_covar[0]) <= 2
    for d in (0.0, -2.0):
        with pytest.raises(ValueError, match="covariance is singular"):
            pi2_feedforward_update(ffw, costs, covar_old, PI2Config(covariance_damping=d))


def test_temperature_raised_where_the_covariance_collapses():
    rng = np.random.default_rng(4)
    ffw, costs, covar_old = random_samples(rng, 6, 2, 2)
    costs = 10.0 * np.arange(6)[:, None] * np.ones((1, 2))  # distinct costs-to-go
    # a given temperature so small that every weight but the best underflows: Σ_ML = 0
    given = np.array([1e-4, 100.0])
    result = pi2_feedforward_update(ffw, costs, covar_old, PI2Config(), temperatures=given)
    assert result.temperature_raised.tolist() == [True, False]
    assert result.temperatures[0] > given[0] and result.temperatures[1] == given[1]
    assert np.all(np.linalg.eigvalsh(result.covar) > 0)
    assert np.array_equal(result.weights, pi2_weights(costs_to_go(costs), result.temperatures))
    # samples that do not vary at a step (exactly: Σ_ML = 0 at every η): no temperature helps
    ffw[:, 1] = 0.0
    with pytest.raises(ValueError, match="PI2 step 1"):
        pi2_feedforward_update(ffw, costs, covar_old, PI2Config())


def relative_eigenvalues(covar, covar_old):
    """λ(Σ_old⁻¹ Σ) per step, by scipy's generalised symmetric eigensolver."""
    from scipy.linalg import eigh

    return np.array([eigh(c, o, eigvals_only=True) for c, o in zip(covar, covar_old)])


def test_a_covariance_that_passes_cholesky_but_collapsed_is_raised_too():
    """Weights one-hot up to 1e-30 give a covariance of Σ_old · 1e-15 (damping 2): the reference's Cholesky
    test passes it; with min_covariance_ratio the temperature is raised until λ_min(Σ_old⁻¹ Σ) >= the ratio."""
    rng = np.random.default_rng(7)
    ffw, _, covar_old = random_samples(rng, 5, 1, 2)
    costs = np.array([[0.0], [69.0], [100.0], [100.0], [100.0]])  # at η = 1 the runner-up weighs e^-69 ≈ 1e-30
    reference = pi2_feedforward_update(ffw, costs, covar_old, PI2Config(min_covariance_ratio=0.0), temperatures=1.0)
    assert not reference.temperature_raised[0]
    assert relative_eigenvalues(reference.covar, covar_old).min() < 1e-12
    floored = pi2_feedforward_update(ffw, costs, covar_old, PI2Config(min_covariance_ratio=1e-6), temperatures=1.0)
    assert floored.temperature_raised[0] and floored.temperatures[0] > 1.0
    assert relative_eigenvalues(floored.covar, covar_old).min() >= 1e-6
    # healthy weights: the floor changes nothing, bit for bit
    healthy = 10.0 * rng.random((5, 1))
    a = pi2_feedforward_update(ffw, healthy, covar_old, PI2Config(min_covariance_ratio=0.0))
    b = pi2_feedforward_update(ffw, healthy, covar_old, PI2Config())
    assert np.array_equal(a.covar, b.covar) and np.array_equal(a.k, b.k) and not b.temperature_raised.any()


# --------------------------------------------------------------------------- steps and costs-to-go


def test_costs_to_go_sum_the_later_steps():
    rng = np.random.default_rng(5)
    costs = rng.random((4, 6))
    S = costs_to_go(costs)
    assert S.shape == (6, 4)
    for t in range(6):
        assert np.allclose(S[t], costs[:, t:].sum(axis=1), rtol=1e-14)


def test_one_step():
    rng = np.random.default_rng(6)
    ffw, costs, covar_old = random_samples(rng, 10, 1, 2)
    result = pi2_feedforward_update(ffw, costs, covar_old, PI2Config())
    assert result.k.shape == (1, 2) and result.weights.shape == (1, 10) and result.temperatures.shape == (1,)
    assert np.allclose(result.weights[0], softmax(-costs[:, 0] / result.temperatures[0]), rtol=1e-13, atol=0)


def test_later_costs_move_earlier_steps_and_not_the_reverse():
    rng = np.random.default_rng(7)
    N, T, dU = 40, 4, 1
    ffw = rng.standard_normal((N, T, dU))
    u_star = 1.0
    covar_old = np.ones((T, 1, 1))
    floor = PI2Config().min_temperature

    # a cost paid at the last step for the first step's action: every step sees it in its cost-to-go
    late = np.zeros((N, T))
    late[:, -1] = (ffw[:, 0, 0] - u_star) ** 2
    result = pi2_feedforward_update(ffw, late, covar_old, PI2Config())
    assert np.all(result.weights == result.weights[0])
    assert abs(result.k[0, 0] - u_star) < abs(ffw[:, 0, 0].mean() - u_star) - 0.3

    # a cost paid at the first step only: later steps' costs-to-go are all 0, uniform weights
    early = np.zeros((N, T))
    early[:, 0] = (ffw[:, 0, 0] - u_star) ** 2
    result = pi2_feedforward_update(ffw, early, covar_old, PI2Config())
    assert abs(result.weights_kl[0] - 1.0) < 1e-8
    assert np.array_equal(result.temperatures[1:], np.full(T - 1, floor))
    assert np.allclose(result.weights[1:], 1 / N) and np.allclose(result.weights_kl[1:], 0.0)
    assert np.allclose(result.k[1:], ffw[:, 1:].mean(axis=0))
    assert abs(result.k[0, 0] - u_star) < abs(ffw[:, 0, 0].mean() - u_star) - 0.3


# --------------------------------------------------------------------------- the controller update


def test_pi2_update_keeps_K_and_is_deterministic():
    rng = np.random.default_rng(8)
    N, T, dX, dU = 15, 5, 3, 2
    K = rng.standard_normal((T, dU, dX))
    X = rng.standard_normal((N, T, dX))
    U = rng.standard_normal((N, T, dU))
    costs = rng.random((N, T))
    covar_old = np.broadcast_to(0.3 * np.eye(dU), (T, dU, dU)).copy()
    first = pi2_update(K, X, U, costs, covar_old, PI2Config())
    again = pi2_update(K.copy(), X.copy(), U.copy(), costs.copy(), covar_old.copy(), PI2Config())
    for name in ("k", "covar", "temperatures", "weights", "weights_kl", "ml_covar", "temperature_raised", "K"):
        assert getattr(first, name).tobytes() == getattr(again, name).tobytes(), name
    assert np.array_equal(first.K, K)
    policy = first.policy
    assert isinstance(policy, LinearGaussianPolicy) and policy.K is first.K
    ffw = np.stack([[U[i, t] - K[t] @ X[i, t] for t in range(T)] for i in range(N)])
    assert np.allclose(feedforward_controls(K, X, U), ffw, rtol=1e-13, atol=1e-14)
    lower = pi2_feedforward_update(ffw, costs, covar_old, PI2Config())
    assert np.allclose(lower.k, first.k, rtol=1e-12, atol=1e-14)
    assert lower.K is None
    with pytest.raises(ValueError, match="feedback gains"):
        lower.policy


def test_given_temperatures_are_used_as_given():
    """PILQR's use: η fitted on the full cost, the weights from the residual cost at that η."""
    rng = np.random.default_rng(9)
    ffw, full, covar_old = random_samples(rng, 20, 3, 2)
    residual = 0.1 * rng.standard_normal(full.shape)
    eta = pi2_temperatures(costs_to_go(full), 1.0, 1e-3)
    result = pi2_feedforward_update(ffw, residual, covar_old, PI2Config(), temperatures=eta)
    assert np.array_equal(result.temperatures, eta) and not result.temperature_raised.any()
    assert np.array_equal(result.weights, pi2_weights(costs_to_go(residual), eta))
    assert not np.allclose(result.weights_kl, 1.0)  # the bound holds for the full cost's weights only


def test_resampled_feedforward_follows_the_controller_convention():
    rng = np.random.default_rng(10)
    T, dU, dX, N = 3, 2, 4, 5
    k = rng.standard_normal((T, dU))
    A = rng.standard_normal((T, dU, dU))
    covar = A @ np.swapaxes(A, 1, 2) + np.eye(dU)
    noise = rng.standard_normal((N, T, dU))
    policy = LinearGaussianPolicy(K=np.zeros((T, dU, dX)), k=k, covar=covar)
    ffw = resampled_feedforward(k, covar, noise)
    for t in range(T):
        assert np.allclose(ffw[:, t], policy.act(t, np.zeros((N, dX)), noise[:, t]), rtol=1e-13)
