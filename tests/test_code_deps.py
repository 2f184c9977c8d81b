"""The layout's promises: no import circle, the app a leaf, and each stage depending on exactly the code it runs.

`gps pipeline` lists per stage the project files its command imports (stages/pipeline/code_deps.py).
The fast tests check the import graph and that the lists follow it; the slow ones check what a
stage really imports when it runs (a fresh process per command), and what `dvc status` says of a
finished run after a tool, a docstring, the docs or the C-step's code is edited.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, copy_run, small_params
from small_runs import obstacle_run
from stages.pipeline.code_deps import _direct, command_modules, imported_modules, module_file, runs_code, stage_code
from stages.pipeline.generate import build_pipeline, write_pipeline

BIN = Path(sys.executable).parent


def project_modules() -> list[str]:
    """Every module of stages/ and gps_core/ by its dotted name."""
    names = []
    for package in ("stages", "gps_core"):
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def test_no_module_imports_one_that_imports_it_back():
    circles = []
    for name in project_modules():
        # what `name` reaches through its imports, not counting itself
        reached: set[str] = set()
        todo = list(_direct(name, ROOT))
        while todo:
            current = todo.pop()
            if current not in reached:
                reached.add(current)
                todo.extend(_direct(current, ROOT))
        if name in reached:
            circles.append(name)
    assert circles == []


def test_a_circle_is_seen(tmp_path):
    """The walk that finds no circle above finds one when there is one."""
    (tmp_path / "stages").mkdir()
    (tmp_path / "stages" / "__init__.py").write_text("")
    (tmp_path / "stages" / "a.py").write_text("def f():\n    from stages import b\n")
    (tmp_path / "stages" / "b.py").write_text("from stages.a import f\n")
    assert "stages.a" in imported_modules("stages.b", tmp_path)
    assert "stages.b" in imported_modules("stages.a", tmp_path)


def test_the_app_is_a_leaf_and_only_the_entry_point_imports_every_command():
    commands = set(command_modules(ROOT).values()) | {"stages.tools.commands"}
    assert not commands & imported_modules("stages.app", ROOT)
    importers = {name for name in project_modules() if commands & _direct(name, ROOT)}
    assert importers == {"stages.main"}
    assert commands <= imported_modules("stages.main", ROOT)


def test_every_pipeline_command_has_its_module_and_the_stages_list_its_files():
    stages = {**build_pipeline(3)["stages"], **build_pipeline(3, algorithm="badmm", gym=True)["stages"]}
    for name, stage in stages.items():
        command = stage["cmd"].split()[1]
        code = [d for d in stage["deps"] if d.endswith(".py")]
        assert code == stage_code(command, ROOT), name
        module = command_modules(ROOT)[command]
        assert module_file(module, ROOT).relative_to(ROOT).as_posix() in code


def test_a_stage_depends_on_the_files_its_module_imports_at_any_level(tmp_path):
    """Imports inside functions count, relative ones too, and each package's __init__.py that holds code
    (one with a docstring alone runs nothing)."""
    for package in ("stages", "stages/steps", "gps_core", "gps_core/sim"):
        (tmp_path / package).mkdir(parents=True, exist_ok=True)
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "stages" / "__init__.py").write_text('"""A package that sets something up."""\nimport os\n')
    (tmp_path / "gps_core" / "__init__.py").write_text('"""A docstring alone."""\n')
    (tmp_path / "stages" / "steps" / "x.py").write_text(
        "from stages.app import stage_command\n\n@stage_command('x')\ndef x():\n    from gps_core.sim import env\n"
    )
    (tmp_path / "stages" / "app.py").write_text("def stage_command(name):\n    return lambda f: f\n")
    (tmp_path / "gps_core" / "sim" / "env.py").write_text("from . import task\n")
    (tmp_path / "gps_core" / "sim" / "task.py").write_text("import numpy\n")
    (tmp_path / "gps_core" / "unused.py").write_text("")
    assert stage_code("x", tmp_path) == [
        "gps_core/sim/env.py", "gps_core/sim/task.py", "stages/__init__.py", "stages/app.py", "stages/steps/x.py",
    ]


def test_the_sampling_and_fitting_stages_do_not_depend_on_the_c_step_tools_or_sweeps():
    before_c_step = set(stage_code("sample", ROOT)) | set(stage_code("fit-dynamics", ROOT)) | set(stage_code("fit-policy", ROOT))
    assert "gps_core/traj_opt/c_step.py" in stage_code("c-step", ROOT)
    assert "gps_core/traj_opt/c_step.py" not in before_c_step
    every_stage = set().union(*(stage_code(c, ROOT) for c in command_modules(ROOT)))
    assert not {f for f in every_stage if f.startswith(("stages/tools/", "stages/sweep/", "stages/worker/"))}
    assert "stages/main.py" not in every_stage


# --------------------------------------------------------------------------- what a stage imports when it runs

# Runs one command with only its own module registered, then prints the project modules it imported.
PROBE = """
import json, sys
from stages.app import app
import importlib
importlib.import_module(sys.argv[1])
try:
    app(args=sys.argv[2:], prog_name="gps", standalone_mode=False)
finally:
    print("MODULES " + json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("stages", "gps_core"))))
"""


def _files_of(modules: list[str]) -> set[str]:
    """The source files of the modules, but a package's __init__.py that holds only a docstring."""
    files = (module_file(m, ROOT) for m in modules)
    return {f.relative_to(ROOT).as_posix() for f in files if f.name != "__init__.py" or runs_code(f)}


@pytest.mark.slow
def test_each_stage_imports_only_files_it_declares(tmp_path, tmp_path_factory):
    """Every command of two small iterations (and the summary and plot; each command once, with and without
    the previous iteration's inputs), each in a fresh process with only its own command registered: the
    project files it has imported when done are among the stage's declared ones."""
    params = small_params(2)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    write_pipeline(params, tmp_path / "params.yaml", tmp_path)
    env = dict(os.environ, GPS_WORKER="0", PYTHONPATH=str(ROOT))
    stages = build_pipeline(2)["stages"]
    shutil.copytree(obstacle_run(tmp_path_factory) / "data", tmp_path / "data")  # the inputs of every stage
    undeclared, seen = {}, set()
    for name, stage in stages.items():
        argv = stage["cmd"].split()[1:]
        if (argv[0], "--prev" in argv) in seen:  # each command once, with and without its optional inputs
            continue
        seen.add((argv[0], "--prev" in argv))
        out_dir = tmp_path / "out" / name
        argv = [str(out_dir / Path(a).name) if a.startswith("data/") and a in stage.get("outs", []) + stage.get("metrics", [])
                else a for a in argv]
        module = command_modules(ROOT)[argv[0]]
        proc = subprocess.run([sys.executable, "-c", PROBE, module, *argv], cwd=tmp_path, env=env,
                              capture_output=True, text=True)
        assert proc.returncode == 0, f"{name}: {proc.stderr[-2000:]}"
        line = next(x for x in proc.stdout.splitlines() if x.startswith("MODULES "))
        extra = _files_of(json.loads(line[len("MODULES "):])) - set(stage["deps"])
        if extra:
            undeclared[name] = sorted(extra)
    assert undeclared == {}


# --------------------------------------------------------------------------- dvc status after edits


def _run(cmd: list[str], cwd: Path) -> str:
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", DVC_NO_ANALYTICS="1")
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)}: {proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _stale(ws: Path) -> set[str]:
    """The stages `dvc status` reports, by name."""
    return {key.rsplit(":", 1)[-1] for key in json.loads(_run([str(BIN / "dvc"), "status", "--json"], ws))}


def _append(path: Path, text: str) -> None:
    path.write_text(path.read_text() + text)


@pytest.fixture
def finished_run(finished_dvc_run, tmp_path) -> Path:
    """A copy of the session's finished two-iteration DVC run (conftest.finished_dvc_run: a git + DVC
    repository holding the project's code), with the project's docs beside it."""
    ws = copy_run(finished_dvc_run, tmp_path / "ws")
    shutil.copytree(ROOT / "docs", ws / "docs")
    assert _stale(ws) == set()
    return ws


@pytest.mark.slow
def test_editing_a_tool_a_docstring_no_step_imports_or_the_docs_leaves_a_finished_run_up_to_date(finished_run):
    ws = finished_run
    _append(ws / "stages" / "tools" / "report.py", "\n# an edit of a user tool\n")
    _append(ws / "stages" / "sweep" / "ray_engine.py", "\n# an edit of a sweep engine\n")
    queue = ws / "stages" / "sweep" / "queue.py"
    text = queue.read_text()
    queue.write_text(text.replace('"""', '"""A docstring edited. ', 1))
    _append(ws / "docs" / "results.md", "\nAn edit of the docs.\n")
    assert _stale(ws) == set()


@pytest.mark.slow
def test_editing_the_c_step_makes_the_c_step_stale_and_nothing_before_it(finished_run):
    ws = finished_run
    _append(ws / "gps_core" / "traj_opt" / "c_step.py", "\n# an edit of the C-step\n")
    stale = _stale(ws)
    assert {"c_step_00", "c_step_01"} <= stale
    assert not stale & {"init", "catch_up", "sample_00", "fit_dynamics_00", "fit_policy_00", "sample_01",
                        "fit_dynamics_01", "fit_policy_01", "adjust_step_01"}
