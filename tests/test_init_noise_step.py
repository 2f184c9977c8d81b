"""init_lqr, exploration noise, the step-size update."""

import numpy as np
import pytest

from gps_core.traj_opt.init_lqr import init_lqr

from gps_core.configs import InitLQRConfig
from gps_core.mdgps import new_step_mult
from gps_core.noise import smoothed_noise

PR2_GAINS = np.array([3.09, 1.08, 0.393, 0.674, 0.111, 0.152, 0.098])


def peg_controller():
    x0 = np.zeros(26)
    x0[:7] = [0.1, 0.1, -1.54, -1.7, 1.54, -0.2, 0]
    x0[14:20] = [0.37, 0.38, -0.13, 0.40, 0.31, 0.16]
    cfg = InitLQRConfig(init_var=1.0, stiffness=1.0, stiffness_vel=0.5, final_weight=50.0, init_gains=tuple(1 / PR2_GAINS))
    return x0, init_lqr(x0, 7, 100, cfg)


def test_init_lqr_holds_initial_state():
    x0, pol = peg_controller()
    np.testing.assert_allclose(np.einsum("tux,x->tu", pol.K, x0) + pol.k, 0.0, atol=1e-9)
    assert np.all(np.linalg.eigvalsh(pol.covar) > 0)
    np.testing.assert_allclose(pol.covar[-1], 0.02 * np.eye(7), atol=1e-12)
    variances = np.diagonal(pol.covar[:-1], axis1=1, axis2=2)
    # reference: ≈ 0.65–0.96 away from the end; the heavy final weight shrinks the last few
    assert variances[:90].min() > 0.6 and variances.max() < 1.0
    assert variances.min() > 0.1
    assert np.all(pol.K[:, :, 14:] == 0), "the guessed dynamics ignore the EE block"


def test_init_lqr_pushes_back_towards_x0():
    x0, pol = peg_controller()
    x = x0.copy()
    x[0] += 0.1  # displaced shoulder pan: the controller pushes it back (negative torque)
    u = pol.K[10] @ x + pol.k[10]
    assert u[0] < 0


def test_smoothed_noise_has_unit_population_variance_and_is_smooth():
    rng = np.random.default_rng(0)
    eps = smoothed_noise(rng, (3, 4, 100, 2))
    np.testing.assert_allclose(eps.std(axis=-2), 1.0, atol=1e-12)
    raw = np.random.default_rng(0).standard_normal((3, 4, 100, 2))
    # smoothing makes consecutive steps strongly correlated
    corr = lambda a: np.mean(a[..., 1:, :] * a[..., :-1, :]) / np.mean(a * a)  # noqa: E731
    assert corr(eps) > 0.8 > 0.2 > abs(corr(raw))
    np.testing.assert_array_equal(eps, smoothed_noise(np.random.default_rng(0), (3, 4, 100, 2)))


def test_new_step_mult():
    # actual = predicted: the quadratic model's optimum is far out, ratio saturates at 5
    assert new_step_mult(1.0, 1.0, 0.2, 0.01, 10.0) == pytest.approx(1.0)
    # actual = half the prediction: ratio = 1 / (2 · 0.5) = 1
    assert new_step_mult(1.0, 0.5, 0.3, 0.01, 10.0) == pytest.approx(0.3)
    # actual = 0: ratio 0.5
    assert new_step_mult(2.0, 0.0, 0.4, 0.01, 10.0) == pytest.approx(0.2)
    # negative prediction: ratio clipped at 0.1, then at min_step_mult
    assert new_step_mult(-1.0, -3.0, 1.0, 0.4, 1.0) == pytest.approx(0.4)
    assert new_step_mult(-1.0, -3.0, 1.0, 0.01, 1.0) == pytest.approx(0.1)
    # upper clip
    assert new_step_mult(1.0, 0.9, 0.9, 0.01, 1.0) == pytest.approx(1.0)


def test_new_step_mult_keeps_the_multiplier_where_the_estimates_overflowed():
    """NaN or an infinite prediction: no evidence, the multiplier stays (it would otherwise be NaN, or 5x on
    inf / inf); an actual improvement of -inf shrinks the step as any failed step does."""
    nan, inf = float("nan"), float("inf")
    for predicted, actual in ((nan, 1.0), (1.0, nan), (nan, nan), (inf, inf), (inf, 1.0), (-inf, 1.0)):
        assert new_step_mult(predicted, actual, 0.3, 0.01, 10.0) == 0.3
    assert new_step_mult(1.0, -inf, 0.3, 0.01, 10.0) == pytest.approx(0.03)
    assert new_step_mult(1.0, -inf, 0.3, 0.05, 10.0) == pytest.approx(0.05)
