"""`gps adjust-step` and `gps badmm-adjust-step`: new step multipliers from predicted against actual improvement
(MDGPS's classic and global rules, BADMM's), and what the rules share: the two iterations they compare."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import typer

from stages.app import ItrOpt, ParamsOpt, log, stage_command
from stages.artifacts.io import write_artifact
from stages.settings.load import AlgorithmSettings, load_settings


@stage_command("adjust-step")
def adjust_step(
    iteration: int = ItrOpt,
    params_path: Path = ParamsOpt,
    prev_samples: Path = typer.Option(..., "--prev-samples"),
    prev_dynamics: Path = typer.Option(..., "--prev-dynamics"),
    prev_policy_lin: Path = typer.Option(..., "--prev-policy-lin"),
    prev_controllers: Path = typer.Option(..., "--prev-controllers", help="previous C-step output"),
    prev_step: Path = typer.Option(..., "--prev-step"),
    samples: Path = typer.Option(..., "--samples"),
    dynamics: Path = typer.Option(..., "--dynamics"),
    policy_lin: Path = typer.Option(..., "--policy-lin"),
    out: Path = typer.Option(..., "--out"),
) -> None:
    """New step multipliers from predicted vs actual improvement (classic or global rule)."""
    from gps_core.mdgps import step_estimates
    from stages.artifacts.controllers import load_controllers

    s = load_settings(params_path)
    alg = s.algorithm
    two, known = load_two_iterations(prev_samples, samples, prev_dynamics, dynamics, prev_policy_lin, policy_lin, prev_step)
    new_prev = load_controllers(prev_controllers, known)
    rows = step_rows([
        step_estimates(alg.step_rule, two.lin_prev[m], new_prev[m], two.lin_cur[m], two.dyn_prev[m], two.cost_prev[m],
                       two.dyn_cur[m], two.cost_cur[m])
        for m in range(len(new_prev))
    ], two.step_prev, alg)
    write_artifact(out, "adjust_step", iteration, s.recorded("adjust_step"), rows)
    log(f"iteration {iteration}: step_mult {np.array2string(rows['step_mult'], precision=3)}")


@stage_command("badmm-adjust-step")
def badmm_adjust_step(
    iteration: int = ItrOpt,
    params_path: Path = ParamsOpt,
    prev_samples: Path = typer.Option(..., "--prev-samples"),
    prev_dynamics: Path = typer.Option(..., "--prev-dynamics"),
    prev_policy_lin: Path = typer.Option(..., "--prev-policy-lin", help="the previous iteration's last linearisation (policy_lin_final.h5)"),
    prev_prev_controllers: Path = typer.Option(..., "--prev-prev-controllers", help="the controllers that drew the previous iteration's samples"),
    prev_controllers: Path = typer.Option(..., "--prev-controllers", help="the previous iteration's final controllers (they drew this iteration's samples)"),
    prev_step: Path = typer.Option(..., "--prev-step"),
    prev_duals: Path = typer.Option(..., "--prev-duals", help="the dual variables the previous iteration ended with (its ν weights the KL terms)"),
    samples: Path = typer.Option(..., "--samples"),
    dynamics: Path = typer.Option(..., "--dynamics"),
    policy_lin: Path = typer.Option(..., "--policy-lin"),
    out: Path = typer.Option(..., "--out"),
) -> None:
    """BADMM step multipliers: Laplace cost plus ν-weighted KL to the policy linearisation, predicted vs actual."""
    from gps_core.badmm import badmm_step_estimates
    from stages.artifacts.controllers import load_controllers
    from stages.artifacts.duals import load_duals

    s = load_settings(params_path)
    alg = s.algorithm
    two, known = load_two_iterations(prev_samples, samples, prev_dynamics, dynamics, prev_policy_lin, policy_lin, prev_step)
    pbar_prev, pbar = load_controllers(prev_prev_controllers, known), load_controllers(prev_controllers, known)
    pol_wt = load_duals(prev_duals, known).pol_wt
    rows = step_rows([
        badmm_step_estimates(pbar_prev[m], pbar[m], two.lin_prev[m], two.lin_cur[m], two.dyn_prev[m], two.cost_prev[m],
                             two.dyn_cur[m], two.cost_cur[m], pol_wt[m])
        for m in range(len(pbar))
    ], two.step_prev, alg)
    write_artifact(out, "badmm_adjust_step", iteration, s.recorded("badmm_adjust_step"), rows)
    log(f"iteration {iteration}: step_mult {np.array2string(rows['step_mult'], precision=3)}")


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
