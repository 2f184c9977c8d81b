"""`gps sample`: draw the samples of an iteration and expand their costs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer

from stages.app import ItrOpt, ParamsOpt, log, stage_command
from stages.artifacts.io import write_artifact
from stages.progress import progress_bar
from stages.settings.load import load_settings


@stage_command("sample")
def sample(
    iteration: int = ItrOpt,
    params_path: Path = ParamsOpt,
    controllers: Path = typer.Option(..., "--controllers", help="local controllers: sampled off-policy and at iteration 0, read and checked always"),
    policy: Path = typer.Option(..., "--policy", help="global policy: sampled on-policy from iteration 1, read and checked always"),
    out: Path = typer.Option(..., "--out"),
) -> None:
    """Draw N samples per condition and evaluate their costs and cost expansions."""
    import zlib

    from gps_core.costs import build_cost, expand_cost
    from gps_core.noise import smoothed_noise
    from gps_core.sim.env import Simulator
    from gps_core.sim.sampling import controller_episodes, draw_samples, policy_episodes, redraw_summary
    from stages.artifacts.controllers import load_controllers
    from stages.artifacts.policy import load_policy

    s = load_settings(params_path)
    agent = s.agent
    sim = Simulator(s.task)
    M, N, T = sim.M, agent.num_samples, s.task.T
    noise_settings = vars(agent.noise)
    noise = smoothed_noise(s.rng(iteration, "sample"), (M, N, T, sim.dU), **noise_settings)
    seed = s.seed

    def redraw_noise(m: int, n: int, a: int) -> np.ndarray:
        """Noise [T, dU] of draw a >= 1 of sample (m, n), from its own generator: the same whatever else diverged."""
        rng = np.random.default_rng([seed, iteration, zlib.crc32(b"sample"), m, n, a])
        return smoothed_noise(rng, (T, sim.dU), **noise_settings)

    on_policy = s.algorithm.sample_on_policy and iteration > 0
    # Both inputs are declared (which one draws the samples is a param, `algorithm.sample_on_policy`, that
    # `dvc exp run -S` may change without a new pipeline), so both are read and checked, the other one too.
    local = load_controllers(controllers, {"M": (M, "conditions in params"), "T": (T, "task.T in params"),
                                           "dX": (sim.dX, "states of the model"), "dU": (sim.dU, "actions of the model")})
    network = load_policy(policy, {"dO": (sim.dO, "the observation of task.observation"),
                                   "dU": (sim.dU, "actions of the model")}, hidden=s.policy.hidden)
    run = policy_episodes(sim, network) if on_policy else controller_episodes(sim, local)
    max_draws = agent.redraw_limit
    with progress_bar(f"sample {iteration}: {M}x{N} {'policy' if on_policy else 'controller'} rollouts, time step") as progress:
        drawn = draw_samples(run, noise, redraw_noise, max_draws, progress)
    rollouts, noise = drawn.rollouts, drawn.noise
    X, U, J = rollouts.X, rollouts.U, rollouts.ee_jac
    cost = build_cost(s.cost_terms, s.task)
    terms = cost.evaluate(X.reshape(M * N, T, -1), U.reshape(M * N, T, -1), J.reshape(M * N, T, *J.shape[3:]))
    expansion = expand_cost(terms.reshape(M, N), X, U)
    data = {
        "X": X,
        "U": U,
        "obs": rollouts.O,
        "noise": noise,
        "draws": drawn.draws,
        "ee_jac": J,
        "cost": terms.l.reshape(M, N, T),
        "Cm": expansion.Cm,
        "cv": expansion.cv,
        "cc": expansion.cc,
    }
    write_artifact(out, "sample", iteration, s.recorded("sample"), data, {"on_policy": on_policy})
    redrawn = redraw_summary(drawn.draws)
    if redrawn:
        log(f"iteration {iteration}: {redrawn}")
    log(f"iteration {iteration}: mean sample cost {data['cost'].sum(-1).mean():.3f} ({'policy' if on_policy else 'controllers'})")
