"""The paper's comparison (or any tasks x methods x seeds) as DVC experiments.

Each (task, method) needs its own pipeline files (the iteration count differs
per task, and BADMM has its own stages), which `-S` overrides cannot change. So
each experiment (`experiments`) carries its params.yaml (configs/<task>.yaml)
and the pipeline files of its method, and its `-S` settings (the method's keys
and the seed) under a fixed name, `<task>-<method>-s<seed>`.

Engines:
- `queue` (this module): writes each (task, method)'s files into the workspace,
  stages them (DVC leaves untracked files out of a queued experiment) and queues
  one experiment per seed with `dvc exp run --queue -S ...`; afterwards the
  workspace's params.yaml and pipeline files are restored from git. `dvc queue
  start -j N` runs them on this machine.
- `ray` and `inline` (`stages.sweep.remote`): each experiment runs in a fresh
  clone wherever the engine puts it and lands on the git and DVC remotes
  (`stages.sweep.job`).
Every run is an ordinary experiment (`dvc exp show`, `dvc exp apply`, `dvc plots diff`).
"""

from __future__ import annotations

import copy
import os
import subprocess
from pathlib import Path
from typing import Any, Callable

import yaml

from stages.errors import UserError
from stages.sweep.job import Experiment, write_experiment_files

# The paper's five methods as params overrides (dotted key -> value).
METHODS: dict[str, dict[str, Any]] = {
    "badmm": {"algorithm.name": "badmm", "algorithm.sample_on_policy": False},
    "off_classic": {"algorithm.name": "mdgps", "algorithm.sample_on_policy": False, "algorithm.step_rule": "classic"},
    "off_global": {"algorithm.name": "mdgps", "algorithm.sample_on_policy": False, "algorithm.step_rule": "global"},
    "on_classic": {"algorithm.name": "mdgps", "algorithm.sample_on_policy": True, "algorithm.step_rule": "classic"},
    "on_global": {"algorithm.name": "mdgps", "algorithm.sample_on_policy": True, "algorithm.step_rule": "global"},
}
PAPER_TASKS = ("obstacle", "peg", "peg_blind")


def known_tasks(root: Path) -> tuple[str, ...]:
    """The tasks with shipped settings: configs/<task>.yaml under the project root."""
    return tuple(sorted(p.stem for p in (root / "configs").glob("*.yaml")))


GENERATED = ["params.yaml", "dvc.yaml", "pipelines"]


def parse_list(text: str, allowed: tuple[str, ...], what: str) -> list[str]:
    items = [x.strip() for x in text.split(",") if x.strip()]
    for item in items:
        if item not in allowed:
            raise UserError(f"--{what} has {item!r}; allowed: {', '.join(allowed)}")
    if not items:
        raise UserError(f"--{what} is empty; allowed: {', '.join(allowed)}")
    return items


def parse_seeds(text: str) -> list[int]:
    """'0-9' or '0,3,5' (or a mix) -> sorted seeds."""
    seeds: set[int] = set()
    try:
        for part in text.split(","):
            lo, _, hi = part.strip().partition("-")
            seeds.update(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise UserError(f"--seeds is {text!r}, expected e.g. 0-9 or 0,2,4") from None
    if not seeds or min(seeds) < 0:
        raise UserError(f"--seeds is {text!r}, expected non-negative integers")
    return sorted(seeds)


def set_dotted(params: dict, dotted: str, value: Any) -> None:
    """params[a][b][c] = value for dotted "a.b.c" (the sections exist)."""
    node = params
    *parents, last = dotted.split(".")
    for part in parents:
        node = node[part]
    node[last] = value


def _yaml_value(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def experiment_name(task: str, method: str, seed: int) -> str:
    return f"{task}-{method}-s{seed}"


def experiments(tasks: list[str], methods: list[str], seeds: list[int], root: Path) -> list[Experiment]:
    """The sweep's experiments in a fixed order (task, method, seed), each with its files and `-S` settings.

    Every (task, method) gets params.yaml = configs/<task>.yaml and the pipeline of the
    method's params; the method's keys and the seed are `-S` settings of the experiment.
    The params with the method applied are validated here, as the stages will see them.
    """
    from stages.settings.params import load_params
    from stages.pipeline.generate import render_pipeline

    out = []
    for task in tasks:
        preset = root / "configs" / f"{task}.yaml"
        if not preset.exists():
            raise UserError(f"{preset}: file not found (run the sweep from the project root)")
        preset_text = preset.read_text()
        base = yaml.safe_load(preset_text)
        for method in methods:
            params = copy.deepcopy(base)
            for key, value in METHODS[method].items():
                set_dotted(params, key, value)
            check = root / f".params.sweep-{task}-{method}-{os.getpid()}.yaml"  # array jobs may share the folder
            check.write_text(yaml.safe_dump(params, sort_keys=False))
            try:
                load_params(check)
            finally:
                check.unlink(missing_ok=True)
            files = {"params.yaml": preset_text, **render_pipeline(params, "params.yaml")}
            sets = tuple(f"{k}={_yaml_value(v)}" for k, v in METHODS[method].items())
            out += [Experiment(experiment_name(task, method, s), task, method, s, (*sets, f"seed={s}"), files)
                    for s in seeds]
    return out


def queue_command(experiment: Experiment) -> list[str]:
    return ["dvc", "exp", "run", "--queue", "-n", experiment.name, *(a for s in experiment.sets for a in ("-S", s))]


def _dirty(root: Path, run: Callable[..., subprocess.CompletedProcess]) -> str:
    return run(["git", "status", "--porcelain", "--", *GENERATED], cwd=root, capture_output=True, text=True, check=True).stdout


def queue_sweep(tasks: list[str], methods: list[str], seeds: list[int], root: Path, dry_run: bool = False,
                echo: Callable[[str], None] = print, run: Callable[..., subprocess.CompletedProcess] = subprocess.run,
                dvc: str = "dvc") -> int:
    """Queue the experiments; returns how many. The workspace's generated files are restored afterwards."""
    todo = experiments(tasks, methods, seeds, root)
    groups: dict[tuple[str, str], list[Experiment]] = {}
    for exp in todo:
        groups.setdefault((exp.task, exp.method), []).append(exp)
    if dry_run:
        for (task, method), group in groups.items():
            echo(f"# {task} / {method}: gps configure {task}, then the pipeline for {method}")
            for exp in group:
                echo(" ".join(queue_command(exp)))
        return len(todo)
    if _dirty(root, run):
        raise UserError("params.yaml, dvc.yaml or pipelines/ have uncommitted changes; commit or stash them first "
                        "(the sweep rewrites them per task and restores them from git)")
    queued = 0
    try:
        for group in groups.values():
            write_experiment_files(root, group[0])
            for exp in group:
                cmd = queue_command(exp)
                proc = run([dvc, *cmd[1:]], cwd=root, capture_output=True, text=True)
                if proc.returncode != 0:
                    raise UserError(f"{' '.join(cmd)} failed: {(proc.stderr or proc.stdout).strip().splitlines()[-1]}")
                queued += 1
                echo(f"queued {exp.name}")
    finally:
        run(["git", "reset", "-q", "--", *GENERATED], cwd=root, check=True)
        run(["git", "checkout", "-q", "--", *GENERATED], cwd=root, check=True)
        run(["git", "clean", "-fdq", "--", "pipelines"], cwd=root, check=True)
    return queued
