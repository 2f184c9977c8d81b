"""Tests for gps_core.fit.policy_lin (ALGORITHM §6, 'replace' mode)."""

import numpy as np

from gps_core.configs import PriorConfig
from gps_core.fit.gmm import num_clusters
from gps_core.fit.policy_lin import fit_policy_linearisations
from gps_core.fit.regression import gauss_fit_joint_prior
from reference_impl import fit_gmm, niw_prior


def fit_policy_linearisation(X, U_pol, pol_var, gmm_prev, cfg, rng):
    """gps_core.fit.policy_lin.fit_policy_linearisations for one condition (a batch of one):
    X [N, T, dX], U_pol [N, T, dU] -> K [T, dU, dX], k [T, dU], pol_covar [T, dU, dU], gmm."""
    K, k, pol_covar, gmms = fit_policy_linearisations(X[None], U_pol[None], pol_var, [gmm_prev], cfg, rng)
    return K[0], k[0], pol_covar[0], gmms[0]

CFG = PriorConfig(max_clusters=20, min_samples_per_cluster=40, max_samples=20)


def _states(rng, N, T, dX):
    """Varied states for t > 0, one shared initial state (as in the paper's tasks)."""
    X = np.cumsum(rng.normal(scale=0.5, size=(N, T, dX)), axis=1)
    X[:, 0] = np.array([0.2, -0.4, 1.0][:dX])
    return X


def test_recovers_exactly_linear_policy():
    rng = np.random.default_rng(0)
    N, T, dX, dU = 20, 12, 3, 2
    K_true = rng.normal(size=(dU, dX))
    k_true = rng.normal(size=dU)
    X = _states(rng, N, T, dX)
    U_pol = X @ K_true.T + k_true
    pol_var = np.array([0.1, 0.05])
    K, k, pol_covar, gmm = fit_policy_linearisation(X, U_pol, pol_var, None, CFG, np.random.default_rng(1))

    assert K.shape == (T, dU, dX) and k.shape == (T, dU) and pol_covar.shape == (T, dU, dU)
    assert gmm.mu.shape == (num_clusters(N * T, 20, 40), dX + dU)
    assert gmm.n_init == N * T
    for t in range(1, T):
        np.testing.assert_allclose(K[t], K_true, atol=1e-6)
        np.testing.assert_allclose(k[t], k_true, atol=1e-6)
        np.testing.assert_allclose(pol_covar[t], np.diag(pol_var), atol=1e-6)
    # at every t (incl. t = 0) the linearisation reproduces the network's mean action at the mean state
    np.testing.assert_allclose(
        np.einsum("tux,tx->tu", K, X.mean(axis=0)) + k, U_pol.mean(axis=0), atol=1e-9
    )


def test_covariance_symmetric_pd_everywhere_including_t0():
    rng = np.random.default_rng(2)
    N, T, dX, dU = 5, 40, 3, 2  # peg-like N = 5
    X = _states(rng, N, T, dX)
    U_pol = np.tanh(X[..., :dU] * 1.5) + 0.1 * X[..., 1:2] ** 2  # nonlinear "network"
    U_pol[:, 0] = U_pol[0, 0]  # shared x0 => identical network output at t = 0
    pol_var = np.array([0.02, 0.3])
    K, k, pol_covar, _ = fit_policy_linearisation(X, U_pol, pol_var, None, CFG, np.random.default_rng(3))
    assert np.all(np.isfinite(K)) and np.all(np.isfinite(k))
    np.testing.assert_array_equal(pol_covar, np.swapaxes(pol_covar, 1, 2))
    for t in range(T):
        np.linalg.cholesky(pol_covar[t])  # PD
        # conditional covariance is PSD, so S_t ⪰ diag(pol_var)
        assert np.linalg.eigvalsh(pol_covar[t] - np.diag(pol_var)).min() > -1e-12


def test_matches_composition_of_gmm_prior_and_joint_fit():
    # sample-major pooling of [x_t; ū_t], K from N·T, prior per t, 1e-8 on every x-block entry at t = 0 only
    rng = np.random.default_rng(4)
    N, T, dX, dU = 6, 15, 2, 2
    X = _states(rng, N, T, dX)
    U_pol = np.sin(X) + 0.3 * X[..., ::-1]
    pol_var = np.array([0.1, 0.2])
    cfg = PriorConfig(max_clusters=5, min_samples_per_cluster=20, max_samples=5, strength=0.7)
    K, k, pol_covar, gmm = fit_policy_linearisation(X, U_pol, pol_var, None, cfg, np.random.default_rng(5))

    data = np.concatenate([X, U_pol], axis=-1).reshape(N * T, dX + dU)
    gmm_ref = fit_gmm(data, num_clusters(N * T, 5, 20), np.random.default_rng(5))
    np.testing.assert_array_equal(gmm.mu, gmm_ref.mu)
    per_t = np.concatenate([X, U_pol], axis=-1).swapaxes(0, 1)
    mu0, Phi, m, n0 = niw_prior(gmm_ref, per_t, 0.7)
    reg = np.zeros(T)
    reg[0] = 1e-8
    K_ref, k_ref, cov_ref = gauss_fit_joint_prior(per_t, mu0, Phi, m, n0, reg, dX)
    np.testing.assert_array_equal(K, K_ref)
    np.testing.assert_array_equal(k, k_ref)
    np.testing.assert_array_equal(pol_covar, cov_ref + np.diag(pol_var))


def test_warm_start_and_determinism():
    rng = np.random.default_rng(6)
    N, T, dX, dU = 5, 20, 3, 2
    X = _states(rng, N, T, dX)
    U_pol = 0.5 * X[..., :dU]
    pol_var = np.array([0.1, 0.1])
    cfg = PriorConfig(max_clusters=8, min_samples_per_cluster=20, max_samples=20)
    out1 = fit_policy_linearisation(X, U_pol, pol_var, None, cfg, np.random.default_rng(7))
    out2 = fit_policy_linearisation(X, U_pol, pol_var, None, cfg, np.random.default_rng(7))
    for a, b in zip(out1[:3], out2[:3]):
        np.testing.assert_array_equal(a, b)

    assert out1[3].mu.shape[0] == 5  # ⌊100 / 20⌋
    # next iteration: same N·T -> same K -> warm start keeps N_gmm and draws no random numbers
    X2 = _states(rng, N, T, dX)
    rng_next = np.random.default_rng(8)
    state = rng_next.bit_generator.state
    *_, gmm2 = fit_policy_linearisation(X2, 0.5 * X2[..., :dU], pol_var, out1[3], cfg, rng_next)
    assert rng_next.bit_generator.state == state
    assert gmm2.n_init == N * T

    # more samples -> different K -> re-initialised
    X3 = np.concatenate([X, X2])
    *_, gmm3 = fit_policy_linearisation(X3, 0.5 * X3[..., :dU], pol_var, gmm2, cfg, rng_next)
    assert gmm3.mu.shape[0] == 8  # min(8, ⌊200 / 20⌋)
    assert gmm3.n_init == 2 * N * T
    assert rng_next.bit_generator.state != state
