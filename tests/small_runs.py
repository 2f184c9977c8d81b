"""Small real runs shared by the tests that read them (inspect, status, plot, render, progress, worker,
the reference runs, the BADMM pipeline through DVC).

Each run is made once per test session (the first test module that asks makes
it) so that the modules together add only a few seconds. Tests read these runs and never change
them: a test that needs to change one works on a copy (conftest.copy_run).
"""

from __future__ import annotations

from pathlib import Path

import yaml

from conftest import gps, run_badmm_stages_by_hand, run_stages_by_hand, small_badmm_params, small_params, small_peg_params

_made: dict[str, Path] = {}


def _run_once(key: str, tmp_path_factory, params: dict, run_by_hand) -> Path:
    """<dir>/params.yaml and <dir>/data/ of two iterations of every stage, run by `run_by_hand` once per session."""
    if key not in _made:
        d = tmp_path_factory.mktemp(f"{key}_run")
        (d / "params.yaml").write_text(yaml.safe_dump(params))
        run_by_hand(d / "data", d / "params.yaml", 2)
        _made[key] = d
    return _made[key]


def obstacle_run(tmp_path_factory) -> Path:
    """Two iterations of every stage on the small obstacle task: <dir>/params.yaml and <dir>/data/."""
    return _run_once("obstacle", tmp_path_factory, small_params(2), run_stages_by_hand)


def badmm_run(tmp_path_factory) -> Path:
    """Two iterations of every BADMM stage on the small obstacle task: <dir>/params.yaml and <dir>/data/."""
    return _run_once("badmm", tmp_path_factory, small_badmm_params(2), run_badmm_stages_by_hand)


def peg_start(tmp_path_factory) -> Path:
    """The small peg task's init and first samples: <dir>/params.yaml, data/init/*, data/itr_00/samples.h5."""
    if "peg" not in _made:
        d = tmp_path_factory.mktemp("peg_start")
        (d / "params.yaml").write_text(yaml.safe_dump(small_peg_params()))
        init, p = d / "data" / "init", ["--params", d / "params.yaml"]
        gps("init", *p, "--controllers-out", init / "controllers.h5", "--policy-out", init / "policy.h5",
            "--step-out", init / "step.h5")
        gps("sample", "-i", 0, *p, "--controllers", init / "controllers.h5", "--policy", init / "policy.h5",
            "--out", d / "data" / "itr_00" / "samples.h5")
        _made["peg"] = d
    return _made["peg"]
