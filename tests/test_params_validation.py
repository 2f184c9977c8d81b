"""params.yaml is checked against its schema: one line naming key, value and what is allowed; exit 2; no output."""

from __future__ import annotations

import copy

import pytest
import yaml
from typer.testing import CliRunner

from conftest import small_params
from stages.cli import app
from stages.schema import validate_params

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
    (edit("agent.task", "cartpole"), ["agent.task", "cartpole", "obstacle"]),
    (edit("algorithm.step_rule", "laplace"), ["algorithm.step_rule", "laplace", "classic, global"]),
    (edit("algorithm.min_step_mult", 2.0), ["min_step_mult (2.0)", "greater than", "max_step_mult (1.0)"]),
    (edit("algorithm.sample_on_policy", "yes"), ["algorithm.sample_on_policy", "true or false"]),
    (edit("iterations", 0), ["iterations", ">= 1"]),
    (edit("policy.hidden", [40, -1]), ["policy.hidden", "list of integers"]),
    (edit("agent.qpos0", [[0.0, 1.0], [0.0]]), ["agent.qpos0", "list of lists"]),
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
    # settings that pass the schema but not the task's model (stages/model_check.py; more in test_model_consistency.py)
    (edit("agent.qpos0", [[0.0, 1.0, 2.0], [0.0, 1.0, 2.0]]),
     ["agent.qpos0[0] is [0.0, 1.0, 2.0] (3 entries)", "expected 2 entries", "(nq)", "obstacle.xml"]),
    (edit("agent.obs_dim", 12), ["agent.obs_dim is 12", "expected at most 10", "(dX)"]),
    (edit("cost.0.start", 10), ["cost[0].start is 10", "x[10:12]", "at most 8"]),
    (edit("evaluation.target", [3.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]), ["evaluation.point_start is 4 with 7 target entries"]),
    (edit("agent.substeps", 10), ["agent.dt is 0.05", "expected 0.1 = agent.substeps (10)"]),
    (edit("agent.task", "peg_blind"), ["agent.qpos0[0]", "expected 7 entries", "peg.xml (agent.task peg_blind)"]),
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


def test_not_yaml_and_not_a_mapping(tmp_path):
    path = tmp_path / "params.yaml"
    for text, words in (("seed: [1,\n", "not valid YAML"), ("- 1\n- 2\n", "a mapping of settings")):
        path.write_text(text)
        result = runner.invoke(app, ["pipeline", "--params", str(path), "--root", str(tmp_path)])
        assert result.exit_code == 2 and words in result.output
        assert not (tmp_path / "dvc.yaml").exists()
