"""`gps res-percent`: PILQR's step rule (the reference's res_percent), from iteration 1: per step, the share
of the cost to go that the fitted linear-quadratic model misses halves, doubles or keeps the multiplier of
that step's KL bound."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer

from stages.app import ItrOpt, ParamsOpt, log, stage_command
from stages.artifacts.io import write_artifact
from stages.settings.load import load_settings


@stage_command("res-percent")
def res_percent(
    iteration: int = ItrOpt,
    params_path: Path = ParamsOpt,
    samples: Path = typer.Option(..., "--samples", help="this iteration's samples: per-step costs, noise, cost model"),
    dynamics: Path = typer.Option(..., "--dynamics", help="this iteration's fitted dynamics"),
    controllers: Path = typer.Option(..., "--controllers", help="the local controllers that drew the samples"),
    prev_step: Path = typer.Option(..., "--prev-step", help="the last multipliers: res_percent.h5, or the init's step.h5"),
    out: Path = typer.Option(..., "--out"),
) -> None:
    """New per-step multipliers from the residual's share of the cost to go (pilqr.step_rule)."""
    from gps_core.traj_opt.pilqr import res_percent_rule, sampling_residual
    from stages.artifacts.checks import known_from, load_samples, load_step_mult
    from stages.artifacts.controllers import load_controllers
    from stages.artifacts.models import costs_from_datasets, load_dynamics
    from stages.artifacts.pilqr import sampled_noise

    s = load_settings(params_path)
    cfg = s.pilqr
    sdata, sizes = load_samples(samples)
    known = known_from(sizes, samples)
    noise = sampled_noise(str(samples), sdata, {**known, "N": (sizes["N"], f"samples of {samples}")})
    costs, dyns, pols = costs_from_datasets(sdata, str(samples)), load_dynamics(dynamics, known), load_controllers(controllers, known)
    prev = np.broadcast_to(load_step_mult(prev_step, known), (sizes["M"], sizes["T"]))
    predicted, residual = sampling_residual(costs, pols, dyns, sdata["cost"], noise)
    rules = [res_percent_rule(residual[m], sdata["cost"][m], prev[m], cfg) for m in range(sizes["M"])]
    ratio = np.stack([r.ratio for r in rules])
    if cfg.step_rule == "const":  # the reference's const rule: the multipliers stay
        step_mult, direction = prev.copy(), np.zeros(ratio.shape, dtype=np.int8)
    else:
        step_mult, direction = np.stack([r.step_mult for r in rules]), np.stack([r.direction for r in rules])
    write_artifact(out, "res_percent", iteration, s.recorded("res_percent"),
                   {"step_mult": step_mult, "ratio": ratio, "direction": direction, "predicted": predicted})
    log(f"iteration {iteration}: residual share of the cost {np.array2string(ratio[:, 0], precision=3)}; "
        f"step_mult (mean over t) {np.array2string(step_mult.mean(1), precision=3)}")
