"""Settings that do not fit the task's MuJoCo model: exit 2, one line naming file, key, value and what the model needs.

The check runs in stages.settings.params.load_params, so every stage refuses such params before it reads or
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
from stages.settings import model_check
from stages.main import registered_app

app = registered_app()
from stages.settings.params import load_params
from stages.settings.load import load_settings

runner = CliRunner()

OBSTACLE, PEG = "gps_core/assets/obstacle.xml", "gps_core/assets/peg.xml"
# What the messages list as the points (sites and bodies) of each model.
OBSTACLE_POINTS = ("site particle_site, body particle, body wall_upper_near, body wall_lower_near, body wall_centre, "
                   "body wall_upper_far, body wall_lower_far, body target")
PEG_POINTS = ("site leg_bottom, site leg_top, body r_shoulder_pan_link, body r_shoulder_lift_link, "
              "body r_upper_arm_roll_link, body r_upper_arm_link, body r_elbow_flex_link, body r_forearm_roll_link, "
              "body r_forearm_link, body r_wrist_flex_link, body r_wrist_roll_link, body r_gripper_palm_link, "
              "body r_gripper_l_finger_link, body r_gripper_l_finger_tip_link, body r_gripper_r_finger_link, "
              "body r_gripper_r_finger_tip_link, body r_gripper_tool_frame, body peg")
OBSTACLE_BLOCKS = "joint_positions, joint_velocities, particle, particle_velocity"

# A model with the obstacle's joint and site names (so that the obstacle's settings fit it), its integrator left open.
TINY_MODEL = """<mujoco model="tiny">
  <option timestep="0.01" gravity="0 0 0" integrator="{integrator}"/>
  <worldbody>
    <body name="particle">
      <joint name="slide_x" type="slide" axis="1 0 0" damping="1"/>
      <joint name="slide_y" type="slide" axis="0 1 0" damping="1"/>
      <geom type="sphere" size="0.1" mass="1"/>
      <site name="particle_site"/>
    </body>
  </worldbody>
  <actuator><motor joint="slide_x"/><motor joint="slide_y"/></actuator>
</mujoco>
"""


def setting(path: str, value: Any) -> Callable[[dict, Path], None]:
    """An edit of params: set the dotted path (list indices as numbers) to value."""
    def apply(params: dict, tmp_path: Path | None = None) -> None:
        node: Any = params
        keys = path.split(".")
        for k in keys[:-1]:
            node = node[int(k)] if isinstance(node, list) else node[k]
        node[int(keys[-1]) if isinstance(node, list) else keys[-1]] = value
    return apply


def both(*edits: Callable) -> Callable[[dict, Path], None]:
    def apply(params: dict, tmp_path: Path | None = None) -> None:
        for e in edits:
            e(params, tmp_path)
    return apply


def fk_on_one_site(params: dict, tmp_path: Path | None = None) -> None:
    params["cost"][1]["target"] = [0.0, 0.3, -0.5]
    params["cost"][1]["wp"] = [1.0, 1.0, 1.0]


def relative_to_unknown_point(params: dict, tmp_path: Path | None = None) -> None:
    params["task"]["blocks"]["gap"] = {"kind": "relative", "point": "leg_bottom", "to": "hole"}


def rk4_model(params: dict, tmp_path: Path) -> None:
    """task.model: the tiny model, integrating with RK4 (stepping stays split)."""
    model = tmp_path / "rk4.xml"
    model.write_text(TINY_MODEL.format(integrator="RK4"))
    params["task"]["model"] = str(model)


# (id, base params, edit, the exact message after "gps <cmd>: error: <file>: "; {tmp} stands for the test's folder)
CASES = [
    # names the model does not have
    ("unknown_site", small_peg_params, setting("task.blocks.peg_points.points", ["leg_bottom", "leg_tip"]),
     f"task.blocks.peg_points.points[1]: the model has no site or body 'leg_tip'; it has: {PEG_POINTS}"),
    ("unknown_relative_point", small_peg_params, relative_to_unknown_point,
     f"task.blocks.gap.to: the model has no site or body 'hole'; it has: {PEG_POINTS}"),
    ("peg_as_obstacle", lambda: task_params("peg"), setting("task.model", OBSTACLE),
     f"task.blocks.peg_points.points[0]: the model has no site or body 'leg_bottom'; it has: {OBSTACLE_POINTS}"),
    ("obstacle_as_peg", small_params, setting("task.model", PEG),
     f"task.blocks.particle.points[0]: the model has no site or body 'particle_site'; it has: {PEG_POINTS}"),
    ("unknown_joint", small_params, setting("task.blocks.joint_positions.joints", ["slide_x", "slide_z"]),
     "task.blocks.joint_positions.joints: the model has no joint 'slide_z'; its joints: slide_x, slide_y"),
    # block names that are not blocks, or not the kind of block a setting needs
    ("unknown_state_block", small_params,
     setting("task.state", ["joint_positions", "joint_velocities", "particle", "particle_speed"]),
     f"task.state[3]: 'particle_speed' is not a block of task.blocks ({OBSTACLE_BLOCKS})"),
    ("unknown_observation_block", small_params, setting("task.observation", ["joint_positions", "velocities"]),
     f"task.observation[1]: 'velocities' is not a block of task.blocks ({OBSTACLE_BLOCKS})"),
    ("unknown_cost_block", small_params, setting("cost.0.block", "joint_angles"),
     f"cost[0].block is 'joint_angles', expected a block of task.state ({OBSTACLE_BLOCKS})"),
    ("unknown_evaluation_point", small_params, setting("evaluation.point", "target_site"),
     "evaluation.point is 'target_site', expected a position or relative block of task.state (particle) or a point "
     "of a state position block"),
    ("evaluation_point_velocity", small_params, setting("evaluation.point", "particle_velocity"),
     "evaluation.point is 'particle_velocity', expected a position or relative block of task.state (particle) or a "
     "point of a state position block"),
    ("velocity_of_joint_block", small_params, setting("task.blocks.particle_velocity.of", "joint_positions"),
     "task.blocks.particle_velocity.of: 'joint_positions': expected a position or relative block of task.blocks "
     "(particle)"),
    ("fk_on_joint_velocities", small_peg_params, setting("cost.1.block", "joint_velocities"),
     "cost[1].block is 'joint_velocities', expected a position or relative block of task.state, whose Jacobian the fk "
     "term uses (peg_points)"),
    # sizes
    ("fk_target_length", small_peg_params, fk_on_one_site,
     "cost[1].target is [0.0, 0.3, -0.5] (3 entries), expected 6 entries, one per entry of block peg_points"),
    ("state_target_length", small_params, both(setting("cost.0.target", [3.0, 0.0, 0.0]), setting("cost.0.wp", [1.0] * 3)),
     "cost[0].target is [3.0, 0.0, 0.0] (3 entries), expected 2 entries, one per entry of block joint_positions"),
    ("wu_length", small_peg_params, setting("cost.0.wu", [0.001, 0.001]),
     "cost[0].wu is [0.001, 0.001] (2 entries), expected 7 entries, one per actuator (nu) of the model of task peg"),
    ("init_gains_length", small_params, setting("init_lqr.init_gains", [1.0] * 7),
     f"init_lqr.init_gains is {[1.0] * 7!r} (7 entries), expected 2 entries, one per actuator (nu) of the model of "
     "task obstacle"),
    ("evaluation_target_longer", small_peg_params, setting("evaluation.target", [0.0, 0.3, -0.5, 0.0]),
     "evaluation.target is [0.0, 0.3, -0.5, 0.0] (4 entries), expected at most 3 entries, the first entries of point "
     "leg_bottom of block peg_points"),
    # conditions
    ("qpos_length", small_params, setting("task.conditions.0.qpos", [0.0, 0.0, 0.0]),
     "task.conditions[0].qpos: [0.0, 0.0, 0.0] (3 entries): expected 2 numbers, one per joint position (nq) of the "
     "model, or a mapping from joint names to values"),
    ("held_out_qpos_length", small_params, setting("task.test_conditions", [{"qpos": [0.0, 0.0, 0.0]}]),
     "task.test_conditions[0].qpos: [0.0, 0.0, 0.0] (3 entries): expected 2 numbers, one per joint position (nq) of "
     "the model, or a mapping from joint names to values"),
    ("qpos_unknown_joint", small_params, setting("task.conditions.1.qpos", {"slide_x": 0.0, "slide_z": 0.75}),
     "task.conditions[1].qpos.slide_z: the model has no joint 'slide_z'; its joints: slide_x, slide_y"),
    ("offset_without_offset_body", small_params, setting("task.conditions.0.offset", [0.1, 0.0, 0.0]),
     "task.conditions[0].offset: an offset needs task.offset_body, the body it shifts"),
    ("condition_without_offset", small_peg_params, setting("task.conditions.1", {"qpos": [0.0] * 7}),
     "task.conditions[1].offset: None: expected 3 numbers, the shift of the offset body"),
    ("unknown_offset_body", small_peg_params, setting("task.offset_body", "r_shoulder_link"),
     f"task.offset_body: the model has no body 'r_shoulder_link'; it has: {PEG_POINTS.split('site leg_top, ')[1]}"),
    # time
    ("dt_vs_substeps", small_params, setting("task.dt", 0.04),
     "task.dt: 0.04: expected 0.05 = task.substeps (5) x the model's timestep (0.01 s)"),
    ("substeps_vs_dt", small_peg_params, setting("task.substeps", 4),
     "task.dt: 0.05: expected 0.04 = task.substeps (4) x the model's timestep (0.01 s)"),
    ("split_on_rk4", small_params, rk4_model,
     "task.stepping: split steps with semi-implicit Euler, but the model asks for integrator mjINT_RK4: use stepping "
     "mj_step"),
    # the state's configuration: qpos then qvel of the actuated joints (init_lqr, the fk costs)
    ("state_velocities_first", small_params,
     setting("task.state", ["joint_velocities", "joint_positions", "particle", "particle_velocity"]),
     "task.state: ['joint_velocities', 'joint_positions', 'particle', 'particle_velocity']: expected a qpos block of "
     "the actuated joints ['slide_x', 'slide_y'] (in actuator order) first and a qvel block of the same joints second "
     "(init_lqr and the fk costs read them there)"),
    ("state_without_velocities", small_params, setting("task.state", ["joint_positions", "particle", "particle_velocity"]),
     "task.state: ['joint_positions', 'particle', 'particle_velocity']: expected a qvel block of the joints "
     "['slide_x', 'slide_y'] second, after the qpos block"),
    # the model file
    ("missing_model", small_params, setting("task.model", "models/no_such.xml"),
     "task.model: 'models/no_such.xml': no such file ({tmp}/models/no_such.xml); a relative path that is no installed "
     "package's file starts at the params file's folder when no folder at or above it holds dvc.yaml or .dvc/ (a DVC "
     "project)"),  # a params file in no project: relative to its folder (tests/test_model_path.py: in a project)
]


def write_params(tmp_path: Path, base: Callable[[], dict], change: Callable[[dict, Path], None]) -> Path:
    params = copy.deepcopy(base())
    change(params, tmp_path)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))  # blocks in their order: a velocity after its source
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
    assert gps_fails(*init_args(path, out)) == f"gps init: error: {path}: {expected.replace('{tmp}', str(tmp_path))}"
    assert not out.exists()


@pytest.mark.parametrize("case", ["qpos_length", "fk_on_joint_velocities", "dt_vs_substeps"])
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
    path = write_params(tmp_path, lambda: task_params("peg"), setting("task.model", OBSTACLE))
    out = tmp_path / "out"
    env = {**os.environ, "GPS_WORKER": "0"}
    gps = Path(sys.executable).parent / "gps"
    proc = subprocess.run([str(gps), *map(str, init_args(path, out))], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == "" and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith(f"gps init: error: {path}: task.blocks.peg_points.points[0]: the model has no site or "
                                  "body 'leg_bottom'; it has: site particle_site"), proc.stderr
    assert not out.exists()


def test_split_stepping_refused_for_rk4_but_mj_step_runs_it(tmp_path):
    """The same RK4 model loads with stepping mj_step (MuJoCo's own step, its integrator)."""
    path = write_params(tmp_path, small_params, both(rk4_model, setting("task.stepping", "mj_step")))
    task = load_settings(path).task
    assert (task.stepping, Path(task.model_path).name) == ("mj_step", "rk4.xml")


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


@pytest.mark.parametrize("task", ["obstacle", "peg", "peg_blind"])
def test_compiled_task_agrees_with_the_simulator(task):
    """The sizes and indices the check resolves are the ones the simulator builds the state and observation from."""
    import mujoco
    import numpy as np

    from gps_core.sim.env import Simulator
    from gps_core.sim.task import POINT_KINDS

    params = task_params(task)
    compiled = model_check.check_model_consistency(params, str(ROOT / "configs" / f"{task}.yaml"))
    sim = Simulator(compiled)
    M = len(params["task"]["conditions"])
    x0, o0 = sim.initial_states(), sim.initial_observations()
    assert x0.shape == (M, compiled.dX) and o0.shape == (M, compiled.dO)
    assert (sim.nq, sim.dU) == (compiled.nq, compiled.nu)
    data = mujoco.MjData(sim.models[0])
    data.qpos[:] = sim.qpos0[0]
    mujoco.mj_forward(sim.models[0], data)
    np.testing.assert_array_equal(x0[0, :compiled.nu], sim.qpos0[0][compiled.config_dofs])  # the configuration first
    for name in compiled.state:  # where a state or fk term and the scored point look
        block = compiled.block(name)
        if block.kind == "position":
            expected = np.concatenate([data.site_xpos[p.id] if p.kind == "site" else data.xpos[p.id] for p in block.points])
            np.testing.assert_allclose(x0[0, compiled.x_slices[name]], expected)
    where, _ = compiled.point_slice(params["evaluation"]["point"])
    point = mujoco.mj_name2id(sim.models[0], mujoco.mjtObj.mjOBJ_SITE, {"obstacle": "particle_site"}.get(task, "leg_bottom"))
    np.testing.assert_allclose(x0[0, where], data.site_xpos[point])
    for name in compiled.observation:
        np.testing.assert_array_equal(o0[:, compiled.o_slices[name]], x0[:, compiled.x_slices[name]])
    r = sim.rollout(np.arange(1), lambda t, x, o: np.zeros((1, sim.dU)), 2)
    n_jac = sum(compiled.block(n).size for n in compiled.state if compiled.block(n).kind in POINT_KINDS)
    assert r.ee_jac.shape == (1, 2, n_jac, sim.dU) and n_jac == compiled.n_jac


def test_task_is_compiled_once_per_file_version(tmp_path, monkeypatch):
    """Cached by (path, mtime, size, task section): loading params again costs no compile, an edited model is read
    again, and so is an edited task section."""
    import gps_core.sim.task as task_module

    model = tmp_path / "obstacle.xml"
    model.write_text((ROOT / OBSTACLE).read_text())
    calls = []
    real = task_module.compile_task

    def counting(section, base=None):
        calls.append(section["model"])
        return real(section, base)

    monkeypatch.setattr(task_module, "compile_task", counting)
    monkeypatch.setattr(model_check, "_TASK_CACHE", {})
    path = write_params(tmp_path, small_params, setting("task.model", str(model)))
    load_params(path)
    load_settings(path)
    assert calls == [str(model)]
    model.write_text(model.read_text().replace('timestep="0.01"', 'timestep="0.025"'))
    message = gps_fails("pipeline", "--params", path, "--root", tmp_path / "out")
    assert len(calls) == 2
    assert message == (f"gps pipeline: error: {path}: task.dt: 0.05: expected 0.125 = task.substeps (5) x the model's "
                       "timestep (0.025 s)")
    write_params(tmp_path, small_params, both(setting("task.model", str(model)), setting("task.substeps", 2)))
    load_params(path)  # 2 x 0.025 = 0.05: the edited section is compiled, then cached
    load_params(path)
    assert len(calls) == 3


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


def one_actuator_params(model: Path, joints: list[str] | None = None) -> Callable[[dict, Path], None]:
    """small_params on the model: the plain layout's blocks (gps_core.sim.task.plain_layout), the point s scored."""
    from gps_core.sim.task import plain_layout

    def apply(params: dict, tmp_path: Path | None = None) -> None:
        params["task"].update(model=str(model), **plain_layout(str(model)))
        if joints is not None:
            params["task"]["blocks"]["joint_positions"]["joints"] = joints
            params["task"]["blocks"]["joint_velocities"]["joints"] = joints
        params["init_lqr"]["init_gains"] = [1.0]
        params["cost"][0].update(target=[3.0] if joints else [3.0, 0.0], wp=[1.0] if joints else [1.0, 1.0])
        params["evaluation"]["point"] = "s"
    return apply


def test_state_must_start_with_the_actuated_joints(tmp_path):
    """init_lqr reads x[:dU] as joint positions and x[dU:2dU] as their velocities: the state's first two blocks are
    qpos and qvel of the joints the actuators drive; a joint no actuator drives may be read only after them."""
    model = tmp_path / "two_joints.xml"
    model.write_text(MODEL_ONE_ACTUATOR)
    path = write_params(tmp_path, small_params, one_actuator_params(model))
    message = gps_fails("pipeline", "--params", path, "--root", tmp_path / "out")
    assert message == (f"gps pipeline: error: {path}: task.state: ['joint_positions', 'joint_velocities', 'sites', "
                       "'site_velocities']: expected a qpos block of the actuated joints ['x'] (in actuator order) first "
                       "and a qvel block of the same joints second (init_lqr and the fk costs read them there)")
    path = write_params(tmp_path, small_params, one_actuator_params(model, ["x"]))
    task = load_settings(path).task
    assert (task.dX, task.dU) == (1 + 1 + 3 + 3, 1)
    model.write_text(MODEL_ONE_ACTUATOR.replace('<motor joint="x"/>', '<motor site="s" gear="1 0 0 0 0 0"/>'))
    message = gps_fails("pipeline", "--params", path, "--root", tmp_path / "out")
    assert message == (f"gps pipeline: error: {path}: task.model: actuator 0 does not drive a joint: GPS tasks need one "
                       "actuator per joint")


def test_model_that_does_not_load_is_one_line(tmp_path):
    model = tmp_path / "broken.xml"
    model.write_text("<mujoco><worldbody><body><joint/></body></worldbody>")  # not well-formed
    path = write_params(tmp_path, small_params, setting("task.model", str(model)))
    message = gps_fails("pipeline", "--params", path, "--root", tmp_path / "out")
    assert message.startswith(f"gps pipeline: error: {path}: task.model: '{model}' does not load: ")
