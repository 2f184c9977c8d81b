"""`gps lqr-step`: PILQR's LQR step (gps_core.traj_opt.pilqr.lqr_step_batched), KL-constrained LQR on the fitted
dynamics with one KL bound per time step, against the KL reference: the previous controllers (PILQR) or the
global policy's linearisation (MDGPS-PILQR). Its controllers go to `gps pi2`, which corrects their offsets
and covariance on the residual cost."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import typer

from stages.app import ItrOpt, ParamsOpt, log, stage_command
from stages.artifacts.io import write_artifact
from stages.settings.load import load_settings


@stage_command("lqr-step")
def lqr_step(
    iteration: int = ItrOpt,
    params_path: Path = ParamsOpt,
    samples: Path = typer.Option(..., "--samples", help="cost model Cm, cv (the plain cost, no KL terms)"),
    dynamics: Path = typer.Option(..., "--dynamics"),
    reference: Path = typer.Option(..., "--reference", help="the KL reference: previous controllers or policy linearisation"),
    step: Path = typer.Option(..., "--step", help="per-step multipliers: res_percent.h5, or the init's step.h5"),
    prev: Optional[Path] = typer.Option(None, "--prev", help="the previous lqr_step.h5 (η warm start; none: 1.0)"),
    out: Path = typer.Option(..., "--out"),
) -> None:
    """KL-constrained LQR with per-step bounds ε_t = pilqr.kl_step_t · step_mult_t, one controller per condition."""
    import json

    from gps_core.traj_opt.pilqr import SAFEGUARDS, lqr_step_batched, per_step_kl_bounds, schedule
    from stages.artifacts.checks import known_from, load_samples, load_step_mult
    from stages.artifacts.controllers import load_controllers
    from stages.artifacts.models import costs_from_datasets, load_dynamics
    from stages.artifacts.pilqr import load_eta_per_step, lqr_step_to_datasets

    s = load_settings(params_path)
    cfg = s.pilqr
    sdata, sizes = load_samples(samples)
    known = known_from(sizes, samples)
    costs, dyns, refs = costs_from_datasets(sdata, str(samples)), load_dynamics(dynamics, known), load_controllers(reference, known)
    bounds = per_step_kl_bounds(schedule(cfg.kl_step, sizes["T"]), load_step_mult(step, known))
    eta = None if prev is None else load_eta_per_step(prev, known)
    res = lqr_step_batched(costs, refs, dyns, bounds, eta, cfg)
    write_artifact(out, "lqr_step", iteration, s.recorded("lqr_step"), lqr_step_to_datasets(res),
                   {"safeguard_names": json.dumps(SAFEGUARDS)})
    for m in np.flatnonzero(~res.converged & (res.safeguard == 0)):
        log(f"iteration {iteration}: condition {m}: the per-step search did not converge in {res.bisection_rounds[m]} "
            f"bracketing rounds and {res.adam_rounds[m]} Adam steps (worst |KL_t - eps_t| / eps_t "
            f"{np.max(np.abs(res.kl[m] - res.kl_bound[m]) / res.kl_bound[m]):.2f})")
    for m in np.flatnonzero(res.safeguard):
        log(f"iteration {iteration}: condition {m}: safeguard: kept the KL reference (an action block stayed indefinite "
            f"up to eta 1e16, or the search ended with a KL over {s.pilqr.max_kl_overshoot:g} times its bound)")
    log(f"iteration {iteration}: KL (sum over t) {np.array2string(res.kl.sum(1), precision=2)} / "
        f"bound {np.array2string(res.kl_bound.sum(1), precision=2)}")
