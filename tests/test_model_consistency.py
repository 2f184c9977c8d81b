"""Settings that do not fit the task's MuJoCo model: exit 2, one line naming file, key, value and what the model needs.

The check runs in stages.config.load_params, so every stage refuses such params before it reads or
writes anything: the cases run through `init` (which would build the simulator) and a few through
stages that never simulate (fit-dynamics, c-step) and `pipeline`.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml
from typer.testing import CliRunner

from conftest import ROOT, small_params, small_peg_params, task_params
from stages import model_check
from stages.cli import app
from stages.config import load_params

runner = CliRunner()

OBSTACLE, PEG = "gps_core/assets/obstacle.xml", "gps_core/assets/peg.xml"


def setting(path: str, value: Any) -> Callable[[dict], None]:
    """An edit of params: set the dotted path (list indices as numbers) to value."""
    def apply(params: dict) -> None:
        node: Any = params
        keys = path.split(".")
        for k in keys[:-1]:
            node = node[int(k)] if isinstance(node, list) else node[k]
        node[keys[-1]] = value
    return apply


def fk_on_one_site(params: dict) -> None:
    params["cost"][1]["target"] = [0.0, 0.3, -0.5]
    params["cost"][1]["wp"] = [1.0, 1.0, 1.0]


# (id, base params, edit, the exact message after "gps <cmd>: error: <file>: ")
CASES = [
    ("qpos0_row", small_params, setting("agent.qpos0", [[0.0, 0.0, 0.0], [0.0, 0.5, 0.0]]),
     f"agent.qpos0[0] is [0.0, 0.0, 0.0] (3 entries), expected 2 entries, one per joint position (nq) of the model "
     f"{OBSTACLE} (agent.task obstacle)"),
    ("peg_as_obstacle", lambda: task_params("peg"), setting("agent.task", "obstacle"),
     f"agent.qpos0[0] is [0.1, 0.1, -1.54, -1.7, 1.54, -0.2, 0.0] (7 entries), expected 2 entries, one per joint "
     f"position (nq) of the model {OBSTACLE} (agent.task obstacle)"),
    ("obstacle_as_peg", small_params, setting("agent.task", "peg"),
     f"agent.qpos0[0] is [0.0, -0.75] (2 entries), expected 7 entries, one per joint position (nq) of the model "
     f"{PEG} (agent.task peg)"),
    ("body_offsets_rows", small_peg_params, setting("agent.body_offsets", [[0.0, 0.0, 0.0]] * 9),
     "agent.body_offsets is " + repr([[0.0, 0.0, 0.0]] * 9) + ", expected 2 rows (one per condition) of 3 numbers"),
    ("obs_dim", small_params, setting("agent.obs_dim", 11),
     f"agent.obs_dim is 11, expected at most 10, the state size (dX) of the model {OBSTACLE} (agent.task obstacle): "
     "2 joint positions + 2 velocities + 6 x 1 sites"),
    ("fk_ee_start_beyond", small_peg_params, setting("cost.1.ee_start", 24),
     f"cost[1].ee_start is 24, expected 14, where the site positions x[14:20] of the model {PEG} (agent.task peg) "
     "begin (an fk term's target entries pair one to one with the rows of the site Jacobian)"),
    ("fk_ee_start_outside_sites", small_peg_params, setting("cost.2.ee_start", 7),
     f"cost[2].ee_start is 7, expected 14, where the site positions x[14:20] of the model {PEG} (agent.task peg) "
     "begin (an fk term's target entries pair one to one with the rows of the site Jacobian)"),
    ("fk_one_site", small_peg_params, fk_on_one_site,
     f"cost[1].target is [0.0, 0.3, -0.5] (3 entries), expected 6 entries, the positions of the 2 sites (x[14:20]) "
     f"of the model {PEG} (agent.task peg)"),
    ("state_start_beyond", small_params, setting("cost.0.start", 9),
     "cost[0].start is 9 with 2 target entries (x[9:11]), expected at most 8 so that the residual fits in the state "
     f"of 10 entries (dX) of the model {OBSTACLE} (agent.task obstacle)"),
    ("wu_length", small_peg_params, setting("cost.0.wu", [0.001, 0.001]),
     f"cost[0].wu is [0.001, 0.001] (2 entries), expected 7 entries, one per actuator (nu) of the model {PEG} "
     "(agent.task peg)"),
    ("init_gains_length", small_params, setting("init_lqr.init_gains", [1.0] * 7),
     f"init_lqr.init_gains is {[1.0] * 7!r} (7 entries), expected 2 entries, one per actuator (nu) of the model "
     f"{OBSTACLE} (agent.task obstacle)"),
    ("point_start_beyond", small_peg_params, setting("evaluation.point_start", 24),
     "evaluation.point_start is 24 with 3 target entries (x[24:27]), expected at most 23 so that the scored point "
     f"fits in the state of 26 entries (dX) of the model {PEG} (agent.task peg)"),
    ("dt_vs_substeps", small_params, setting("agent.dt", 0.04),
     f"agent.dt is 0.04, expected 0.05 = agent.substeps (5) x the timestep (0.01 s) of the model {OBSTACLE} "
     "(agent.task obstacle)"),
    ("substeps_vs_dt", small_peg_params, setting("agent.substeps", 4),
     f"agent.dt is 0.05, expected 0.04 = agent.substeps (4) x the timestep (0.01 s) of the model {PEG} "
     "(agent.task peg)"),
]


def write_params(tmp_path: Path, base: Callable[[], dict], change: Callable[[dict], None]) -> Path:
    params = copy.deepcopy(base())
    change(params)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def gps_fails(*args: Any) -> str:
    """Run a `gps` command in-process that must fail with a user error: exit 2 and one line, which is returned."""
    result = runner.invoke(app, [str(a) for a in args])
    message = result.output.strip()
    assert result.exit_code == 2, message + repr(result.exception)
    assert "\n" not in message and "Traceback" not in message, message
    return message


def init_args(path: Path, out: Path) -> list:
    return ["init", "--params", path, "--controllers-out", out / "c.h5", "--policy-out", out / "p.h5", "--step-out", out / "s.h5"]


@pytest.mark.parametrize("base,change,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_inconsistent_setting_one_line_exit_2_no_output(tmp_path, base, change, expected):
    path = write_params(tmp_path, base, change)
    out = tmp_path / "out"
    assert gps_fails(*init_args(path, out)) == f"gps init: error: {path}: {expected}"
    assert not out.exists()


@pytest.mark.parametrize("case", ["qpos0_row", "fk_ee_start_beyond", "dt_vs_substeps"])
def test_stages_that_do_not_simulate_check_the_model_too(tmp_path, case):
    """Checked where params are loaded: before any input is read (the inputs here do not exist)."""
    _, base, change, expected = next(c for c in CASES if c[0] == case)
    path = write_params(tmp_path, base, change)
    out = tmp_path / "out"
    none = tmp_path / "absent.h5"
    commands = {
        "fit-dynamics": ["fit-dynamics", "-i", "1", "--params", path, "--samples", none, "--prev", none, "--out", out / "d.h5"],
        "c-step": ["c-step", "-i", "0", "--params", path, "--samples", none, "--dynamics", none, "--policy-lin", none,
                   "--step", none, "--prev-controllers", none, "--out", out / "c.h5"],
        "pipeline": ["pipeline", "--params", path, "--root", out],
    }
    for name, args in commands.items():
        assert gps_fails(*args) == f"gps {name}: error: {path}: {expected}"
    assert not out.exists()


def test_subprocess_gps_prints_one_line_on_stderr_and_exits_2(tmp_path):
    """The installed `gps` script, run in its own process (GPS_WORKER=0: no warm worker)."""
    path = write_params(tmp_path, lambda: task_params("peg"), setting("agent.task", "obstacle"))
    out = tmp_path / "out"
    env = {**os.environ, "GPS_WORKER": "0"}
    gps = Path(sys.executable).parent / "gps"
    proc = subprocess.run([str(gps), *map(str, init_args(path, out))], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == "" and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith(f"gps init: error: {path}: agent.qpos0[0] is [0.1, 0.1, -1.54, -1.7, 1.54, -0.2, 0.0] "
                                  f"(7 entries), expected 2 entries"), proc.stderr
    assert OBSTACLE in proc.stderr and not out.exists()


SHIPPED = [ROOT / "configs" / "peg.yaml", ROOT / "configs" / "peg_blind.yaml", ROOT / "configs" / "obstacle.yaml",
           ROOT / "params.yaml"]


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name if p.parent.name != "configs" else f"configs/{p.name}" for p in SHIPPED])
def test_shipped_settings_fit_their_models(path):
    load_params(path)


@pytest.mark.parametrize("make", [small_params, small_peg_params, lambda: small_peg_params("peg_blind")],
                         ids=["small_params", "small_peg_params", "small_peg_blind"])
def test_small_test_params_fit_their_models(tmp_path, make):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(make()))
    load_params(path)


@pytest.mark.parametrize("task", ["obstacle", "peg"])
def test_model_dims_agree_with_the_simulator(task):
    """The sizes the check uses are the ones the simulator builds the state from."""
    import numpy as np

    from gps_core.env import Simulator, model_dims, model_path

    dims = model_dims(model_path(task))
    sim = Simulator(model_path(task), np.zeros((1, dims.nq)), dt=5 * dims.timestep, substeps=5)
    assert (dims.nq, dims.nv, dims.nu, dims.nsite, dims.dX) == (sim.nq, sim.nv, sim.dU, sim.n_sites, sim.dX)
    import mujoco

    data = mujoco.MjData(sim.models[0])
    mujoco.mj_forward(sim.models[0], data)
    lo, hi = dims.sites
    x0 = sim.initial_states()[0]
    assert x0.shape == (dims.dX,)
    np.testing.assert_allclose(x0[lo:hi], data.site_xpos.reshape(-1))  # where an fk term must look


def test_model_is_compiled_once_per_file_version(tmp_path, monkeypatch):
    """Cached by (path, mtime, size): loading params again costs no compile, an edited model is read again."""
    import gps_core.env as env

    model = tmp_path / "obstacle.xml"
    model.write_text((ROOT / OBSTACLE).read_text())
    calls = []

    def counting(path):
        calls.append(path)
        return real(path)

    real = env.model_dims
    monkeypatch.setattr(env, "model_dims", counting)
    monkeypatch.setattr(env, "model_path", lambda task: str(model))
    monkeypatch.setattr(model_check, "_DIMS_CACHE", {})
    path = write_params(tmp_path, small_params, lambda p: None)
    load_params(path)
    load_params(path)
    assert len(calls) == 1
    model.write_text(model.read_text().replace('timestep="0.01"', 'timestep="0.025"'))
    message = gps_fails("pipeline", "--params", path, "--root", tmp_path / "out")
    assert len(calls) == 2
    assert f"agent.dt is 0.05, expected 0.125 = agent.substeps (5) x the timestep (0.025 s) of the model {model}" in message


MODEL_ONE_ACTUATOR = """<mujoco>
  <option timestep="0.01"/>
  <worldbody>
    <body>
      <joint name="x" type="slide" axis="1 0 0"/>
      <joint name="y" type="slide" axis="0 1 0"/>
      <geom size="0.1"/>
      <site name="s"/>
    </body>
  </worldbody>
  <actuator><motor joint="x"/></actuator>
</mujoco>
"""


def test_model_without_one_actuator_per_joint_is_refused(tmp_path, monkeypatch):
    """init_lqr reads x[:dU] as joint positions and x[dU:2dU] as their velocities: nu must equal nq."""
    import gps_core.env as env

    model = tmp_path / "two_joints.xml"
    model.write_text(MODEL_ONE_ACTUATOR)
    monkeypatch.setattr(env, "model_path", lambda task: str(model))
    path = write_params(tmp_path, small_params, lambda p: None)
    message = gps_fails("pipeline", "--params", path, "--root", tmp_path / "out")
    assert message == (f"gps pipeline: error: {path}: agent.task is 'obstacle', expected a task whose model has one "
                       "velocity and one actuator per joint position (nq == nv == nu, as the simulator and init_lqr "
                       f"assume): the model {model} (agent.task obstacle) has nq 2, nv 2, nu 1")
    model.write_text("<mujoco><worldbody><body><joint/></body></worldbody>")  # not well-formed
    message = gps_fails("pipeline", "--params", path, "--root", tmp_path / "out")
    assert message.startswith(f"gps pipeline: error: {path}: agent.task is 'obstacle', but its model {model} does not load: ")
