"""What the step-size rules (`gps adjust-step`, `gps badmm-adjust-step`) read and write: the two iterations they
compare, and the rows of the step file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stages.settings.load import AlgorithmSettings


@dataclass(frozen=True)
class TwoIterations:
    """What a step rule compares, per condition: the previous and this iteration's cost models, dynamics
    fits and policy linearisations, and the previous step multipliers [M]."""

    cost_prev: list
    cost_cur: list
    dyn_prev: list
    dyn_cur: list
    lin_prev: list
    lin_cur: list
    step_prev: np.ndarray


def load_two_iterations(prev_samples: Path, samples: Path, prev_dynamics: Path, dynamics: Path,
                        prev_policy_lin: Path, policy_lin: Path, prev_step: Path):
    """TwoIterations of the files (MDGPS's and BADMM's step rules), and the sizes every other file must have."""
    from stages.artifacts.checks import known_from, load_samples, load_step
    from stages.artifacts.controllers import load_controllers
    from stages.artifacts.models import costs_from_datasets, load_cost_models, load_dynamics

    sdata_prev, sizes = load_samples(prev_samples)
    known = known_from(sizes, prev_samples)  # every other file must describe the same problem
    two = TwoIterations(
        cost_prev=costs_from_datasets(sdata_prev, str(prev_samples)), cost_cur=load_cost_models(samples, known),
        dyn_prev=load_dynamics(prev_dynamics, known), dyn_cur=load_dynamics(dynamics, known),
        lin_prev=load_controllers(prev_policy_lin, known), lin_cur=load_controllers(policy_lin, known),
        step_prev=load_step(prev_step, known),
    )
    return two, known


def step_rows(estimates: list, step_prev: np.ndarray, alg: AlgorithmSettings) -> dict[str, np.ndarray]:
    """The step file's datasets [M] from each condition's cost estimates (MDGPS or BADMM rule) and the last step_mult."""
    from gps_core.mdgps import new_step_mult

    rows = {
        "J_prev": np.array([e.prev for e in estimates]),
        "J_predicted": np.array([e.predicted for e in estimates]),
        "J_actual": np.array([e.actual for e in estimates]),
        "predicted_improvement": np.array([e.predicted_improvement for e in estimates]),
        "actual_improvement": np.array([e.actual_improvement for e in estimates]),
    }
    rows["step_mult"] = np.array([
        new_step_mult(e.predicted_improvement, e.actual_improvement, float(step_prev[m]),
                      alg.min_step_mult, alg.max_step_mult)
        for m, e in enumerate(estimates)
    ])
    return rows
