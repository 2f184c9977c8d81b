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


def small_params(iterations: int = 2) -> dict:
    """The default params shrunk: 2 conditions, 3 samples, T = 30, short S-steps."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params = copy.deepcopy(params)
    params["iterations"] = iterations
    params["agent"]["T"] = 30
    params["agent"]["num_samples"] = 3
    params["agent"]["qpos0"] = [[0.0, -0.75], [0.0, 0.75]]
    params["policy"]["iterations"] = 60
    return params


@pytest.fixture
def small_params_file(tmp_path: Path) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(small_params()))
    return path
