"""A task's own model file named by a relative path (issue 28): one rule, wherever the settings are read.

A relative `task.model` that is no installed package's file starts at the project root, the nearest folder
at or above the params file holding dvc.yaml or .dvc/ (else the params file's own folder), so that
`models/arm.xml` names the same file in configs/arm.yaml and in the root's params.yaml, which
`gps configure` copies unchanged and DVC runs from the root."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, gps, small_params

MODEL = "models/arm.xml"


def own_model_params(iterations: int = 1) -> dict:
    """The small obstacle settings on the project's own copy of the model (models/arm.xml), shrunk further:
    T = 10, 2 samples per condition, short S-steps."""
    params = copy.deepcopy(small_params(iterations))
    params["task"]["model"] = MODEL
    params["task"]["T"] = 10
    params["agent"]["num_samples"] = 2
    params["policy"]["iterations"] = 20
    return params


def own_model_project(root: Path, params: dict | None = None, marker: str = ".dvc") -> Path:
    """root/models/arm.xml (the obstacle model's text), root/configs/arm.yaml naming it, and the DVC project
    marker (`.dvc` folder or `dvc.yaml` file; None: no project)."""
    from gps_core.sim.env import model_path

    (root / "models").mkdir(parents=True)
    (root / "configs").mkdir()
    shutil.copyfile(model_path("obstacle"), root / MODEL)
    (root / "configs" / "arm.yaml").write_text(yaml.safe_dump(params or own_model_params(), sort_keys=False))
    if marker == ".dvc":
        (root / ".dvc").mkdir()
    elif marker == "dvc.yaml":
        (root / "dvc.yaml").write_text("stages: {}\n")
    return root


# ------------------------------------------------------------------------------------------- the rule


@pytest.mark.parametrize("marker", [".dvc", "dvc.yaml"])
def test_a_relative_model_starts_at_the_project_root_from_configs_and_from_the_root(tmp_path, marker):
    from stages.settings.model_check import model_base, settings_model

    root = own_model_project(tmp_path / "project", marker=marker)
    for params_file in (root / "configs" / "arm.yaml", root / "params.yaml"):
        assert model_base(params_file) == root
        assert settings_model(MODEL, params_file) == root / MODEL
    # deeper too (configs/robots/arm.yaml), and given relative to the working folder
    assert model_base(root / "configs" / "robots" / "arm.yaml") == root


def test_a_relative_model_starts_at_the_params_folder_outside_any_project(tmp_path):
    from stages.settings.model_check import model_base, settings_model

    root = own_model_project(tmp_path / "loose", marker=None)
    assert model_base(root / "configs" / "arm.yaml") == root / "configs"
    assert settings_model("../models/arm.xml", root / "configs" / "arm.yaml") == root / "configs" / ".." / MODEL
    assert settings_model(MODEL, root / "params.yaml") == root / MODEL


def test_package_files_and_absolute_paths_are_not_moved_by_the_project(tmp_path):
    """A file of an installed package is read where it is installed, an absolute path is itself."""
    import gymnasium

    import gps_core
    from stages.settings.model_check import settings_model

    root = own_model_project(tmp_path / "project")
    config = root / "configs" / "arm.yaml"
    assert settings_model("gymnasium/envs/mujoco/assets/reacher.xml", config) == \
        Path(gymnasium.__file__).parent / "envs" / "mujoco" / "assets" / "reacher.xml"
    assert settings_model("gps_core/assets/obstacle.xml", config) == Path(gps_core.__file__).parent / "assets" / "obstacle.xml"
    assert settings_model(str(tmp_path / "elsewhere.xml"), config) == tmp_path / "elsewhere.xml"


def test_a_project_folder_on_sys_path_is_no_package(tmp_path, monkeypatch):
    """`python -m` puts the working folder on sys.path, where Python finds models/ as a namespace package:
    still the project's file (a DVC dependency), not a package's."""
    from gps_core.sim.task import package_file
    from stages.pipeline.generate import project_model_file

    root = own_model_project(tmp_path / "project")
    monkeypatch.syspath_prepend(str(root))
    assert package_file(MODEL) is None
    assert project_model_file(own_model_params(), root) == MODEL


def test_configure_accepts_the_projects_model_and_writes_it_as_a_dependency(tmp_path, monkeypatch):
    """`gps configure arm` in a project: configs/arm.yaml's models/arm.xml is the root's file, params.yaml
    (a copy) names the same, and the stages that read `task` depend on it."""
    from stages.settings.load import load_settings

    root = own_model_project(tmp_path / "project")
    monkeypatch.chdir(root)
    gps("configure", "arm")
    assert (root / "params.yaml").read_text() == (root / "configs" / "arm.yaml").read_text()
    assert load_settings(root / "params.yaml").task.model_path == str(root / MODEL)
    init = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]["init"]
    assert MODEL in init["deps"]


def test_a_missing_model_is_one_line_naming_the_file_the_text_the_path_and_the_rule(tmp_path, monkeypatch):
    """`../models/arm.xml` from configs/ (what worked before the rule) leaves the project: refused, with why."""
    from typer.testing import CliRunner

    from stages.main import registered_app

    params = own_model_params()
    params["task"]["model"] = "../models/arm.xml"
    root = own_model_project(tmp_path / "project", params)
    monkeypatch.chdir(root)
    result = CliRunner().invoke(registered_app(), ["configure", "arm"])
    assert result.exit_code == 2, result.output
    assert result.output == (
        f"gps configure: error: configs/arm.yaml: task.model: '../models/arm.xml': no such file "
        f"({root / '..' / 'models' / 'arm.xml'}); a relative path that is no installed package's file starts at the "
        "project root (the nearest folder at or above the params file holding dvc.yaml or .dvc/), in configs/ and in "
        "params.yaml alike\n")
    assert not (root / "params.yaml").exists()


def test_the_dependency_is_the_file_the_stages_read_whatever_the_spelling(tmp_path):
    """./models/arm.xml is models/arm.xml; a file outside the project is nothing DVC can track."""
    from stages.pipeline.generate import project_model_file

    root = own_model_project(tmp_path / "project")
    params = own_model_params()
    params["task"]["model"] = "./models/arm.xml"
    assert project_model_file(params, root) == MODEL
    params["task"]["model"] = "../outside.xml"
    assert project_model_file(params, root) is None


def test_a_benchmark_run_folder_gets_the_file_the_config_names(tmp_path):
    """benchmarks/paper_comparison.make_params (also compare_rl's): the run folder is a project of its own, so
    the project's model goes there by its absolute path; a package's file keeps its text (the paper's runs)."""
    from benchmarks.paper_comparison import make_params

    root = own_model_project(tmp_path / "project")
    assert make_params("arm", "on_classic", 0, [], config=root / "configs" / "arm.yaml")["task"]["model"] == \
        str((root / MODEL).resolve())
    assert make_params("obstacle", "on_classic", 0, [])["task"]["model"] == "gps_core/assets/obstacle.xml"


# ------------------------------------------------------------------------------------- through DVC


@pytest.mark.slow
def test_own_model_trains_through_dvc_and_an_edit_reruns_exactly_the_stages_that_simulate(tmp_path):
    """A fresh git + DVC project with models/arm.xml and configs/arm.yaml naming it: `gps configure arm` and
    `dvc repro` of a 1-iteration run work; the model is a dependency of the stages that read `task` and of no
    other; editing it makes exactly those stale."""
    from test_dvc_pipeline import BIN, run

    ws = tmp_path / "ws"
    ws.mkdir()
    for name in ("gps_core", "stages"):  # the stages' code dependencies (test_dvc_pipeline.make_workspace)
        shutil.copytree(ROOT / name, ws / name, ignore=shutil.ignore_patterns("__pycache__"))
    run(["git", "init", "-q"], ws)
    run([str(BIN / "dvc"), "init", "-q"], ws)
    run([str(BIN / "dvc"), "config", "core.analytics", "false"], ws)
    own_model_project(ws, marker=None)  # .dvc/ is DVC's own now
    run([str(BIN / "gps"), "configure", "arm"], ws)
    run([str(BIN / "dvc"), "repro"], ws)
    assert json.loads((ws / "data" / "metrics.json").read_text())["iteration"] == 1

    stages = {}
    for f in [ws / "dvc.yaml", *sorted(ws.glob("pipelines/**/dvc.yaml"))]:
        stages.update(yaml.safe_load(f.read_text())["stages"])
    with_model = {name for name, st in stages.items() if MODEL in st.get("deps", [])}
    reads_task = {name for name, st in stages.items()
                  if any("task" in (p[next(iter(p))] if isinstance(p, dict) else [p]) for p in st.get("params", []))}
    assert with_model == reads_task == {"init", "sample_00", "evaluate_00"}  # those that simulate
    assert {"fit_dynamics_00", "c_step_00", "s_step_00", "summary", "plot"} <= set(stages) - with_model

    def stale() -> set[str]:
        out = run([str(BIN / "dvc"), "status", "--json"], ws).stdout
        return {name.split(":")[-1] for name in json.loads(out or "{}")}

    assert stale() == set()
    with open(ws / MODEL, "a") as f:
        f.write("<!-- edited: a file DVC tracks -->\n")
    assert stale() == with_model
