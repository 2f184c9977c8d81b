"""Gymnasium's balancing tasks as shipped configs (configs/inverted_pendulum.yaml, inverted_double_pendulum.yaml):
they load and fit their models, their state holds the simulation's state (what init_lqr.source model linearises),
their observation is Gymnasium's side by side with gymnasium.make(...) from the same state with the same actions
(all entries, the double pendulum's clipped velocities and constraint force included), and the double pendulum's
Gymnasium terms of the cost equal minus its reward's penalties."""

from __future__ import annotations

import copy

import mujoco
import numpy as np
import pytest

from conftest import ROOT, task_params

gymnasium = pytest.importorskip("gymnasium")

TASKS = {"inverted_pendulum": "InvertedPendulum-v5", "inverted_double_pendulum": "InvertedDoublePendulum-v5"}


def compiled(name: str, **overrides):
    from gps_core.sim.task import compile_task

    section = copy.deepcopy(task_params(name)["task"])
    section.update(overrides)
    return compile_task(section)


@pytest.mark.parametrize("name", TASKS)
def test_the_config_loads_and_its_state_is_the_simulations(name):
    from gps_core.sim.linearise import state_map
    from stages.settings.load import load_settings

    s = load_settings(ROOT / "configs" / f"{name}.yaml")
    task = s.task
    assert task.model_path.endswith(f"gymnasium/envs/mujoco/assets/{name}.xml")
    assert s.init_lqr.source == "model"
    model = mujoco.MjModel.from_xml_path(task.model_path)
    # dt: Gymnasium's frame_skip x the model's timestep
    env = gymnasium.make(TASKS[name])
    assert task.dt == pytest.approx(env.unwrapped.dt) and task.substeps == env.unwrapped.frame_skip
    assert env.spec.max_episode_steps == 1000
    env.close()
    # x begins with the slider's qpos and qvel (the actuator's joint) and holds every joint's qpos and qvel
    assert task.state[:2] == ("cart_position", "cart_velocity")
    smap = state_map(model, task)  # raises LinearisationError where x is not the simulation's state
    assert smap is not None
    held = sorted(int(a) for b in task.blocks if b.name in task.state and b.kind == "qpos" for a in b.qadr)
    assert held == list(range(model.nq))
    # the survival block and the scored point are in the state
    assert s.evaluation.survival is not None


def gym_start(env, seed: int) -> np.ndarray:
    """Reset the Gymnasium environment with a seed, then zero its velocities (our conditions start at rest): qpos."""
    env.reset(seed=seed)
    qpos = env.unwrapped.data.qpos.copy()
    env.unwrapped.set_state(qpos, np.zeros(env.unwrapped.model.nv))
    return qpos


@pytest.mark.parametrize("name", TASKS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_observation_equals_gymnasiums_side_by_side(name, seed):
    """Our simulator and gymnasium.make(...) from the same state (Gymnasium's reset of this seed, at rest) with the
    same actions: the task's observation equals Gymnasium's at every step."""
    from gps_core.sim.env import Simulator

    env = gymnasium.make(TASKS[name])
    qpos = gym_start(env, seed)
    obs0 = env.unwrapped._get_obs()
    T = 20 if name == "inverted_pendulum" else 10  # the double pendulum's upper pole falls past Gymnasium's clip later
    low, high = env.action_space.low, env.action_space.high
    # the pendulum's: beyond the range too (both clip alike); the double pendulum's gear is 5 times the pendulum's,
    # so a tenth of its range keeps its speeds below Gymnasium's clip at 10
    scale = 1.5 if name == "inverted_pendulum" else 0.1
    actions = np.random.default_rng(seed).uniform(scale * low, scale * high, size=(T, 1))
    gym_obs, infos = [obs0], []
    for t in range(T - 1):
        obs, _, _, _, info = env.step(actions[t].astype(np.float32))  # Gymnasium steps on after termination
        gym_obs.append(obs)
        infos.append(info)
    env.close()
    gym_obs = np.array(gym_obs)
    task = compiled(name, T=T, conditions=[{"qpos": [float(v) for v in qpos]}], test_conditions=[])
    r = Simulator(task).rollout(np.array([0]), lambda t, x, o: actions[t][None].astype(np.float32).astype(float), T)
    if name == "inverted_pendulum":
        assert task.dO == gym_obs.shape[1] == 4
        np.testing.assert_allclose(r.O[0], gym_obs, rtol=0, atol=1e-12)
        return
    # InvertedDoublePendulum: all 9 entries, the clipped velocities and the slider's constraint force included
    assert task.dO == gym_obs.shape[1] == 9
    np.testing.assert_allclose(r.O[0], gym_obs, rtol=0, atol=1e-12)
    # The cost's tip and velocity terms are minus the reward's distance and velocity penalties, after each step
    from gps_core.costs import build_cost

    terms = [t for t in task_params(name)["cost"] if t["type"] == "state" and t["block"] in ("tip", "pole_velocities")]
    cost = build_cost(terms, task).evaluate(r.X, r.U, r.ee_jac).l[0, 1:]
    penalties = [-(info["distance_penalty"] + info["velocity_penalty"]) for info in infos]
    np.testing.assert_allclose(cost, penalties, rtol=1e-12, atol=1e-12)


def test_double_pendulum_constraint_force_and_clip_as_gymnasium_at_the_rail_end():
    """Pushed hard one way, the cart reaches its rail's end (the constraint force, the 9th entry, is not 0) and the
    poles swing past Gymnasium's velocity clip at 10: both blocks equal Gymnasium's observation there."""
    from gps_core.sim.env import Simulator

    env = gymnasium.make(TASKS["inverted_double_pendulum"])
    qpos = gym_start(env, 0)
    T = 60
    actions = np.full((T, 1), env.action_space.high[0])
    gym_obs = [env.unwrapped._get_obs()]
    for t in range(T - 1):
        gym_obs.append(env.step(actions[t].astype(np.float32))[0])
    env.close()
    gym_obs = np.array(gym_obs)
    assert np.any(gym_obs[:, 8] != 0.0) and np.any(np.abs(gym_obs[:, 5:8]) == 10.0)
    task = compiled("inverted_double_pendulum", T=T, conditions=[{"qpos": [float(v) for v in qpos]}], test_conditions=[])
    r = Simulator(task).rollout(np.array([0]), lambda t, x, o: actions[t][None].astype(np.float32).astype(float), T)
    np.testing.assert_allclose(r.O[0], gym_obs, rtol=0, atol=1e-9)


@pytest.mark.parametrize("block", ["slider_force", "joint_velocities"])
def test_observation_only_blocks_are_refused_in_the_state(block):
    """A constraint force or a clipped reading has no derivative the dynamics could use: one line naming it."""
    from gps_core.sim.task import TaskError

    state = task_params("inverted_double_pendulum")["task"]["state"] + [block]
    with pytest.raises(TaskError) as err:
        compiled("inverted_double_pendulum", state=state)
    assert err.value.key == f"task.state[{len(state) - 1}]"
    assert "the observation may hold it, the state may not" in str(err.value)
