"""MDGPS glue: step-size rules and the S-step dataset.

Step-size rules (per condition m, iteration k ≥ 1; E(c, info) is the Laplace
cost estimate of controller c under the fitted dynamics and cost model `info`):

    J_prev      = E(π̄_{k−1},  info_{k−1})        previous policy linearisation
    J_predicted = E(p_{k−1},   info_{k−1})        previous C-step output
    classic:  J_actual = E(p_{k−1},  info_k)
    global:   J_actual = E(π̄_k,     info_k)

    r = predicted / (2 max(1e−4, predicted − actual)),  r ← clip(r, 0.1, 5)
    step_mult ← clip(r · step_mult, min_step_mult, max_step_mult)

with predicted = J_prev − J_predicted and actual = J_prev − J_actual. The
improvement is modelled as I(ε) = aε + bε²; r is the ratio of its maximiser
to the current step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gps_core.traj_opt.lingauss import LinearGaussianPolicy
from gps_core.traj_opt.lqr import Dynamics, QuadraticCost, estimate_cost
from gps_core.configs import STEP_RULES

@dataclass(frozen=True)
class StepEstimates:
    """Laplace estimates behind one step-size update (totals over time)."""

    prev: float
    predicted: float
    actual: float

    @property
    def predicted_improvement(self) -> float:
        return self.prev - self.predicted

    @property
    def actual_improvement(self) -> float:
        return self.prev - self.actual


def new_step_mult(predicted_impr: float, actual_impr: float, step_mult: float, min_mult: float, max_mult: float) -> float:
    """The paper's rule: step_mult x predicted / (2 (predicted - actual)), the ratio within [0.1, 5], the result
    within [min_mult, max_mult]. Where the estimates overflowed (an improvement that is NaN, or a predicted one
    that is infinite: seen on Pusher with iLQR's gains of 5e5 at a joint limit) the multiplier is kept: the
    rule has no evidence either way, and a NaN multiplier would stop the next C-step. An actual improvement of
    -inf (the new controller's cost overflowed) is evidence: the ratio is 0, the step shrinks."""
    if np.isnan(predicted_impr) or np.isnan(actual_impr) or np.isinf(predicted_impr):
        return float(step_mult)
    ratio = predicted_impr / (2.0 * max(1e-4, predicted_impr - actual_impr))
    ratio = min(max(ratio, 0.1), 5.0)
    return float(min(max(ratio * step_mult, min_mult), max_mult))


def step_estimates(
    rule: str,
    lin_prev: LinearGaussianPolicy,
    new_prev: LinearGaussianPolicy,
    lin_cur: LinearGaussianPolicy,
    dyn_prev: Dynamics,
    cost_prev: QuadraticCost,
    dyn_cur: Dynamics,
    cost_cur: QuadraticCost,
) -> StepEstimates:
    """The three Laplace estimates of the paper's per-condition step rules."""
    if rule not in STEP_RULES:
        raise ValueError(f"unknown step rule {rule!r}; expected one of {STEP_RULES}")
    actual_pol = new_prev if rule == "classic" else lin_cur
    return StepEstimates(
        prev=estimate_cost(lin_prev, dyn_prev, cost_prev),
        predicted=estimate_cost(new_prev, dyn_prev, cost_prev),
        actual=estimate_cost(actual_pol, dyn_cur, cost_cur),
    )


def s_step_dataset(
    pols: list[LinearGaussianPolicy], X: np.ndarray, O: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Supervised data from the local controllers at the samples' states.

    X: [M, N, T, dX], O: [M, N, T, dO] -> obs [M·N, T, dO], target [M·N, T, dU],
    precision [M·N, T, dU, dU], weight [M·N, T] (all ones: MDGPS weights are constant).
    """
    M, N, T, _ = X.shape
    target = np.stack([pols[m].mean_action(X[m]) for m in range(M)])
    precision = np.stack([np.broadcast_to(pols[m].inv_covar, (N,) + pols[m].inv_covar.shape) for m in range(M)])
    dU = target.shape[-1]
    return (
        O.reshape(M * N, T, -1),
        target.reshape(M * N, T, dU),
        precision.reshape(M * N, T, dU, dU),
        np.ones((M * N, T)),
    )
