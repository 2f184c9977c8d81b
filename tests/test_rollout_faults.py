"""Diverging rollouts, with real MuJoCo: found per step, training samples drawn again, evaluations failed.

A tiny model stands in for the obstacle task's (the same sizes: two slide joints, two motors, one
site, 0.01 s steps). Its particle weighs 0.01 kg and its x motor accepts commands up to 5e9, so a
large command gives an acceleration beyond MuJoCo's 1e10 and MuJoCo resets the simulation, while
commands of order 1 move it calmly (damping 1: a speed of about u m/s). The stage tests run the
obstacle task's settings with task.model set to the tiny model's file (its joint and site names are
the obstacle's, so the obstacle's blocks, conditions and scored point fit it as they are).
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import h5py
import mujoco
import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from conftest import gps, run_stages_by_hand, small_params
from gps_core.sim.env import BAD_ACTION, BAD_STATE, FINE, MUJOCO_RESET, Simulator, model_path
from gps_core.noise import smooth_along_time, smoothed_noise
from gps_core.sim.sampling import controller_episodes
from gps_core.sim.task import compile_task
from stages.settings.load import Settings
from stages.artifacts.controllers import load_controllers
from stages.main import registered_app

app = registered_app()

TINY_XML = """
<mujoco model="runaway">
  <option timestep="0.01" gravity="0 0 0" integrator="Euler"/>
  <worldbody>
    <body name="particle">
      <joint name="slide_x" type="slide" axis="1 0 0" damping="1"/>
      <joint name="slide_y" type="slide" axis="0 1 0" damping="1"/>
      <geom type="sphere" size="0.1" mass="0.01" contype="0" conaffinity="0"/>
      <site name="particle_site" size="0.01"/>
    </body>
  </worldbody>
  <actuator>
    <motor joint="slide_x" ctrllimited="true" ctrlrange="-1 5e9"/>
    <motor joint="slide_y" ctrllimited="true" ctrlrange="-1 1"/>
  </actuator>
</mujoco>
"""
HUGE = 1e12  # a command that clamps to 5e9: an acceleration of 5e11, which MuJoCo calls bad
STARTS = [[0.0, -0.75], [0.0, 0.75]]  # small_params' two conditions
runner = CliRunner()


def tiny_sim(tmp_path: Path, xml: str = TINY_XML) -> Simulator:
    path = tmp_path / "tiny.xml"
    path.write_text(xml)
    return Simulator.for_model(str(path), np.array(STARTS), dt=0.05, substeps=5)


def kick(episode: int, at: int, u=HUGE):
    """Actions 0.5 along x for every episode, and `u` for `episode` at step `at`."""

    def act(t, x, o):
        out = np.zeros((x.shape[0], 2))
        out[:, 0] = 0.5
        if t == at:
            out[episode, 0] = u
        return out

    return act


# --------------------------------------------------------------------------- the simulator


def test_a_bad_action_holds_its_episode_and_leaves_the_others_bit_for_bit():
    sim = Simulator.for_model(model_path("obstacle"), np.array([[0.0, -0.75], [0.0, 0.75], [0.0, 0.0]]), dt=0.05,
                              substeps=5)

    def act(nan_from):
        def a(t, x, o):
            u = np.tile([0.3, -0.2], (3, 1)) + 0.01 * x[:, :2]
            if t >= nan_from:
                u[1] = np.nan
            return u
        return a

    bad, good = sim.rollout(np.arange(3), act(4), 12), sim.rollout(np.arange(3), act(99), 12)
    assert list(bad.diverged_at) == [-1, 4, -1] and list(bad.cause) == [FINE, BAD_ACTION, FINE]
    for f in ("X", "O", "U", "ee_jac"):
        a, b = getattr(bad, f), getattr(good, f)
        assert a[[0, 2]].tobytes() == b[[0, 2]].tobytes()  # the others: bit for bit
        np.testing.assert_array_equal(a[1, :4], b[1, :4])  # before the divergence: as if nothing happened
    np.testing.assert_array_equal(bad.X[1, 4:], np.broadcast_to(good.X[1, 4], (8, 10)))  # the last good state, held
    np.testing.assert_array_equal(bad.O[1, 4:], np.broadcast_to(good.O[1, 4], (8, 10)))  # and its observation
    np.testing.assert_array_equal(bad.ee_jac[1, 4:], np.broadcast_to(good.ee_jac[1, 4], (8, 3, 2)))
    assert not bad.U[1, 4:].any() and np.isfinite(bad.U).all()


def test_a_mujoco_reset_is_found_at_its_step(tmp_path):
    sim = tiny_sim(tmp_path)
    r = sim.rollout(np.array([0, 1]), kick(episode=1, at=3), 10)
    assert list(r.diverged_at) == [-1, 4] and list(r.cause) == [FINE, MUJOCO_RESET]
    np.testing.assert_array_equal(r.X[1, 4:], np.broadcast_to(r.X[1, 3], (6, 10)))
    assert r.X[1, 3, 0] > 0.05 and not r.U[1, 4:].any()
    # The same controls in plain MuJoCo: the kick at step 3 makes MuJoCo count a bad acceleration
    # and reset the simulation (its time and position back to the defaults).
    model = sim.models[1]
    data = mujoco.MjData(model)
    data.qpos[:] = STARTS[1]
    for t in range(4):
        for _ in range(5):
            mujoco.mj_step1(model, data)
            data.ctrl[:] = [HUGE if t == 3 else 0.5, 0.0]
            mujoco.mj_step2(model, data)
    assert data.warning[mujoco.mjtWarning.mjWARN_BADQACC].number == 1
    assert data.time < 0.2 - 0.005 and data.qpos[1] == 0.0


def test_a_reset_in_the_very_first_substep_is_found_by_the_warning_counters(tmp_path):
    """Reset in the first substep, the time ends at dt as usual: only the counters tell."""
    r = tiny_sim(tmp_path).rollout(np.array([0, 1]), kick(episode=0, at=0), 6)
    assert list(r.diverged_at) == [1, -1] and list(r.cause) == [MUJOCO_RESET, FINE]
    np.testing.assert_array_equal(r.X[0, 1:], np.broadcast_to(r.X[0, 0], (5, 10)))
    assert not r.U[0, 1:].any()


def test_a_state_beyond_mujocos_limit_is_a_bad_state(tmp_path):
    """Without MuJoCo's reset (and without damping) the kick leaves a speed beyond 1e10 in the state."""
    xml = TINY_XML.replace('integrator="Euler"/>', 'integrator="Euler"><flag autoreset="disable"/></option>')
    xml = xml.replace('axis="1 0 0" damping="1"', 'axis="1 0 0" damping="0"')
    r = tiny_sim(tmp_path, xml).rollout(np.array([0, 1]), kick(episode=1, at=2), 6)
    assert list(r.diverged_at) == [-1, 3] and list(r.cause) == [FINE, BAD_STATE]
    assert np.all(np.abs(r.X) < 1e3)  # held at its last good state, x_2


def test_a_command_mujoco_would_reject_is_a_bad_action(tmp_path):
    """Beyond 1e10 after clamping, MuJoCo zeroes the controls (mjWARN_BADCTRL): caught before it steps."""
    xml = TINY_XML.replace('ctrlrange="-1 5e9"', 'ctrlrange="-1 1e13"')
    r = tiny_sim(tmp_path, xml).rollout(np.array([0, 1]), kick(episode=1, at=2, u=1e11), 6)
    assert list(r.diverged_at) == [-1, 2] and list(r.cause) == [FINE, BAD_ACTION]


def test_one_episode_of_noise_is_smoothed_as_within_the_batch():
    """Smoothing and rescaling act along T per episode, so a redraw's noise alone matches a batch's."""
    raw = np.random.default_rng(0).standard_normal((3, 4, 50, 2))
    batch = smooth_along_time(raw, True, 2.0, True)
    for m, n in [(0, 0), (1, 2), (2, 3)]:
        np.testing.assert_allclose(smooth_along_time(raw[m, n], True, 2.0, True), batch[m, n], rtol=1e-14, atol=0)


# --------------------------------------------------------------------------- the stages


@pytest.fixture
def tiny_task(tmp_path) -> Path:
    """The tiny model's file, for task.model (an absolute path)."""
    model = tmp_path / "models" / "runaway.xml"
    model.parent.mkdir()
    model.write_text(TINY_XML)
    return model


def write_params(d: Path, model: Path | None = None, **agent) -> tuple[Path, dict]:
    """small_params of one iteration, seed 7; task.model the given file (else the obstacle's)."""
    params = small_params(1)
    params["seed"] = 7
    if model is not None:
        params["task"].update(name="runaway", model=str(model.resolve()))
    params["agent"].update(agent)
    path = d / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path, params


def first_noise(params: dict, iteration: int = 0) -> np.ndarray:
    """The sample stage's first draws: [M, N, T, dU]."""
    a = params["agent"]
    settings = Settings.from_params(params, compile_task(params["task"]))
    return smoothed_noise(settings.rng(iteration, "sample"), (2, a["num_samples"], params["task"]["T"], 2),
                          a["smooth_noise"], a["smooth_noise_var"], a["smooth_noise_renormalize"])


def redraw_noise(params: dict, m: int, n: int, a: int, iteration: int = 0) -> np.ndarray:
    """Draw a >= 1 of sample (m, n), as docs/artifacts.md documents it: [T, dU]."""
    ag = params["agent"]
    rng = np.random.default_rng([params["seed"], iteration, zlib.crc32(b"sample"), m, n, a])
    return smoothed_noise(rng, (params["task"]["T"], 2), ag["smooth_noise"], ag["smooth_noise_var"], ag["smooth_noise_renormalize"])


def init(d: Path, params_path: Path) -> Path:
    gps("init", "--params", params_path, "--controllers-out", d / "init" / "controllers.h5",
        "--policy-out", d / "init" / "policy.h5", "--step-out", d / "init" / "step.h5")
    return d / "init" / "controllers.h5"


def set_x_command(controllers: Path, m: int, t: int, k: float, scale: float) -> None:
    """Controller m's x command at step t becomes k + scale·ε_x (no feedback, a tiny y variance)."""
    with h5py.File(controllers, "r+") as f:
        f["K"][m, t] = 0.0
        f["k"][m, t, 0] = k
        f["pol_covar"][m, t] = np.diag([scale**2, 1e-6])


def sample(d: Path, params_path: Path, controllers: Path, out: Path, iteration: int = 0, policy: Path | None = None):
    policy = policy or d / "init" / "policy.h5"
    return runner.invoke(app, [str(a) for a in ("sample", "-i", iteration, "--params", params_path, "--controllers",
                                                controllers, "--policy", policy, "--out", out)])


def one_diverging_sample(params: dict) -> tuple[int, int, float]:
    """(n, t, θ): in condition 1, only sample n's first draw has ε_x(t) above θ, and its second draw does not.

    A controller that pushes with 1e14·(ε_x(t) − θ) at step t then makes MuJoCo reset exactly that draw.
    """
    first = first_noise(params)[1, :, :, 0]  # [N, T]
    for t in range(1, first.shape[1] - 1):
        n = int(np.argmax(first[:, t]))
        second = redraw_noise(params, 1, n, 1)[t, 0]
        rest = max(np.delete(first[:, t], n).max(), second)
        if first[n, t] - rest > 0.2:
            return n, t, float(first[n, t] - 0.1)
    raise AssertionError("no step separates one sample's first draw from the rest")


def test_a_sample_that_diverges_on_its_first_draw_is_drawn_again(tmp_path, tiny_task):
    params_path, params = write_params(tmp_path, tiny_task)
    controllers = init(tmp_path, params_path)
    n, t, theta = one_diverging_sample(params)
    set_x_command(controllers, 1, t, -1e14 * theta, 1e14)
    result = sample(tmp_path, params_path, controllers, tmp_path / "samples.h5")
    assert result.exit_code == 0, result.output
    assert "1 sample diverged and was drawn again: 1 took 2 draws" in result.output
    with h5py.File(tmp_path / "samples.h5") as f:
        data = {k: f[k][()] for k in ("draws", "noise", "X", "U", "ee_jac")}
    expected_draws = np.ones((2, 3), dtype=int)
    expected_draws[1, n] = 2
    np.testing.assert_array_equal(data["draws"], expected_draws)
    noise = first_noise(params)
    second = redraw_noise(params, 1, n, 1)
    np.testing.assert_array_equal(data["noise"][1, n], second)  # the kept noise is the second draw's
    others = np.ones((2, 3), dtype=bool)
    others[1, n] = False
    np.testing.assert_array_equal(data["noise"][others], noise[others])
    # The kept sample is the second draw's rollout; the first draw was a real MuJoCo reset at t + 1.
    sim = Simulator(compile_task(params["task"]))
    assert sim.task.model_path == str(tiny_task.resolve())  # the tiny model, not the obstacle's
    run = controller_episodes(sim, load_controllers(controllers))
    again, before = run(np.array([1]), second[None], None), run(np.array([1]), noise[1, n][None], None)
    assert again.diverged_at[0] == -1 and (before.diverged_at[0], before.cause[0]) == (t + 1, MUJOCO_RESET)
    for f in ("X", "U", "ee_jac"):
        np.testing.assert_array_equal(data[f][1, n], getattr(again, f)[0])
    assert np.isfinite(data["X"]).all() and np.abs(data["X"]).max() < 100


def test_policy_samples_are_drawn_again_too(tmp_path, tiny_task):
    """On-policy sampling (iteration 1): a policy pushing with 1e14·(ε_x − θ) at every step, θ just
    below the largest first-draw ε_x of all samples: that sample resets, its second draw does not."""
    params_path, params = write_params(tmp_path, tiny_task)
    controllers = init(tmp_path, params_path)
    peaks = first_noise(params, 1)[..., 0].max(-1)  # [M, N]: the largest first-draw ε_x of each sample
    m, n = (int(i) for i in np.unravel_index(np.argmax(peaks), peaks.shape))
    rest = max(np.delete(peaks.ravel(), np.argmax(peaks)).max(), redraw_noise(params, m, n, 1, 1)[:, 0].max())
    assert peaks[m, n] - rest > 1e-3, "pick another seed"
    theta = (peaks[m, n] + rest) / 2
    policy = tmp_path / "policy.h5"
    policy.write_bytes((tmp_path / "init" / "policy.h5").read_bytes())
    with h5py.File(policy, "r+") as f:
        for name in ("policy/W0", "policy/W1", "policy/W2", "policy/b0", "policy/b1", "policy/b2", "policy/obs_bias"):
            f[name][...] = 0.0
        f["policy/obs_scale"][...] = 1.0
        f["policy/b2"][0] = -1e14 * theta
        f["policy/var"][...] = [1e28, 1e-6]
    result = sample(tmp_path, params_path, controllers, tmp_path / "samples.h5", iteration=1, policy=policy)
    assert result.exit_code == 0, result.output
    assert "1 sample diverged and was drawn again: 1 took 2 draws" in result.output
    with h5py.File(tmp_path / "samples.h5") as f:
        draws, noise = f["draws"][()], f["noise"][()]
        assert bool(f.attrs["on_policy"])
    assert draws[m, n] == 2 and draws.sum() == 7
    np.testing.assert_array_equal(noise[m, n], redraw_noise(params, m, n, 1, 1))


def test_a_sample_that_always_diverges_stops_the_stage(tmp_path, tiny_task):
    params_path, _ = write_params(tmp_path, tiny_task, max_draws=3)
    controllers = init(tmp_path, params_path)
    set_x_command(controllers, 0, 5, HUGE, 1.0)  # whatever the noise
    result = sample(tmp_path, params_path, controllers, tmp_path / "samples.h5")
    assert result.exit_code == 2
    message = result.output.strip()
    assert "\n" not in message and "Traceback" not in message
    assert message == ("gps sample: error: simulation diverged in condition 0, sample 0, on each of its 3 draws "
                       "(the last at or before t=6: NaN, Inf or unstable state (MuJoCo reset the simulation))")
    assert not (tmp_path / "samples.h5").exists()


def test_stop_stops_the_sample_stage_at_the_first_divergence(tmp_path, tiny_task):
    params_path, params = write_params(tmp_path, tiny_task, on_divergence="stop")
    controllers = init(tmp_path, params_path)
    n, t, theta = one_diverging_sample(params)
    set_x_command(controllers, 1, t, -1e14 * theta, 1e14)
    result = sample(tmp_path, params_path, controllers, tmp_path / "samples.h5")
    assert result.exit_code == 2
    assert result.output.strip() == (
        f"gps sample: error: simulation diverged (NaN, Inf or unstable state (MuJoCo reset the simulation)) "
        f"in condition 1, sample {n}, at or before t={t + 1}")
    assert not (tmp_path / "samples.h5").exists()


@pytest.fixture
def tiny_run(tmp_path, tiny_task) -> tuple[Path, Path]:
    """One iteration of every stage on the tiny model; the policy then rewritten to push
    with 1e13·max(y, 0) along x: a reset in condition 1 (y = 0.75), nothing in condition 0."""
    params_path, _ = write_params(tmp_path, tiny_task)
    run_stages_by_hand(tmp_path, params_path, 1)
    policy = tmp_path / "itr_00" / "policy.h5"
    with h5py.File(policy, "r+") as f:
        for name in ("policy/W0", "policy/W1", "policy/W2", "policy/b0", "policy/b1", "policy/b2", "policy/obs_bias"):
            f[name][...] = 0.0
        f["policy/obs_scale"][...] = 1.0
        f["policy/W0"][0, 1] = 1.0  # h1 = max(y, 0)
        f["policy/W1"][0, 0] = 1.0
        f["policy/W2"][0, 0] = 1e13
    return tmp_path, params_path


def evaluate(d: Path, params_path: Path):
    itr = d / "itr_00"
    return runner.invoke(app, [str(a) for a in (
        "evaluate", "-i", 0, "--params", params_path, "--policy", itr / "policy.h5", "--samples", itr / "samples.h5",
        "--controllers", itr / "controllers.h5", "--step", d / "init" / "step.h5", "--out", d / "eval.h5",
        "--metrics", d / "metrics.json")])


def test_a_diverged_evaluation_is_a_failed_condition(tiny_run):
    d, params_path = tiny_run
    params = yaml.safe_load(params_path.read_text())
    # Both conditions end 0.75 from the target, inside the threshold: only the divergence fails condition 1.
    params["evaluation"].update(target=[0.0, 0.0], success_thresholds=[1.0])
    params_path.write_text(yaml.safe_dump(params))
    result = evaluate(d, params_path)
    assert result.exit_code == 0, result.output
    assert "the policy's rollout diverged (counted as failed) in condition 1 at t=1" in result.output
    with h5py.File(d / "eval.h5") as f:
        assert list(f["diverged"][()]) == [False, True] and list(f["diverged_at"][()]) == [-1, 1]
        np.testing.assert_allclose(f["final_distance"][()], [0.75, 0.75], atol=1e-9)  # condition 1: its start, held
        assert np.isfinite(f["X"][()]).all()
    metrics = json.loads((d / "metrics.json").read_text())
    assert metrics["per_condition"]["diverged"] == {"c0": False, "c1": True}
    assert metrics["per_condition"]["success_1"] == {"c0": 1.0, "c1": 0.0} and metrics["success_1"] == 0.5


def test_stop_stops_the_evaluation_at_a_divergence(tiny_run):
    d, params_path = tiny_run
    params = yaml.safe_load(params_path.read_text())
    params["agent"]["on_divergence"] = "stop"
    params_path.write_text(yaml.safe_dump(params))
    result = evaluate(d, params_path)
    assert result.exit_code == 2
    assert result.output.strip() == ("gps evaluate: error: simulation diverged (NaN, Inf or unstable state "
                                     "(MuJoCo reset the simulation)) in condition 1, sample 0, at or before t=1")
    assert not (d / "eval.h5").exists() and not (d / "metrics.json").exists()


def test_without_divergence_redraw_and_stop_write_the_same_samples(tmp_path):
    """The real obstacle task: controllers at iteration 0 and the policy at iteration 1, both settings."""
    files = {}
    for mode in ("redraw", "stop"):
        d = tmp_path / mode
        d.mkdir()
        params_path, _ = write_params(d, on_divergence=mode)
        init(d, params_path)
        for i in (0, 1):
            out = d / f"samples_{i}.h5"
            gps("sample", "-i", i, "--params", params_path, "--controllers", d / "init" / "controllers.h5",
                "--policy", d / "init" / "policy.h5", "--out", out)
            files[mode, i] = out
    for i in (0, 1):
        with h5py.File(files["redraw", i]) as a, h5py.File(files["stop", i]) as b:
            assert set(a) == set(b) and "draws" in a
            for name in a:
                assert a[name][()].tobytes() == b[name][()].tobytes(), name
            assert (a["draws"][()] == 1).all()
