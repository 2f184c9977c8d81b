"""`gps evaluate-gym`: the trained global policy in a Gymnasium environment, scored by Gymnasium's reward.

The network acts on the environment's own observation, so the task's observation
(task.observation) must be that observation: at every step of every episode the task's
blocks are read from the environment's MjData (gps_core.sim.env reads them the same way in
training) and compared with what the environment returned; a difference beyond round-off
stops the command. Actions are the network's mean, clipped to the environment's action
space (as Stable-Baselines3 does with its policies). Episodes are reset with seeds
`seed`, `seed + 1`, ... so that every run, and any other method, meets the same episodes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import typer

from stages.app import ParamsOpt, log, stage_command
from stages.artifacts.io import write_json
from stages.errors import UserError
from stages.settings.load import load_settings

# The task's observation read from MjData and the environment's agree to round-off: the same floats,
# concatenated in another order of operations at most.
OBSERVATION_TOLERANCE = 1e-9


def episode_returns(env, act, observe, seeds: list[int], progress=None) -> tuple[np.ndarray, np.ndarray, float]:
    """Run one episode per seed. act(obs [dO]) -> action; observe(env) -> the task's observation [dO].

    Returns (returns [E], lengths [E], the largest |task observation - environment observation|); with
    observe None (a policy that is not a task's, such as a model-free baseline's) nothing is compared: 0.
    """
    def gap(obs: np.ndarray) -> float:
        return 0.0 if observe is None else float(np.max(np.abs(observe(env) - obs)))

    returns, lengths, worst = [], [], 0.0
    for i, seed in enumerate(seeds):
        obs, _ = env.reset(seed=int(seed))
        total, steps, done = 0.0, 0, False
        while not done:
            worst = max(worst, gap(obs))
            obs, reward, terminated, truncated, _ = env.step(act(obs))
            total += float(reward)
            steps += 1
            done = terminated or truncated
        worst = max(worst, gap(obs))
        returns.append(total)
        lengths.append(steps)
        if progress is not None:
            progress(i + 1, len(seeds))
    return np.array(returns), np.array(lengths), worst


def task_observer(task):
    """observe(env) -> the task's observation read from the environment's MjData (no velocity blocks)."""
    from gps_core.sim.env import BlockReader

    if any(task.block(n).kind == "velocity" for n in task.observation):
        raise UserError("task.observation has a velocity block (a finite difference over the control period): "
                        "no Gymnasium environment observes that, so the policy cannot be scored there")
    reader = BlockReader(task)

    def observe(env) -> np.ndarray:
        values = reader.values(env.unwrapped.data, None)
        return np.concatenate([values[n] for n in task.observation])

    return observe


@dataclass
class GymScore:
    """Gymnasium's returns of a policy: returns [E], lengths [E], the largest observation difference."""

    env_id: str
    seeds: list[int]
    returns: np.ndarray
    lengths: np.ndarray
    observation_difference: float
    reward_threshold: float | None


def score_in_gym(s, policy: Path, episodes: int, source: str = "params.yaml", progress=None) -> GymScore:
    """Run the policy file in gymnasium.make(gym_evaluation.env) for `episodes` seeded episodes (settings s)."""
    spec = s.gym_evaluation
    if spec is None:
        raise UserError(f"{source}: no gym_evaluation section: name the Gymnasium environment to score the policy in")
    import gymnasium
    from gymnasium.error import Error as GymError

    from gps_core.policy.policy_net import policy_mean
    from stages.artifacts.policy import load_policy

    task = s.task
    net = load_policy(policy, {"dO": (task.dO, "the observation of task.observation"),
                               "dU": (task.dU, "actions of the model")}, hidden=s.policy.hidden)
    try:
        env = gymnasium.make(spec.env)
    except GymError as exc:
        raise UserError(f"{source}: gym_evaluation.env is {spec.env!r}: {exc}") from None
    space = env.action_space
    if env.observation_space.shape != (task.dO,) or space.shape != (task.dU,):
        raise UserError(f"{source}: gym_evaluation.env {spec.env} observes {env.observation_space.shape} and "
                        f"acts {space.shape}, but the task's observation has {task.dO} entries and its model {task.dU} "
                        "actuators")
    low, high = np.asarray(space.low, dtype=float), np.asarray(space.high, dtype=float)

    def act(obs: np.ndarray) -> np.ndarray:
        return np.clip(policy_mean(net, obs), low, high).astype(space.dtype)

    seeds = [spec.seed + i for i in range(episodes)]
    returns, lengths, worst = episode_returns(env, act, task_observer(task), seeds, progress)
    env.close()
    if worst > OBSERVATION_TOLERANCE:
        raise UserError(f"{source}: task.observation is not {spec.env}'s observation (they differ by up to "
                        f"{worst:.3g}): the policy was trained on other inputs than the environment gives it")
    threshold = env.spec.reward_threshold
    return GymScore(spec.env, seeds, returns, lengths, worst, None if threshold is None else float(threshold))


@stage_command("evaluate-gym")
def evaluate_gym(
    params_path: Path = ParamsOpt,
    policy: Path = typer.Option(..., "--policy", help="the trained global policy (policy.h5 of the last iteration)"),
    out: Path = typer.Option(..., "--out", help="metrics JSON: mean and spread of Gymnasium's return"),
    episodes: int = typer.Option(0, "--episodes", min=0, help="episodes to run (0: gym_evaluation.episodes)"),
) -> None:
    """Run the trained policy in gymnasium.make(gym_evaluation.env) and score it with Gymnasium's reward."""
    import gymnasium

    from stages.progress import progress_bar

    s = load_settings(params_path)
    spec = s.gym_evaluation
    if spec is None:
        raise UserError(f"{params_path}: no gym_evaluation section: name the Gymnasium environment to score the policy in")
    n = episodes or spec.episodes
    with progress_bar(f"evaluate-gym: {spec.env}, episode", n) as progress:
        score = score_in_gym(s, policy, n, str(params_path), progress)
    returns, threshold = score.returns, score.reward_threshold
    M, N = len(s.task.train), s.agent.num_samples
    result = {
        "env": score.env_id,
        "gymnasium_version": gymnasium.__version__,
        "episodes": n,
        "first_seed": score.seeds[0],
        "return_mean": float(returns.mean()),
        "return_std": float(returns.std()),
        "return_min": float(returns.min()),
        "return_max": float(returns.max()),
        "episode_length": float(score.lengths.mean()),
        "reward_threshold": threshold,
        "observation_max_difference": score.observation_difference,
        # Environment steps of training: iterations x conditions x samples x T (redrawn samples not counted).
        "training_env_steps": s.iterations * M * N * s.task.T,
    }
    write_json(out, result)
    bar = "" if threshold is None else f" (Gymnasium's reward_threshold {threshold:g})"
    log(f"{score.env_id}: return {returns.mean():.3f} +- {returns.std():.3f} over {n} episodes{bar}")
