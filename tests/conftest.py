"""Shared fixtures: a small obstacle configuration that runs in seconds."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import yaml

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

ROOT = Path(__file__).resolve().parents[1]


def task_params(task: str) -> dict:
    """The shipped settings of a task (configs/<task>.yaml)."""
    return yaml.safe_load((ROOT / "configs" / f"{task}.yaml").read_text())


def small_params(iterations: int = 2) -> dict:
    """The obstacle task shrunk: 2 conditions, 3 samples, T = 30, short S-steps."""
    params = copy.deepcopy(task_params("obstacle"))
    params["iterations"] = iterations
    params["agent"]["T"] = 30
    params["agent"]["num_samples"] = 3
    params["agent"]["qpos0"] = [[0.0, -0.75], [0.0, 0.75]]
    params["policy"]["iterations"] = 60
    return params


def small_peg_params(task: str = "peg", iterations: int = 1) -> dict:
    """A peg task shrunk: its first 2 conditions, 3 samples, T = 20, short S-steps."""
    params = copy.deepcopy(task_params(task))
    params["iterations"] = iterations
    params["agent"]["T"] = 20
    params["agent"]["num_samples"] = 3
    params["agent"]["qpos0"] = params["agent"]["qpos0"][:2]
    params["agent"]["body_offsets"] = params["agent"]["body_offsets"][:2]
    params["policy"]["iterations"] = 60
    return params


@pytest.fixture
def small_params_file(tmp_path: Path) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(small_params()))
    return path
