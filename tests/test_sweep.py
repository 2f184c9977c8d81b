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
from stages.sweep.queue import experiments, name_value, parse_seeds
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


def queued_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("dvc exp run --queue")]


def test_settings_and_grids_make_one_experiment_per_point_named_by_its_values(monkeypatch):
    monkeypatch.chdir(ROOT)
    result = runner.invoke(app, ["sweep", "--tasks", "obstacle", "--methods", "on_classic", "--seeds", "0,1", "--dry-run",
                                 "-S", "algorithm.kl_step=1, 2.5", "-S", "policy.hidden=[20, 20],[40]", "-S", "iterations=2"])
    assert result.exit_code == 0, result.output
    queued = queued_lines(result.output)
    names = [q.split(" -n ")[1].split()[0] for q in queued]
    # the cartesian product in the order given (the first setting slowest), then the seeds; fixed settings named too
    assert names == [f"obstacle-on_classic-kl_step={k}-hidden={h}-iterations=2-s{s}"
                     for k in ("1", "2.5") for h in ("_20__20_", "_40_") for s in (0, 1)]
    # the method's keys, then the settings as YAML flow text, then the seed
    assert queued[0].endswith("-S algorithm.step_rule=classic -S algorithm.kl_step=1 -S policy.hidden=[20, 20] "
                              "-S iterations=2 -S seed=0")


def test_settings_render_the_pipeline_of_their_params():
    one, two = experiments(["obstacle"], ["on_classic"], [0], ROOT, settings=["iterations=1,2"])
    assert (one.name, two.name) == ("obstacle-on_classic-iterations=1-s0", "obstacle-on_classic-iterations=2-s0")
    assert not any(f.startswith("pipelines/itr_01/") for f in one.files)
    assert "pipelines/itr_01/s_step/dvc.yaml" in two.files
    assert one.files["params.yaml"] == (ROOT / "configs" / "obstacle.yaml").read_text()  # DVC applies the -S items
    assert one.sets[-2:] == ("iterations=1", "seed=0")


def test_names_of_settings(tmp_path):
    [exp] = experiments(["obstacle"], ["badmm"], [4], ROOT, settings=["policy.iterations=50", "iterations=2"])
    assert exp.name == "obstacle-badmm-policy.iterations=50-iterations=2-s4"  # two keys end the same way: whole keys
    [exp] = experiments(["obstacle"], ["badmm"], [4], ROOT, settings=["algorithm.kl_step=1e-3"])
    assert exp.name == "obstacle-badmm-kl_step=0.001-s4" and "algorithm.kl_step=0.001" in exp.sets  # 1e-3 is a number
    assert [name_value(v) for v in ("a=b c", [1, 2], "../m.xml", True, 2.5)] == ["a_b_c", "_1__2_", "___m.xml", "true", "2.5"]
    for value in ("a=b c", [1, 2], "../m.xml", {"a": [1]}):  # git (and so DVC) takes them as experiment refs
        name = f"obstacle-on_classic-k={name_value(value)}-s0"
        assert subprocess.run(["git", "check-ref-format", f"refs/exps/ab/cdef/{name}"]).returncode == 0, name
    # values that differ only in characters the names replace would give two experiments one name
    models = [tmp_path / "a b.xml", tmp_path / "a_b.xml"]
    for model in models:
        shutil.copy(ROOT / "gps_core" / "assets" / "obstacle.xml", model)
    result = runner.invoke(app, ["sweep", "--tasks", "obstacle", "--methods", "on_classic", "--seeds", "0", "--dry-run",
                                 "-S", f"task.model='{models[0]}','{models[1]}'"])
    assert result.exit_code == 2 and "two experiments would be named" in result.output, result.output


@pytest.mark.parametrize("setting, words", [
    ("algorithm.kl_step", "-S 'algorithm.kl_step': expected KEY=VALUE"),
    ("algorithm.kl_stp=2", "-S algorithm.kl_stp: no such key in configs/obstacle.yaml"),
    ("algorithm=2", "-S algorithm: a section, not a setting"),
    ("seed=3", "-S seed: set by --seeds"),
    ("algorithm.sample_on_policy=false", "-S algorithm.sample_on_policy: set by --methods"),
    ("iterations=", "-S iterations=: an empty value"),
    ("iterations=1,,2", "-S iterations=1,,2: an empty value"),
    ("iterations=2,1,2.0", "-S iterations=2,1,2.0: 2.0 given twice"),
    ("iterations=[1", "-S iterations=[1: '[1' is not valid YAML"),
    ("algorithm.kl_step=.inf", "-S algorithm.kl_step=.inf: DVC reads -S values with Hydra's override grammar"),
    # the schema's message, about the settings rather than the sweep's temporary file
    ("algorithm.kl_step=1,-1", "configs/obstacle.yaml with --methods on_classic -S algorithm.kl_step=-1: "
                               "algorithm.kl_step is -1, expected a number > 0"),
])
def test_bad_settings_are_one_line_errors(monkeypatch, setting, words):
    monkeypatch.chdir(ROOT)
    result = runner.invoke(app, ["sweep", "--tasks", "obstacle", "--methods", "on_classic", "--seeds", "0", "--dry-run",
                                 "-S", setting])
    assert result.exit_code == 2 and words in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1 and ".params.sweep" not in result.output


def test_a_key_given_twice_is_refused(monkeypatch):
    monkeypatch.chdir(ROOT)
    result = runner.invoke(app, ["sweep", "--tasks", "obstacle", "--seeds", "0", "--dry-run", "-S", "iterations=1",
                                 "-S", "iterations=2"])
    assert result.exit_code == 2 and "-S iterations given twice" in result.output, result.output


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
    # a grid of two kl_step values and a fixed setting: two experiments, names with `=` and `.` (DVC takes them)
    proc = subprocess.run([gps, "sweep", "--tasks", "obstacle", "--methods", "on_classic", "--seeds", "3", "-j", "2",
                           "-S", "algorithm.kl_step=1,2.5", "-S", "agent.smooth_noise_var=1.5"],
                          cwd=repo, env=env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    names = ["obstacle-on_classic-kl_step=1-smooth_noise_var=1.5-s3", "obstacle-on_classic-kl_step=2.5-smooth_noise_var=1.5-s3"]
    assert [line for line in proc.stdout.splitlines() if line.startswith("queued ")][:2] == [f"queued {n}" for n in names]
    assert run(["git", "status", "--porcelain"], repo).stdout == ""  # the workspace is as it was
    deadline = time.time() + 300
    while time.time() < deadline:
        status = run([str(BIN / "dvc"), "queue", "status"], repo).stdout
        if "Running" not in status and "Queued" not in status:
            break
        time.sleep(3)
    assert status.count("Success") == 2, status
    # DVC's queue says Success when a run ends and collects its experiment into the repository after that
    # (a task of its own): wait for both refs before reading them
    deadline = time.time() + 60
    while time.time() < deadline:
        refs = run(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], repo).stdout.split()
        if all(any(ref.endswith(f"/{n}") for ref in refs) for n in names):
            break
        time.sleep(1)
    shown = json.loads(run([str(BIN / "dvc"), "exp", "show", "--json"], repo).stdout)
    recorded = {rev["name"]: rev["data"]["params"]["params.yaml"]["data"]
                for baseline in shown for exp in baseline.get("experiments") or [] for rev in exp["revs"]}
    assert sorted(recorded) == names
    assert [(p["algorithm"]["kl_step"], p["agent"]["smooth_noise_var"], p["seed"]) for p in map(recorded.get, names)] == [
        (1, 1.5, 3), (2.5, 1.5, 3)]
    # the default --iterations 3,6,9,12: the runs have 1 iteration, so that is the one row
    result = subprocess.run([gps, "report", "--experiments"], cwd=repo, env=env(), capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    table = result.stdout.split("### Final distance to the target")[1].strip().splitlines()
    assert table[0] == "| task | itr | On/Classic kl_step=1 | On/Classic kl_step=2.5 |"
    assert [row.split(" | ")[:2] for row in table[2:]] == [["| Obstacle", "1"]]


def test_the_reference_optimizers_are_sweep_methods():
    """Each of them renders its own pipeline from its task's settings (validated by experiments())."""
    methods = ["traj_opt", "pi2", "pilqr", "mdgps_pilqr", "pigps"]
    exps = experiments(["obstacle", "pusher"], methods, [0], ROOT)
    assert [e.name for e in exps] == [f"{t}-{m}-s0" for t in ("obstacle", "pusher") for m in methods]
    by_name = {e.name: e for e in exps}
    assert "pipelines/itr_00/lqr_step/dvc.yaml" in by_name["obstacle-pilqr-s0"].files
    assert "pipelines/itr_00/pi2/dvc.yaml" in by_name["obstacle-pigps-s0"].files
    assert not any("fit_dynamics" in f for f in by_name["obstacle-pigps-s0"].files)
    # the local optimizers alone have no policy to score in Gymnasium
    assert "evaluate_gym" not in by_name["pusher-pilqr-s0"].files["dvc.yaml"]
    assert "evaluate_gym" in by_name["pusher-mdgps_pilqr-s0"].files["dvc.yaml"]
    assert "algorithm.name=pilqr" in by_name["obstacle-pilqr-s0"].sets
