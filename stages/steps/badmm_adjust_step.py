"""`gps badmm-adjust-step`: BADMM's step multipliers from predicted against actual improvement (algorithm.name: badmm)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer

from stages.app import ItrOpt, ParamsOpt, log, stage_command
from stages.artifacts.io import write_artifact
from stages.artifacts.step_rule import load_two_iterations, step_rows
from stages.settings.load import load_settings


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
    from gps_core.badmm.algorithm import badmm_step_estimates
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
