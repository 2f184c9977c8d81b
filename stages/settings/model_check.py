"""params.yaml against the task's MuJoCo model: every name and size a setting shares with the model or another setting.

The schema (stages/settings/schema.py) checks each setting on its own. A file can pass it and still not
fit its model (an unknown site, a block that does not exist, a target of the wrong length); the
stages would then stop with a traceback from inside MuJoCo or numpy, or run with a wrong cost.
This module checks, once per load (stages.settings.params.load_params, after the schema):

- the task section itself, resolved on its model by gps_core.sim.task.compile_task: the model file,
  agent time step, the blocks and their joints and points, state and observation, the state's
  configuration (qpos then qvel of the actuated joints, for init_lqr and the fk costs), the
  offset body and the conditions;
- init_lqr.init_gains and every action term's wu: one entry per actuator;
- a state or binary_region term's block in the state, an fk term's a point-like block of the state
  (position or relative, whose Jacobian FKCost reads), and each target as long as its block;
- evaluation.point: a point-like block of the state or a point inside a state position block,
  and evaluation.target as long; evaluation.survival's block in the state, low and high as long, low <= high;
- PI2 without covariance damping (pi2.covariance_damping <= 0, read by the algorithms that use PI2):
  more samples per condition than the model has actions, or its covariance is singular.

Errors are one line: file, key, value, what the model or the other setting needs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from stages.errors import UserError

if TYPE_CHECKING:
    from gps_core.sim.task import Task

# Cost terms on any block of task.state (gps_core.costs.StateCost, BinaryRegionCost): x[block] against a target.
STATE_BLOCK_TERMS = ("state", "binary_region")

# (model file, mtime_ns, size, task section as JSON) -> compiled task: a process that loads params more
# than once (sweep, tests) compiles each task once, and an edited model file is read again.
_TASK_CACHE: dict[tuple, "Task"] = {}


def _fail(source: str, key: str, value: Any, expected: str) -> NoReturn:
    """The schema's form of message (stages.settings.schema._fail)."""
    raise UserError(f"{source}: {key} is {value!r}, expected {expected}")


def _entries(values: list) -> str:
    return f"{len(values)} entr{'y' if len(values) == 1 else 'ies'}"


def _check_length(source: str, key: str, values: list, n: int, what: str) -> None:
    """A list setting with one entry per model quantity (actuator, block entry)."""
    if len(values) != n:
        raise UserError(f"{source}: {key} is {values!r} ({_entries(values)}), expected {n} entries, {what}")


def project_root(path: str | Path) -> Path | None:
    """The DVC project a file is in: the nearest folder at or above its folder holding dvc.yaml or .dvc/."""
    folder = Path(path).resolve().parent
    return next((f for f in (folder, *folder.parents) if (f / "dvc.yaml").is_file() or (f / ".dvc").is_dir()), None)


def model_base(params_file: str | Path) -> Path:
    """The folder a relative `task.model` that names no installed package's file is read from: the project
    root (project_root), else the params file's own folder (a params file in no DVC project).

    The one rule for such paths, wherever the settings are read: `gps configure` copies configs/NAME.yaml
    unchanged to the root's params.yaml, and the stages run from the root (DVC's wdir), so only a folder both
    files share makes `models/arm.xml` name the same file in each."""
    return project_root(params_file) or Path(params_file).resolve().parent


def settings_model(model: str, params_file: str | Path) -> Path:
    """The file `task.model` names in the params file `params_file` (gps_core.sim.task.resolve_model on model_base)."""
    from gps_core.sim.task import resolve_model

    return resolve_model(model, model_base(params_file))


def _missing_model(source: str, model: str, path: Path) -> NoReturn:
    """The missing file and the rule it was looked for by, so that the fix (where the path starts) is plain."""
    if Path(model).is_absolute():
        rule = ""
    elif project_root(source) is None:
        rule = ("; a relative path that is no installed package's file starts at the params file's folder when no "
                "folder at or above it holds dvc.yaml or .dvc/ (a DVC project)")
    else:
        rule = ("; a relative path that is no installed package's file starts at the project root (the nearest folder "
                "at or above the params file holding dvc.yaml or .dvc/), in configs/ and in params.yaml alike")
    raise UserError(f"{source}: task.model: {model!r}: no such file ({path}){rule}")


def compile_settings_task(params: dict[str, Any], source: str = "params.yaml") -> "Task":
    """The task section compiled on its model (cached per model file version and section)."""
    import json

    from gps_core.sim.task import TaskError, compile_task, resolve_model  # mujoco: the warm worker has it already

    section = params["task"]
    base = model_base(source)
    path = resolve_model(section["model"], base)
    try:
        st = os.stat(path)
        key = (str(path), st.st_mtime_ns, st.st_size, json.dumps(section, sort_keys=True, default=str))
    except OSError:
        if not path.exists():
            _missing_model(source, section["model"], path)
        key = None
    if key is not None and key in _TASK_CACHE:
        return _TASK_CACHE[key]
    try:
        task = compile_task(section, base)
    except TaskError as exc:
        raise UserError(f"{source}: {exc.key}: {exc.message}") from None
    if key is not None:
        _TASK_CACHE[key] = task
    return task


def _model_name(task: "Task") -> str:
    return f"the model of task {task.name}"


def check_init_lqr(source: str, section: dict[str, Any], task: "Task") -> None:
    """init_gains: one gain per actuator (gps_core.traj_opt.init_lqr builds diag(init_gains) [dU, dU])."""
    if section.get("init_gains") is not None:
        _check_length(source, "init_lqr.init_gains", section["init_gains"], task.nu,
                      f"one per actuator (nu) of {_model_name(task)}")


def _state_blocks(task: "Task", point_like: bool) -> str:
    from gps_core.sim.task import POINT_KINDS

    names = [n for n in task.state if not point_like or task.block(n).kind in POINT_KINDS]
    return ", ".join(names) or "none"


def check_cost(source: str, terms: list[dict[str, Any]], task: "Task") -> None:
    """Each term's block and sizes (gps_core.costs)."""
    from gps_core.sim.task import POINT_KINDS

    for i, term in enumerate(terms):
        key = f"cost[{i}]"
        if term["type"] == "action":
            _check_length(source, f"{key}.wu", term["wu"], task.nu, f"one per actuator (nu) of {_model_name(task)}")
            continue
        block = term["block"]
        if term["type"] in STATE_BLOCK_TERMS and block not in task.state:
            _fail(source, f"{key}.block", block, f"a block of task.state ({_state_blocks(task, False)})")
        if term["type"] == "fk" and (block not in task.state or task.block(block).kind not in POINT_KINDS):
            _fail(source, f"{key}.block", block, "a position or relative block of task.state, whose Jacobian the fk "
                  f"term uses ({_state_blocks(task, True)})")
        _check_length(source, f"{key}.target", term["target"], task.block(block).size,
                      f"one per entry of block {block}")


def check_evaluation(source: str, section: dict[str, Any], task: "Task") -> slice:
    """The scored point: its entries of x (gps_core.scoring.final_distance)."""
    try:
        where, what = task.point_slice(section["point"])
    except KeyError:
        _fail(source, "evaluation.point", section["point"],
              f"a position or relative block of task.state ({_state_blocks(task, True)}) or a point of a "
              "state position block")
    n, target = where.stop - where.start, section["target"]
    if len(target) > n:  # fewer: the first entries (x, y of a point in a plane)
        raise UserError(f"{source}: evaluation.target is {target!r} ({_entries(target)}), expected at most {n} entries, "
                        f"the first entries of {what}")
    survival = section.get("survival")
    if survival is not None:
        if survival["block"] not in task.state:
            _fail(source, "evaluation.survival.block", survival["block"], f"a block of task.state ({_state_blocks(task, False)})")
        size = task.x_slices[survival["block"]].stop - task.x_slices[survival["block"]].start
        for key in ("low", "high"):
            _check_length(source, f"evaluation.survival.{key}", survival[key], size,
                          f"one per entry of block {survival['block']!r}")
        for i, (lo, hi) in enumerate(zip(survival["low"], survival["high"])):
            if lo > hi:
                raise UserError(f"{source}: evaluation.survival.low[{i}] ({lo}) is above evaluation.survival.high[{i}] ({hi})")
    return where


def check_model_consistency(params: dict[str, Any], source: str = "params.yaml") -> "Task":
    """The compiled task; a one-line UserError for the first setting that does not fit it.

    `params` has passed stages.settings.schema.validate_params (types and bounds are known to hold).
    """
    task = compile_settings_task(params, source)
    check_init_lqr(source, params["init_lqr"], task)
    check_cost(source, params["cost"], task)
    check_evaluation(source, params["evaluation"], task)
    check_pi2(source, params, task)
    return task


def check_pi2(source: str, params: dict[str, Any], task: "Task") -> None:
    """PI2's maximum-likelihood covariance of N samples has rank N - 1 at most (gps_core.traj_opt.pi2)."""
    from stages.settings.schema import USES_PI2, algorithm_name

    if algorithm_name(params) not in USES_PI2 or params["pi2"]["covariance_damping"] > 0:
        return
    n = params["agent"]["num_samples"]
    if n <= task.nu:
        _fail(source, "agent.num_samples", n, f"more than the {task.nu} actions of {_model_name(task)}: PI2 without "
              f"covariance damping (pi2.covariance_damping {params['pi2']['covariance_damping']}) needs N > dU")
