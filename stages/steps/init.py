"""`gps init`: the guessed initial local controllers (init_lqr.source guess), the untrained network and step
multipliers of 1. `gps init-model` (stages/steps/init_model.py) writes the same files with iLQR's controllers;
it lives apart so that this stage, which every paper run has, does not depend on iLQR's code."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from stages.app import ParamsOpt, stage_command
from stages.artifacts.initial import DUALS_HELP, write_initial
from stages.settings.load import load_settings


@stage_command("init")
def init(
    params_path: Path = ParamsOpt,
    controllers_out: Path = typer.Option(..., "--controllers-out"),
    policy_out: Path = typer.Option(..., "--policy-out"),
    step_out: Path = typer.Option(..., "--step-out"),
    duals_out: Optional[Path] = typer.Option(None, "--duals-out", help=DUALS_HELP),
) -> None:
    """Initial local controllers (init_lqr: LQR on a guessed double integrator), untrained network, step
    multipliers of 1 (and BADMM's duals)."""
    from gps_core.sim.env import Simulator
    from gps_core.traj_opt.init_lqr import init_lqr
    from stages.errors import UserError

    s = load_settings(params_path)
    if s.init_lqr.source != "guess":
        raise UserError(f"{params_path}: init_lqr.source is {s.init_lqr.source!r}: its initial controllers are "
                        "gps init-model's (gps pipeline writes that stage)")
    sim = Simulator(s.task)
    x0 = sim.initial_states()
    pols = [init_lqr(x0[m], sim.dU, s.task.T, s.init_lqr) for m in range(sim.M)]
    write_initial(s, sim, pols, controllers_out, policy_out, step_out, duals_out)
