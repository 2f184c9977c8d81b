"""Shared fixtures: a small obstacle configuration that runs in seconds."""

from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path

import pytest
import yaml

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def worker_folder(tmp_path_factory):
    """The warm workers started by the tests' `gps` processes (DVC runs them) live in a folder
    of the session and are stopped at its end."""
    folder = tmp_path_factory.mktemp("gps_workers")
    folder.chmod(0o700)
    os.environ["GPS_WORKER_DIR"] = str(folder)
    yield folder
    from stages.worker.client import stop_workers

    stop_workers(folder)


def task_params(task: str) -> dict:
    """The shipped settings of a task (configs/<task>.yaml)."""
    return yaml.safe_load((ROOT / "configs" / f"{task}.yaml").read_text())


def small_params(iterations: int = 2) -> dict:
    """The obstacle task shrunk: 2 conditions, 3 samples, T = 30, short S-steps."""
    params = copy.deepcopy(task_params("obstacle"))
    params["iterations"] = iterations
    params["task"]["T"] = 30
    params["agent"]["num_samples"] = 3
    params["task"]["conditions"] = [{"qpos": [0.0, -0.75]}, {"qpos": [0.0, 0.75]}]
    params["policy"]["iterations"] = 60
    return params


def small_peg_params(task: str = "peg", iterations: int = 1) -> dict:
    """A peg task shrunk: its first 2 conditions, 3 samples, T = 20, short S-steps."""
    params = copy.deepcopy(task_params(task))
    params["iterations"] = iterations
    params["task"]["T"] = 20
    params["agent"]["num_samples"] = 3
    params["task"]["conditions"] = params["task"]["conditions"][:2]
    params["policy"]["iterations"] = 60
    return params


@pytest.fixture(scope="session")
def finished_dvc_run(tmp_path_factory) -> Path:
    """A git + DVC workspace (test_dvc_pipeline.make_workspace: the project's code, the small 2-iteration
    MDGPS params with long S-steps) after a finished `dvc repro`, made once per session.

    Read it, never change it (not even by running DVC in it): a test that edits, breaks or reruns
    it works on its own copy, copy_run(finished_dvc_run, tmp_path / "ws"), a few MB copied instead
    of a repro of about 10 s."""
    from test_dvc_pipeline import BIN, make_workspace, run

    ws = make_workspace(tmp_path_factory.mktemp("dvc") / "ws")
    run([str(BIN / "dvc"), "repro"], ws)
    return ws


def copy_run(run: Path, to: Path) -> Path:
    """A copy of a finished run (its files, and for a DVC workspace its cache, run-cache and lock
    files) for a test to change; file times are kept. Returns `to`."""
    shutil.copytree(run, to, symlinks=True)
    return to


@pytest.fixture
def small_params_file(tmp_path: Path) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(small_params()))
    return path


def gps(*args) -> None:
    """Run a `gps` command in-process; fail the test with its output if it fails."""
    from typer.testing import CliRunner

    from stages.main import registered_app

    app = registered_app()

    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output + repr(result.exception)


def run_stages_by_hand(d: Path, params: Path, iterations: int) -> None:
    """Every stage of `iterations` iterations in pipeline order, as dvc.yaml runs them, into d/init, d/itr_NN."""
    p = ["--params", params]
    init = d / "init"
    gps("init", *p, "--controllers-out", init / "controllers.h5", "--policy-out", init / "policy.h5",
        "--step-out", init / "step.h5")
    for k in range(iterations):
        itr, prev = d / f"itr_{k:02d}", d / f"itr_{k - 1:02d}"
        i = ["-i", k, *p]
        prev_c = init / "controllers.h5" if k == 0 else prev / "controllers.h5"
        prev_p = init / "policy.h5" if k == 0 else prev / "policy.h5"
        gps("sample", *i, "--controllers", prev_c, "--policy", prev_p, "--out", itr / "samples.h5")
        gps("fit-dynamics", *i, "--samples", itr / "samples.h5", *([] if k == 0 else ["--prev", prev / "dynamics.h5"]),
            "--out", itr / "dynamics.h5")
        if k == 0:
            gps("s-step", *i, "--stream", "catch_up", "--samples", itr / "samples.h5", "--controllers", prev_c,
                "--policy", prev_p, "--out", itr / "policy_catchup.h5")
            policy_in = itr / "policy_catchup.h5"
        else:
            policy_in = prev_p
        gps("fit-policy", *i, "--samples", itr / "samples.h5", "--policy", policy_in,
            *([] if k == 0 else ["--prev", prev / "policy_lin.h5"]), "--out", itr / "policy_lin.h5")
        step = init / "step.h5"
        if k > 0:
            step = itr / "step.h5"
            prev_step = init / "step.h5" if k == 1 else prev / "step.h5"
            gps("adjust-step", *i, "--prev-samples", prev / "samples.h5", "--prev-dynamics", prev / "dynamics.h5",
                "--prev-policy-lin", prev / "policy_lin.h5", "--prev-controllers", prev_c, "--prev-step", prev_step,
                "--samples", itr / "samples.h5", "--dynamics", itr / "dynamics.h5", "--policy-lin", itr / "policy_lin.h5",
                "--out", step)
        gps("c-step", *i, "--samples", itr / "samples.h5", "--dynamics", itr / "dynamics.h5", "--policy-lin",
            itr / "policy_lin.h5", "--step", step, "--prev-controllers", prev_c, "--out", itr / "controllers.h5")
        gps("s-step", *i, "--samples", itr / "samples.h5", "--controllers", itr / "controllers.h5",
            "--policy", policy_in, "--out", itr / "policy.h5")
        gps("evaluate", *i, "--policy", itr / "policy.h5", "--samples", itr / "samples.h5", "--controllers",
            itr / "controllers.h5", "--step", step, "--out", itr / "eval.h5", "--metrics", itr / "metrics.json")


def small_badmm_params(iterations: int = 2) -> dict:
    """small_params() run by BADMM: local-controller samples, the obstacle task's BADMM settings."""
    params = small_params(iterations)
    params["algorithm"]["name"] = "badmm"
    params["algorithm"]["sample_on_policy"] = False
    return params


def run_badmm_stages_by_hand(d: Path, params: Path, iterations: int) -> None:
    """Every stage of a BADMM pipeline (algorithm.name: badmm) in order, as its dvc.yaml runs them, into d/init, d/itr_NN."""
    p = ["--params", params]
    init = d / "init"
    gps("init", *p, "--controllers-out", init / "controllers.h5", "--policy-out", init / "policy.h5",
        "--step-out", init / "step.h5", "--duals-out", init / "duals.h5")
    for k in range(iterations):
        itr, prev, prev2 = d / f"itr_{k:02d}", d / f"itr_{k - 1:02d}", d / f"itr_{k - 2:02d}"
        i = ["-i", k, *p]
        prev_c = init / "controllers.h5" if k == 0 else prev / "controllers.h5"
        prev_p = init / "policy.h5" if k == 0 else prev / "policy.h5"
        prev_d = init / "duals.h5" if k == 0 else prev / "duals.h5"
        gps("sample", *i, "--controllers", prev_c, "--policy", prev_p, "--out", itr / "samples.h5")
        gps("fit-dynamics", *i, "--samples", itr / "samples.h5", *([] if k == 0 else ["--prev", prev / "dynamics.h5"]),
            "--out", itr / "dynamics.h5")
        gps("fit-policy", *i, "--samples", itr / "samples.h5", "--policy", prev_p,
            *([] if k == 0 else ["--prev", prev / "policy_lin_final.h5"]), "--out", itr / "policy_lin.h5")
        step = init / "step.h5"
        if k > 0:
            step = itr / "step.h5"
            gps("badmm-adjust-step", *i, "--prev-samples", prev / "samples.h5", "--prev-dynamics", prev / "dynamics.h5",
                "--prev-policy-lin", prev / "policy_lin_final.h5",
                "--prev-prev-controllers", init / "controllers.h5" if k == 1 else prev2 / "controllers.h5",
                "--prev-controllers", prev_c, "--prev-step", init / "step.h5" if k == 1 else prev / "step.h5",
                "--prev-duals", prev_d, "--samples", itr / "samples.h5", "--dynamics", itr / "dynamics.h5",
                "--policy-lin", itr / "policy_lin.h5", "--out", step)
        gps("badmm-inner", *i, "--samples", itr / "samples.h5", "--dynamics", itr / "dynamics.h5",
            "--policy-lin", itr / "policy_lin.h5", "--policy", prev_p, "--prev-controllers", prev_c, "--step", step,
            "--duals", prev_d, "--controllers-out", itr / "controllers.h5", "--policy-out", itr / "policy.h5",
            "--duals-out", itr / "duals.h5", "--policy-lin-out", itr / "policy_lin_final.h5", "--inner-out", itr / "inner.h5")
        gps("evaluate", *i, "--policy", itr / "policy.h5", "--samples", itr / "samples.h5", "--controllers",
            itr / "controllers.h5", "--step", step, "--out", itr / "eval.h5", "--metrics", itr / "metrics.json")
