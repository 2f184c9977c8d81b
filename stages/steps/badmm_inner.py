"""`gps badmm-inner`: every inner C/S alternation of one BADMM iteration and its dual updates, in one process."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer

from stages.app import ItrOpt, ParamsOpt, log, stage_command
from stages.artifacts.io import write_artifact
from stages.settings.load import load_settings


@stage_command("badmm-inner")
def badmm_inner_cmd(
    iteration: int = ItrOpt,
    params_path: Path = ParamsOpt,
    samples: Path = typer.Option(..., "--samples", help="this iteration's samples and cost expansion"),
    dynamics: Path = typer.Option(..., "--dynamics"),
    policy_lin: Path = typer.Option(..., "--policy-lin", help="this iteration's policy linearisation (its GMMs warm-start the refits)"),
    policy: Path = typer.Option(..., "--policy", help="global policy (and Adam state) to continue from"),
    prev_controllers: Path = typer.Option(..., "--prev-controllers", help="the controllers that drew the samples: KL reference, η warm start"),
    step: Path = typer.Option(..., "--step", help="step multipliers"),
    duals: Path = typer.Option(..., "--duals", help="dual variables at the start of the iteration"),
    controllers_out: Path = typer.Option(..., "--controllers-out", help="the last C-step's controllers"),
    policy_out: Path = typer.Option(..., "--policy-out", help="the network after the last S-step, with its Adam state"),
    duals_out: Path = typer.Option(..., "--duals-out"),
    policy_lin_out: Path = typer.Option(..., "--policy-lin-out", help="the last linearisation and its GMMs"),
    inner_out: Path = typer.Option(..., "--inner-out", help="per inner iteration: KL, eta, duals, residuals, S-step losses"),
) -> None:
    """All inner C/S alternations of one BADMM iteration: S-step, refit, dual step, C-step (ALGORITHM §10.2)."""
    import json

    from gps_core.traj_opt.c_step import SAFEGUARDS
    from stages.artifacts.checks import known_from, load_eta, load_samples, load_step
    from stages.artifacts.controllers import controllers_to_datasets, load_controllers
    from stages.artifacts.duals import duals_to_datasets, load_duals
    from stages.artifacts.models import costs_from_datasets, load_dynamics
    from stages.artifacts.optimiser import load_policy_and_adam
    from stages.artifacts.policy import policy_to_datasets
    from stages.artifacts.priors import gmms_from_datasets, gmms_to_datasets, load_policy_lin_prior
    from gps_core.badmm.inner import InnerLoop
    from stages.progress import progress_bar

    s = load_settings(params_path)
    sdata, sizes = load_samples(samples)
    known = known_from(sizes, samples)  # every other file must describe the same problem
    prevs = load_controllers(prev_controllers, known)
    net, adam = load_policy_and_adam(policy, known_from(sizes, samples, ("dO", "dU")), hidden=s.policy.hidden)
    step_mult = load_step(step, known)
    loop = InnerLoop(
        iteration=iteration, iterations=s.iterations, bcfg=s.badmm, s_step_cfg=s.s_step, prior_cfg=s.policy_prior,
        topt=s.traj_opt, rng=lambda stream: s.rng(iteration, stream), progress_bar=progress_bar,
        X=sdata["X"], O=sdata["obs"], costs=costs_from_datasets(sdata, str(samples)),
        dyns=load_dynamics(dynamics, known), prevs=prevs, eta=np.asarray(load_eta(prev_controllers, known), dtype=float),
        kl_bounds=s.algorithm.kl_step * np.asarray(step_mult, dtype=float) * sizes["T"],
        duals=load_duals(duals, known), net=net, adam=adam,
        gmms=gmms_from_datasets("prior", load_policy_lin_prior(policy_lin, known), sizes["M"]), log=log,
    ).run()
    sp = s.recorded("badmm_inner")
    res = loop.result
    cdata = controllers_to_datasets(loop.new)
    cdata.update(eta=res.eta, kl_step=res.kl_bound, kl=res.kl, converged=res.converged, dual_iterations=res.dual_iterations,
                 safeguard=np.max(loop.diag["safeguard"], axis=0))  # what acted in any inner C-step (inner.h5 has each)
    write_artifact(controllers_out, "badmm_inner", iteration, sp, cdata, {"safeguard_names": json.dumps(SAFEGUARDS)})
    pdata, pattrs = policy_to_datasets(loop.net, loop.adam, loop.losses)
    write_artifact(policy_out, "badmm_inner", iteration, sp, pdata, pattrs)
    write_artifact(duals_out, "badmm_inner", iteration, sp, duals_to_datasets(loop.duals),
                   {"pol_wt_updated": loop.pol_wt_updated, "ent_reg": loop.ent_reg, "lg_step": loop.lg_step})
    K, k, covar = loop.lin
    ldata = {"K": K, "k": k, "pol_covar": covar, "U_pol": loop.U_pol}
    ldata.update(gmms_to_datasets("prior", loop.gmms))
    write_artifact(policy_lin_out, "badmm_inner", iteration, sp, ldata)
    write_artifact(inner_out, "badmm_inner", iteration, sp, loop.diag, {"ent_reg": loop.ent_reg, "lg_step": loop.lg_step})
    nu = loop.duals.pol_wt
    log(f"iteration {iteration}: nu mean per condition {np.array2string(nu.mean(-1), precision=4)} "
         f"(range {nu.min():.3g} .. {nu.max():.3g}){'' if loop.pol_wt_updated else ', not updated in this iteration'}")
