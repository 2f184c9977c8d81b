"""Time-varying linear-Gaussian linearisation of the global policy (ALGORITHM §6, 'replace' mode).

    π̄(u_t | x_t) = N(K_t x_t + k_t, S_t),   t = 0 … T−1

Buffer = the current N samples only ('replace'; the 'add' mode is not implemented).
Points y = [x_t; ū_t], ū = the network's mean action, pooled over all t and samples,
are clustered by a GMM with K = max(2, min(max_clusters, ⌊N T / min_samples_per_cluster⌋))
(warm start when K is unchanged). For each t the N points [x_{n,t}; ū_{n,t}] query the GMM
for a Normal-inverse-Wishart prior and the joint Gaussian is conditioned on x
(regression.gauss_fit_joint_prior), with 1e−8 added to every entry of the dX×dX x-block
at t = 0 only (all samples share x0 there). Finally

    S_t = conditional covariance_t + diag(pol_var).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from gps_core.configs import PriorConfig
from gps_core.fit.gmm import GMM, fit_gmm_batched, niw_prior_batched, num_clusters
from gps_core.fit.regression import gauss_fit_joint_prior

FIRST_STEP_REGULARIZATION = 1e-8


def fit_policy_linearisations(
    X: np.ndarray,
    U_pol: np.ndarray,
    pol_var: np.ndarray,
    gmms_prev: list[GMM | None],
    cfg: PriorConfig,
    rng: np.random.Generator,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[GMM]]:
    """Fit π̄ of all M conditions (module docstring) by per-time-step regression with a GMM prior.

    X: [M, N, T, dX] sample states; U_pol: [M, N, T, dU] network mean actions at those states;
    pol_var: [dU] network diagonal variance; gmms_prev: the previous policy-prior GMM per condition
    (or None). The EM of all conditions runs together (fit_gmm_batched; the rng is consumed in
    condition order); prior and regressions stay per condition (batched over t). The
    one-condition reference is tests/reference_impl.py (fit_policy_linearisation).
    `progress(done, M)`, if given, follows the GMM fits.
    Returns K [M, T, dU, dX], k [M, T, dU], pol_covar [M, T, dU, dU] and the refitted GMMs.
    """
    X = np.asarray(X, dtype=np.float64)
    U_pol = np.asarray(U_pol, dtype=np.float64)
    pol_var = np.asarray(pol_var, dtype=np.float64)
    n_cond, n_samples, T, dX = X.shape
    dU = U_pol.shape[-1]
    dim = dX + dU

    points = np.concatenate([X, U_pol], axis=-1)  # [M, N, T, D]
    data = points.reshape(n_cond, n_samples * T, dim)  # sample-major per condition
    n_clusters = num_clusters(n_samples * T, cfg.max_clusters, cfg.min_samples_per_cluster)
    gmms, _ = fit_gmm_batched(data, n_clusters, rng, prevs=gmms_prev, progress=progress)

    reg = np.zeros(T)
    reg[0] = FIRST_STEP_REGULARIZATION
    gain = np.empty((n_cond, T, dU, dX))
    offset = np.empty((n_cond, T, dU))
    pol_covar = np.empty((n_cond, T, dU, dU))
    # Prior and regressions condition by condition (each batched over t): stacking the
    # conditions as well makes the temporaries outgrow the cache and is slower.
    for m in range(n_cond):
        per_step = np.swapaxes(points[m], 0, 1)  # [T, N, D]
        mu0, Phi, m_prior, n0 = niw_prior_batched(gmms[m : m + 1], per_step[None], cfg.strength)
        gain[m], offset[m], cond_cov = gauss_fit_joint_prior(per_step, mu0[0], Phi[0], m_prior, float(n0[0]), reg, dX)
        pol_covar[m] = cond_cov + np.diag(pol_var)[None, :, :]
    return gain, offset, pol_covar, gmms
