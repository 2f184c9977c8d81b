"""params.yaml is checked against its schema: one line naming key, value and what is allowed; exit 2; no output."""

from __future__ import annotations

import copy

import pytest
import yaml
from typer.testing import CliRunner

from conftest import small_params
from stages.main import registered_app

app = registered_app()
from stages.errors import UserError
from stages.settings.schema import validate_params

runner = CliRunner()


def edit(path: str, value):
    def apply(params):
        node = params
        keys = path.split(".")
        for k in keys[:-1]:
            node = node[int(k)] if isinstance(node, list) else node[k]
        if value is DELETE:
            del node[keys[-1]]
        else:
            node[keys[-1]] = value
    return apply


DELETE = object()

CASES = [
    # (edit, words the message must contain)
    (edit("algorithm.kl_stpe", 2.0), ["unknown key", "kl_stpe", "kl_step"]),
    (edit("algorithm.kl_step", -1.0), ["algorithm.kl_step", "-1.0", "> 0"]),
    (edit("agent.num_samples", 0), ["agent.num_samples", "0", ">= 2"]),
    (edit("agent.num_samples", "five"), ["agent.num_samples", "'five'", "an integer"]),
    (edit("task.stepping", "rk4"), ["task.stepping", "rk4", "split, mj_step"]),
    (edit("algorithm.step_rule", "laplace"), ["algorithm.step_rule", "laplace", "classic, global"]),
    (edit("algorithm.min_step_mult", 2.0), ["min_step_mult (2.0)", "greater than", "max_step_mult (1.0)"]),
    (edit("algorithm.sample_on_policy", "yes"), ["algorithm.sample_on_policy", "true or false"]),
    (edit("iterations", 0), ["iterations", ">= 1"]),
    (edit("policy.hidden", [40, -1]), ["policy.hidden", "list of integers"]),
    (edit("task.T", 1), ["task.T", "1", ">= 2"]),
    (edit("task.state", "joint_positions"), ["task.state", "'joint_positions'", "a non-empty list of names"]),
    (edit("task.conditions", None), ["task.conditions", "None", "a value"]),
    (edit("task.horizon", 30), ["unknown key", "task.horizon", "T"]),
    (edit("agent.T", 30), ["unknown key", "agent.T", "num_samples"]),  # the task's settings moved to `task`
    (edit("task.dt", DELETE), ["missing key", "task.dt"]),
    (edit("dynamics.prior.max_samples", 1), ["dynamics.prior.max_samples", ">= 2"]),
    (edit("cost.0.type", "torque"), ["cost[0].type", "torque", "action, state, fk"]),
    (edit("cost.0.wp", [1.0]), ["cost[0].wp", "2 weights"]),
    (edit("cost.0.ramp", "cubic"), ["cost[0].ramp", "cubic", "final_only"]),
    (edit("traj_opt", DELETE), ["missing key", "traj_opt"]),
    (edit("seed", 1.5), ["seed", "1.5", "an integer"]),
    (edit("policy.lr", float("nan")), ["policy.lr", "nan"]),
    (edit("agent.on_divergence", "retry"), ["agent.on_divergence", "retry", "redraw, stop"]),
    (edit("agent.max_draws", 0), ["agent.max_draws", "0", ">= 1"]),
    (edit("agent.max_draws", DELETE), ["missing key", "agent.max_draws"]),
    # settings that pass the schema but not the task's model (stages/settings/model_check.py; more in test_model_consistency.py)
    (edit("task.conditions", [{"qpos": [0.0, 1.0, 2.0]}, {"qpos": [0.0, 1.0]}]),
     ["task.conditions[0].qpos: [0.0, 1.0, 2.0] (3 entries)", "expected 2 numbers", "(nq)"]),
    (edit("task.conditions", [{"qpos": [0.0, 1.0]}, {"qpos": [0.0]}]), ["task.conditions[1].qpos: [0.0]", "expected 2"]),
    (edit("task.observation", ["joint_positions", "joint_speeds"]),
     ["task.observation[1]: 'joint_speeds' is not a block of task.blocks", "joint_velocities"]),
    (edit("cost.0.block", "particle_velocity"), ["cost[0].target is [3.0, 0.0] (2 entries)", "expected 3 entries",
                                                 "block particle_velocity"]),
    (edit("cost.0.block", "joint_accelerations"), ["cost[0].block is 'joint_accelerations'", "a block of task.state"]),
    (edit("evaluation.target", [3.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]),
     ["evaluation.target is [3.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0] (7 entries)", "at most 3 entries", "particle_site"]),
    (edit("task.substeps", 10), ["task.dt: 0.05", "expected 0.1 = task.substeps (10)"]),
    (edit("task.model", "gps_core/assets/peg.xml"),
     ["task.blocks.particle.points[0]", "no site or body 'particle_site'", "site leg_bottom, site leg_top"]),
    (edit("task.model", "cartpole.xml"), ["task.model: 'cartpole.xml': no such file"]),
]


def test_default_params_are_valid():
    validate_params(small_params())


@pytest.mark.parametrize("change,words", CASES, ids=[str(i) for i in range(len(CASES))])
def test_bad_param_one_line_exit_2_no_output(tmp_path, change, words):
    params = copy.deepcopy(small_params())
    change(params)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    out = tmp_path / "out"
    result = runner.invoke(app, ["init", "--params", str(path), "--controllers-out", str(out / "c.h5"),
                                 "--policy-out", str(out / "p.h5"), "--step-out", str(out / "s.h5")])
    assert result.exit_code == 2, result.output
    message = result.output.strip()
    assert "\n" not in message and message.startswith("gps init: error: ")
    assert str(path) in message
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    assert not out.exists()


@pytest.mark.parametrize("bad", [
    dict(fixed_lg_step=4), dict(init_pol_wt=0.0), dict(inner_iterations=0), dict(target_shift="x"),
    dict(ent_reg_schedule=[0.0, 1e-2]), dict(policy_dual_rate=-1.0), dict(exp_step_increase=0.0),
], ids=lambda bad: next(iter(bad)))
def test_badmm_values_the_core_cannot_take_are_refused(bad):
    """gps_core.configs.BadmmConfig checks nothing: the schema refuses these, naming the key."""
    params = copy.deepcopy(small_params())
    params["badmm"].update(bad)
    with pytest.raises(UserError, match=f"badmm.{next(iter(bad))} is "):
        validate_params(params)


@pytest.mark.parametrize("change,words", [
    (edit("render.camera.lookat", [0.0, 0.0]), ["render.camera.lookat", "a list of numbers of length 3"]),
    (edit("render.camera.distance", 0.0), ["render.camera.distance", "> 0"]),
    (edit("render.markers", [{"at": "goal", "radius": 0.1, "rgba": [1.0, 0.0, 0.0, 1.0]}]),
     ["render.markers[0].at", "'goal'", "target, point"]),
    (edit("render.markers", [{"at": "target", "radius": 0.1, "rgba": [1.0, 0.0, 2.0, 1.0]}]),
     ["render.markers[0].rgba", "<= 1"]),
    (edit("render.markers", {"at": "target"}), ["render.markers", "a list of mappings"]),
    (edit("render.zoom", 2.0), ["unknown key 'render.zoom'", "camera, markers"]),
], ids=["lookat", "distance", "at", "rgba", "not_a_list", "unknown"])
def test_render_settings_are_checked(change, words):
    params = copy.deepcopy(small_params())
    change(params)
    with pytest.raises(UserError) as info:
        validate_params(params)
    for word in words:
        assert word in str(info.value), f"{word!r} not in {info.value}"


def test_render_section_may_be_left_out():
    params = copy.deepcopy(small_params())
    del params["render"]["camera"], params["render"]["markers"]
    validate_params(params)
    del params["render"]
    validate_params(params)


def test_not_yaml_and_not_a_mapping(tmp_path):
    path = tmp_path / "params.yaml"
    for text, words in (("seed: [1,\n", "not valid YAML"), ("- 1\n- 2\n", "a mapping of settings")):
        path.write_text(text)
        result = runner.invoke(app, ["pipeline", "--params", str(path), "--root", str(tmp_path)])
        assert result.exit_code == 2 and words in result.output
        assert not (tmp_path / "dvc.yaml").exists()
