"""`gps pi2`: PI2's update of the local controllers from the samples' per-step costs (PI2 alone and PIGPS),
or, given PILQR's LQR step, PI2 on the residual cost around that step's controllers (PILQR, MDGPS-PILQR).

Writes the new controllers (controllers.h5, with the C-step's summary datasets so that `gps evaluate` and
`gps status` read every algorithm alike: PILQR's are sums over t of the LQR step's per-step KL and
bounds and the geometric mean of its η_t; PI2 alone's the sum of its weights' KL to uniform against
T · pi2.kl_threshold and the geometric mean of its temperatures) and pi2.h5, what PI2 computed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np
import typer

from stages.app import ItrOpt, ParamsOpt, log, stage_command
from stages.artifacts.io import write_artifact
from stages.errors import UserError
from stages.settings.load import load_settings


@stage_command("pi2")
def pi2(
    iteration: int = ItrOpt,
    params_path: Path = ParamsOpt,
    samples: Path = typer.Option(..., "--samples", help="X, U, per-step cost, noise (and the cost model for PILQR)"),
    controllers: Path = typer.Option(..., "--controllers", help="the local controllers that drew (or, on-policy, "
                                                                 "preceded) the samples; PI2 alone keeps their K"),
    lqr_step: Optional[Path] = typer.Option(None, "--lqr-step", help="PILQR: this iteration's lqr_step.h5"),
    dynamics: Optional[Path] = typer.Option(None, "--dynamics", help="PILQR: the fitted dynamics (the residual's model)"),
    out: Path = typer.Option(..., "--out", help="the new controllers"),
    pi2_out: Path = typer.Option(..., "--pi2-out", help="PI2's temperatures, weights (and PILQR's residual)"),
) -> None:
    """PI2 on the sampled costs (no --lqr-step), or PILQR's PI2 on the residual (with --lqr-step and --dynamics)."""
    from stages.artifacts.checks import known_from, load_samples
    from stages.artifacts.controllers import load_controllers

    s = load_settings(params_path)
    sdata, sizes = load_samples(samples)
    known = known_from(sizes, samples)
    sampling = load_controllers(controllers, known)
    if (lqr_step is None) != (dynamics is None):
        raise UserError("gps pi2: --lqr-step and --dynamics go together (PILQR), or neither (PI2 alone)")
    if lqr_step is None:
        data, details, stage = _pi2_alone(s, sdata, sampling)
    else:
        data, details, stage = _pi2_on_residual(s, sdata, sizes, known, sampling, samples, lqr_step, dynamics)
    attrs = _safeguard_names(stage)
    write_artifact(pi2_out, "pi2", iteration, s.recorded(stage), details, attrs)
    write_artifact(out, "pi2", iteration, s.recorded(stage), data, attrs)
    raised = details["temperature_raised"].sum(1)
    if raised.any():
        log(f"iteration {iteration}: PI2 raised the temperature to keep the covariance positive definite at "
            + ", ".join(f"{r} steps of condition {m}" for m, r in enumerate(raised) if r))
    ran = ~np.isnan(details["weights_kl"]).all(axis=1)  # NaN: a PILQR safeguard kept PI2 from running there
    log(f"iteration {iteration}: weights' KL to uniform (mean over t) "
        + ", ".join(f"c{m} {details['weights_kl'][m].mean():.2f}" if ran[m] else f"c{m} - (no PI2: safeguard)"
                    for m in range(len(ran))))


def _safeguard_names(stage: str) -> dict[str, str]:
    from gps_core.traj_opt.pilqr import SAFEGUARDS

    return {"safeguard_names": json.dumps(SAFEGUARDS)} if stage == "pi2_residual" else {}


def _geometric_mean(a: np.ndarray) -> np.ndarray:
    return np.exp(np.log(a).mean(axis=1))


def _pi2_alone(s, sdata, sampling):
    from gps_core.traj_opt.pi2 import pi2_update
    from stages.artifacts.controllers import controllers_to_datasets

    results = []
    for m, pol in enumerate(sampling):
        try:
            results.append(pi2_update(pol.K, sdata["X"][m], sdata["U"][m], sdata["cost"][m], pol.covar, s.pi2))
        except ValueError as err:
            raise FloatingPointError(f"condition {m}: {err}") from err
    M, T = len(results), sampling[0].T
    new = [r.policy for r in results]
    details = {name: np.stack([getattr(r, name) for r in results])
               for name in ("temperatures", "temperature_raised", "weights", "weights_kl", "ml_covar")}
    details["fitted_temperatures"] = details["temperatures"].copy()
    details["fitted_temperatures"][details["temperature_raised"]] = np.nan  # raised: the fitted value was not kept
    data = controllers_to_datasets(new)
    data.update(eta=_geometric_mean(details["temperatures"]), kl=details["weights_kl"].sum(1),
                kl_step=np.full(M, T * s.pi2.kl_threshold), converged=np.ones(M, dtype=bool),
                dual_iterations=np.zeros(M, dtype=np.int64), safeguard=np.zeros(M, dtype=np.int8))
    return data, details, "pi2"


def _pi2_on_residual(s, sdata, sizes, known, sampling, samples, lqr_step, dynamics):
    from gps_core.traj_opt.pilqr import pi2_after_lqr
    from stages.artifacts.controllers import controllers_to_datasets
    from stages.artifacts.models import costs_from_datasets, load_dynamics
    from stages.artifacts.pilqr import load_lqr_step, sampled_noise

    noise = sampled_noise(str(samples), sdata, {**known, "N": (sizes["N"], f"samples of {samples}")})
    dyns = load_dynamics(dynamics, known)
    lqr = load_lqr_step(lqr_step, known)
    r = pi2_after_lqr(costs_from_datasets(sdata, str(samples)), sampling, dyns, sdata["cost"], noise, lqr,
                      s.pilqr, s.pi2)
    details = {"temperatures": r.temperatures, "fitted_temperatures": r.fitted_temperatures,
               "temperature_raised": r.temperature_raised, "weights": r.weights, "weights_kl": r.weights_kl,
               "ml_covar": r.ml_covar, "predicted": r.predicted, "residual": r.residual,
               "residual_ratio": r.residual_ratio, "safeguard": r.safeguard}
    data = controllers_to_datasets([r.policy(m) for m in range(len(r))])
    data.update(eta=_geometric_mean(lqr.eta), kl=lqr.kl.sum(1), kl_step=lqr.kl_bound.sum(1),
                converged=lqr.converged, dual_iterations=lqr.bisection_rounds + lqr.adam_rounds,
                safeguard=r.safeguard)
    return data, details, "pi2_residual"
