"""`gps fit-dynamics`: per-step linear-Gaussian dynamics with the GMM prior."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import typer

from stages.app import ItrOpt, ParamsOpt, stage_command
from stages.artifacts.io import write_artifact
from stages.progress import progress_bar
from stages.settings.load import load_settings


@stage_command("fit-dynamics")
def fit_dynamics_cmd(
    iteration: int = ItrOpt,
    params_path: Path = ParamsOpt,
    samples: Path = typer.Option(..., "--samples"),
    prev: Optional[Path] = typer.Option(None, "--prev", help="previous iteration's dynamics.h5 (prior buffer and GMM)"),
    out: Path = typer.Option(..., "--out"),
) -> None:
    """Per-time-step linear-Gaussian dynamics with the GMM prior, and the initial-state Gaussian."""
    from gps_core.fit.dynamics import DynamicsPrior, fit_all_dynamics
    from stages.artifacts.checks import known_from, load_samples
    from stages.artifacts.priors import gmms_from_datasets, gmms_to_datasets, load_dynamics_prior

    s = load_settings(params_path)
    sdata, sizes = load_samples(samples)
    X, U = sdata["X"], sdata["U"]
    M = X.shape[0]
    priors: list[DynamicsPrior | None] = [None] * M
    if prev is not None:
        pdata = load_dynamics_prior(prev, known_from(sizes, samples))
        gmms = gmms_from_datasets("prior", pdata, M)
        priors = [DynamicsPrior(X=pdata["prior/X"][m], U=pdata["prior/U"][m], gmm=gmms[m]) for m in range(M)]
    rng = s.rng(iteration, "fit_dynamics")
    with progress_bar(f"fit-dynamics {iteration}: GMM prior, condition", M) as progress:
        new_priors, data = fit_all_dynamics(  # all conditions at once; same results as a loop over conditions
            priors, X, U, s.dynamics.prior, s.dynamics.regularization, s.dynamics.regularization_shape,
            s.algorithm.initial_state_var, rng, progress,
        )
    data.update({"prior/X": np.stack([p.X for p in new_priors]), "prior/U": np.stack([p.U for p in new_priors])})
    data.update(gmms_to_datasets("prior", [p.gmm for p in new_priors]))
    write_artifact(out, "fit_dynamics", iteration, s.recorded("fit_dynamics"), data)
