"""The shipped tasks: presets, `gps configure`, the blind variant's observation, and the paper's scoring."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from conftest import ROOT, run_stages_by_hand, small_peg_params, task_params
from typer.testing import CliRunner

from gps_core.scoring import final_distance, success, success_table
from stages.main import registered_app

app = registered_app()
from stages.pipeline.generate import check_in_sync
from stages.settings.schema import validate_params

runner = CliRunner()
TASKS = ("obstacle", "peg", "peg_blind")


@pytest.mark.parametrize("task", TASKS)
def test_presets_are_valid_and_match_the_paper(task):
    params = task_params(task)
    validate_params(params, task)
    from gps_core.sim.task import compile_task

    section = params["task"]
    compiled = compile_task(section)
    M = {"obstacle": 5, "peg": 9, "peg_blind": 4}[task]
    assert section["name"] == task and len(section["conditions"]) == M and len(compiled.train) == M
    assert Path(compiled.model_path).name == ("obstacle.xml" if task == "obstacle" else "peg.xml")
    assert params["iterations"] == (15 if task == "obstacle" else 12)
    if task != "obstacle":
        assert section["offset_body"] == "r_shoulder_pan_link"  # the arm's base (body 1)
        assert compiled.offset_body == 1
        offsets = np.array([c["offset"] for c in section["conditions"]])
        assert offsets.shape == (M, 3) and len({tuple(o) for o in offsets}) == M  # distinct conditions
        assert np.abs(offsets).max() == (0.1 if task == "peg" else 0.012)
        assert (compiled.dX, compiled.dO) == ((26, 26) if task == "peg" else (26, 14))
        assert params["evaluation"]["success_thresholds"] == [0.06, 0.1]
    else:
        assert "offset_body" not in section and (compiled.dX, compiled.dO) == (10, 10)


@pytest.mark.parametrize("task", TASKS)
def test_presets_survive_dvc_rewriting_them(task):
    """`dvc exp run -S` rewrites params.yaml with ruamel; every value must come back bit for bit,
    or every stage that reads it reruns (exponent-form floats such as 9.009009009009009e-3 do not)."""
    import io

    from ruamel.yaml import YAML

    text = (ROOT / "configs" / f"{task}.yaml").read_text()
    rt = YAML()
    out = io.StringIO()
    rt.dump(rt.load(text), out)
    assert yaml.safe_load(out.getvalue()) == yaml.safe_load(text)


def test_default_run_is_peg_on_policy_classic():
    assert (ROOT / "params.yaml").read_text() == (ROOT / "configs" / "peg.yaml").read_text()
    params = task_params("peg")
    assert params["algorithm"]["sample_on_policy"] and params["algorithm"]["step_rule"] == "classic"


def test_configure_writes_params_and_pipeline(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # presets are read from ./configs
    params = tmp_path / "params.yaml"
    result = runner.invoke(app, ["configure", "peg_blind", "--params", str(params), "--root", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert params.read_text() == (ROOT / "configs" / "peg_blind.yaml").read_text()
    check_in_sync(yaml.safe_load(params.read_text()), params, tmp_path)
    bad = runner.invoke(app, ["configure", "cartpole", "--params", str(params), "--root", str(tmp_path)])
    assert bad.exit_code == 2 and "configs/cartpole.yaml" in bad.output and "peg_blind" in bad.output
    assert params.read_text() == (ROOT / "configs" / "peg_blind.yaml").read_text()  # untouched


@pytest.fixture(scope="module")
def blind_run(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("blind")
    params = d / "params.yaml"
    params.write_text(yaml.safe_dump(small_peg_params("peg_blind", iterations=1)))
    run_stages_by_hand(d, params, 1)
    return d


def test_blind_policy_sees_joints_only_while_controllers_see_the_state(blind_run):
    with h5py.File(blind_run / "itr_00" / "samples.h5") as f:
        X, obs = f["X"][()], f["obs"][()]
    assert X.shape[-1] == 26 and obs.shape[-1] == 14
    np.testing.assert_array_equal(obs, X[..., :14])  # joint angles and velocities
    with h5py.File(blind_run / "itr_00" / "policy.h5") as f:
        assert f["policy/W0"].shape == (40, 14)  # the network's input is the observation
    with h5py.File(blind_run / "itr_00" / "controllers.h5") as f:
        assert f["K"].shape[-1] == 26  # local controllers act on the whole state
    with h5py.File(blind_run / "itr_00" / "policy_lin.h5") as f:
        assert f["K"].shape[-1] == 26  # the linearisation is in state space too


def test_peg_evaluation_scores_the_peg_bottom(blind_run):
    metrics = json.loads((blind_run / "itr_00" / "metrics.json").read_text())
    with h5py.File(blind_run / "itr_00" / "eval.h5") as f:
        X, dist = f["X"][()], f["final_distance"][()]
    expected = np.linalg.norm(X[:, -1, 14:17] - np.array([0.0, 0.3, -0.5]), axis=-1)
    np.testing.assert_allclose(dist, expected, rtol=0, atol=1e-15)
    for tau in (0.06, 0.1):
        assert metrics[f"success_{tau:g}"] == pytest.approx(np.mean(expected < tau))
        assert metrics["per_condition"][f"success_{tau:g}"] == {f"c{m}": float(d < tau) for m, d in enumerate(expected)}


def test_scoring_functions():
    X = np.zeros((3, 5, 20))
    X[:, -1, 14:17] = [[0.0, 0.3, -0.5], [0.0, 0.3, -0.44], [0.1, 0.3, -0.5]]
    X[:, 0, 14:17] = 9.0  # only the final step counts
    d = final_distance(X, 14, np.array([0.0, 0.3, -0.5]))
    np.testing.assert_allclose(d, [0.0, 0.06, 0.1], atol=1e-12)
    np.testing.assert_array_equal(success(np.array([0.0, 0.06, 0.1]), 0.06), [1.0, 0.0, 0.0])  # strictly below
    np.testing.assert_array_equal(success(np.array([0.0, 0.0599, 0.1]), 0.1), [1.0, 1.0, 0.0])
    mean, std = success_table([[1 / 3, 1.0], [2 / 3, 1.0], [1.0, 0.0]])  # runs x iterations
    np.testing.assert_allclose(mean, [66.666667, 66.666667], rtol=1e-6)
    np.testing.assert_allclose(std, [np.std([100 / 3, 200 / 3, 100]), np.std([100, 100, 0])])
