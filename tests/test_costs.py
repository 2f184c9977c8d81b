"""Cost terms against finite differences and closed forms; re-centred expansion."""

import numpy as np
import pytest

from gps_core.costs import ActionCost, FKCost, build_cost, expand_cost, penalty, ramp
from gps_core.sim.env import model_path
from gps_core.sim.task import plain_task

rng = np.random.default_rng(0)

# The obstacle model in the paper's layout: x = [joint_positions (x[0:2]), joint_velocities (x[2:4]),
# sites (x[4:7], the particle), site_velocities (x[7:10])], u: 2 motors. Cost terms name these blocks.
OBSTACLE = plain_task(model_path("obstacle"), np.zeros((1, 2)), dt=0.05, substeps=5)


def fd_grad(f, x, eps=1e-6):
    g = np.zeros_like(x)
    for i in range(x.size):
        e = np.zeros_like(x)
        e.flat[i] = eps
        g.flat[i] = (f(x + e) - f(x - e)) / (2 * eps)
    return g


@pytest.mark.parametrize("shape", ["sqrt", "log"])
def test_penalty_gradient_and_hessian(shape):
    D = 4
    d0 = rng.standard_normal(D) * 0.3
    w = rng.uniform(0.5, 2.0, D)
    l1, l2, alpha = 0.7, 1.3, 1e-2

    def value(d):
        return penalty(d[None, None], w[None], l1, l2, alpha, shape)[0][0, 0]

    def grad(d):
        return penalty(d[None, None], w[None], l1, l2, alpha, shape)[1][0, 0]

    _, g, H = penalty(d0[None, None], w[None], l1, l2, alpha, shape)
    np.testing.assert_allclose(g[0, 0], fd_grad(value, d0), atol=1e-7)
    H_exact = np.stack([fd_grad(lambda d: grad(d)[i], d0) for i in range(D)])
    if shape == "sqrt":
        np.testing.assert_allclose(H[0, 0], H_exact, atol=1e-6)
    else:
        # The reference code's log Hessian lacks the factor 2 on g gᵀ: coded = exact + l1 g gᵀ/(α+s)².
        s = np.sum((w * d0) ** 2)
        gg = w**2 * d0
        np.testing.assert_allclose(H[0, 0], H_exact + l1 * np.outer(gg, gg) / (alpha + s) ** 2, atol=1e-6)


def test_ramps():
    np.testing.assert_allclose(ramp("constant", 4, 10.0), [1, 1, 1, 10])
    np.testing.assert_allclose(ramp("linear", 4, 1.0), [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(ramp("quadratic", 2, 1.0), [0.25, 1.0])
    np.testing.assert_allclose(ramp("final_only", 3, 10.0), [0, 0, 10])
    with pytest.raises(ValueError):
        ramp("cubic", 3, 1.0)


def test_obstacle_cost_as_run_is_half_squared_distance():
    cost = build_cost([{"type": "state", "block": "joint_positions", "target": [3.0, 0.0], "wp": [1.0, 1.0], "l1": 0.0,
                        "l2": 1.0, "alpha": 1e-2, "ramp": "constant", "wp_final_multiplier": 1.0, "weight": 1.0}],
                      OBSTACLE)
    X = rng.standard_normal((2, 5, 10))
    U = rng.standard_normal((2, 5, 2))
    terms = cost.evaluate(X, U, None)
    np.testing.assert_allclose(terms.l, 0.5 * np.sum((X[..., :2] - [3.0, 0.0]) ** 2, axis=-1))
    np.testing.assert_allclose(terms.lx[..., :2], X[..., :2] - [3.0, 0.0])
    assert np.all(terms.lx[..., 2:] == 0) and np.all(terms.lu == 0)
    np.testing.assert_allclose(terms.lxx[..., :2, :2], np.broadcast_to(np.eye(2), (2, 5, 2, 2)))


def test_state_and_action_cost_derivatives_by_finite_differences():
    cost = build_cost([
        {"type": "state", "block": "sites", "target": [0.5, -0.2, 0.1], "wp": [1.0, 2.0, 0.5], "l1": 0.3, "l2": 2.0,
         "alpha": 1e-2, "ramp": "linear", "wp_final_multiplier": 5.0, "weight": 0.7},
        {"type": "action", "wu": [0.1, 0.3], "weight": 2.0},
    ], OBSTACLE)
    assert cost.terms[0][1].start == 4  # the block "sites" is x[4:7]
    N, T, dX, dU = 1, 4, 10, 2
    X = rng.standard_normal((N, T, dX))
    U = rng.standard_normal((N, T, dU))
    terms = cost.evaluate(X, U, None)
    for t in range(T):
        def lx(x):
            X2 = X.copy()
            X2[0, t] = x
            return cost.evaluate(X2, U, None).l[0, t]

        def lu(u):
            U2 = U.copy()
            U2[0, t] = u
            return cost.evaluate(X, U2, None).l[0, t]

        np.testing.assert_allclose(terms.lx[0, t], fd_grad(lx, X[0, t]), atol=1e-6)
        np.testing.assert_allclose(terms.lu[0, t], fd_grad(lu, U[0, t]), atol=1e-6)

        def gx(x):
            X2 = X.copy()
            X2[0, t] = x
            return cost.evaluate(X2, U, None).lx[0, t]

        H = np.stack([fd_grad(lambda x: gx(x)[i], X[0, t]) for i in range(dX)])
        np.testing.assert_allclose(terms.lxx[0, t], H, atol=1e-5)
        np.testing.assert_allclose(terms.luu[0, t], np.diag([0.2, 0.6]))


def test_fk_cost_chain_rule_through_jacobian():
    """EE points h(q) = A q + b: l_x on the joint slots is the derivative of l w.r.t. q."""
    nq, dX, dU, T = 3, 14, 3, 3
    A = rng.standard_normal((6, nq))
    b = rng.standard_normal(6)
    cost = FKCost(ee_start=8, target=np.array([0.1, 0.2, 0.3, 0.0, 0.1, 0.2]), wp=np.array([2, 2, 1, 2, 2, 1.0]),
                  l1=0.1, l2=10.0, alpha=1e-5, ramp="constant")

    def states(q):
        X = np.zeros((1, T, dX))
        X[0, :, :nq] = q
        X[0, :, 8:14] = q @ A.T + b
        return X

    q0 = rng.standard_normal(nq) * 0.1
    J = np.broadcast_to(A, (1, T, 6, nq))
    U = np.zeros((1, T, dU))
    terms = cost.evaluate(states(q0), U, J)
    grad = fd_grad(lambda q: cost.evaluate(states(q), U, J).l[0, 0], q0)
    np.testing.assert_allclose(terms.lx[0, 0, :nq], grad, rtol=1e-5, atol=1e-7)
    assert np.all(terms.lx[0, :, nq:] == 0), "EE slots get no derivative"
    assert np.all(terms.lxx[0, :, nq:, :] == 0)


def test_fk_term_reads_its_blocks_entries_and_jacobian_rows():
    """build_cost resolves an fk term's block to its entries of x and its rows of the recorded Jacobian."""
    from gps_core.sim.task import compile_task

    task = compile_task({
        "name": "two_point_blocks", "model": model_path("obstacle"), "T": 3, "dt": 0.05, "substeps": 5,
        "stepping": "split",
        "blocks": {"q": {"kind": "qpos"}, "v": {"kind": "qvel"}, "particle": {"kind": "position", "points": ["particle_site"]},
                   "to_target": {"kind": "relative", "point": "particle_site", "to": "target", "axes": "xy"}},
        "state": ["q", "v", "particle", "to_target"], "observation": ["q", "v"], "conditions": [{"qpos": [0.0, 0.0]}],
    })
    cost = build_cost([{"type": "fk", "block": "to_target", "target": [0.0, 0.0], "wp": [1.0, 1.0]}], task)
    fk = cost.terms[0][1]
    assert (fk.ee_start, fk.jac_start, fk.penalty) == (7, 3, "log")  # x[7:9]; Jacobian rows 3:5 (after particle's 3)
    X = rng.standard_normal((1, 2, task.dX))
    J = rng.standard_normal((1, 2, task.n_jac, task.dU))
    alone = FKCost(ee_start=0, target=np.zeros(2), wp=np.ones(2)).evaluate(X[..., 7:9], np.zeros((1, 2, 2)), J[..., 3:5, :])
    terms = cost.evaluate(X, np.zeros((1, 2, 2)), J)
    np.testing.assert_allclose(terms.l, alone.l)
    np.testing.assert_allclose(terms.lx[..., :2], alone.lx[..., :2])


def test_final_only_fk_term_constant_before_last_step():
    cost = FKCost(ee_start=0, target=np.zeros(3), wp=np.ones(3), l1=1.0, l2=0.0, alpha=1e-5,
                  ramp="final_only", wp_final_multiplier=10.0)
    X = rng.standard_normal((1, 4, 3))
    terms = cost.evaluate(X, np.zeros((1, 4, 1)), np.zeros((1, 4, 3, 3)))
    np.testing.assert_allclose(terms.l[0, :3], 0.5 * np.log(1e-5))
    assert terms.l[0, 3] > terms.l[0, 0]


def test_expansion_recentred_at_zero_reproduces_cost_at_each_sample():
    cost = build_cost([
        {"type": "state", "block": "joint_positions", "target": [1.0, 2.0], "wp": [1.0, 1.0], "l1": 0.5, "l2": 1.0,
         "alpha": 0.1},
        {"type": "action", "wu": [0.2, 0.5]},
    ], OBSTACLE)
    X = rng.standard_normal((1, 6, 10))
    U = rng.standard_normal((1, 6, 2))
    terms = cost.evaluate(X, U, None)
    q = expand_cost(terms, X, U)
    z = np.concatenate([X, U], axis=-1)[0]
    model = q.cc + np.einsum("ti,ti->t", q.cv, z) + 0.5 * np.einsum("ti,tij,tj->t", z, q.Cm, z)
    np.testing.assert_allclose(model, terms.l[0], atol=1e-12)
    # and the model's gradient at the sample is the cost's gradient
    np.testing.assert_allclose(q.cv + np.einsum("tij,tj->ti", q.Cm, z), np.concatenate([terms.lx, terms.lu], -1)[0])


def test_expansion_averages_after_recentring():
    cost = ActionCost(wu=np.array([1.0]))
    U = np.array([[[1.0]], [[3.0]]])  # two samples, T = 1
    X = np.zeros((2, 1, 1))
    q = expand_cost(cost.evaluate(X, U, None), X, U)
    # ½u² is exactly quadratic, so every re-centred expansion is the same function: cc = 0, cv = 0.
    np.testing.assert_allclose(q.cc, 0.0, atol=1e-12)
    np.testing.assert_allclose(q.cv, 0.0, atol=1e-12)


def test_expansion_keeps_leading_condition_axis():
    cost = build_cost([{"type": "state", "block": "joint_positions", "target": [1.0, 2.0], "wp": [1.0, 1.0], "l1": 0.5}],
                      OBSTACLE)
    X = rng.standard_normal((3 * 4, 5, 10))
    U = rng.standard_normal((3 * 4, 5, 2))
    terms = cost.evaluate(X, U, None)
    batched = expand_cost(terms.reshape(3, 4), X.reshape(3, 4, 5, 10), U.reshape(3, 4, 5, 2))
    for m in range(3):
        sl = slice(4 * m, 4 * m + 4)
        single = expand_cost(cost.evaluate(X[sl], U[sl], None), X[sl], U[sl])
        np.testing.assert_allclose(batched.Cm[m], single.Cm)
        np.testing.assert_allclose(batched.cv[m], single.cv)
        np.testing.assert_allclose(batched.cc[m], single.cc)
