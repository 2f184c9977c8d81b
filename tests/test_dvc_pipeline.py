"""End to end through DVC: a 2-iteration small run, and resuming after SIGKILL."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import psutil
import pytest
import yaml

from conftest import ROOT, small_params
from stages.pipeline import render_pipeline

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PATH"] = f"{BIN}{os.pathsep}{e.get('PATH', '')}"
    e["DVC_NO_ANALYTICS"] = "1"
    return e


def run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def make_workspace(path: Path) -> Path:
    """A fresh git + DVC repository with the project's code and the small params."""
    path.mkdir(parents=True)
    for name in ("gps_core", "stages"):
        shutil.copytree(ROOT / name, path / name, ignore=shutil.ignore_patterns("__pycache__"))
    params = small_params()
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (path / "dvc.yaml").write_text(render_pipeline(params))
    run(["git", "init", "-q"], path)
    run([str(BIN / "dvc"), "init", "-q"], path)
    run([str(BIN / "dvc"), "config", "core.analytics", "false"], path)
    return path


def datasets(path: Path) -> dict[str, np.ndarray]:
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda n, o: out.__setitem__(n, o[()]) if isinstance(o, h5py.Dataset) else None)
    return out


def artifacts(ws: Path) -> list[Path]:
    return sorted(p.relative_to(ws) for p in (ws / "data").rglob("*.h5"))


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    ws = make_workspace(tmp_path_factory.mktemp("dvc") / "ws")
    run([str(BIN / "dvc"), "repro"], ws)
    return ws


def test_repro_runs_every_stage_and_writes_metrics(finished):
    ws = finished
    metrics = json.loads((ws / "data" / "metrics.json").read_text())
    assert metrics["iteration"] == 2
    curve = (ws / "data" / "learning_curve.csv").read_text().splitlines()
    assert len(curve) == 3
    shown = run([str(BIN / "dvc"), "metrics", "show", "--json"], ws)
    assert "final_distance" in shown.stdout
    again = run([str(BIN / "dvc"), "repro"], ws)
    assert "up to date" in again.stdout


def test_sigkill_then_repro_redoes_only_unfinished_work(finished, tmp_path):
    """Also the determinism check: every artifact of the resumed run, made in two separate
    runs, equals the uninterrupted run's bit for bit."""
    ws = make_workspace(tmp_path / "ws")
    proc = subprocess.Popen([str(BIN / "dvc"), "repro"], cwd=ws, env=env(), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # Kill while the iteration-0 S-step runs (it takes seconds: torch import plus
    # training), not while DVC rewrites dvc.lock: DVC does not write that file
    # atomically, and recovering from a torn lock file is a separate feature.
    marker = ws / "data" / "itr_00" / "controllers.h5"
    deadline = time.time() + 120
    stage = None
    while stage is None and time.time() < deadline and proc.poll() is None:
        if marker.exists():
            stage = next((p for p in psutil.Process(proc.pid).children(recursive=True)
                          if "s-step" in " ".join(p.cmdline())), None)
        time.sleep(0.05)
    assert stage is not None, "the run did not get far enough to be interrupted"
    time.sleep(0.5)
    assert stage.is_running(), "the S-step finished before it could be interrupted"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (ws / "data" / "itr_00" / "policy.h5").exists(), "a killed stage left its output behind"
    resumed = run([str(BIN / "dvc"), "repro"], ws)
    log = resumed.stdout
    for done in ("init", "sample_00", "fit_dynamics_00", "catch_up", "fit_policy_00", "c_step_00"):
        assert f"Running stage '{done}'" not in log, f"{done} finished before the kill but ran again:\n{log}"
    for todo in ("s_step_00", "evaluate_00", "sample_01", "summary"):
        assert f"Running stage '{todo}'" in log, f"{todo} did not run after the resume:\n{log}"
    # The resumed run's artifacts equal those of the uninterrupted run, dataset by dataset.
    assert artifacts(ws) == artifacts(finished)
    for rel in artifacts(ws):
        a, b = datasets(ws / rel), datasets(finished / rel)
        assert a.keys() == b.keys(), rel
        for name in a:
            np.testing.assert_array_equal(a[name], b[name], err_msg=f"{rel}:{name}")


def test_resume_sets_aside_a_torn_lock_file_and_restores_from_run_cache(finished):
    ws = finished
    lock = ws / "dvc.lock"
    intact = lock.read_text()
    before = {rel: datasets(ws / rel) for rel in artifacts(ws)}
    # Cut the file inside an entry, as a SIGKILL during DVC's non-atomic rewrite does.
    cut = intact.index("  fit_policy_01:") + 25
    lock.write_text(intact[:cut])
    assert run([str(BIN / "dvc"), "status"], ws, check=False).returncode != 0, "DVC should refuse the torn lock"
    resumed = run([str(BIN / "gps"), "resume"], ws)
    assert "moved it to" in resumed.stderr and (ws / "dvc.lock.broken").exists()
    assert "Running stage" not in resumed.stdout, "finished stages should come from the run-cache"
    assert run([str(BIN / "dvc"), "status"], ws).returncode == 0
    for rel, data in before.items():
        for name, value in data.items():
            np.testing.assert_array_equal(datasets(ws / rel)[name], value)


def test_a_param_read_only_by_later_stages_leaves_earlier_stages_valid(finished):
    ws = finished
    params_file = ws / "params.yaml"
    original = params_file.read_text()
    params = yaml.safe_load(original)
    params["evaluation"]["success_thresholds"] = [0.25]
    try:
        params_file.write_text(yaml.safe_dump(params, sort_keys=False))
        status = json.loads(run([str(BIN / "dvc"), "status", "--json"], ws).stdout)
    finally:
        params_file.write_text(original)
    assert set(status) == {"evaluate_00", "evaluate_01"}, status
