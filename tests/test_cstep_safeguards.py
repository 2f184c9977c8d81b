"""The C-step safeguards (gps_core/traj_opt/c_step.py, "Safeguards"): real faulting C-steps, crafted ones, the
relative-coordinate arithmetic against the reference's, and the reference's abort as a setting."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gps_core.traj_opt.lingauss import LinearGaussianPolicy
from gps_core.traj_opt.c_step import KL_REFERENCE, NO_SAFEGUARD, RELATIVE_COORDINATES, c_step_batched, relative_kl_batched, relative_problem
from gps_core.traj_opt.lqr import ConditionError, Dynamics, QuadraticCost, forward_pass_batched, quadratic_form_batched, traj_kl_batched
from gps_core.configs import TrajOptConfig

DATA = Path(__file__).parent / "data"
# Inputs of real C-steps that the reference's rule aborts, with the outputs of the code before the
# safeguards (commit 916207e) on the conditions that did not fault (tests/data/make_cstep_fixtures.py).
FIXTURES = ["cstep_obstacle_s2_itr03.npz", "cstep_blind_s9_itr05.npz"]


def load_fixture(name: str):
    f = dict(np.load(DATA / name))
    M = f["Cm"].shape[0]
    costs = [QuadraticCost(Cm=f["Cm"][m], cv=f["cv"][m], cc=f["cc"][m]) for m in range(M)]
    dyns = [Dynamics(Fm=f["Fm"][m], fv=f["fv"][m], covar=f["dyn_covar"][m], x0mu=f["x0mu"][m], x0sigma=f["x0sigma"][m])
            for m in range(M)]
    lins = [LinearGaussianPolicy(K=f["lin_K"][m], k=f["lin_k"][m], covar=f["lin_covar"][m]) for m in range(M)]
    lo, hi, del0, iters, tol = f["traj_opt"]
    cfg = TrajOptConfig(min_eta=lo, max_eta=hi, del0=del0, max_iterations=int(iters), tolerance=tol)
    return f, costs, lins, dyns, cfg


@pytest.mark.parametrize("name", FIXTURES)
def test_real_c_steps_agree_with_the_code_before_where_it_did_not_fault(name):
    f, costs, lins, dyns, cfg = load_fixture(name)
    res = c_step_batched(costs, lins, dyns, f["kl_bound"], f["eta_prev"], cfg)
    ok = f["ok"]
    for field, expected in (("K", "expected_K"), ("k", "expected_k"), ("covar", "expected_covar"), ("eta", "expected_eta")):
        got, want = getattr(res, field)[ok], f[expected]
        np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-8 * np.abs(want).max(), err_msg=field)
    np.testing.assert_array_equal(res.dual_iterations[ok], f["expected_dual_iterations"])
    assert np.all(res.safeguard[ok] == NO_SAFEGUARD)


@pytest.mark.parametrize("name", FIXTURES)
def test_real_faulting_c_steps_finish_relative_to_the_reference_with_the_bound_met(name):
    f, costs, lins, dyns, cfg = load_fixture(name)
    res = c_step_batched(costs, lins, dyns, f["kl_bound"], f["eta_prev"], cfg)
    for m in f["faulting"]:
        assert res.safeguard[m] == RELATIVE_COORDINATES
        assert res.converged[m] and abs(res.kl[m] - f["kl_bound"][m]) < cfg.tolerance * f["kl_bound"][m]
        assert res.eta[m] > cfg.max_eta  # these fitted models need η beyond the reference's bracket
        assert np.all(np.linalg.eigvalsh(res.covar[m]) > 0)


@pytest.mark.parametrize("name", FIXTURES)
def test_the_reference_setting_still_aborts_naming_the_condition(name):
    f, costs, lins, dyns, cfg = load_fixture(name)
    abort = TrajOptConfig(min_eta=cfg.min_eta, max_eta=cfg.max_eta, del0=cfg.del0, max_iterations=cfg.max_iterations,
                          tolerance=cfg.tolerance, on_fault="abort")
    with pytest.raises(ConditionError, match=f"condition {f['faulting'][0]}: Q_uu stayed non-positive-definite"):
        c_step_batched(costs, lins, dyns, f["kl_bound"], f["eta_prev"], abort)


# --------------------------------------------------------------------------- crafted problems


def unstable_problem(seed: int, growth: float, gain: float, T: int = 60, dX: int = 4, dU: int = 2):
    """A fitted model whose state grows by growth^T (a scaled rotation), a PD cost, a high-gain π̄."""
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((dX, dX)))
    Fm = np.broadcast_to(np.concatenate([growth * Q, rng.standard_normal((dX, dU))], 1), (T, dX, dX + dU)).copy()
    dyn = Dynamics(Fm=Fm, fv=0.01 * rng.standard_normal((T, dX)), covar=np.broadcast_to(1e-4 * np.eye(dX), (T, dX, dX)).copy(),
                   x0mu=rng.standard_normal(dX), x0sigma=1e-4 * np.eye(dX))
    D = dX + dU
    cost = QuadraticCost(Cm=np.broadcast_to(np.eye(D), (T, D, D)).copy(), cv=np.zeros((T, D)), cc=np.zeros(T))
    ref = LinearGaussianPolicy(K=gain * rng.standard_normal((T, dU, dX)), k=rng.standard_normal((T, dU)),
                               covar=np.broadcast_to(0.01 * np.eye(dU), (T, dU, dU)).copy())
    return cost, ref, dyn


@pytest.mark.parametrize("growth,gain", [(1.3, 1.0), (2.0, 1.0), (1.6, 50.0)])
def test_unstable_fitted_model_faults_under_the_reference_and_finishes_with_the_bound_met(growth, gain):
    cost, ref, dyn = unstable_problem(0, growth, gain)
    bound = np.array([10.0])
    with pytest.raises(ConditionError, match="non-positive-definite"):
        c_step_batched([cost], [ref], [dyn], bound, np.ones(1), TrajOptConfig(on_fault="abort"))
    res = c_step_batched([cost], [ref], [dyn], bound, np.ones(1), TrajOptConfig())
    assert res.safeguard[0] == RELATIVE_COORDINATES and res.converged[0]
    assert abs(res.kl[0] - 10.0) < 1.0


def test_indefinite_cost_is_solved_relative_to_the_reference():
    cost, ref, dyn = unstable_problem(1, 1.0, 1.0)
    cost.Cm[:, 4:, 4:] = -1e20 * np.eye(2)  # concave in u: only a huge η keeps the step near π̄
    with pytest.raises(ConditionError):
        c_step_batched([cost], [ref], [dyn], np.array([10.0]), np.ones(1), TrajOptConfig(on_fault="abort"))
    res = c_step_batched([cost], [ref], [dyn], np.array([10.0]), np.ones(1), TrajOptConfig())
    assert res.safeguard[0] == RELATIVE_COORDINATES
    assert res.kl[0] < 11.0 and res.eta[0] > 1e20


def test_overflowing_cost_keeps_the_kl_reference_and_the_other_conditions_are_untouched():
    good, ref, dyn = well_conditioned(2)
    bad = QuadraticCost(Cm=good.Cm.copy(), cv=good.cv, cc=good.cc)
    bad.Cm[:, 3:, 3:] = -1e307 * np.eye(2)  # no η within floating-point range makes Q_uu PD
    cfg = TrajOptConfig()
    alone = c_step_batched([good], [ref], [dyn], np.array([10.0]), np.ones(1), cfg)
    res = c_step_batched([good, bad], [ref, ref], [dyn, dyn], np.array([10.0, 10.0]), np.ones(2), cfg)
    assert list(res.safeguard) == [NO_SAFEGUARD, KL_REFERENCE]
    np.testing.assert_array_equal(res.K[1], ref.K)
    np.testing.assert_array_equal(res.k[1], ref.k)
    np.testing.assert_array_equal(res.covar[1], ref.covar)
    assert res.kl[1] == 0.0 and not res.converged[1]
    np.testing.assert_array_equal(res.K[0], alone.K[0])
    assert res.eta[0] == alone.eta[0]


# --------------------------------------------------------------------------- the arithmetic


def well_conditioned(seed: int, T: int = 12, dX: int = 3, dU: int = 2):
    rng = np.random.default_rng(seed)
    D = dX + dU
    A = np.eye(dX) + 0.1 * rng.standard_normal((dX, dX))
    Fm = np.broadcast_to(np.concatenate([A, 0.3 * rng.standard_normal((dX, dU))], 1), (T, dX, D)).copy()
    L = rng.standard_normal((T, D, D))
    Cm = L @ np.swapaxes(L, 1, 2) + np.eye(D)
    cost = QuadraticCost(Cm=Cm, cv=rng.standard_normal((T, D)), cc=np.zeros(T))
    dyn = Dynamics(Fm=Fm, fv=0.1 * rng.standard_normal((T, dX)), covar=np.broadcast_to(0.01 * np.eye(dX), (T, dX, dX)).copy(),
                   x0mu=rng.standard_normal(dX), x0sigma=0.01 * np.eye(dX))
    S = rng.standard_normal((T, dU, dU))
    ref = LinearGaussianPolicy(K=rng.standard_normal((T, dU, dX)), k=rng.standard_normal((T, dU)),
                               covar=S @ np.swapaxes(S, 1, 2) + 0.5 * np.eye(dU))
    return cost, ref, dyn


def test_relative_problem_is_the_same_cost_and_dynamics_in_other_coordinates():
    cost, ref, dyn = well_conditioned(3)
    T, dU, dX = ref.K.shape
    Cr, cr, Fr, fr = relative_problem(cost.Cm[None], cost.cv[None], dyn.Fm[None], dyn.fv[None], ref.K[None], ref.k[None])
    rng = np.random.default_rng(0)
    for t in (0, 5, T - 1):
        x, du = rng.standard_normal(dX), rng.standard_normal(dU)
        z_rel = np.concatenate([x, du])
        z = np.concatenate([x, ref.K[t] @ x + ref.k[t] + du])
        ell = 0.5 * z @ cost.Cm[t] @ z + cost.cv[t] @ z
        ell_rel = 0.5 * z_rel @ Cr[0, t] @ z_rel + cr[0, t] @ z_rel
        zero = np.concatenate([np.zeros(dX), ref.k[t]])  # the constant dropped: the cost at z_rel = 0
        const = 0.5 * zero @ cost.Cm[t] @ zero + cost.cv[t] @ zero
        np.testing.assert_allclose(ell_rel + const, ell, rtol=1e-12)
        np.testing.assert_allclose(Fr[0, t] @ z_rel + fr[0, t], dyn.Fm[t] @ z + dyn.fv[t], rtol=1e-12)


def test_relative_kl_equals_traj_kl_where_nothing_cancels():
    cost, ref, dyn = well_conditioned(4)
    _, p, _ = well_conditioned(5)
    dX = ref.dX
    K, k, S = p.K[None], p.k[None], p.covar[None]
    mu, Sig = forward_pass_batched(K, k, S, dyn.Fm[None], dyn.fv[None], dyn.covar[None], dyn.x0mu[None], dyn.x0sigma[None])
    q = quadratic_form_batched(ref.K[None], ref.k[None], ref.covar[None])
    expected = traj_kl_batched(mu, Sig, quadratic_form_batched(K, k, S), q)
    got = relative_kl_batched(mu[..., :dX], Sig[..., :dX, :dX], K - ref.K[None], k - ref.k[None], S,
                              q[0][..., dX:, dX:], q[3])
    np.testing.assert_allclose(got, expected, rtol=1e-9)
    assert np.all(got > 0)


def test_relative_dual_search_finds_the_reference_solution_on_a_problem_that_does_not_fault():
    """Forced through the relative path, a well-conditioned C-step gives the reference's controller."""
    from gps_core.traj_opt import c_step

    problems = [well_conditioned(s) for s in (6, 7)]
    costs, refs, dyns = map(list, zip(*problems))
    cfg = TrajOptConfig(tolerance=1e-6, max_iterations=200)
    bounds, etas = np.array([3.0, 5.0]), np.ones(2)
    ref = c_step_batched(costs, refs, dyns, bounds, etas, cfg)
    assert np.all(ref.converged) and np.all(ref.safeguard == NO_SAFEGUARD)
    pb_out = {k: np.zeros_like(v) for k, v in (("K", ref.K), ("k", ref.k), ("covar", ref.covar), ("eta", ref.eta),
                                                ("kl", ref.kl), ("converged", ref.converged),
                                                ("dual_iterations", ref.dual_iterations), ("safeguard", ref.safeguard))}
    stack = lambda objs, f: np.stack([getattr(o, f) for o in objs])  # noqa: E731
    Kq, kq, Sq = stack(refs, "K"), stack(refs, "k"), stack(refs, "covar")
    pb = c_step._Problem(Cm=stack(costs, "Cm"), cv=stack(costs, "cv"), Kq=Kq, kq=kq, Sq=Sq, Fm=stack(dyns, "Fm"),
                      fv=stack(dyns, "fv"), W=stack(dyns, "covar"), x0mu=stack(dyns, "x0mu"), x0sigma=stack(dyns, "x0sigma"),
                      q_terms=quadratic_form_batched(Kq, kq, Sq), kl_bounds=bounds)
    left = c_step._dual_search(pb, np.arange(2), etas, cfg, pb_out, relative=True)
    assert left.size == 0 and np.all(pb_out["converged"])
    np.testing.assert_allclose(pb_out["eta"], ref.eta, rtol=1e-4)
    np.testing.assert_allclose(pb_out["K"], ref.K, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(pb_out["kl"], ref.kl, rtol=1e-5)


def test_badmm_hopeless_c_step_keeps_the_previous_controllers():
    from gps_core.badmm.algorithm import badmm_c_step
    from gps_core.badmm.duals import init_duals

    good, prev, dyn = well_conditioned(8)
    bad = QuadraticCost(Cm=good.Cm.copy(), cv=good.cv, cc=good.cc)
    bad.Cm[:, 3:, 3:] = -1e20 * np.eye(2)
    T, dU, dX = prev.K.shape
    duals = init_duals(2, T, dU, dX, 0.01)
    args = ([good, bad], [prev, prev], [prev, prev], [dyn, dyn], duals, np.array([10.0, 10.0]), np.ones(2))
    with pytest.raises(ConditionError, match="condition 1"):
        badmm_c_step(*args, TrajOptConfig(on_fault="abort"))
    res = badmm_c_step(*args, TrajOptConfig())
    assert list(res.safeguard) == [NO_SAFEGUARD, KL_REFERENCE]
    np.testing.assert_array_equal(res.K[1], prev.K)
    assert res.kl[1] == 0.0
