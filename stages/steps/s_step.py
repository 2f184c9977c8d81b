"""`gps s-step`: train the network on the local controllers' actions."""

from __future__ import annotations

from pathlib import Path

import typer

from stages.app import ItrOpt, ParamsOpt, log, stage_command
from stages.artifacts.io import write_artifact
from stages.progress import progress_bar
from stages.settings.load import load_settings


@stage_command("s-step")
def s_step_cmd(
    iteration: int = ItrOpt,
    params_path: Path = ParamsOpt,
    samples: Path = typer.Option(..., "--samples"),
    controllers: Path = typer.Option(..., "--controllers", help="local controllers whose actions are the targets"),
    policy: Path = typer.Option(..., "--policy", help="global policy (and Adam state) to continue from"),
    out: Path = typer.Option(..., "--out"),
    stream: str = typer.Option("s_step", "--stream", help="name of the random stream (catch_up for the iteration-0 catch-up)"),
) -> None:
    """Train the network on the local controllers' actions at the sampled states."""
    from gps_core.mdgps import s_step_dataset
    from gps_core.policy.s_step import train_policy
    from stages.artifacts.checks import known_from, load_samples
    from stages.artifacts.controllers import load_controllers
    from stages.artifacts.optimiser import load_policy_and_adam
    from stages.artifacts.policy import policy_to_datasets

    s = load_settings(params_path)
    sdata, sizes = load_samples(samples)
    pols = load_controllers(controllers, known_from(sizes, samples))
    net, adam = load_policy_and_adam(policy, known_from(sizes, samples, ("dO", "dU")), hidden=s.policy.hidden)
    obs, target, precision, weight = s_step_dataset(pols, sdata["X"], sdata["obs"])
    scfg = s.s_step
    rng = s.rng(iteration, stream)
    with progress_bar(f"{stream.replace('_', '-')} {iteration}: gradient step", scfg.iterations) as progress:
        net, adam, losses = train_policy(net, adam, obs, target, precision, weight, scfg, rng, progress)
    data, attrs = policy_to_datasets(net, adam, losses)
    write_artifact(out, stream, iteration, s.recorded("s_step"), data, attrs)
    log(f"iteration {iteration}: S-step loss {losses[:50].mean():.4f} -> {losses[-50:].mean():.4f}")
