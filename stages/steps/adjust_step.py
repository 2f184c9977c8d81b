"""`gps adjust-step`: new step multipliers from predicted against actual improvement (MDGPS's classic and global rules)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer

from stages.app import ItrOpt, ParamsOpt, log, stage_command
from stages.artifacts.io import write_artifact
from stages.artifacts.step_rule import load_two_iterations, step_rows
from stages.settings.load import load_settings


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
