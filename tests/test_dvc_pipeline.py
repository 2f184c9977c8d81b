"""End to end through DVC: a 2-iteration small run, and resuming after SIGKILL at several points."""

from __future__ import annotations

import json
import os
import re
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

from conftest import ROOT, copy_run, small_params
from stages.pipeline.generate import build_pipeline, write_pipeline

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


def make_workspace(path: Path, params: dict | None = None) -> Path:
    """A fresh git + DVC repository with the project's code and `params` (default: the small
    MDGPS params, with S-steps long enough to be killed in the worker)."""
    path.mkdir(parents=True)
    for name in ("gps_core", "stages"):
        shutil.copytree(ROOT / name, path / name, ignore=shutil.ignore_patterns("__pycache__"))
    if params is None:
        params = small_params()
        params["policy"]["iterations"] = S_STEP_ITERATIONS
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    write_pipeline(params, path / "params.yaml", path)
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


def test_repro_runs_every_stage_and_writes_metrics(finished_dvc_run, tmp_path):
    ws = finished_dvc_run
    metrics = json.loads((ws / "data" / "metrics.json").read_text())
    assert metrics["iteration"] == 2
    curve = (ws / "data" / "learning_curve.csv").read_text().splitlines()
    assert len(curve) == 3
    shown = run([str(BIN / "dvc"), "metrics", "show", "--json"], ws)
    assert "final_distance" in shown.stdout
    again = run([str(BIN / "dvc"), "repro"], copy_run(ws, tmp_path / "ws"))
    assert "up to date" in again.stdout


# The points of a 2-iteration run where the test kills DVC (and its stage processes), in pipeline
# order: (stage, regex of the running stage's command line and seconds into it, or None to kill
# between two stages, once `stage` has written its outputs and no stage process runs: DVC is then
# hashing, caching or rewriting dvc.lock; and whether the run uses the warm worker). Each point
# costs a DVC start-up and a rerun of the stage. Through the worker, sampling and the C-step of
# this small run take under 0.1 s, too short to hit reliably, so those kills land in stages run
# as processes of their own (GPS_WORKER=0); the S-step is made long enough to be killed in the
# worker (S_STEP_ITERATIONS).
KILL_POINTS = [
    ("sample_00", (r"^gps sample -i 0 ", 0.3), False),  # sampling (mujoco rollouts, cost expansion)
    ("s_step_00", (r"^gps s-step -i 0 (?!.*catch_up)", 0.3), True),  # the S-step, while torch trains
    ("c_step_01", (r"^gps c-step -i 1 ", 0.3), False),  # the C-step of iteration 1 (after adjust_step_01)
    ("s_step_01", None, True),  # between s_step_01 and evaluate_01
]
S_STEP_ITERATIONS = 10000  # 1.5-3 s of training in the worker (3000 took under the 0.3 s wait once, on a fast day)
STAGES = build_pipeline(2)["stages"]
ORDER = list(STAGES)


def stage_processes(proc: subprocess.Popen) -> list[tuple[psutil.Process, str]]:
    """The processes of the stage DVC is running (its shell and the gps process), with their command lines."""
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    found = []
    for child in children:
        try:
            match = re.search(r"(?:^|[\s/])(gps\s.*)$", " ".join(child.cmdline()))
        except psutil.Error:
            continue
        if match:
            found.append((child, match.group(1)))
    return found


def worker_children() -> list[psutil.Process]:
    """The commands the tests' warm workers are running (stages/worker/server.py forks one per `gps` call)."""
    folder = os.environ["GPS_WORKER_DIR"]
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if "stages.worker.server" in cmd and folder in cmd:
            found.extend(p.children())
    return found


def alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def kill_at(proc: subprocess.Popen, ws: Path, stage: str, during: tuple[str, float] | None, log: Path) -> list[psutil.Process]:
    """Wait for the kill point, then SIGKILL the whole process group (DVC and the stage it runs)."""
    outs = [ws / o for o in STAGES[stage]["outs"]]
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        running = stage_processes(proc)
        if during is not None:
            pattern, delay = during
            hits = [p for p, line in running if re.search(pattern, line)]
            if hits:
                time.sleep(delay)
                assert all(alive(p) for p in hits), f"{stage} finished before it could be interrupted"
                os.killpg(proc.pid, signal.SIGKILL)
                return hits
        elif all(o.exists() for o in outs) and not running:
            os.killpg(proc.pid, signal.SIGKILL)
            return []
        time.sleep(0.01)
    raise AssertionError(f"the run never reached the kill point of {stage} (exit {proc.poll()}):\n{log.read_text()[-3000:]}")


def stages_run(log_text: str) -> list[str]:
    """Names of the stages DVC ran (without the `pipelines/itr_kk/<step>/dvc.yaml:` of iteration stages)."""
    return [name.rsplit(":", 1)[-1] for name in re.findall(r"Running stage '([^']+)'", log_text)]


def test_sigkill_at_several_points_then_resume_is_bit_identical(finished_dvc_run, tmp_path):
    """Kill the run four times (during sampling, the S-step and the C-step, and between two stages),
    each time resuming with `dvc repro` or `gps resume`, which the next kill interrupts in turn.

    After every kill: the killed stage left no output, every file present equals the uninterrupted
    run's, and the resumed run did not redo finished stages. At the end, also the determinism check:
    every artifact, made across five runs of DVC, equals the uninterrupted run's bit for bit."""
    finished = finished_dvc_run
    ws = make_workspace(tmp_path / "ws")
    e = dict(env(), PYTHONUNBUFFERED="1")  # DVC's log up to the kill
    command = [str(BIN / "dvc"), "repro"]
    finished_before: set[str] = set()
    for n, (stage, during, worker) in enumerate(KILL_POINTS):
        log = tmp_path / f"run{n}.log"
        with log.open("w") as out:
            proc = subprocess.Popen(command, cwd=ws, env=dict(e, GPS_WORKER="1" if worker else "0"), start_new_session=True, stdout=out, stderr=subprocess.STDOUT)
            try:
                killed = kill_at(proc, ws, stage, during, log)
            finally:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        where = f"kill {n} ({'during' if during else 'after'} {stage})"
        psutil.wait_procs(killed, timeout=10)
        assert not any(alive(p) for p in killed), f"{where}: a stage process survived the kill"
        _, left = psutil.wait_procs(worker_children(), timeout=10)
        assert not left, f"{where}: the warm worker still runs the killed stage"
        again = set(stages_run(log.read_text())) & finished_before
        assert not again, f"{where}: {sorted(again)} finished before the previous kill but ran again:\n{log.read_text()}"
        if during is not None:
            for o in STAGES[stage]["outs"]:
                assert not (ws / o).exists(), f"{where}: the killed stage left its output {o} behind"
        for rel in artifacts(ws):  # whatever exists is complete and right
            assert_same_datasets(ws / rel, finished / rel)
        finished_before = set(ORDER[: ORDER.index(stage)])  # (a stage killed just after its end may rerun)
        # a kill during a stage leaves dvc.lock intact, so plain `dvc repro` resumes; between stages
        # DVC may have been rewriting dvc.lock, which `gps resume` sets aside if it is torn
        command = [str(BIN / "dvc"), "repro"] if during is not None else [str(BIN / "gps"), "resume"]
    assert command[-1] == "resume"
    resumed = subprocess.run(command, cwd=ws, env=e, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    again = set(stages_run(resumed.stdout)) & finished_before
    assert not again, f"final resume: {sorted(again)} ran again:\n{resumed.stdout}"
    assert "summary" in stages_run(resumed.stdout)
    assert not list((ws / "data").rglob("*.tmp")), "gps resume left temporary files of killed stages"
    assert "up to date" in run([str(BIN / "dvc"), "status"], ws).stdout
    # The resumed run's artifacts equal those of the uninterrupted run, dataset by dataset.
    assert artifacts(ws) == artifacts(finished)
    for rel in artifacts(ws):
        assert_same_datasets(ws / rel, finished / rel)


def assert_same_datasets(a: Path, b: Path) -> None:
    da, db = datasets(a), datasets(b)
    assert da.keys() == db.keys(), a
    for name in da:
        np.testing.assert_array_equal(da[name], db[name], err_msg=f"{a}:{name}")
        assert da[name].dtype == db[name].dtype and da[name].tobytes() == db[name].tobytes(), f"{a}:{name}"


def test_resume_sets_aside_a_torn_dvc_rwlock(finished_dvc_run, tmp_path):
    """A kill while DVC rewrites .dvc/tmp/rwlock (around every stage) leaves it empty."""
    finished = copy_run(finished_dvc_run, tmp_path / "ws")
    rwlock = finished / ".dvc" / "tmp" / "rwlock"
    rwlock.write_text("")
    refused = run([str(BIN / "dvc"), "repro"], finished, check=False)
    assert refused.returncode != 0 and "rwlock" in refused.stderr + refused.stdout
    resumed = run([str(BIN / "gps"), "resume"], finished)
    assert "rwlock was unreadable (empty); moved it to" in resumed.stderr
    assert "Running stage" not in resumed.stdout
    assert "up to date" in run([str(BIN / "dvc"), "status"], finished).stdout


def test_resume_sets_aside_a_torn_lock_file_and_restores_from_run_cache(finished_dvc_run, tmp_path):
    ws = copy_run(finished_dvc_run, tmp_path / "ws")
    lock = ws / "pipelines" / "itr_01" / "fit_policy" / "dvc.lock"  # the stage's own lock file
    intact = lock.read_text()
    before = {rel: datasets(ws / rel) for rel in artifacts(ws)}
    # Cut the file inside its entry, as a SIGKILL during DVC's non-atomic rewrite does.
    cut = intact.index("  fit_policy_01:") + 25
    lock.write_text(intact[:cut])
    assert run([str(BIN / "dvc"), "status"], ws, check=False).returncode != 0, "DVC should refuse the torn lock"
    resumed = run([str(BIN / "gps"), "resume"], ws)
    assert "moved it to" in resumed.stderr and lock.with_name("dvc.lock.broken").exists()
    assert "Running stage" not in resumed.stdout, "finished stages should come from the run-cache"
    assert run([str(BIN / "dvc"), "status"], ws).returncode == 0
    for rel, data in before.items():
        for name, value in data.items():
            np.testing.assert_array_equal(datasets(ws / rel)[name], value)


def test_a_param_read_only_by_later_stages_leaves_earlier_stages_valid(finished_dvc_run, tmp_path):
    ws = copy_run(finished_dvc_run, tmp_path / "ws")
    params_file = ws / "params.yaml"
    params = yaml.safe_load(params_file.read_text())
    params["evaluation"]["success_thresholds"] = [0.25]
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    status = json.loads(run([str(BIN / "dvc"), "status", "--json"], ws).stdout)
    assert set(status) == {"pipelines/itr_00/evaluate/dvc.yaml:evaluate_00", "pipelines/itr_01/evaluate/dvc.yaml:evaluate_01"}, status
