"""`gps fit-policy`: linearise the global policy at the samples."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from stages.app import ItrOpt, ParamsOpt, stage_command
from stages.artifacts.io import write_artifact
from stages.progress import progress_bar
from stages.settings.load import load_settings


@stage_command("fit-policy")
def fit_policy_cmd(
    iteration: int = ItrOpt,
    params_path: Path = ParamsOpt,
    samples: Path = typer.Option(..., "--samples"),
    policy: Path = typer.Option(..., "--policy", help="the current global policy"),
    prev: Optional[Path] = typer.Option(None, "--prev", help="previous policy_lin.h5 (GMM warm start)"),
    out: Path = typer.Option(..., "--out"),
) -> None:
    """Linearise the global policy at the current samples (regression with a GMM prior)."""
    from gps_core.fit.policy_lin import fit_policy_linearisations
    from gps_core.policy.policy_net import policy_mean
    from stages.artifacts.checks import known_from, load_samples
    from stages.artifacts.policy import load_policy
    from stages.artifacts.priors import gmms_from_datasets, gmms_to_datasets, load_policy_lin_prior

    s = load_settings(params_path)
    sdata, sizes = load_samples(samples)
    pol = load_policy(policy, known_from(sizes, samples, ("dO", "dU")), hidden=s.policy.hidden)
    X, O = sdata["X"], sdata["obs"]
    M = X.shape[0]
    gmms_prev = gmms_from_datasets("prior", load_policy_lin_prior(prev, known_from(sizes, samples)), M) if prev is not None else [None] * M
    rng = s.rng(iteration, "fit_policy")
    U_pol = policy_mean(pol, O)
    with progress_bar(f"fit-policy {iteration}: GMM prior, condition", M) as progress:
        K, k, pol_covar, gmms = fit_policy_linearisations(X, U_pol, pol.var, gmms_prev, s.policy_prior, rng, progress)  # all conditions at once
    data = {"K": K, "k": k, "pol_covar": pol_covar, "U_pol": U_pol}
    data.update(gmms_to_datasets("prior", gmms))
    write_artifact(out, "fit_policy", iteration, s.recorded("fit_policy"), data)
