"""Tests for gps_core.fit.gmm (ALGORITHM §5.2–5.3)."""

import numpy as np
import pytest
from scipy.stats import multivariate_normal

from gps_core.fit.gmm import GMM, _m_step_batched, fit_gmm_batched, log_joint_batched, logsumexp_np, niw_prior_batched, num_clusters

# gps_core.fit.gmm fits and queries batches of mixtures; these tests use batches of one.


def _fit_gmm_with_history(data, n_clusters, rng, prev=None, max_iter=100):
    """fit_gmm_batched on one data set [N, D]: the GMM and the log-likelihood of every E-step."""
    gmms, histories = fit_gmm_batched(data[None], n_clusters, rng, prevs=[prev], max_iter=max_iter)
    return gmms[0], histories[0]


def fit_gmm(data, n_clusters, rng, prev=None, max_iter=100):
    return _fit_gmm_with_history(data, n_clusters, rng, prev=prev, max_iter=max_iter)[0]


def _m_step(data, log_resp):
    """_m_step_batched on one data set: data [N, D], log_resp [N, K] -> mu [K, D], sigma [K, D, D], logmass [K]."""
    mu, sigma, logmass = _m_step_batched(data[None], log_resp[None])
    return mu[0], sigma[0], logmass[0]


def gmm_log_likelihood(gmm, data):
    """Σ_n logsumexp_k [log N(y_n; μ_k, Σ_k) + log π_k], data [N, D]."""
    log_joint = log_joint_batched(gmm.mu[None], gmm.sigma[None], gmm.logmass[None], np.asarray(data, dtype=np.float64)[None])
    return float(np.sum(logsumexp_np(log_joint[0], axis=-1)))


def niw_prior(gmm, points, strength):
    """niw_prior_batched of one mixture: points [..., N, D] -> mu0 [..., D], Phi [..., D, D], m, n0."""
    mu0, Phi, m, n0 = niw_prior_batched([gmm], np.asarray(points, dtype=np.float64)[None], strength)
    return mu0[0], Phi[0], m, float(n0[0])

TRUE_MEANS = np.array([[0.0, 0.0], [8.0, 0.0], [0.0, 8.0]])
TRUE_COVS = np.array(
    [
        [[1.0, 0.3], [0.3, 0.5]],
        [[0.4, -0.1], [-0.1, 1.2]],
        [[0.8, 0.0], [0.0, 0.2]],
    ]
)
TRUE_MASSES = np.array([0.5, 0.3, 0.2])


def _three_clusters(rng, n=2000):
    counts = (TRUE_MASSES * n).astype(int)
    parts = [rng.multivariate_normal(TRUE_MEANS[k], TRUE_COVS[k], size=counts[k]) for k in range(3)]
    data = np.concatenate(parts)
    return data[rng.permutation(len(data))]


def _is_pd(a):
    return np.all(np.isfinite(a)) and np.all(np.linalg.eigvalsh(0.5 * (a + np.swapaxes(a, -1, -2))) > 0)


# ---------------------------------------------------------------- cluster count


@pytest.mark.parametrize(
    "n_points, max_clusters, min_per_cluster, expected",
    [
        (396, 20, 40, 9),  # peg dynamics: floor(4*99/40) = 9
        (399, 20, 40, 9),  # floor, not round
        (400, 20, 40, 10),
        (1386, 20, 40, 20),  # blind peg: capped at max_clusters
        (1000, 10, 40, 10),  # obstacle
        (500, 20, 40, 12),  # peg policy prior
        (79, 20, 40, 2),  # floor gives 1 -> max(2, .)
        (0, 20, 40, 2),
        (100, 1, 10, 2),  # max(2, .) wins over max_clusters
    ],
)
def test_num_clusters(n_points, max_clusters, min_per_cluster, expected):
    assert num_clusters(n_points, max_clusters, min_per_cluster) == expected


# ---------------------------------------------------------------- initialisation


def test_initialisation_is_scatter_over_k_plus_jitter():
    rng_data = np.random.default_rng(0)
    data = rng_data.normal(size=(40, 3))
    K = 4
    gmm = fit_gmm(data, K, np.random.default_rng(7), max_iter=0)
    assignment = np.random.default_rng(7).integers(0, K, size=40)
    assert gmm.n_init == 40
    np.testing.assert_allclose(gmm.logmass, np.log(np.full(K, 1.0 / K)))
    for k in range(K):
        members = data[assignment == k]
        mean = members.mean(axis=0)
        scatter = (members - mean).T @ (members - mean)
        np.testing.assert_allclose(gmm.mu[k], mean, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(gmm.sigma[k], scatter / K + 2e-6 * np.eye(3), rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------- EM


def test_em_log_likelihood_non_decreasing_and_stop_rule():
    data = _three_clusters(np.random.default_rng(1))
    gmm, history = _fit_gmm_with_history(data, 3, np.random.default_rng(2))
    assert history[0] < 0  # relative test can never fire, so: decrease or 100 iterations
    assert len(history) == 100 or history[-1] < history[-2]
    h = np.array(history)
    # Every step that did not trigger the stop is an increase (EM), and the whole
    # trajectory is non-decreasing up to round-off / the 1e-6 I regulariser.
    assert np.all(np.diff(h[:-1]) >= 0)
    assert np.all(np.diff(h) >= -1e-8 * np.abs(h[1:]))
    assert h[-1] > h[0] + 100.0  # EM actually improved from the random start
    if len(history) < 100:
        # stopped by a test: parameters are not rolled back, they are those whose ll was the last evaluated
        assert gmm_log_likelihood(gmm, data) == pytest.approx(history[-1], rel=1e-12)


def test_em_relative_tolerance_stops_when_loglik_positive():
    # Very tight clusters in 3-D give densities > 1, hence ll > 0 and the 1e-5·ll_prev test can fire.
    rng = np.random.default_rng(3)
    centres = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    data = np.concatenate([c + 1e-2 * rng.normal(size=(300, 3)) for c in centres])
    _, history = _fit_gmm_with_history(data, 2, np.random.default_rng(4))
    assert history[-2] > 0
    assert len(history) < 100
    assert abs(history[-1] - history[-2]) < 1e-5 * history[-2]
    # nothing before the last step satisfied either stop rule
    for prev, cur in zip(history[:-2], history[1:-1]):
        assert cur >= prev and not abs(cur - prev) < 1e-5 * prev


def test_em_recovers_well_separated_clusters():
    data = _three_clusters(np.random.default_rng(5), n=3000)
    for seed in range(3):
        gmm = fit_gmm(data, 3, np.random.default_rng(seed))
        order = [int(np.argmin(np.linalg.norm(gmm.mu - m, axis=1))) for m in TRUE_MEANS]
        assert sorted(order) == [0, 1, 2]
        np.testing.assert_allclose(gmm.mu[order], TRUE_MEANS, atol=0.1)
        np.testing.assert_allclose(gmm.sigma[order], TRUE_COVS, atol=0.12)
        np.testing.assert_allclose(np.exp(gmm.logmass[order]), TRUE_MASSES, atol=0.01)
        assert np.exp(gmm.logmass).sum() == pytest.approx(1.0, abs=1e-12)


def test_m_step_formulas_and_reboot():
    rng = np.random.default_rng(6)
    data = rng.normal(size=(100, 2)) + np.array([3.0, -1.0])
    resp = np.column_stack([np.full(100, 1.0 - 1e-7), np.full(100, 1e-7)])
    resp[:50, 0] = 0.7
    resp[:50, 1] = 0.3
    # cluster 1 mass = (50*0.3 + 50*1e-7)/100 ≈ 0.15: normal update
    mu, sigma, logmass = _m_step(data, np.log(resp))
    w = resp / resp.sum(axis=0)
    np.testing.assert_allclose(np.exp(logmass), resp.sum(axis=0) / 100, rtol=1e-12)
    for k in range(2):
        mean = w[:, k] @ data
        cov = (data * w[:, k : k + 1]).T @ data - np.outer(mean, mean)
        np.testing.assert_allclose(mu[k], mean, rtol=1e-12)
        np.testing.assert_allclose(sigma[k], cov + 1e-6 * np.eye(2), rtol=1e-10, atol=1e-12)

    # cluster 1 mass 1e-7 < 1e-4 / K: rebooted to uniform weights 1/N
    resp = np.column_stack([np.full(100, 1.0 - 1e-7), np.full(100, 1e-7)])
    resp[:10, 0] = 1.0 - 1e-5
    resp[:10, 1] = 1e-5  # non-uniform, so a missed reboot would show
    mu, sigma, logmass = _m_step(data, np.log(resp))
    assert np.exp(logmass[1]) < 1e-4 / 2
    np.testing.assert_allclose(mu[1], data.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(sigma[1], np.cov(data.T, bias=True) + 1e-6 * np.eye(2), rtol=1e-10)


def test_warm_start_keeps_n_init_and_change_of_k_reinitialises():
    rng_data = np.random.default_rng(8)
    first = _three_clusters(rng_data, n=600)
    second = _three_clusters(rng_data, n=900)
    gmm1 = fit_gmm(first, 3, np.random.default_rng(0))
    assert gmm1.n_init == len(first)

    rng = np.random.default_rng(11)
    state_before = rng.bit_generator.state
    untouched = fit_gmm(second, 3, rng, prev=gmm1, max_iter=0)
    assert rng.bit_generator.state == state_before  # warm start draws nothing
    np.testing.assert_array_equal(untouched.mu, gmm1.mu)
    np.testing.assert_array_equal(untouched.sigma, gmm1.sigma)
    np.testing.assert_array_equal(untouched.logmass, gmm1.logmass)

    warm = fit_gmm(second, 3, rng, prev=gmm1)
    assert warm.n_init == len(first)  # N_gmm frozen at the last re-initialisation
    assert gmm_log_likelihood(warm, second) >= gmm_log_likelihood(gmm1, second)

    cold = fit_gmm(second, 4, rng, prev=gmm1)
    assert cold.n_init == len(second)
    assert cold.mu.shape == (4, 2)
    assert rng.bit_generator.state != state_before

    # a later warm start from the re-initialised fit keeps the new N_gmm
    again = fit_gmm(first, 4, rng, prev=cold)
    assert again.n_init == len(second)


def test_determinism():
    data = _three_clusters(np.random.default_rng(9), n=500)
    a = fit_gmm(data, 5, np.random.default_rng(123))
    b = fit_gmm(data, 5, np.random.default_rng(123))
    for x, y in [(a.mu, b.mu), (a.sigma, b.sigma), (a.logmass, b.logmass)]:
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize(
    "data, K",
    [
        (np.array([[0.0, 1.0, 2.0], [1.0, -1.0, 0.5], [3.0, 3.0, 3.0]]), 5),  # fewer points than clusters
        (np.tile(np.array([[1.5, -2.0, 0.25]]), (50, 1)), 4),  # identical points
        (np.array([[2.0, 2.0, 2.0]]), 2),  # a single point
    ],
)
def test_degenerate_inputs_give_finite_pd_covariances(data, K):
    gmm = fit_gmm(data, K, np.random.default_rng(0))
    assert gmm.mu.shape == (K, 3) and gmm.sigma.shape == (K, 3, 3)
    assert np.all(np.isfinite(gmm.mu)) and np.all(np.isfinite(gmm.logmass))
    assert _is_pd(gmm.sigma)
    assert np.isfinite(gmm_log_likelihood(gmm, data))
    mu0, Phi, m, n0 = niw_prior(gmm, data, 1.0)
    assert np.all(np.isfinite(mu0)) and _is_pd(Phi)


# ---------------------------------------------------------------- NIW prior


def test_niw_prior_single_cluster():
    rng = np.random.default_rng(10)
    D = 4
    a = rng.normal(size=(D, D))
    sigma = a @ a.T + np.eye(D)
    mu = rng.normal(size=D)
    gmm = GMM(mu=mu[None], sigma=sigma[None], logmass=np.zeros(1), n_init=396)
    points = rng.normal(size=(7, 5, D))  # [T, N, D]
    for strength in (1.0, 0.25):
        mu0, Phi, m, n0 = niw_prior(gmm, points, strength)
        assert mu0.shape == (7, D) and Phi.shape == (7, D, D)
        np.testing.assert_allclose(mu0, np.broadcast_to(mu, (7, D)), rtol=1e-12)
        np.testing.assert_allclose(Phi, np.broadcast_to(strength * sigma, (7, D, D)), rtol=1e-12)
        assert m == strength
        assert n0 == pytest.approx(strength * (396 - 2 - D) / 396, rel=1e-14)


def test_niw_prior_two_clusters_by_hand():
    mus = np.array([[0.0, 0.0], [2.0, 1.0]])
    sigmas = np.array([[[1.0, 0.2], [0.2, 0.5]], [[0.3, 0.0], [0.0, 2.0]]])
    masses = np.array([0.4, 0.6])
    gmm = GMM(mu=mus, sigma=sigmas, logmass=np.log(masses), n_init=50)
    points = np.array([[0.1, -0.2], [1.5, 0.7], [3.0, 2.0]])

    dens = np.column_stack(
        [masses[k] * multivariate_normal(mus[k], sigmas[k]).pdf(points) for k in range(2)]
    )
    resp = dens / dens.sum(axis=1, keepdims=True)
    w = resp.mean(axis=0)
    mu0_expected = w[0] * mus[0] + w[1] * mus[1]
    phi_expected = sum(w[k] * (sigmas[k] + np.outer(mus[k] - mu0_expected, mus[k] - mu0_expected)) for k in range(2))
    # HEAD's form Σ w_k [Σ_k + μ_k (μ_k − μ0)ᵀ] is the same matrix
    phi_head = sum(w[k] * (sigmas[k] + np.outer(mus[k], mus[k] - mu0_expected)) for k in range(2))
    np.testing.assert_allclose(phi_expected, phi_head, atol=1e-12)

    strength = 2.0
    mu0, Phi, m, n0 = niw_prior(gmm, points, strength)
    np.testing.assert_allclose(mu0, mu0_expected, rtol=1e-10)
    np.testing.assert_allclose(Phi, strength * phi_expected, rtol=1e-10)
    assert m == 2.0
    assert n0 == pytest.approx(2.0 * (50 - 2 - 2) / 50)

    # batched query: each leading entry is evaluated independently
    batched = np.stack([points, points[::-1] + 5.0])
    mu0_b, Phi_b, _, _ = niw_prior(gmm, batched, strength)
    np.testing.assert_allclose(mu0_b[0], mu0_expected, rtol=1e-10)
    mu0_single, Phi_single, _, _ = niw_prior(gmm, points[::-1] + 5.0, strength)
    np.testing.assert_allclose(mu0_b[1], mu0_single, rtol=1e-12)
    np.testing.assert_allclose(Phi_b[1], Phi_single, rtol=1e-12)


def test_em_covariances_stay_factorable_at_any_scale():
    """Samples of scale 1e10 (Pusher under iLQR's gains of 5e5): along one direction only, their covariance
    (scale 1e20) plus EM's jitter 1e-6 I is positive definite on paper, but numpy cannot factor it, and the
    fit stopped. Each covariance EM makes now factors (jitter relative to its scale where needed), the fit
    runs, and data of ordinary scale give the same numbers as without that step."""
    from gps_core.fit import gmm as gmm_module

    rng = np.random.default_rng(0)
    v = rng.standard_normal(4)
    sigma = 1e20 * np.outer(v, v) + 1e-6 * np.eye(4)
    with pytest.raises(np.linalg.LinAlgError):
        np.linalg.cholesky(sigma)
    fixed = gmm_module._factorable(sigma)
    np.linalg.cholesky(fixed)
    assert 0 < np.max(np.abs(fixed - sigma)) < 1e-6 * 1e20 * v @ v
    data = 1e10 * rng.standard_normal((3, 1))[None] * v[None, None]  # [1, 3, 4]: three points on one line
    data = np.concatenate([data, 1e10 * rng.standard_normal((1, 40, 1)) * v], axis=1)
    gmms, _ = fit_gmm_batched(data, 2, np.random.default_rng(1))
    for s in gmms[0].sigma:
        np.linalg.cholesky(s)
    ordinary = rng.standard_normal((2, 60, 3))
    same = np.stack([np.cov(d, rowvar=False) for d in ordinary]) + 1e-6 * np.eye(3)
    assert gmm_module._factorable(same) is same  # nothing added where numpy factors
