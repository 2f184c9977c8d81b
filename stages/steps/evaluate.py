"""`gps evaluate`: one noise-free rollout of the global policy per condition, and the iteration's metrics.

The task's held-out conditions (task.test_conditions), never sampled for training, are rolled out
too, in their own batch, into eval.h5's group `test` and the metrics' `test_*` entries.

Without --policy (the local optimizers alone, stages.settings.schema.LOCAL_ONLY) each condition's
local controller acts instead, without its noise; there is no controller of a held-out condition, so
those are not rolled out. Per-step summaries (a res_percent.h5's step_mult [M, T]) enter the metrics as
their mean over t."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import typer

from stages.app import ItrOpt, ParamsOpt, log, stage_command
from stages.artifacts.io import write_artifact, write_json
from stages.settings.load import load_settings


@stage_command("evaluate")
def evaluate(
    iteration: int = ItrOpt,
    params_path: Path = ParamsOpt,
    policy: Optional[Path] = typer.Option(None, "--policy", help="the global policy; none: the local controllers act"),
    samples: Path = typer.Option(..., "--samples"),
    controllers: Path = typer.Option(..., "--controllers", help="this iteration's C-step output"),
    step: Path = typer.Option(..., "--step", help="this iteration's step multipliers"),
    out: Path = typer.Option(..., "--out"),
    metrics: Path = typer.Option(..., "--metrics"),
) -> None:
    """One noise-free rollout of the global policy (or of each local controller) per condition; distance to the target."""
    from gps_core.sim.env import Simulator
    from gps_core.sim.sampling import rollout_controllers, rollout_policy
    from gps_core.scoring import final_distance, success, survival_steps
    from stages.artifacts.checks import check_controller_stats, load_samples, load_step_mult
    from stages.artifacts.controllers import controllers_from_datasets

    s = load_settings(params_path)
    agent, ev = s.agent, s.evaluation
    sim = Simulator(s.task)
    T = s.task.T
    # Every input is read and checked before anything is simulated or written.
    known = {"M": (sim.M, "conditions in params"), "T": (T, "task.T in params"),
             "dX": (sim.dX, "state of the model"), "dU": (sim.dU, "actions of the model")}
    sdata, _ = load_samples(samples, known)
    cdata = check_controller_stats(controllers, {"M": known["M"]})
    step_mult = load_step_mult(step, {"M": known["M"]}).mean(axis=1)
    if policy is None:
        local = controllers_from_datasets(cdata, str(controllers), known)  # the file read once
    else:
        from stages.artifacts.policy import load_policy

        net = load_policy(policy, {"dO": (sim.dO, "the observation of task.observation"), "dU": known["dU"]},
                          hidden=s.policy.hidden)
    stop = agent.on_divergence == "stop"

    cost = None
    if ev.cost:
        from gps_core.costs import build_cost

        cost = build_cost(s.cost_terms, s.task)

    def run(sim) -> dict[str, np.ndarray]:
        noise = np.zeros((sim.M, 1, T, sim.dU))
        r = rollout_policy(sim, net, noise, stop=stop) if policy is not None else rollout_controllers(sim, local, noise, stop=stop)
        X, diverged_at = r.X[:, 0], r.diverged_at[:, 0]
        # A diverged rollout holds its last good state, so its distance is that state's; it fails regardless.
        out = {"X": X, "U": r.U[:, 0], "final_distance": final_distance(X, ev.point_start, ev.target),
               "diverged": diverged_at >= 0, "diverged_at": diverged_at}
        if ev.survival is not None:  # a diverged rollout survives up to its first bad step at most
            steps = survival_steps(X, ev.survival.start, ev.survival.low, ev.survival.high)
            out["survival_steps"] = np.where(diverged_at >= 0, np.minimum(steps, diverged_at), steps).astype(np.int64)
        if cost is not None:
            out["cost"] = cost.evaluate(X, r.U[:, 0], r.ee_jac[:, 0]).l.sum(-1)
        return out

    train = run(sim)
    test = run(Simulator(s.task, s.task.test)) if len(s.task.test) and policy is not None else None
    dist, diverged, diverged_at = train["final_distance"], train["diverged"], train["diverged_at"]
    sample_cost = sdata["cost"].sum(-1).mean(-1)
    datasets = dict(train)
    if test is not None:
        datasets.update({f"test/{k}": v for k, v in test.items()})
    write_artifact(out, "evaluate", iteration, s.recorded("evaluate"), datasets)
    per_cond = lambda a: {f"c{m}": float(v) for m, v in enumerate(a)}  # noqa: E731
    result = {
        "iteration": iteration + 1,
        "final_distance": float(dist.mean()),
        "sample_cost": float(sample_cost.mean()),
        "kl": float(cdata["kl"].mean()),
        "kl_bound": float(cdata["kl_step"].mean()),
        "eta": float(np.exp(np.log(cdata["eta"]).mean())),
        "step_mult": float(step_mult.mean()),
        "per_condition": {
            "final_distance": per_cond(dist),
            "sample_cost": per_cond(sample_cost),
            "kl": per_cond(cdata["kl"]),
            "eta": per_cond(cdata["eta"]),
            "step_mult": per_cond(step_mult),
            "diverged": {f"c{m}": bool(v) for m, v in enumerate(diverged)},
        },
    }
    for tau in ev.success_thresholds:
        hits = success(dist, float(tau), failed=diverged)
        result[f"success_{tau:g}"] = float(hits.mean())
        result["per_condition"][f"success_{tau:g}"] = per_cond(hits)
    for prefix, scored in (("", train), ("test_", test)):
        if scored is not None and "survival_steps" in scored:
            survived = scored["survival_steps"] == T
            result[f"{prefix}survival"] = float(survived.mean())
            result[f"{prefix}survival_steps"] = float(scored["survival_steps"].mean() / T)
            result["per_condition"][f"{prefix}survival_steps"] = per_cond(scored["survival_steps"] / T)
        if scored is not None and "cost" in scored:
            result[f"{prefix}eval_cost"] = float(scored["cost"].mean())
            result["per_condition"][f"{prefix}eval_cost"] = per_cond(scored["cost"])
    if test is not None:
        result["test_final_distance"] = float(test["final_distance"].mean())
        result["per_condition"]["test_final_distance"] = per_cond(test["final_distance"])
        for tau in ev.success_thresholds:
            hits = success(test["final_distance"], float(tau), failed=test["diverged"])
            result[f"test_success_{tau:g}"] = float(hits.mean())
            result["per_condition"][f"test_success_{tau:g}"] = per_cond(hits)
    write_json(metrics, result)
    if diverged.any():
        log(f"iteration {iteration}: the {'policy' if policy is not None else 'controller'}'s rollout diverged (counted as failed) in "
             + ", ".join(f"condition {m} at t={diverged_at[m]}" for m in np.flatnonzero(diverged)))
    log(f"iteration {iteration}: final distance {np.array2string(dist, precision=3)} (mean {dist.mean():.3f})")
    if "survival_steps" in train:
        log(f"iteration {iteration}: survived {int((train['survival_steps'] == T).sum())}/{len(dist)} conditions; "
            f"steps within bounds {train['survival_steps'].tolist()} of {T}")
    if "cost" in train:
        log(f"iteration {iteration}: summed cost of the evaluation rollouts {np.array2string(train['cost'], precision=4)}")
    if test is not None:
        held = test["final_distance"]
        log(f"iteration {iteration}: held-out conditions: final distance {np.array2string(held, precision=3)} "
            f"(mean {held.mean():.3f}){' (diverged: counted as failed)' if test['diverged'].any() else ''}")
