"""End to end through DVC on a task nobody here wrote: `gps configure reacher`, then `dvc repro`
trains on Gymnasium's Reacher model and scores the last policy in gymnasium.make("Reacher-v5")."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from conftest import ROOT
from test_dvc_pipeline import BIN, run

pytestmark = pytest.mark.slow


def test_configure_reacher_and_repro_train_and_score_it_in_gymnasium(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    for name in ("gps_core", "stages", "configs"):
        shutil.copytree(ROOT / name, ws / name, ignore=shutil.ignore_patterns("__pycache__"))
    run(["git", "init", "-q"], ws)
    run([str(BIN / "dvc"), "init", "-q"], ws)
    out = run([str(BIN / "gps"), "configure", "reacher"], ws).stdout
    assert "task reacher" in out
    # The shipped settings shrunk to a short run: 2 iterations, 4 training and 2 held-out targets, T as shipped.
    params = yaml.safe_load((ws / "params.yaml").read_text())
    assert params["task"]["model"] == "gymnasium/envs/mujoco/assets/reacher.xml"
    params["iterations"] = 2
    params["task"]["conditions"] = params["task"]["conditions"][:4]
    params["task"]["test_conditions"] = params["task"]["test_conditions"][:2]
    params["policy"]["iterations"] = 100
    params["gym_evaluation"]["episodes"] = 5
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run([str(BIN / "gps"), "pipeline"], ws)
    run([str(BIN / "dvc"), "repro"], ws)
    gym = json.loads((ws / "data" / "gym_eval.json").read_text())
    assert gym["env"] == "Reacher-v5" and gym["episodes"] == 5 and gym["reward_threshold"] == -3.75
    assert gym["observation_max_difference"] == 0.0
    assert gym["training_env_steps"] == 2 * 4 * 5 * 50
    shown = run([str(BIN / "dvc"), "metrics", "show", "--json"], ws).stdout
    assert "return_mean" in shown  # a DVC metric
    metrics = json.loads((ws / "data" / "metrics.json").read_text())
    assert "test_final_distance" in metrics and "test_success_0.05" in metrics
    assert "up to date" in run([str(BIN / "dvc"), "status"], ws).stdout
