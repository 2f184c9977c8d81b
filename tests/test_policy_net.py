"""Tests for gps_core.policy.policy_net (NumPy policy network, ALGORITHM.md §8.1-§8.2)."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gps_core.policy.policy_net import PolicyParams, init_policy, normalisation, policy_mean


def _random_params(rng, dO=5, dU=3, hidden=(7, 6)):
    """Network with non-trivial weights, biases and normalisation."""
    sizes = [dO, *hidden, dU]
    return PolicyParams(
        weights=[rng.normal(size=(o, i)) for i, o in zip(sizes[:-1], sizes[1:])],
        biases=[rng.normal(size=o) for o in sizes[1:]],
        obs_scale=rng.uniform(0.5, 2.0, size=dO),
        obs_bias=rng.normal(size=dO),
        var=rng.uniform(0.1, 1.0, size=dU),
        normalised=True,
    )


def test_policy_mean_matches_torch_forward():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    params = _random_params(rng)
    obs = rng.normal(size=(4, 6, 5))
    obs_before = obs.copy()

    layers = []
    for i, (w, b) in enumerate(zip(params.weights, params.biases)):
        lin = torch.nn.Linear(w.shape[1], w.shape[0], dtype=torch.float64)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(w))
            lin.bias.copy_(torch.from_numpy(b))
        layers.append(lin)
        if i < len(params.weights) - 1:
            layers.append(torch.nn.ReLU())
    net = torch.nn.Sequential(*layers)
    o_hat = torch.from_numpy(obs * params.obs_scale + params.obs_bias)
    with torch.no_grad():
        expected = net(o_hat).numpy()

    got = policy_mean(params, obs)
    assert got.shape == (4, 6, 3)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(obs, obs_before)  # input untouched
    # Some hidden units must actually be clipped, otherwise ReLU is untested.
    pre = (obs * params.obs_scale + params.obs_bias) @ params.weights[0].T + params.biases[0]
    assert (pre < 0).any() and (pre > 0).any()
    # Any leading shape: a single observation and a flat batch agree with the batched call.
    np.testing.assert_allclose(policy_mean(params, obs[1, 2]), got[1, 2], rtol=0, atol=1e-14)
    flat = policy_mean(params, obs.reshape(-1, 5))
    np.testing.assert_allclose(flat, got.reshape(-1, 3), rtol=0, atol=1e-14)


def test_policy_mean_by_hand():
    # One hidden unit, hand-computable: o_hat = 2*o - 1; h = relu(3 o_hat - 1); u = [2h + 1, -h].
    params = PolicyParams(
        weights=[np.array([[3.0]]), np.array([[2.0], [-1.0]])],
        biases=[np.array([-1.0]), np.array([1.0, 0.0])],
        obs_scale=np.array([2.0]),
        obs_bias=np.array([-1.0]),
        var=np.ones(2),
        normalised=True,
    )
    obs = np.array([[1.0], [0.5], [0.0]])  # o_hat = 1, 0, -1 -> h = 2, 0, 0
    np.testing.assert_array_equal(policy_mean(params, obs), [[5.0, -2.0], [1.0, 0.0], [1.0, 0.0]])


def test_importing_policy_net_does_not_import_torch():
    code = (
        "import sys\n"
        "import gps_core.policy.policy_net as p\n"
        "p.policy_mean(p.init_policy(3, 2, (4,), 0.1, 0), __import__('numpy').zeros((2, 3)))\n"
        "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
        "assert not bad, bad\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1]
    )
    assert res.returncode == 0, res.stderr


def test_init_policy():
    dO, dU, hidden = 26, 7, (40, 40)
    a = init_policy(dO, dU, hidden, 0.1, seed=1)
    b = init_policy(dO, dU, hidden, 0.1, seed=1)
    c = init_policy(dO, dU, hidden, 0.1, seed=2)

    assert [w.shape for w in a.weights] == [(40, 26), (40, 40), (7, 40)]
    assert [x.shape for x in a.biases] == [(40,), (40,), (7,)]
    for wa, wb, wc in zip(a.weights, b.weights, c.weights):
        np.testing.assert_array_equal(wa, wb)
        assert not np.array_equal(wa, wc)
        assert wa.dtype == np.float64
    for bias in a.biases:
        np.testing.assert_array_equal(bias, 0.0)

    allw = np.concatenate([w.ravel() for w in a.weights])  # 2920 draws
    assert abs(allw.std() - 0.01) < 6e-4
    assert abs(allw.mean()) < 6e-4
    for w in a.weights:  # every layer uses the same scale
        assert 0.008 < w.std() < 0.012

    np.testing.assert_array_equal(a.obs_scale, np.ones(dO))
    np.testing.assert_array_equal(a.obs_bias, np.zeros(dO))
    np.testing.assert_array_equal(a.var, np.full(dU, 0.1))
    assert a.normalised is False


def test_normalisation_by_hand():
    # Rows (S=2, T=2): col 0 = 1,2,3,4; col 1 constant 5; col 2 has std 8.66e-4 < 1e-3.
    obs = np.array(
        [
            [[1.0, 5.0, 0.0], [2.0, 5.0, 0.0]],
            [[3.0, 5.0, 0.0], [4.0, 5.0, 2e-3]],
        ]
    )
    obs_before = obs.copy()
    scale, bias = normalisation(obs)
    std0 = np.sqrt(1.25)  # population std of 1..4 (sample std would be sqrt(5/3))
    np.testing.assert_allclose(scale, [1.0 / std0, 1e3, 1e3], rtol=1e-14)
    np.testing.assert_allclose(bias, [-2.5 / std0, -5e3, -0.5], rtol=1e-12)
    np.testing.assert_array_equal(obs, obs_before)

    o_hat = obs.reshape(-1, 3) * scale + bias
    np.testing.assert_allclose(o_hat.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(o_hat[:, 0].std(), 1.0, rtol=1e-14)
