"""`gps c-step`: KL-constrained LQR against the policy linearisation, with the safeguards of gps_core.traj_opt.c_step."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer

from stages.app import ItrOpt, ParamsOpt, log, stage_command
from stages.artifacts.io import write_artifact
from stages.progress import progress_bar
from stages.settings.load import load_settings


@stage_command("c-step")
def c_step_cmd(
    iteration: int = ItrOpt,
    params_path: Path = ParamsOpt,
    samples: Path = typer.Option(..., "--samples", help="cost expansion Cm, cv, cc"),
    dynamics: Path = typer.Option(..., "--dynamics"),
    policy_lin: Path = typer.Option(..., "--policy-lin", help="the KL reference: the global-policy linearisation"),
    step: Path = typer.Option(..., "--step", help="step multipliers"),
    prev_controllers: Path = typer.Option(..., "--prev-controllers", help="previous controllers (η warm start)"),
    out: Path = typer.Option(..., "--out"),
) -> None:
    """KL-constrained LQR against the policy linearisation, one controller per condition."""
    import json

    from gps_core.traj_opt.c_step import KL_REFERENCE, SAFEGUARDS, c_step_batched
    from stages.artifacts.checks import known_from, load_eta, load_samples, load_step
    from stages.artifacts.controllers import load_controllers
    from stages.artifacts.models import costs_from_datasets, load_dynamics

    s = load_settings(params_path)
    sdata, sizes = load_samples(samples)
    known = known_from(sizes, samples)  # every other file must describe the same problem
    costs, dyns, lins = costs_from_datasets(sdata, str(samples)), load_dynamics(dynamics, known), load_controllers(policy_lin, known)
    step_mult = load_step(step, known)
    eta_prev = load_eta(prev_controllers, known)
    topt = s.traj_opt
    T = lins[0].T
    kl_step = s.algorithm.kl_step
    # All conditions at once; errors (a FloatingPointError) name the condition.
    with progress_bar(f"c-step {iteration}: dual search, conditions converged", len(costs)) as progress:
        res = c_step_batched(costs, lins, dyns, kl_step * np.asarray(step_mult, dtype=float) * T,
                             np.asarray(eta_prev, dtype=float), topt, progress=progress)
    for m in np.flatnonzero(~res.converged & (res.safeguard != KL_REFERENCE)):
        log(
            f"iteration {iteration}: condition {m}: dual search did not converge in {res.dual_iterations[m]} rounds "
            f"(KL {res.kl[m]:.3f}, bound {res.kl_bound[m]:.3f})"
        )
    _log_safeguards(iteration, res)
    data = {"K": res.K, "k": res.k, "pol_covar": res.covar}
    data.update(eta=res.eta, kl_step=res.kl_bound, kl=res.kl, converged=res.converged, dual_iterations=res.dual_iterations,
                safeguard=res.safeguard)
    write_artifact(out, "c_step", iteration, s.recorded("c_step"), data,
                   {"safeguard_names": json.dumps(SAFEGUARDS)})
    log(f"iteration {iteration}: KL {np.array2string(data['kl'], precision=2)} / bound {np.array2string(data['kl_step'], precision=2)}")


def _log_safeguards(iteration: int, res) -> None:
    """One line naming every condition where a C-step safeguard acted (gps_core.traj_opt.c_step, "Safeguards")."""
    from gps_core.traj_opt.c_step import KL_REFERENCE, RELATIVE_COORDINATES

    what = {
        RELATIVE_COORDINATES: lambda m: f"condition {m}: solved relative to the KL reference "
                                        f"(eta {res.eta[m]:.3g}, KL {res.kl[m]:.3g} / {res.kl_bound[m]:.3g})",
        KL_REFERENCE: lambda m: f"condition {m}: kept the KL reference (the eta -> infinity limit, KL 0)",
    }
    acted = [what[int(res.safeguard[m])](m) for m in np.flatnonzero(res.safeguard)]
    if acted:
        log(f"iteration {iteration}: safeguard: Q_uu stayed non-positive-definite up to eta 1e16 in the reference's "
             f"coordinates; " + "; ".join(acted))
