"""The binary region term (the reference's CostBinaryRegion): its two values, the boundary, no derivatives, its block
resolved on a real task, the model check of its block and target, and what it does to the LQR's cost expansion."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, task_params
from gps_core.costs import BinaryRegionCost, build_cost, expand_cost
from stages.errors import UserError
from stages.settings import model_check
from stages.settings.load import load_settings

OBSTACLE_BLOCKS = "joint_positions, joint_velocities, particle, particle_velocity"


def region(**kw) -> BinaryRegionCost:
    """On x[0:2] around (3, 0), L1 radius 0.5 (values exact in binary floating point)."""
    args = dict(start=0, target=np.array([3.0, 0.0]), max_distance=0.5, inside_cost=-3.0, outside_cost=0.5)
    return BinaryRegionCost(**{**args, **kw})


def states(points: list[list[float]], dX: int = 4) -> np.ndarray:
    """One sample whose x[0:2] at step t is points[t]; the other entries far from anything: [1, T, dX]."""
    X = np.full((1, len(points), dX), 100.0)
    X[0, :, :2] = points
    return X


def test_inside_and_outside_values_by_l1_distance():
    X = states([[3.0, 0.0],       # at the target
                [3.2, -0.1],      # L1 0.3
                [2.75, 0.25],     # L1 0.5: on the boundary, inside (the reference: outside only where > max_distance)
                [3.25, -0.2501],  # L1 0.5001
                [3.3, 0.3],       # L1 0.6, Euclidean 0.42: outside (L1, not L2)
                [0.0, -1.5]])     # an initial condition of the obstacle task
    l = region().evaluate(X, np.zeros((1, 6, 2)), None).l
    np.testing.assert_array_equal(l, [[-3.0, -3.0, -3.0, 0.5, 0.5, 0.5]])
    # only the block's entries count: the same point with other entries at the target is still outside
    X2 = states([[3.3, 0.3]])
    X2[0, 0, 2:] = [3.0, 0.0]
    assert region().evaluate(X2, np.zeros((1, 1, 2)), None).l[0, 0] == 0.5
    # and a block further along x: start shifts the entries read
    X3 = np.zeros((2, 1, 6))
    X3[0, 0, 4:6] = [3.1, 0.1]
    assert region(start=4).evaluate(X3, np.zeros((2, 1, 2)), None).l.tolist() == [[-3.0], [0.5]]


def test_every_derivative_is_zero():
    rng = np.random.default_rng(0)
    N, T, dX, dU = 3, 5, 10, 2
    X = rng.standard_normal((N, T, dX))
    X[..., :2] = [3.0, 0.0] + 0.3 * X[..., :2]
    terms = region(start=0).evaluate(X, rng.standard_normal((N, T, dU)), None)
    assert {-3.0, 0.5} == set(terms.l.ravel().tolist())  # both values occur
    for name, shape in (("lx", (N, T, dX)), ("lu", (N, T, dU)), ("lxx", (N, T, dX, dX)), ("luu", (N, T, dU, dU)),
                        ("lux", (N, T, dU, dX))):
        a = getattr(terms, name)
        assert a.shape == shape and not np.any(a), name


def test_build_cost_from_the_obstacle_settings_resolves_the_block():
    s = load_settings(ROOT / "configs" / "obstacle.yaml")
    spec = {"type": "binary_region", "weight": 10.0, "block": "particle", "target": [3.0, 0.0, 0.0],
            "max_distance": 0.05, "inside_cost": -3.0, "outside_cost": 0.0}
    cost = build_cost(s.cost_terms + [spec], s.task)
    task_cost = build_cost(s.cost_terms, s.task)
    weight, term = cost.terms[-1]
    assert isinstance(term, BinaryRegionCost) and weight == 10.0
    assert term.start == s.task.x_slices["particle"].start == 4 and term.target.tolist() == [3.0, 0.0, 0.0]
    X = np.zeros((2, 1, s.task.dX))
    X[:, 0, :2] = [2.0, 0.0]              # joint_positions: 1 from the target, which the state term reads
    X[0, 0, 4:7] = [3.01, 0.02, -0.02]    # particle: L1 0.05 from (3, 0, 0), inside
    X[1, 0, 4:7] = [3.01, 0.02, -0.021]   # L1 0.051, outside
    U = np.zeros((2, 1, s.task.dU))
    l, l_task = cost.evaluate(X, U, None).l, task_cost.evaluate(X, U, None).l
    np.testing.assert_allclose(l - l_task, [[-30.0], [0.0]])


def test_binary_term_shifts_only_the_constant_of_the_expansion_by_its_weighted_mean():
    """expand_cost of a sum with a binary term = the expansion without it, cc shifted per step by
    weight · mean_n(binary cost): a sign, value swap, weight or sum-instead-of-mean error changes the shift."""
    s = load_settings(ROOT / "configs" / "obstacle.yaml")
    spec = {"type": "binary_region", "weight": 10.0, "block": "joint_positions", "target": [3.0, 0.0],
            "max_distance": 0.5, "inside_cost": -3.0, "outside_cost": 0.5}
    with_binary = build_cost(s.cost_terms + [{"type": "action", "wu": [0.1, 0.2]}, spec], s.task)
    without = build_cost(s.cost_terms + [{"type": "action", "wu": [0.1, 0.2]}], s.task)
    rng = np.random.default_rng(1)
    N, T = 4, 3
    X = rng.standard_normal((N, T, s.task.dX))
    U = rng.standard_normal((N, T, s.task.dU))
    X[..., :2] = [0.0, 0.0]     # step 0: all four outside
    X[0, 1, :2] = [3.1, 0.1]    # step 1: one of four inside
    X[:, 2, :2] = [2.9, -0.3]   # step 2: all four inside
    q = expand_cost(with_binary.evaluate(X, U, None), X, U)
    q0 = expand_cost(without.evaluate(X, U, None), X, U)
    np.testing.assert_array_equal(q.Cm, q0.Cm)
    np.testing.assert_array_equal(q.cv, q0.cv)
    shift = 10.0 * np.array([0.5, (-3.0 + 3 * 0.5) / 4, -3.0])  # [5, -3.75, -30]
    np.testing.assert_allclose(q.cc - q0.cc, shift, rtol=0, atol=1e-12)


@pytest.mark.parametrize("field,value,expected", [
    ("block", "joint_angles", f"cost[1].block is 'joint_angles', expected a block of task.state ({OBSTACLE_BLOCKS})"),
    ("target", [3.0, 0.0, 0.0],
     "cost[1].target is [3.0, 0.0, 0.0] (3 entries), expected 2 entries, one per entry of block joint_positions"),
], ids=["unknown_block", "target_length"])
def test_model_check_of_block_and_target_is_the_state_terms_one_line_error(field, value, expected):
    """The same messages as a state term's (tests/test_model_consistency.py: unknown_cost_block, state_target_length),
    raised as the UserError every `gps` command prints as one line with exit code 2."""
    params = copy.deepcopy(task_params("obstacle"))
    term = {"type": "binary_region", "block": "joint_positions", "target": [3.0, 0.0], "max_distance": 0.05,
            "inside_cost": -3.0, "outside_cost": 0.0}
    params["cost"].append({**term, field: value})
    source = str(ROOT / "configs" / "obstacle.yaml")
    with pytest.raises(UserError) as err:
        model_check.check_model_consistency(params, source)
    assert str(err.value) == f"{source}: {expected}" and "\n" not in str(err.value)
    state = copy.deepcopy(task_params("obstacle"))  # a state term with the same field gives the same line
    state["cost"].append({**state["cost"][0], field: value})
    with pytest.raises(UserError) as err_state:
        model_check.check_model_consistency(state, source)
    assert str(err_state.value) == str(err.value)
    params["cost"][-1] = term
    model_check.check_model_consistency(params, source)  # the term as it should be passes


def test_gps_command_exits_2_with_the_one_line(tmp_path):
    """Through a `gps` command: an algorithm that takes a cost without derivatives (PI2), the binary term's block
    unknown: exit 2, the model check's line, nothing written (tests/test_model_consistency.py's helpers)."""
    from conftest import small_params
    from test_model_consistency import gps_fails, init_args, write_params

    def edit(params: dict, tmp: Path | None = None) -> None:
        params["algorithm"].update(name="pi2", sample_on_policy=False)
        params["cost"].append({"type": "binary_region", "block": "joint_angles", "target": [3.0, 0.0],
                               "max_distance": 0.05, "inside_cost": -3.0, "outside_cost": 0.0})

    path = write_params(tmp_path, small_params, edit)
    out = tmp_path / "out"
    assert gps_fails(*init_args(path, out)) == (f"gps init: error: {path}: cost[1].block is 'joint_angles', expected a "
                                                f"block of task.state ({OBSTACLE_BLOCKS})")
    assert not out.exists()


def test_benchmark_binary_term_fits_obstacle_and_starts_outside():
    """benchmarks/local_optimizers.py --cost binary: its term passes the model check, and every initial condition
    (where the initial controllers stay) is outside the region."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from local_optimizers import BINARY_TERMS

    from gps_core.sim.env import Simulator

    s = load_settings(ROOT / "configs" / "obstacle.yaml")
    spec = BINARY_TERMS["obstacle"]
    model_check.check_cost("obstacle.yaml", s.cost_terms + [spec], s.task)
    term = build_cost([spec], s.task).terms[0][1]
    x0 = Simulator(s.task).initial_states()
    l = term.evaluate(x0[:, None], np.zeros((len(x0), 1, s.task.dU)), None).l
    assert np.all(l == spec["outside_cost"])
