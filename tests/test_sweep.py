"""gps sweep: the paper's comparison queued as DVC experiments, and gps report on them."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from conftest import ROOT, small_params
from stages.main import registered_app

app = registered_app()
from stages.pipeline.generate import write_pipeline
from stages.tools.report import runs_from_experiments
from stages.sweep.queue import parse_seeds
from test_dvc_pipeline import BIN, env, run

runner = CliRunner()


def tiny_obstacle() -> dict:
    params = small_params(iterations=1)
    params["task"]["T"] = 10
    params["agent"]["num_samples"] = 2
    params["policy"]["iterations"] = 20
    return params


def make_repo(path: Path, with_dvc: bool = True) -> Path:
    """A git (+ DVC) repository whose configs/obstacle.yaml is a tiny obstacle run, everything committed."""
    path.mkdir(parents=True)
    for name in ("gps_core", "stages"):
        shutil.copytree(ROOT / name, path / name, ignore=shutil.ignore_patterns("__pycache__"))
    (path / "configs").mkdir()
    params = tiny_obstacle()
    (path / "configs" / "obstacle.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    shutil.copy(path / "configs" / "obstacle.yaml", path / "params.yaml")
    write_pipeline(params, path / "params.yaml", path)
    run(["git", "init", "-q"], path)
    if with_dvc:
        run([str(BIN / "dvc"), "init", "-q"], path)
        run([str(BIN / "dvc"), "config", "core.analytics", "false"], path)
    run(["git", "add", "-A"], path)
    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "tiny"], path)
    return path


def test_parse_seeds():
    assert parse_seeds("0-3") == [0, 1, 2, 3]
    assert parse_seeds("5,1-2") == [1, 2, 5]


def test_dry_run_lists_one_experiment_per_task_method_seed(monkeypatch):
    monkeypatch.chdir(ROOT)
    result = runner.invoke(app, ["sweep", "--tasks", "peg,obstacle", "--methods", "badmm,on_global", "--seeds", "0-2", "--dry-run"])
    assert result.exit_code == 0, result.output
    queued = [line for line in result.output.splitlines() if line.startswith("dvc exp run --queue")]
    assert len(queued) == 2 * 2 * 3
    assert ("dvc exp run --queue -n peg-badmm-s2 -S algorithm.name=badmm -S algorithm.sample_on_policy=false -S seed=2"
            in queued)
    assert any("-n obstacle-on_global-s0 " in q and "-S algorithm.step_rule=global" in q for q in queued)


def test_bad_options_and_a_dirty_workspace_are_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    for args, words in ((["--tasks", "cartpole"], "--tasks has 'cartpole'"), (["--methods", "ppo"], "--methods has 'ppo'"),
                        (["--seeds", "a-b"], "--seeds is 'a-b'")):
        result = runner.invoke(app, ["sweep", *args, "--dry-run"])
        assert result.exit_code == 2 and words in result.output, result.output
    repo = make_repo(tmp_path / "repo", with_dvc=False)
    (repo / "params.yaml").write_text((repo / "params.yaml").read_text() + "# edited\n")
    monkeypatch.chdir(repo)
    result = runner.invoke(app, ["sweep", "--tasks", "obstacle", "--methods", "on_classic", "--seeds", "0"])
    assert result.exit_code == 2 and "uncommitted changes" in result.output
    assert (repo / "params.yaml").read_text().endswith("# edited\n")  # untouched


def test_report_reads_experiments_and_names_the_failed_ones(tmp_path):
    def exp(name, seed, task="peg", distances=(0.2, 0.05), error=None):
        params = {"seed": seed, "task": {"name": task}, "algorithm": {"name": "mdgps", "sample_on_policy": True, "step_rule": "classic"}}
        metrics = {f"data/itr_{k:02d}/metrics.json": {"data": {"iteration": k + 1, "final_distance": d, "success_0.1": float(d < 0.1)}}
                   for k, d in enumerate(distances)}
        return {"revs": [{"name": name, "rev": "abc", "error": error,
                          "data": {"params": {"params.yaml": {"data": params}}, "metrics": metrics}}]}
    doc = [{"rev": "workspace", "experiments": None},
           {"rev": "main", "experiments": [exp("a", 0), exp("b", 1, distances=(0.2, 0.2)), exp("c", 2, error={"msg": "x"})]}]
    runs, failed = runs_from_experiments(doc)
    assert [r.seed for r in runs] == [0, 1] and failed == ["c"]
    path = tmp_path / "show.json"
    path.write_text(json.dumps(doc))
    result = runner.invoke(app, ["report", "--exp-json", str(path), "--iterations", "2"])
    assert result.exit_code == 0, result.output
    assert "| Peg | 2 | 50.0 ± 50.0 (2) |" in result.stdout
    assert "1 experiment(s) failed or unfinished, left out: c" in result.stderr


@pytest.mark.slow
def test_sweep_queues_runs_and_report_reads_them(tmp_path):
    repo = make_repo(tmp_path / "repo")
    gps = str(BIN / "gps")
    proc = subprocess.run([gps, "sweep", "--tasks", "obstacle", "--methods", "badmm,on_classic", "--seeds", "3", "-j", "2"],
                          cwd=repo, env=env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "queued obstacle-badmm-s3" in proc.stdout and "queued obstacle-on_classic-s3" in proc.stdout
    assert run(["git", "status", "--porcelain"], repo).stdout == ""  # the workspace is as it was
    deadline = time.time() + 300
    while time.time() < deadline:
        status = run([str(BIN / "dvc"), "queue", "status"], repo).stdout
        if "Running" not in status and "Queued" not in status:
            break
        time.sleep(3)
    assert status.count("Success") == 2, status
    result = subprocess.run([gps, "report", "--experiments", "--iterations", "1"], cwd=repo, env=env(), capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "| Obstacle | 1 |" in result.stdout and "BADMM" in result.stdout and "On/Classic" in result.stdout
