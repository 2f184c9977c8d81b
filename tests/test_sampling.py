"""Controllers and the global policy acting in the simulator."""

import numpy as np
import pytest

from gps_core.sim.env import Simulator, model_path
from gps_core.traj_opt.lingauss import LinearGaussianPolicy
from gps_core.policy.policy_net import init_policy
from gps_core.sim.sampling import rollout_controllers, rollout_policy

T = 20


def sim():
    return Simulator.for_model(model_path("obstacle"), np.array([[0.0, -0.75], [0.0, 0.75]]), dt=0.05, substeps=5)


def open_loop(u, scale, dX=10):
    return LinearGaussianPolicy(K=np.zeros((T, 2, dX)), k=np.tile(u, (T, 1)), covar=np.tile(np.diag(scale**2), (T, 1, 1)))


def test_controller_actions_are_mean_plus_cholesky_noise():
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((2, 3, T, 2))
    pols = [open_loop(np.array([0.1, 0.2]), np.array([0.5, 2.0])), open_loop(np.array([-0.3, 0.0]), np.array([1.0, 0.1]))]
    r = rollout_controllers(sim(), pols, noise)
    assert r.X.shape == (2, 3, T, 10) and r.U.shape == (2, 3, T, 2)
    np.testing.assert_allclose(r.U[0], [0.1, 0.2] + noise[0] * [0.5, 2.0])
    np.testing.assert_allclose(r.U[1], [-0.3, 0.0] + noise[1] * [1.0, 0.1])
    np.testing.assert_allclose(r.X[1, :, 0, 1], 0.75)  # condition 1 starts at its own x0


def test_feedback_gain_uses_the_current_state():
    K = np.zeros((T, 2, 10))
    K[:, 0, 1] = 1.0  # u_x = y
    pol = LinearGaussianPolicy(K=K, k=np.zeros((T, 2)), covar=np.tile(1e-12 * np.eye(2), (T, 1, 1)))
    r = rollout_controllers(sim(), [pol, pol], np.zeros((2, 1, T, 2)))
    np.testing.assert_allclose(r.U[:, 0, :, 0], r.X[:, 0, :, 1], atol=1e-5)


def test_policy_noise_is_scaled_by_its_standard_deviation():
    params = init_policy(10, 2, (8,), init_var=0.25, seed=0)
    noise = np.random.default_rng(1).standard_normal((2, 2, T, 2))
    zero = rollout_policy(sim(), params, np.zeros_like(noise))
    noisy = rollout_policy(sim(), params, noise)
    np.testing.assert_allclose(noisy.U[:, :, 0] - zero.U[:, :, 0], 0.5 * noise[:, :, 0])


def test_diverging_sample_is_named_by_condition_and_sample():
    good = open_loop(np.zeros(2), np.ones(2))
    bad_k = np.zeros((T, 2))
    bad_k[5] = np.nan
    bad = LinearGaussianPolicy(K=np.zeros((T, 2, 10)), k=bad_k, covar=good.covar)
    with pytest.raises(FloatingPointError, match=r"condition 1, sample 0, at or before t=5"):
        rollout_controllers(sim(), [good, bad], np.zeros((2, 3, T, 2)))
    # stop=False: every sample of condition 1 is reported at t=5, held there with zero actions.
    r = rollout_controllers(sim(), [good, bad], np.zeros((2, 3, T, 2)), stop=False)
    np.testing.assert_array_equal(r.diverged_at, [[-1, -1, -1], [5, 5, 5]])
    assert r.X.shape == (2, 3, T, 10) and np.isfinite(r.X).all() and not r.U[1, :, 5:].any()
