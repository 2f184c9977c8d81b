"""The BADMM baseline's steps: `gps badmm-adjust-step` and `gps badmm-inner` (algorithm.name: badmm)."""

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
