"""Tests for gps_core.policy.s_step (S-step, ALGORITHM.md §8.2-§8.5)."""

import copy

import numpy as np
import pytest
import torch

from gps_core.policy.policy_net import PolicyParams, init_policy, normalisation, policy_mean
from gps_core.policy.s_step import AdamState, minibatch_indices, policy_variance, process_weights, train_policy
from gps_core.configs import SStepConfig


# --------------------------------------------------------------------------- helpers


def _spd(rng, n, dU):
    """n random symmetric positive-definite, non-diagonal [dU, dU] matrices."""
    L = rng.normal(size=(n, dU, dU))
    return L @ np.swapaxes(L, -1, -2) + 0.5 * np.eye(dU)


def _dataset(seed=0, S=4, T=20, dO=5, dU=3, uniform_weights=False):
    """obs [S,T,dO], nonlinear targets [S,T,dU], non-diagonal SPD precisions, positive weights."""
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(S, T, dO)) * rng.uniform(0.5, 3.0, size=dO) + rng.normal(size=dO)
    target = np.tanh(obs @ rng.normal(size=(dO, dU))) + 0.3 * obs[..., :dU] ** 2
    precision = _spd(rng, S * T, dU).reshape(S, T, dU, dU)
    if uniform_weights:
        weight = np.full((S, T), 0.01)
    else:
        weight = rng.uniform(0.2, 1.0, size=(S, T))
        weight[0, :3] = [5.0, 0.001, 0.0]  # one clipped, one tiny, one zero
    return obs, target, precision, weight


def _flat(params):
    return [a for pair in zip(params.weights, params.biases) for a in pair]


def _state_arrays(params, adam):
    """Every array of a (PolicyParams, AdamState) pair."""
    extra = [params.obs_scale, params.obs_bias, params.var]
    return _flat(params) + extra + adam.exp_avg + adam.exp_avg_sq


def _reference_s_step(params, adam_opt, torch_params, obs, target, precision, weight, cfg, perm):
    """Independent S-step: autograd + torch.optim.Adam(weight_decay) on the §8.4 minibatches.

    torch_params: list of leaf tensors [W0, b0, W1, b1, ...] trained in place; adam_opt the
    torch optimiser over them (persisting across calls).  Returns the per-iteration losses.
    """
    S, T, dO = obs.shape
    dU = target.shape[-1]
    R, B = S * T, cfg.batch_size
    nb = R // B
    # Hand-written weight processing (§8.3).
    w = weight.ravel() * R / weight.sum()
    mu_w = np.median(w[w > 0.01])
    w = np.minimum(w, 2 * mu_w) / mu_w
    o_hat = torch.tensor(obs.reshape(R, dO) * params.obs_scale + params.obs_bias)
    y = torch.tensor(target.reshape(R, dU))
    p_w = torch.tensor(precision.reshape(R, dU, dU) * w[:, None, None])
    n_layers = len(torch_params) // 2
    losses = []
    for i in range(cfg.iterations):
        rows = torch.as_tensor(perm[(i * B) % (nb * B) :][:B])
        h = o_hat[rows]
        for k in range(n_layers):
            h = h @ torch_params[2 * k].T + torch_params[2 * k + 1]
            if k < n_layers - 1:
                h = torch.relu(h)
        d = h - y[rows]
        loss = torch.einsum("bi,bij,bj->", d, p_w[rows], d) / (2 * B)
        adam_opt.zero_grad()
        loss.backward()
        adam_opt.step()
        losses.append(loss.item())
    return np.array(losses)


# --------------------------------------------------------------------------- weights, variance, batches


def test_process_weights_by_hand():
    # Sum already 10 = R after renormalisation (inputs scaled by 0.01 -> factor 100).
    # Renormalised: 0.5,0.5,0.5,1,1,1,1,4.495,0.005,0.  The median is taken over the
    # 8 weights > 0.01 only -> 1 (it would be 0.75 if the small ones were included);
    # clip at 2 mu_w = 2, divide by mu_w = 1.
    w = 0.01 * np.array([[0.5, 0.5, 0.5, 1, 1], [1, 1, 4.495, 0.005, 0]])
    w_before = w.copy()
    np.testing.assert_allclose(
        process_weights(w), [[0.5, 0.5, 0.5, 1, 1], [1, 1, 2, 0.005, 0]], rtol=1e-13, atol=1e-16
    )
    np.testing.assert_array_equal(w, w_before)
    # Median != 1: [1,1,2,2,9] -> *5/15 -> [1/3,1/3,2/3,2/3,3]; mu_w = 2/3; clip at 4/3; / mu_w.
    got = process_weights(np.array([[1.0, 1, 2, 2, 9]]))
    np.testing.assert_allclose(got, [[0.5, 0.5, 1, 1, 2]], rtol=1e-14)
    # MDGPS: constant weights become exactly one.
    np.testing.assert_array_equal(process_weights(np.full((45, 100), 0.01)), np.ones((45, 100)))
    with pytest.raises(ValueError):
        process_weights(np.zeros((2, 3)))


def test_minibatch_indices_cycle():
    perm = np.arange(100, 157)  # 57 rows, B = 25 -> nb = 2, 7 remainder rows never used
    np.testing.assert_array_equal(minibatch_indices(perm, 25, 0), perm[:25])
    np.testing.assert_array_equal(minibatch_indices(perm, 25, 1), perm[25:50])
    np.testing.assert_array_equal(minibatch_indices(perm, 25, 2), perm[:25])
    np.testing.assert_array_equal(minibatch_indices(perm, 25, 7), perm[25:50])


def test_variance_mdgps_equals_inverse_mean_precision():
    obs, target, precision, weight = _dataset(seed=1, uniform_weights=True)
    params = init_policy(5, 3, (8,), 0.1, seed=0)
    cfg = SStepConfig(iterations=2)
    new, _, _ = train_policy(params, None, obs, target, precision, weight, cfg, np.random.default_rng(0))
    mean_prc = precision.mean(axis=(0, 1))
    assert np.abs(mean_prc - np.diag(np.diag(mean_prc))).max() > 0.1  # genuinely non-diagonal
    np.testing.assert_allclose(new.var, 1.0 / np.diag(mean_prc), rtol=1e-14)
    np.testing.assert_array_equal(params.var, 0.1)  # input untouched


def test_variance_with_ent_reg_by_hand():
    rng = np.random.default_rng(2)
    S, T, dU = 3, 10, 2
    obs = rng.normal(size=(S, T, 4))
    target = rng.normal(size=(S, T, dU))
    precision = _spd(rng, S * T, dU).reshape(S, T, dU, dU)
    # Processed by hand: renormalised weights are 1 except 4.0 at [0,0] (sum 33 -> *30/33 first).
    weight = np.ones((S, T))
    weight[0, 0] = 4.0
    # w*30/33: ones -> 10/11, the 4 -> 40/11; mu_w = 10/11; clip 40/11 -> 20/11; /mu_w -> 1 and 2.
    sum_w = 29 * 1.0 + 2.0
    ent_reg = 0.01
    R = S * T
    expected = sum_w / (precision.sum(axis=(0, 1)).diagonal() + 2 * R * ent_reg)
    cfg = SStepConfig(iterations=1, batch_size=10, ent_reg=ent_reg)
    params = init_policy(4, dU, (5,), 0.1, 0)
    new, _, _ = train_policy(params, None, obs, target, precision, weight, cfg, np.random.default_rng(0))
    np.testing.assert_allclose(new.var, expected, rtol=1e-13)
    direct = policy_variance(precision, process_weights(weight), ent_reg)
    np.testing.assert_allclose(direct, expected, rtol=1e-13)
    # ent_reg increases A_jj, so it shrinks the variance relative to ent_reg = 0.
    assert np.all(new.var < sum_w / precision.sum(axis=(0, 1)).diagonal())


# --------------------------------------------------------------------------- normalisation


def test_normalisation_computed_once_then_frozen():
    obs, target, precision, weight = _dataset(seed=3)
    obs[..., 2] = 7.0  # constant dimension -> std floor 1e-3
    params = init_policy(5, 3, (8,), 0.1, seed=0)
    cfg = SStepConfig(iterations=5, batch_size=10)
    first, adam, _ = train_policy(params, None, obs, target, precision, weight, cfg, np.random.default_rng(0))
    scale, bias = normalisation(obs)
    assert first.normalised is True
    np.testing.assert_array_equal(first.obs_scale, scale)
    np.testing.assert_array_equal(first.obs_bias, bias)
    assert first.obs_scale[2] == 1e3 and first.obs_bias[2] == pytest.approx(-7e3, rel=1e-14)
    np.testing.assert_allclose(first.obs_scale[0], 1.0 / obs[..., 0].std(), rtol=1e-14)

    obs2 = 3.0 * obs + 10.0
    second, _, _ = train_policy(first, adam, obs2, target, precision, weight, cfg, np.random.default_rng(1))
    np.testing.assert_array_equal(second.obs_scale, first.obs_scale)
    np.testing.assert_array_equal(second.obs_bias, first.obs_bias)
    assert second.normalised is True


# --------------------------------------------------------------------------- loss


def test_first_loss_equals_formula_on_hand_batch():
    obs, target, precision, weight = _dataset(seed=4)
    params = init_policy(5, 3, (8, 6), 0.1, seed=5)
    # Make the initial network non-trivial so the loss is not just the target norm.
    rng = np.random.default_rng(6)
    params.weights = [rng.normal(size=w.shape) for w in params.weights]
    params.biases = [rng.normal(size=b.shape) for b in params.biases]
    cfg = SStepConfig(iterations=1, batch_size=7)
    rng_perm = np.random.default_rng(42)
    new, _, losses = train_policy(params, None, obs, target, precision, weight, cfg, rng_perm)

    rows = np.random.default_rng(42).permutation(80)[:7]
    frozen = copy.deepcopy(params)
    frozen.obs_scale, frozen.obs_bias = normalisation(obs)
    mu = policy_mean(frozen, obs.reshape(80, 5)[rows])
    d = mu - target.reshape(80, 3)[rows]
    w = process_weights(weight).ravel()[rows]
    P = precision.reshape(80, 3, 3)[rows]
    expected = sum(w[b] * d[b] @ P[b] @ d[b] for b in range(7)) / (2 * 7)
    assert losses.shape == (1,)
    assert losses[0] == pytest.approx(expected, rel=1e-12)


def test_training_loss_decreases_and_fits_linear_teacher():
    rng = np.random.default_rng(7)
    S, T, dO, dU = 10, 50, 4, 2
    A = rng.normal(size=(dU, dO))
    b = rng.normal(size=dU)
    lo, sc = np.array([0.0, 1.0, -2.0, 5.0]), np.array([1.0, 2.0, 0.5, 3.0])
    obs = rng.normal(size=(S, T, dO)) * sc + lo
    target = obs @ A.T + b
    precision = np.broadcast_to(np.eye(dU), (S, T, dU, dU)).copy()
    weight = np.full((S, T), 0.01)
    params = init_policy(dO, dU, (40, 40), 0.1, seed=1)
    new, adam, losses = train_policy(
        params, None, obs, target, precision, weight, SStepConfig(iterations=2000), np.random.default_rng(0)
    )
    assert losses.shape == (2000,)
    assert losses[-100:].mean() < 1e-2 * losses[:20].mean()
    obs_test = rng.normal(size=(500, dO)) * sc + lo
    err = policy_mean(new, obs_test) - (obs_test @ A.T + b)
    rel_rmse = np.sqrt((err**2).mean() / (obs_test @ A.T).var())
    assert rel_rmse < 0.05
    assert adam.step == 2000
    np.testing.assert_array_equal(new.var, 1.0)  # identity precision


def test_precision_weighting_decides_which_dimension_is_fitted():
    # A single hidden ReLU unit cannot reproduce two independent outputs; the
    # dimension with the large precision must win.
    rng = np.random.default_rng(8)
    obs = rng.normal(size=(10, 50, 2))
    target = obs.copy()
    weight = np.full((10, 50), 0.01)
    rmse = {}
    for heavy in (0, 1):
        diag = np.full(2, 1e-2)
        diag[heavy] = 1e2
        precision = np.broadcast_to(np.diag(diag), (10, 50, 2, 2)).copy()
        params = init_policy(2, 2, (1,), 0.1, seed=1)
        cfg = SStepConfig(iterations=2500)
        new, _, _ = train_policy(params, None, obs, target, precision, weight, cfg, np.random.default_rng(0))
        err = policy_mean(new, obs) - target
        rmse[heavy] = np.sqrt((err**2).mean(axis=(0, 1)))
    assert rmse[0][0] < 0.4 * rmse[0][1]
    assert rmse[1][1] < 0.4 * rmse[1][0]


# --------------------------------------------------------------------------- optimiser


def test_matches_autograd_with_torch_adam_and_adam_state_persists():
    """Manual backward + Adam == autograd + torch.optim.Adam(weight_decay) (classic L2, not AdamW)."""
    obs, target, precision, weight = _dataset(seed=9, S=3, T=19)  # R = 57, B = 25: cycles, 7 unused rows
    params = init_policy(5, 3, (8, 6), 0.1, seed=3)
    cfg = SStepConfig(iterations=60, lr=1e-2, weight_decay=0.05)

    rng1, rng2 = np.random.default_rng(11), np.random.default_rng(12)
    new1, adam1, loss1 = train_policy(params, None, obs, target, precision, weight, cfg, rng1)
    obs2, target2, precision2, weight2 = _dataset(seed=10, S=3, T=19)
    new2, adam2, loss2 = train_policy(new1, adam1, obs2, target2, precision2, weight2, cfg, rng2)

    ref_params = [torch.tensor(a, requires_grad=True) for a in _flat(params)]
    hyper = dict(lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, weight_decay=cfg.weight_decay)
    opt = torch.optim.Adam(ref_params, **hyper, foreach=False)
    frozen = copy.deepcopy(params)
    frozen.obs_scale, frozen.obs_bias = normalisation(obs)
    perm1 = np.random.default_rng(11).permutation(57)
    ref_loss1 = _reference_s_step(frozen, opt, ref_params, obs, target, precision, weight, cfg, perm1)
    np.testing.assert_allclose(loss1, ref_loss1, rtol=1e-11)
    for got, ref in zip(_flat(new1), ref_params):
        np.testing.assert_allclose(got, ref.detach().numpy(), rtol=0, atol=1e-12)
    perm2 = np.random.default_rng(12).permutation(57)
    ref_loss2 = _reference_s_step(frozen, opt, ref_params, obs2, target2, precision2, weight2, cfg, perm2)
    np.testing.assert_allclose(loss2, ref_loss2, rtol=1e-11)
    for got, ref in zip(_flat(new2), ref_params):
        np.testing.assert_allclose(got, ref.detach().numpy(), rtol=0, atol=1e-12)

    # Adam state: order W0, b0, W1, b1, ..., and the step count keeps increasing.
    assert adam1.step == 60 and adam2.step == 120
    for k, p in enumerate(ref_params):
        st = opt.state[p]
        assert int(st["step"].item()) == 120
        assert adam2.exp_avg[k].shape == p.shape
        np.testing.assert_allclose(adam2.exp_avg[k], st["exp_avg"].numpy(), rtol=0, atol=1e-12)
        np.testing.assert_allclose(adam2.exp_avg_sq[k], st["exp_avg_sq"].numpy(), rtol=1e-10, atol=1e-20)

    # Restarting the moments instead of continuing them gives a different result.
    rng2 = np.random.default_rng(12)
    restart, _, _ = train_policy(new1, None, obs2, target2, precision2, weight2, cfg, rng2)
    assert not np.allclose(restart.weights[0], new2.weights[0], rtol=0, atol=1e-9)
    # The reference is sharp enough to tell classic L2 from decoupled decay (AdamW).
    adamw_params = [torch.tensor(a, requires_grad=True) for a in _flat(params)]
    adamw = torch.optim.AdamW(adamw_params, **hyper)
    _reference_s_step(frozen, adamw, adamw_params, obs, target, precision, weight, cfg, perm1)
    assert np.abs(adamw_params[0].detach().numpy() - new1.weights[0]).max() > 1e-6


def test_fresh_adam_equals_zero_state():
    obs, target, precision, weight = _dataset(seed=12)
    params = init_policy(5, 3, (8,), 0.1, seed=0)
    cfg = SStepConfig(iterations=30, batch_size=10)
    zero = AdamState([np.zeros_like(a) for a in _flat(params)], [np.zeros_like(a) for a in _flat(params)], 0)
    a, sa, la = train_policy(params, None, obs, target, precision, weight, cfg, np.random.default_rng(0))
    b, sb, lb = train_policy(params, zero, obs, target, precision, weight, cfg, np.random.default_rng(0))
    for x, y in zip(_flat(a) + sa.exp_avg + sa.exp_avg_sq, _flat(b) + sb.exp_avg + sb.exp_avg_sq):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(la, lb)


# --------------------------------------------------------------------------- determinism, purity


def test_deterministic_and_inputs_not_mutated():
    obs, target, precision, weight = _dataset(seed=13)
    params = init_policy(5, 3, (8, 8), 0.1, seed=0)
    cfg = SStepConfig(iterations=200, batch_size=10)
    first, adam, _ = train_policy(params, None, obs, target, precision, weight, cfg, np.random.default_rng(5))

    inputs = (first, adam, obs, target, precision, weight)
    snapshot = copy.deepcopy(inputs)
    r1 = train_policy(*inputs, cfg, np.random.default_rng(6))
    r2 = train_policy(*inputs, cfg, np.random.default_rng(6))
    for x, y in zip(_state_arrays(r1[0], r1[1]), _state_arrays(r2[0], r2[1])):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(r1[2], r2[2])
    np.testing.assert_array_equal(r1[0].var, r2[0].var)
    assert r1[1].step == r2[1].step == 400

    # Nothing passed in was modified (params, Adam state, data).
    p_old, a_old = snapshot[0], snapshot[1]
    for x, y in zip(_state_arrays(first, adam), _state_arrays(p_old, a_old)):
        np.testing.assert_array_equal(x, y)
    assert adam.step == a_old.step == 200
    for x, y in zip(inputs[2:], snapshot[2:]):
        np.testing.assert_array_equal(x, y)
    # The outputs do not alias the inputs.
    assert not np.shares_memory(r1[0].weights[0], first.weights[0])
    # A different permutation seed gives a different result.
    r3 = train_policy(*inputs, cfg, np.random.default_rng(7))
    assert not np.array_equal(r3[0].weights[0], r1[0].weights[0])


def test_torch_global_settings_restored():
    threads = torch.get_num_threads()
    obs, target, precision, weight = _dataset(seed=14)
    params = init_policy(5, 3, (4,), 0.1, 0)
    cfg = SStepConfig(iterations=3, batch_size=10)
    train_policy(params, None, obs, target, precision, weight, cfg, np.random.default_rng(0))
    assert torch.get_num_threads() == threads
