"""`gps init`: the initial local controllers, the untrained network and step multipliers of 1."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import typer

from stages.app import ParamsOpt, stage_command
from stages.progress import progress_bar
from stages.artifacts.io import write_artifact
from stages.settings.load import load_settings


@stage_command("init")
def init(
    params_path: Path = ParamsOpt,
    controllers_out: Path = typer.Option(..., "--controllers-out"),
    policy_out: Path = typer.Option(..., "--policy-out"),
    step_out: Path = typer.Option(..., "--step-out"),
    duals_out: Optional[Path] = typer.Option(None, "--duals-out", help="BADMM: also write the dual variables (λ = 0, ν = badmm.init_pol_wt)"),
) -> None:
    """Initial local controllers (init_lqr: guessed, or iLQR on the model), untrained network, step multipliers
    of 1 (and BADMM's duals)."""
    from gps_core.sim.env import Simulator
    from gps_core.policy.policy_net import init_policy
    from stages.artifacts.controllers import controllers_to_datasets
    from stages.artifacts.policy import policy_to_datasets
    from stages.settings.params import init_stage

    s = load_settings(params_path)
    sp = s.recorded(init_stage(s.params))
    sim = Simulator(s.task)
    T = s.task.T
    x0 = sim.initial_states()
    if s.init_lqr.source == "model":
        pols = _model_controllers(s, sim)
    else:
        from gps_core.traj_opt.init_lqr import init_lqr

        pols = [init_lqr(x0[m], sim.dU, T, s.init_lqr) for m in range(sim.M)]
    data = controllers_to_datasets(pols)
    data["eta"] = np.ones(sim.M)
    data["x0"] = x0
    write_artifact(controllers_out, "init", 0, sp, data)
    pol = init_policy(sim.dO, sim.dU, s.policy.hidden, s.policy.init_var, s.policy.init_seed)
    pdata, pattrs = policy_to_datasets(pol, None, None)
    write_artifact(policy_out, "init", 0, sp, pdata, pattrs)
    write_artifact(step_out, "init", 0, sp, {"step_mult": np.ones(sim.M)})
    if duals_out is not None:
        from gps_core.badmm.duals import init_duals
        from stages.artifacts.duals import duals_to_datasets

        duals = init_duals(sim.M, T, sim.dU, sim.dX, s.badmm.init_pol_wt)
        write_artifact(duals_out, "init", 0, sp, duals_to_datasets(duals))


def _model_controllers(s, sim) -> list:
    """iLQR on the model from each condition's initial state, with the task's cost (gps_core.traj_opt.ilqr)."""
    from gps_core.costs import build_cost
    from gps_core.sim.linearise import LinearisationError
    from gps_core.traj_opt.ilqr import model_initial_controllers
    from stages.app import log
    from stages.errors import UserError

    with progress_bar("init: iLQR on the model, conditions", sim.M) as progress:
        try:
            pols, costs = model_initial_controllers(sim, build_cost(s.cost_terms, s.task), s.task.T, s.init_lqr.init_var,
                                                    progress=progress)
        except LinearisationError as err:
            raise UserError(f"init_lqr.source is model, but {err}") from None
    log(f"init: iLQR noise-free cost per condition over {s.task.T} steps, first rollout (u = 0, or a shorter horizon's "
        "solution extended) -> controller: "
        + ", ".join(f"{c[0]:.4g} -> {c[-1]:.4g}" for c in costs))
    return pols
