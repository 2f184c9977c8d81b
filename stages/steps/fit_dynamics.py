"""`gps fit-dynamics`: per-step linear-Gaussian dynamics with the GMM prior, or (dynamics.source: model) the
task's MuJoCo model linearised along the samples (gps_core.sim.linearise.model_dynamics)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import typer

from stages.app import ItrOpt, ParamsOpt, stage_command
from stages.artifacts.io import write_artifact
from stages.progress import progress_bar
from stages.errors import UserError
from stages.settings.load import load_settings


@stage_command("fit-dynamics")
def fit_dynamics_cmd(
    iteration: int = ItrOpt,
    params_path: Path = ParamsOpt,
    samples: Path = typer.Option(..., "--samples"),
    prev: Optional[Path] = typer.Option(None, "--prev", help="previous iteration's dynamics.h5 (prior buffer and GMM)"),
    out: Path = typer.Option(..., "--out"),
) -> None:
    """Per-time-step linear-Gaussian dynamics with the GMM prior (or the model's), and the initial-state Gaussian."""
    from stages.artifacts.checks import known_from, load_samples

    s = load_settings(params_path)
    sdata, sizes = load_samples(samples)
    X, U = sdata["X"], sdata["U"]
    M = X.shape[0]
    if s.dynamics.source == "model":
        if prev is not None:
            raise UserError("gps fit-dynamics: --prev is the fitted dynamics' prior; dynamics.source model has none")
        _model(s, iteration, X, U, out)
        return
    from gps_core.fit.dynamics import DynamicsPrior, fit_all_dynamics
    from stages.artifacts.priors import gmms_from_datasets, gmms_to_datasets, load_dynamics_prior

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


def _model(s, iteration: int, X, U, out: Path) -> None:
    """The model linearised along the samples' mean trajectory of each condition (dynamics.source: model)."""
    from gps_core.sim.env import Simulator
    from gps_core.sim.linearise import LinearisationError, model_dynamics

    with progress_bar(f"fit-dynamics {iteration}: the model linearised along the samples, condition", X.shape[0]) as progress:
        try:
            data = model_dynamics(Simulator(s.task), X, U, s.algorithm.initial_state_var, progress)
        except LinearisationError as err:
            raise UserError(f"dynamics.source is model, but {err}") from None
    write_artifact(out, "fit_dynamics", iteration, s.recorded("fit_dynamics_model"), data, {"source": "model"})
