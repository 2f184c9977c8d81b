"""`gps init-model`: the init stage's files (stages/steps/init.py) with initial controllers from iLQR on the
model (init_lqr.source model): the task's cost on the simulator's linearisation, from each condition's initial
state (gps_core.traj_opt.ilqr)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from stages.app import ParamsOpt, log, stage_command
from stages.artifacts.initial import DUALS_HELP, write_initial
from stages.progress import progress_bar
from stages.settings.load import load_settings


@stage_command("init-model")
def init_model(
    params_path: Path = ParamsOpt,
    controllers_out: Path = typer.Option(..., "--controllers-out"),
    policy_out: Path = typer.Option(..., "--policy-out"),
    step_out: Path = typer.Option(..., "--step-out"),
    duals_out: Optional[Path] = typer.Option(None, "--duals-out", help=DUALS_HELP),
) -> None:
    """Initial local controllers by iLQR on the model, untrained network, step multipliers of 1 (and BADMM's
    duals)."""
    from gps_core.costs import build_cost
    from gps_core.sim.env import Simulator
    from gps_core.sim.linearise import LinearisationError
    from gps_core.traj_opt.ilqr import model_initial_controllers
    from stages.errors import UserError

    s = load_settings(params_path)
    if s.init_lqr.source != "model":
        raise UserError(f"{params_path}: init_lqr.source is {s.init_lqr.source!r}: gps init writes its initial "
                        "controllers (gps pipeline writes that stage)")
    sim = Simulator(s.task)
    with progress_bar("init: iLQR on the model, conditions", sim.M) as progress:
        try:
            pols, costs = model_initial_controllers(sim, build_cost(s.cost_terms, s.task), s.task.T, s.init_lqr.init_var,
                                                    progress=progress)
        except LinearisationError as err:
            raise UserError(f"init_lqr.source is model, but {err}") from None
    log(f"init: iLQR noise-free cost per condition over {s.task.T} steps, first rollout (u = 0, or a shorter horizon's "
        "solution extended) -> controller: " + ", ".join(f"{c[0]:.4g} -> {c[-1]:.4g}" for c in costs))
    write_initial(s, sim, pols, controllers_out, policy_out, step_out, duals_out)
