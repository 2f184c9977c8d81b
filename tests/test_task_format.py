"""Tasks from settings: a model from an installed package, Gymnasium's Reacher side by side with ours,
held-out conditions, and the policy scored in Gymnasium's own environment."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import gps, task_params

gymnasium = pytest.importorskip("gymnasium")


def reacher_task(**overrides) -> dict:
    section = copy.deepcopy(task_params("reacher")["task"])
    section.update(overrides)
    return section


def small_reacher_params(iterations: int = 1) -> dict:
    """The Reacher task shrunk: 2 training and 2 held-out targets, 3 samples, T = 10, short S-steps."""
    params = copy.deepcopy(task_params("reacher"))
    params["iterations"] = iterations
    params["task"]["T"] = 10
    params["task"]["conditions"] = params["task"]["conditions"][:2]
    params["task"]["test_conditions"] = params["task"]["test_conditions"][:2]
    params["agent"]["num_samples"] = 3
    params["policy"]["iterations"] = 50
    params["gym_evaluation"]["episodes"] = 3
    return params


def test_model_from_an_installed_package_is_read_where_it_is_installed():
    from gps_core.sim.task import compile_task, resolve_model

    path = resolve_model("gymnasium/envs/mujoco/assets/reacher.xml")
    assert path == Path(gymnasium.__file__).parent / "envs" / "mujoco" / "assets" / "reacher.xml"
    task = compile_task(reacher_task())
    assert task.model_path == str(path)
    assert (task.dX, task.dO, task.dU) == (8, 10, 2)
    assert list(task.action_low) == [-1.0, -1.0] and list(task.action_high) == [1.0, 1.0]  # the model's ctrlrange


def test_a_relative_path_that_names_no_package_is_relative_to_the_base_given(tmp_path):
    """gps_core takes the folder; which one is the settings' rule (the project root, tests/test_model_path.py)."""
    from gps_core.sim.env import model_path
    from gps_core.sim.task import resolve_model

    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "arm.xml").write_text(Path(model_path("obstacle")).read_text())
    assert resolve_model("models/arm.xml", tmp_path) == tmp_path / "models" / "arm.xml"


def gym_start(env, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Reset the Gymnasium environment, then zero its velocities (our conditions start at rest): qpos, obs."""
    env.reset(seed=seed)
    qpos = env.unwrapped.data.qpos.copy()
    env.unwrapped.set_state(qpos, np.zeros(env.unwrapped.model.nv))
    return qpos, env.unwrapped._get_obs()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reacher_observation_and_reward_equal_gymnasiums_side_by_side(seed):
    """Our simulator and gymnasium.make("Reacher-v5") from the same state with the same actions:
    the task's observation equals Gymnasium's at every step, and the cost's terms equal minus its reward's."""
    from gps_core.sim.env import Simulator
    from gps_core.sim.task import compile_task

    env = gymnasium.make("Reacher-v5")
    qpos, obs0 = gym_start(env, seed)
    T = 50
    actions = np.random.default_rng(seed).uniform(-1.5, 1.5, size=(T, 2))  # beyond the range too: both clip alike
    gym_obs, gym_dist, gym_ctrl = [obs0], [], []
    for t in range(T - 1):
        obs, _, _, _, info = env.step(actions[t].astype(np.float32))
        gym_obs.append(obs)
        gym_dist.append(-info["reward_dist"])
        gym_ctrl.append(-info["reward_ctrl"])
    env.close()
    task = compile_task(reacher_task(T=T, conditions=[{"qpos": [float(v) for v in qpos]}], test_conditions=[]))
    r = Simulator(task).rollout(np.array([0]), lambda t, x, o: actions[t][None].astype(np.float32).astype(float), T)
    np.testing.assert_allclose(r.O[0], np.array(gym_obs), rtol=0, atol=1e-12)
    # reward_dist is the distance after the step: our state's fingertip_to_target block one step on
    rel = r.X[0, 1:, task.x_slices["fingertip_to_target"]]
    np.testing.assert_allclose(np.linalg.norm(rel, axis=-1), gym_dist, rtol=0, atol=1e-12)
    # reward_ctrl is |u|^2 with weight 1 (ReacherEnv's code): the action term 1/2 wu u^2 with wu = 2
    from gps_core.costs import build_cost

    action_term = [t for t in task_params("reacher")["cost"] if t["type"] == "action"]
    cost = build_cost(action_term, task).evaluate(r.X, r.U, r.ee_jac).l[0, : T - 1]
    np.testing.assert_allclose(cost, gym_ctrl, rtol=1e-6)  # Gymnasium squares the float32 action


def test_the_fk_term_is_the_smoothed_distance_and_its_gradient_reaches_the_arm_joints():
    """The Reacher cost's fk term: sqrt(alpha + d^2) of fingertip - target, derivatives through the Jacobian
    equal finite differences of the cost in the arm angles."""
    from gps_core.costs import build_cost
    from gps_core.sim.env import Simulator
    from gps_core.sim.task import compile_task

    params = task_params("reacher")
    fk = [t for t in params["cost"] if t["type"] == "fk"]

    def cost_at(q: np.ndarray):
        task = compile_task(reacher_task(T=2, conditions=[{"qpos": {"joint0": float(q[0]), "joint1": float(q[1]),
                                                                   "target_x": 0.1, "target_y": -0.05}}],
                                         test_conditions=[]))
        r = Simulator(task).rollout(np.array([0]), lambda t, x, o: np.zeros((1, 2)), 2)
        return build_cost(fk, task).evaluate(r.X, r.U, r.ee_jac), r

    q = np.array([0.3, -0.7])
    terms, r = cost_at(q)
    d = r.X[0, 0, 4:6]
    assert terms.l[0, 0] == pytest.approx(np.sqrt(1e-4 + d @ d), rel=1e-12)
    eps = 1e-6
    numeric = [(cost_at(q + eps * e)[0].l[0, 0] - cost_at(q - eps * e)[0].l[0, 0]) / (2 * eps) for e in np.eye(2)]
    np.testing.assert_allclose(terms.lx[0, 0, :2], numeric, rtol=1e-6)
    assert np.all(terms.lx[0, 0, 2:] == 0)  # the block's own slots get none


def test_held_out_conditions_are_evaluated_but_never_sampled(tmp_path):
    from gps_core.sim.env import Simulator
    from gps_core.sim.task import compile_task

    params = small_reacher_params()
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    p, d = ["--params", tmp_path / "params.yaml"], tmp_path / "data"
    gps("init", *p, "--controllers-out", d / "c.h5", "--policy-out", d / "p.h5", "--step-out", d / "s.h5")
    gps("sample", "-i", 0, *p, "--controllers", d / "c.h5", "--policy", d / "p.h5", "--out", d / "samples.h5")
    import h5py

    task = compile_task(params["task"])
    train_x0 = Simulator(task).initial_states()
    test_x0 = Simulator(task, task.test).initial_states()
    test_o0 = Simulator(task, task.test).initial_observations()
    with h5py.File(d / "samples.h5") as f:
        X, O = f["X"][()], f["obs"][()]
    assert X.shape[:2] == (2, 3)
    np.testing.assert_array_equal(X[:, :, 0], np.repeat(train_x0[:, None], 3, axis=1))
    # no sample starts at, or ever observes, a held-out target (observation entries 4:6 are the target position)
    for o in test_o0:
        assert not np.any(np.all(np.isclose(O[..., 4:6], o[4:6]), axis=-1))
    for x in test_x0:
        assert not np.any(np.all(np.isclose(X[:, :, 0], x), axis=-1))
    # evaluate rolls the policy out in both, the held-out ones into their own group and metrics
    gps("fit-dynamics", "-i", 0, *p, "--samples", d / "samples.h5", "--out", d / "dyn.h5")
    gps("s-step", "-i", 0, *p, "--stream", "catch_up", "--samples", d / "samples.h5", "--controllers", d / "c.h5",
        "--policy", d / "p.h5", "--out", d / "pc.h5")
    gps("fit-policy", "-i", 0, *p, "--samples", d / "samples.h5", "--policy", d / "pc.h5", "--out", d / "lin.h5")
    gps("c-step", "-i", 0, *p, "--samples", d / "samples.h5", "--dynamics", d / "dyn.h5", "--policy-lin", d / "lin.h5",
        "--step", d / "s.h5", "--prev-controllers", d / "c.h5", "--out", d / "c1.h5")
    gps("s-step", "-i", 0, *p, "--samples", d / "samples.h5", "--controllers", d / "c1.h5", "--policy", d / "pc.h5",
        "--out", d / "p1.h5")
    gps("evaluate", "-i", 0, *p, "--policy", d / "p1.h5", "--samples", d / "samples.h5", "--controllers", d / "c1.h5",
        "--step", d / "s.h5", "--out", d / "eval.h5", "--metrics", d / "metrics.json")
    with h5py.File(d / "eval.h5") as f:
        assert f["X"].shape == (2, 10, 8) and f["test/X"].shape == (2, 10, 8)
        np.testing.assert_array_equal(f["test/X"][:, 0], test_x0)
        held = f["test/final_distance"][()]
    metrics = json.loads((d / "metrics.json").read_text())
    assert metrics["test_final_distance"] == pytest.approx(held.mean())
    assert set(metrics["per_condition"]["test_success_0.05"]) == {"c0", "c1"}

    # The trained policy in gymnasium.make("Reacher-v5"): Gymnasium's return, episode by episode
    gps("evaluate-gym", *p, "--policy", d / "p1.h5", "--out", d / "gym.json")
    result = json.loads((d / "gym.json").read_text())
    from gps_core.policy.policy_net import policy_mean
    from stages.artifacts.policy import load_policy

    net = load_policy(d / "p1.h5", {}, hidden=tuple(params["policy"]["hidden"]))
    env = gymnasium.make("Reacher-v5")
    returns = []
    for seed in range(3):
        obs, _ = env.reset(seed=seed)
        total, done = 0.0, False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(np.clip(policy_mean(net, obs), -1, 1).astype(np.float32))
            total += reward
            done = terminated or truncated
        returns.append(total)
    assert result["episodes"] == 3 and result["episode_length"] == 50
    assert result["return_mean"] == pytest.approx(np.mean(returns), abs=1e-9)
    assert result["return_std"] == pytest.approx(np.std(returns), abs=1e-9)
    assert result["reward_threshold"] == -3.75 and result["observation_max_difference"] == 0.0
    assert result["training_env_steps"] == 1 * 2 * 3 * 10


def test_evaluate_gym_refuses_an_observation_that_is_not_the_environments(tmp_path):
    """The policy would be fed inputs it was not trained on: one line, exit 2, no metrics file."""
    from typer.testing import CliRunner

    from stages.main import registered_app

    app = registered_app()

    params = small_reacher_params()
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    p, d = ["--params", str(tmp_path / "params.yaml")], tmp_path / "data"
    gps("init", *p, "--controllers-out", d / "c.h5", "--policy-out", d / "p.h5", "--step-out", d / "s.h5")
    # the same sizes, another order: sin before cos
    obs = params["task"]["observation"]
    obs[0], obs[1] = obs[1], obs[0]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    result = CliRunner().invoke(app, ["evaluate-gym", *p, "--policy", str(d / "p.h5"), "--out", str(d / "gym.json")])
    assert result.exit_code == 2
    line = result.output.strip()
    assert "\n" not in line and "task.observation is not Reacher-v5's observation" in line
    assert not (d / "gym.json").exists()


def test_the_pipeline_scores_the_last_policy_in_gymnasium_when_asked():
    from stages.pipeline.generate import build_pipeline

    doc = build_pipeline(3, gym=True)
    stage = doc["stages"]["evaluate_gym"]
    assert "data/itr_02/policy.h5" in stage["deps"] and stage["metrics"] == ["data/gym_eval.json"]
    assert "gym_evaluation" in stage["params"]
    assert "evaluate_gym" not in build_pipeline(3)["stages"]


def test_a_model_file_of_the_project_is_a_dependency_of_the_stages_that_simulate():
    from stages.pipeline.generate import render_pipeline

    params = task_params("obstacle")
    assert "models/particle.xml" not in "".join(render_pipeline(params).values())
    params["task"]["model"] = "models/particle.xml"
    files = render_pipeline(params)
    init = yaml.safe_load(files["dvc.yaml"])["stages"]["init"]
    assert "models/particle.xml" in init["deps"]
    fit = yaml.safe_load(files["pipelines/itr_00/fit_dynamics/dvc.yaml"])["stages"]["fit_dynamics_00"]
    assert "models/particle.xml" not in fit["deps"]  # reads no task setting, simulates nothing
    # a package's file is no dependency, even where the package is installed inside the project (.venv)
    reacher = task_params("reacher")
    assert "reacher.xml" not in "".join(render_pipeline(reacher).values())


def test_render_draws_a_held_out_condition_of_a_policy_and_refuses_controllers_there(tmp_path):
    from typer.testing import CliRunner

    from stages.main import registered_app

    app = registered_app()

    params = small_reacher_params()
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    p, d = ["--params", str(tmp_path / "params.yaml")], tmp_path / "data"
    gps("init", *p, "--controllers-out", d / "c.h5", "--policy-out", d / "p.h5", "--step-out", d / "s.h5")
    out = tmp_path / "held.png"
    result = CliRunner().invoke(app, ["render", str(d / "p.h5"), *p, "--held-out", "-m", "1", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert out.exists() and "held-out condition 1" in result.output
    result = CliRunner().invoke(app, ["render", str(d / "c.h5"), *p, "--held-out", "-o", str(tmp_path / "c.png")])
    assert result.exit_code == 2 and "local controllers exist only for the training conditions" in result.output
    result = CliRunner().invoke(app, ["render", str(d / "p.h5"), *p, "--held-out", "-m", "2", "-o", str(tmp_path / "x.png")])
    assert result.exit_code == 2 and "params has 2 held-out conditions" in result.output


def test_status_shows_the_held_out_conditions(tmp_path):
    """`gps status` has a held-out column for a task with test conditions, from eval.h5's group test."""
    from typer.testing import CliRunner

    from stages.main import registered_app

    app = registered_app()
    from conftest import run_stages_by_hand

    (tmp_path / "params.yaml").write_text(yaml.safe_dump(small_reacher_params()))
    run_stages_by_hand(tmp_path / "data", tmp_path / "params.yaml", 1)
    result = CliRunner().invoke(app, ["status", "--params", str(tmp_path / "params.yaml"), "--data", str(tmp_path / "data")])
    assert result.exit_code == 0, result.output
    import h5py

    with h5py.File(tmp_path / "data" / "itr_00" / "eval.h5") as f:
        held = f["test/final_distance"][()]
    assert "2 conditions + 2 held out" in result.output and "held-out" in result.output
    hits = int((held < 0.05).sum())
    assert f"({hits}/2)" in result.output
