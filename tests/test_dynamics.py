"""Tests for gps_core.fit.regression and gps_core.fit.dynamics (ALGORITHM §5.1, §5.2, §5.4)."""

import numpy as np
import pytest

from gps_core.fit.dynamics import DynamicsPrior, fit_dynamics_batched, fit_initial_state, update_dynamics_priors

from gps_core.configs import PriorConfig
from gps_core.fit.gmm import num_clusters
from gps_core.fit.regression import gauss_fit_joint_prior


def update_dynamics_prior(prior, X, U, cfg, rng):
    """gps_core.fit.dynamics.update_dynamics_priors for one condition (a batch of one): X [N, T, dX], U [N, T, dU]."""
    return update_dynamics_priors([prior], X[None], U[None], cfg, rng)[0]


def fit_dynamics(X, U, prior, strength, regularization, regularization_shape="all_entries"):
    """gps_core.fit.dynamics.fit_dynamics_batched for one condition (a batch of one): Fm [T, dX, D], fv [T, dX], W [T, dX, dX]."""
    Fm, fv, W = fit_dynamics_batched(X[None], U[None], [prior], strength, regularization, regularization_shape)
    return Fm[0], fv[0], W[0]


def _exact_noise(rng, inputs, cov):
    """Noise E [N, d] with zero mean, exactly orthogonal to the centred inputs [N, p], and Eᵀ E / N = cov."""
    n = inputs.shape[0]
    noise = rng.normal(size=(n, cov.shape[0]))
    basis = np.column_stack([np.ones(n), inputs - inputs.mean(axis=0)])
    noise -= basis @ np.linalg.lstsq(basis, noise, rcond=None)[0]
    emp = noise.T @ noise / n
    noise = noise @ np.linalg.inv(np.linalg.cholesky(emp)).T @ np.linalg.cholesky(cov).T
    return noise


def _random_spd(rng, d, scale=1.0):
    a = rng.normal(size=(d, d))
    return scale * (a @ a.T / d + 0.5 * np.eye(d))


# ---------------------------------------------------------------- gauss_fit_joint_prior


def _reference_fit(pts, mu0, Phi, m, n0, reg, d_in):
    """Unbatched, loop-free transcription of the §5.1 formulas."""
    n = pts.shape[0]
    mean = pts.mean(axis=0)
    emp = np.cov(pts.T, bias=True)
    sigma = (n * emp + Phi + (n * m) / (n + m) * np.outer(mean - mu0, mean - mu0)) / (n + n0)
    sigma = 0.5 * (sigma + sigma.T)
    sigma[:d_in, :d_in] += reg * np.ones((d_in, d_in))
    F = np.linalg.inv(sigma[:d_in, :d_in]) @ sigma[:d_in, d_in:]
    F = F.T
    f = mean[d_in:] - F @ mean[:d_in]
    cov = sigma[d_in:, d_in:] - F @ sigma[:d_in, :d_in] @ F.T
    return F, f, 0.5 * (cov + cov.T)


def test_joint_fit_matches_formulas_on_tiny_example():
    rng = np.random.default_rng(0)
    B, N, D, d_in = 2, 4, 3, 2
    pts = rng.normal(size=(B, N, D))
    mu0 = rng.normal(size=(B, D))
    Phi = np.stack([_random_spd(rng, D) for _ in range(B)])
    reg = np.array([0.1, 0.25])
    m, n0 = 0.7, 1.3
    F, f, cov = gauss_fit_joint_prior(pts, mu0, Phi, m, n0, reg, d_in)
    assert F.shape == (B, 1, 2) and f.shape == (B, 1) and cov.shape == (B, 1, 1)
    for b in range(B):
        F_ref, f_ref, cov_ref = _reference_fit(pts[b], mu0[b], Phi[b], m, n0, reg[b], d_in)
        np.testing.assert_allclose(F[b], F_ref, rtol=1e-10)
        np.testing.assert_allclose(f[b], f_ref, rtol=1e-10)
        np.testing.assert_allclose(cov[b], cov_ref, rtol=1e-10)
    # the regulariser goes on every entry of the input block, not on its diagonal
    F_diag, _, _ = _reference_fit(pts[0], mu0[0], Phi[0], m, n0, 0.0, d_in)
    assert not np.allclose(F[0], F_diag, rtol=1e-3)


def test_joint_fit_hand_values_one_dimensional():
    # D = 2 (x, y), N = 2 points (0, 0) and (2, 4); prior mu0 = (1, 1), Phi = I, m = 1, n0 = 2, reg = 0.5.
    pts = np.array([[[0.0, 0.0], [2.0, 4.0]]])
    # mean (1, 2); S = [[1, 2], [2, 4]]; shift (0, 1) with weight 2*1/3
    # Σ̂ = ([[2, 4], [4, 8]] + I + (2/3)[[0, 0], [0, 1]]) / 4 = [[3/4, 1], [1, (9 + 2/3)/4]]
    # Σ̂_xx + 0.5 = 5/4 ; F = 1 / (5/4) = 4/5 ; f = 2 - 4/5 ; cov = 29/12 - (4/5)^2 (5/4) = 29/12 - 4/5
    F, f, cov = gauss_fit_joint_prior(pts, np.array([[1.0, 1.0]]), np.eye(2)[None], 1.0, 2.0, np.array([0.5]), 1)
    assert F[0, 0, 0] == pytest.approx(0.8, rel=1e-12)
    assert f[0, 0] == pytest.approx(1.2, rel=1e-12)
    assert cov[0, 0, 0] == pytest.approx(29.0 / 12.0 - 0.8, rel=1e-12)


def test_joint_fit_recovers_linear_gaussian_system_exactly_constructed():
    # With noise constructed to be exactly uncorrelated with x and of empirical covariance Q
    # (1/N normalisation), a vanishing prior must return A, a and Q to round-off: this pins the
    # biased 1/N covariance and the use of the empirical mean.
    rng = np.random.default_rng(1)
    N, dx, dy = 200, 3, 2
    A = rng.normal(size=(dy, dx))
    a = rng.normal(size=dy)
    Q = _random_spd(rng, dy, 0.1)
    x = rng.normal(size=(N, dx)) * np.array([1.0, 2.0, 0.5]) + 1.0
    y = x @ A.T + a + _exact_noise(rng, x, Q)
    pts = np.concatenate([x, y], axis=1)[None]
    D = dx + dy
    F, f, cov = gauss_fit_joint_prior(pts, np.zeros((1, D)), 1e-12 * np.eye(D)[None], 0.0, 0.0, np.zeros(1), dx)
    np.testing.assert_allclose(F[0], A, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(f[0], a, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(cov[0], Q, rtol=1e-8, atol=1e-12)


def test_joint_fit_recovers_linear_gaussian_system_sampled():
    rng = np.random.default_rng(2)
    N, dx, dy, B = 200, 3, 2, 50
    A = rng.normal(size=(dy, dx))
    a = rng.normal(size=dy)
    Q = np.array([[0.04, 0.01], [0.01, 0.02]])
    x = rng.normal(size=(B, N, dx))
    y = x @ A.T + a + rng.multivariate_normal(np.zeros(dy), Q, size=(B, N))
    pts = np.concatenate([x, y], axis=2)
    D = dx + dy
    F, f, cov = gauss_fit_joint_prior(
        pts, np.zeros((B, D)), np.broadcast_to(1e-10 * np.eye(D), (B, D, D)), 1e-10, 0.0, np.full(B, 1e-6), dx
    )
    # each batch entry to a few percent (standard errors here are ~0.014 for F and f, ~10 % for Q)
    np.testing.assert_allclose(F, np.broadcast_to(A, F.shape), atol=0.07)
    np.testing.assert_allclose(f, np.broadcast_to(a, f.shape), atol=0.07)
    np.testing.assert_allclose(cov, np.broadcast_to(Q, cov.shape), atol=0.015)
    # averaged over 50 independent fits (standard error ~1.4 %): the biased 1/N residual
    # covariance has expectation Q (N − dx − 1) / N
    np.testing.assert_allclose(F.mean(axis=0), A, atol=0.01)
    np.testing.assert_allclose(f.mean(axis=0), a, atol=0.01)
    expected = Q * (N - dx - 1) / N
    np.testing.assert_allclose(np.diagonal(cov.mean(axis=0)), np.diag(expected), rtol=0.045)


# ---------------------------------------------------------------- prior buffer


def _tagged(ids, T, dX, dU):
    ids = np.asarray(ids, dtype=float)
    X = ids[:, None, None] + 0.01 * np.arange(T)[None, :, None] * np.ones((1, 1, dX))
    U = -ids[:, None, None] * np.ones((1, T, dU))
    return X, U


def test_buffer_keeps_last_max_samples_minus_one():
    T, dX, dU = 6, 2, 1
    cfg = PriorConfig(max_clusters=20, min_samples_per_cluster=4, max_samples=5)
    rng = np.random.default_rng(0)
    X, U = _tagged([0, 1, 2, 3, 4], T, dX, dU)
    prior = update_dynamics_prior(None, X, U, cfg, rng)
    # 4 of the 5 current samples (the newest ones), nothing older
    np.testing.assert_array_equal(prior.X[:, 0, 0], [1, 2, 3, 4])
    np.testing.assert_array_equal(prior.U[:, 0, 0], [-1, -2, -3, -4])
    assert prior.gmm.n_init == 4 * (T - 1)
    assert prior.gmm.mu.shape == (num_clusters(4 * (T - 1), 20, 4), 2 * dX + dU)

    X, U = _tagged([5, 6], T, dX, dU)
    prior = update_dynamics_prior(prior, X, U, cfg, rng)
    np.testing.assert_array_equal(prior.X[:, 0, 0], [3, 4, 5, 6])
    np.testing.assert_array_equal(prior.U[:, 0, 0], [-3, -4, -5, -6])

    # blind-peg-like: max_samples 15 keeps 14
    cfg15 = PriorConfig(max_clusters=20, min_samples_per_cluster=40, max_samples=15)
    p = None
    for it in range(4):
        X, U = _tagged(range(5 * it, 5 * it + 5), T, dX, dU)
        p = update_dynamics_prior(p, X, U, cfg15, rng)
    np.testing.assert_array_equal(p.X[:, 0, 0], np.arange(6, 20))


def test_prior_warm_start_across_iterations_when_k_unchanged():
    T, dX, dU = 11, 2, 1
    cfg = PriorConfig(max_clusters=3, min_samples_per_cluster=10, max_samples=6)
    rng = np.random.default_rng(1)
    X1, U1 = rng.normal(size=(5, T, dX)), rng.normal(size=(5, T, dU))
    prior1 = update_dynamics_prior(None, X1, U1, cfg, rng)
    assert prior1.gmm.n_init == 5 * (T - 1)
    X2, U2 = rng.normal(size=(5, T, dX)), rng.normal(size=(5, T, dU))
    prior2 = update_dynamics_prior(prior1, X2, U2, cfg, rng)
    assert prior2.X.shape[0] == 5
    assert prior2.gmm.mu.shape[0] == 3  # K = 3 both times -> warm start
    assert prior2.gmm.n_init == 5 * (T - 1)
    # K changes (more clusters allowed) -> re-initialised on the current buffer
    cfg_more = PriorConfig(max_clusters=4, min_samples_per_cluster=10, max_samples=4)
    prior3 = update_dynamics_prior(prior2, X1, U1, cfg_more, rng)
    assert prior3.gmm.mu.shape[0] == 3  # 3 trajectories * 10 / 10 = 3, unchanged -> warm
    assert prior3.gmm.n_init == 5 * (T - 1)
    cfg_more = PriorConfig(max_clusters=5, min_samples_per_cluster=10, max_samples=6)
    prior4 = update_dynamics_prior(prior3, X2, U2, cfg_more, rng)
    assert prior4.gmm.mu.shape[0] == 5 and prior4.gmm.n_init == 5 * (T - 1)
    assert prior4.X.shape[0] == 5


# ---------------------------------------------------------------- fit_dynamics


def _time_varying_system(rng, N, T, dX, dU, exact):
    A = rng.normal(scale=0.4, size=(T - 1, dX, dX)) + np.eye(dX)
    Bm = rng.normal(scale=0.5, size=(T - 1, dX, dU))
    c = rng.normal(scale=0.3, size=(T - 1, dX))
    W = np.stack([_random_spd(rng, dX, 0.01) for _ in range(T - 1)])
    X = np.zeros((N, T, dX))
    U = rng.normal(size=(N, T, dU))
    X[:, 0] = rng.normal(size=(N, dX))
    for t in range(T - 1):
        z = np.concatenate([X[:, t], U[:, t]], axis=1)
        noise = _exact_noise(rng, z, W[t]) if exact else rng.multivariate_normal(np.zeros(dX), W[t], size=N)
        X[:, t + 1] = X[:, t] @ A[t].T + U[:, t] @ Bm[t].T + c[t] + noise
    Fm = np.concatenate([A, Bm], axis=2)
    return X, U, Fm, c, W


def test_fit_dynamics_recovers_time_varying_system():
    N, T, dX, dU = 200, 6, 3, 2
    rng = np.random.default_rng(3)
    cfg = PriorConfig(max_clusters=20, min_samples_per_cluster=40, max_samples=N + 1)

    # exactly constructed noise + vanishing prior: recovery to round-off level
    X, U, Fm_true, fv_true, W_true = _time_varying_system(rng, N, T, dX, dU, exact=True)
    prior = update_dynamics_prior(None, X, U, cfg, np.random.default_rng(0))
    assert prior.X.shape[0] == N
    Fm, fv, W = fit_dynamics(X, U, prior, strength=1e-9, regularization=0.0)
    assert Fm.shape == (T, dX, dX + dU) and fv.shape == (T, dX) and W.shape == (T, dX, dX)
    for t in range(T - 1):
        np.testing.assert_allclose(Fm[t], Fm_true[t], atol=1e-6)
        np.testing.assert_allclose(fv[t], fv_true[t], atol=1e-6)
        np.testing.assert_allclose(W[t], W_true[t], rtol=1e-5, atol=1e-8)
    assert not Fm[-1].any() and not fv[-1].any() and not W[-1].any()

    # the real setting: strength 1 prior (≈ one pseudo-observation) and the 1e-6 regulariser
    # perturb the N = 200 fit only slightly (most at t = 0, where the pooled GMM is least local)
    Fm1, fv1, W1 = fit_dynamics(X, U, prior, strength=1.0, regularization=1e-6)
    for t in range(T - 1):
        np.testing.assert_allclose(Fm1[t], Fm_true[t], atol=0.01)
        np.testing.assert_allclose(fv1[t], fv_true[t], atol=0.01)
        np.testing.assert_allclose(W1[t], W_true[t], atol=0.008)
        assert np.all(np.linalg.eigvalsh(W1[t]) > 0)
        np.testing.assert_array_equal(W1[t], W1[t].T)
    assert not Fm1[-1].any() and not fv1[-1].any() and not W1[-1].any()


def test_fit_dynamics_sampled_noise_within_standard_errors():
    N, T, dX, dU = 200, 5, 3, 2
    rng = np.random.default_rng(4)
    X, U, Fm_true, fv_true, W_true = _time_varying_system(rng, N, T, dX, dU, exact=False)
    cfg = PriorConfig(max_clusters=20, min_samples_per_cluster=40, max_samples=N + 1)
    prior = update_dynamics_prior(None, X, U, cfg, np.random.default_rng(0))
    Fm, fv, W = fit_dynamics(X, U, prior, strength=1e-3, regularization=1e-6)
    for t in range(T - 1):
        z = np.concatenate([X[:, t], U[:, t]], axis=1)
        z_mean = z.mean(axis=0)
        z_prec = np.linalg.inv(np.cov(z.T, bias=True))
        w_diag = np.diag(W_true[t])
        se_F = np.sqrt(np.outer(w_diag, np.diag(z_prec)) / N)
        se_f = np.sqrt(w_diag * (1.0 + z_mean @ z_prec @ z_mean) / N)
        se_W = np.sqrt((np.outer(w_diag, w_diag) + W_true[t] ** 2) / N)
        assert np.all(np.abs(Fm[t] - Fm_true[t]) < 4.5 * se_F)
        assert np.all(np.abs(fv[t] - fv_true[t]) < 4.5 * se_f)
        assert np.all(np.abs(W[t] - W_true[t]) < 4.5 * se_W)


def test_fit_dynamics_small_n_with_gmm_prior_is_well_posed():
    # peg-like regime: N = 5 samples in D = 2dX + dU = 13 dims, prior from a buffer of 4
    N, T, dX, dU = 5, 30, 5, 3
    rng = np.random.default_rng(5)
    X, U, _, _, _ = _time_varying_system(rng, N, T, dX, dU, exact=False)
    X[:, 0] = X[0, 0]  # shared initial state, as in the paper tasks
    cfg = PriorConfig(max_clusters=20, min_samples_per_cluster=40, max_samples=5)
    prior = update_dynamics_prior(None, X, U, cfg, np.random.default_rng(0))
    Fm, fv, W = fit_dynamics(X, U, prior, strength=1.0, regularization=1e-6)
    assert np.all(np.isfinite(Fm)) and np.all(np.isfinite(fv))
    assert np.all(np.linalg.eigvalsh(W[:-1]) > 0)


def test_fit_dynamics_deterministic():
    N, T, dX, dU = 8, 12, 2, 1
    rng = np.random.default_rng(6)
    X, U, _, _, _ = _time_varying_system(rng, N, T, dX, dU, exact=False)
    cfg = PriorConfig(max_clusters=5, min_samples_per_cluster=10, max_samples=9)
    out = []
    for _ in range(2):
        prior = update_dynamics_prior(None, X, U, cfg, np.random.default_rng(42))
        out.append(fit_dynamics(X, U, prior, 1.0, 1e-6))
    for a, b in zip(*out):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------- initial state


def test_initial_state_deterministic_x0():
    T, dX, dU = 4, 3, 1
    x0 = np.array([0.3, -1.0, 2.0])
    rng = np.random.default_rng(7)
    X = rng.normal(size=(5, T, dX))
    X[:, 0] = x0
    U = rng.normal(size=(5, T, dU))
    prior = DynamicsPrior(X=X[1:], U=U[1:], gmm=None)
    x0mu, x0sigma = fit_initial_state(X, prior, initial_state_var=1e-6, strength=1.0)
    np.testing.assert_allclose(x0mu, x0)
    np.testing.assert_allclose(x0sigma, 1e-6 * np.eye(dX), rtol=1e-9, atol=1e-20)


def test_initial_state_formula_as_coded():
    rng = np.random.default_rng(8)
    N, Nb, T, dX = 5, 7, 3, 2
    X = rng.normal(size=(N, T, dX))
    X[:, 0, 1] = 4.0  # zero sample variance in one coordinate -> floored
    buf = rng.normal(size=(Nb, T, dX)) + 0.5
    prior = DynamicsPrior(X=buf, U=np.zeros((Nb, T, 1)), gmm=None)
    strength, isv = 0.5, 1e-3
    x0mu, x0sigma = fit_initial_state(X, prior, isv, strength)

    mean = X[:, 0].mean(axis=0)
    var = ((X[:, 0] - mean) ** 2).mean(axis=0)  # population variance
    assert var[1] == 0.0
    base = np.diag([var[0], isv])
    buf_mean = buf[:, 0].mean(axis=0)
    buf_var = ((buf[:, 0] - buf_mean) ** 2).mean(axis=0)
    m0 = n0 = dX * strength  # = 1
    phi0 = np.diag(buf_var) * m0  # not normalised by N + n0 (as coded)
    d = mean - buf_mean
    expected = base + phi0 + (N * m0 / (N + m0)) * np.outer(d, d) / (N + n0)
    np.testing.assert_allclose(x0mu, mean, rtol=1e-14)
    np.testing.assert_allclose(x0sigma, expected, rtol=1e-12)


def test_identity_regulariser_tames_collinear_inputs():
    """Duplicated state entries (e.g. a joint position and its site position) make Σ_xx singular.

    reg·11ᵀ adds nothing along the difference direction; reg·I splits the weight evenly.
    """
    from gps_core.fit.regression import gauss_fit_joint_prior

    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 5, 1))
    y = 2.0 * x + 0.01 * rng.standard_normal((1, 5, 1))
    points = np.concatenate([x, x + 1e-9 * rng.standard_normal((1, 5, 1)), y], axis=-1)  # inputs: x twice
    args = (points, np.zeros((1, 3)), np.zeros((1, 3, 3)), 0.0, 0.0, np.array([1e-6]), 2)
    F_identity = gauss_fit_joint_prior(*args, reg_shape="identity")[0][0, 0]
    np.testing.assert_allclose(F_identity, [1.0, 1.0], atol=0.05)
    try:
        F_all = gauss_fit_joint_prior(*args, reg_shape="all_entries")[0][0, 0]
        assert np.abs(F_all).max() > 10 * np.abs(F_identity).max()
    except np.linalg.LinAlgError:
        pass  # exactly singular: the all-entries regulariser did not help at all
    with pytest.raises(ValueError, match="regulariser shape"):
        gauss_fit_joint_prior(*args, reg_shape="diagonal")
