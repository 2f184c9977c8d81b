"""params.yaml against the task's MuJoCo model: every size a setting shares with the model or another setting.

The schema (stages/schema.py) checks each setting on its own. A file can pass it and still not
fit the model of `agent.task` (settings of another task after a task switch, say); the stages
would then stop with a traceback from inside MuJoCo or numpy, or run with a wrong cost. This
module checks, once per load (stages.config.load_params, after the schema):

- the model itself: nq == nv (the simulator) and nu == nq (init_lqr's guessed dynamics treat
  x[:dU] as joint positions and x[dU:2dU] as their velocities);
- agent.dt = agent.substeps x the model's timestep (as gps_core.env.Simulator requires);
- agent.qpos0 rows of nq numbers; agent.body_offsets only if the model has a body 1 to shift;
- agent.obs_dim <= dX (the global policy observes x[:obs_dim]);
- init_lqr.init_gains and every action term's wu: nu entries;
- a state term's x[start:start+len(target)] inside the state;
- an fk term covering exactly the site positions: FKCost pairs target entry i with row i of the
  recorded site Jacobian [3 S, nq], so ee_start must be where the sites begin and the target
  must have 3 S entries;
- evaluation.point_start + len(evaluation.target) <= dX (gps_core.scoring.final_distance).

State layout (gps_core/env.py): x = [qpos (nq), qvel (nv), site positions (3 S), site velocities (3 S)].
Errors are one line, in the form of the schema's: file, key, value, what the model needs.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from stages.h5io import UserError

if TYPE_CHECKING:
    from gps_core.env import ModelDims

# (model file, mtime_ns, size) -> its dimensions: a process that loads params more than once
# (sweep, tests) compiles each model once, and an edited model file is read again.
_DIMS_CACHE: dict[tuple[str, int, int], "ModelDims"] = {}


class Model:
    """The model of agent.task: its dimensions and how messages name it."""

    def __init__(self, task: str, path: str, dims: "ModelDims"):
        self.task, self.path, self.dims = task, path, dims

    @functools.cached_property
    def name(self) -> str:
        return f"the model {_shown(self.path)} (agent.task {self.task})"


def _shown(path: str) -> str:
    """The model file relative to the project (gps_core/assets/peg.xml), else as it is."""
    import gps_core

    try:
        return Path(path).resolve().relative_to(Path(gps_core.__file__).resolve().parent.parent).as_posix()
    except ValueError:
        return path


def task_model(task: str, source: str) -> Model:
    """The model of a task, compiled once per file version (about 1 ms; importing mujoco costs more)."""
    from gps_core.env import model_dims, model_path  # mujoco: the warm worker has imported it already

    path = model_path(task)
    try:
        st = os.stat(path)
    except OSError as exc:
        raise UserError(f"{source}: agent.task is {task!r}, but its model {path} cannot be read ({exc.strerror})") from None
    key = (path, st.st_mtime_ns, st.st_size)
    if key not in _DIMS_CACHE:
        try:
            _DIMS_CACHE[key] = model_dims(path)
        except ValueError as exc:  # what MuJoCo raises for a model it cannot compile
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"{source}: agent.task is {task!r}, but its model {_shown(path)} does not load: {first}") from None
    return Model(task, path, _DIMS_CACHE[key])


def _fail(source: str, key: str, value: Any, expected: str) -> NoReturn:
    """The schema's form of message (stages.schema._fail)."""
    raise UserError(f"{source}: {key} is {value!r}, expected {expected}")


def _entries(values: list) -> str:
    return f"{len(values)} entr{'y' if len(values) == 1 else 'ies'}"


def _check_length(source: str, key: str, values: list, n: int, what: str) -> None:
    """A list setting with one entry per model quantity (joint position, actuator)."""
    if len(values) != n:
        raise UserError(f"{source}: {key} is {values!r} ({_entries(values)}), expected {n} entries, {what}")


def _check_window(source: str, key: str, start: int, n: int, dX: int, what: str, model: Model) -> None:
    """x[start:start+n] (a residual or a scored point) must lie inside the state."""
    if start + n > dX:
        raise UserError(
            f"{source}: {key} is {start} with {n} target entries (x[{start}:{start + n}]), expected at most "
            f"{max(dX - n, 0)} so that {what} fits in the state of {dX} entries (dX) of {model.name}"
        )


def check_model_itself(source: str, model: Model) -> None:
    """What the simulator and init_lqr assume of any model: nq == nv == nu."""
    d = model.dims
    if not d.nq == d.nv == d.nu:
        _fail(source, "agent.task", model.task,
              "a task whose model has one velocity and one actuator per joint position (nq == nv == nu, as the simulator "
              f"and init_lqr assume): {model.name} has nq {d.nq}, nv {d.nv}, nu {d.nu}")


def check_agent(source: str, agent: dict[str, Any], model: Model) -> None:
    """Time step, initial configurations, base offsets and the observation size."""
    d = model.dims
    # The simulator's own test (gps_core.env.Simulator), so that nothing passes here that it refuses.
    if abs(d.timestep * agent["substeps"] - agent["dt"]) > 1e-12:
        _fail(source, "agent.dt", agent["dt"],
              f"{d.timestep * agent['substeps']:g} = agent.substeps ({agent['substeps']}) x the timestep "
              f"({d.timestep:g} s) of {model.name}")
    for m, row in enumerate(agent["qpos0"]):
        _check_length(source, f"agent.qpos0[{m}]", row, d.nq, f"one per joint position (nq) of {model.name}")
    if agent.get("body_offsets") is not None and d.nbody < 2:
        _fail(source, "agent.body_offsets", agent["body_offsets"], f"no body_offsets: {model.name} has no body 1 to shift")
    if agent["obs_dim"] > d.dX:
        _fail(source, "agent.obs_dim", agent["obs_dim"],
              f"at most {d.dX}, the state size (dX) of {model.name}: {d.nq} joint positions + {d.nv} velocities "
              f"+ 6 x {d.nsite} sites")


def check_init_lqr(source: str, section: dict[str, Any], model: Model) -> None:
    """init_gains: one gain per actuator (gps_core.init_lqr builds diag(init_gains) [dU, dU])."""
    if section.get("init_gains") is not None:
        _check_length(source, "init_lqr.init_gains", section["init_gains"], model.dims.nu,
                      f"one per actuator (nu) of {model.name}")


def check_cost(source: str, terms: list[dict[str, Any]], model: Model) -> None:
    """Each term's indices into the state and sizes (gps_core.costs)."""
    d = model.dims
    lo, hi = d.sites
    for i, term in enumerate(terms):
        key = f"cost[{i}]"
        if term["type"] == "action":
            _check_length(source, f"{key}.wu", term["wu"], d.nu, f"one per actuator (nu) of {model.name}")
        elif term["type"] == "state":
            _check_window(source, f"{key}.start", term["start"], len(term["target"]), d.dX, "the residual", model)
        elif term["type"] == "fk":
            if d.nsite == 0:
                _fail(source, f"{key}.type", "fk", f"action or state: {model.name} has no sites for an fk term")
            # FKCost pairs target entry i with row i of the site Jacobian [3 S, nq]: the term must
            # cover the site positions exactly, from where they begin.
            if term["ee_start"] != lo:
                _fail(source, f"{key}.ee_start", term["ee_start"],
                      f"{lo}, where the site positions x[{lo}:{hi}] of {model.name} begin (an fk term's target "
                      "entries pair one to one with the rows of the site Jacobian)")
            _check_length(source, f"{key}.target", term["target"], hi - lo,
                          f"the positions of the {d.nsite} site{'s' if d.nsite != 1 else ''} (x[{lo}:{hi}]) of {model.name}")


def check_evaluation(source: str, section: dict[str, Any], model: Model) -> None:
    """The scored point x[T-1, point_start:point_start+len(target)] (gps_core.scoring.final_distance)."""
    _check_window(source, "evaluation.point_start", section["point_start"], len(section["target"]), model.dims.dX,
                  "the scored point", model)


def check_model_consistency(params: dict[str, Any], source: str = "params.yaml") -> None:
    """Raise a one-line UserError for the first setting that does not fit the model of agent.task.

    `params` has passed stages.schema.validate_params (types and bounds are known to hold).
    """
    model = task_model(params["agent"]["task"], source)
    check_model_itself(source, model)
    check_agent(source, params["agent"], model)
    check_init_lqr(source, params["init_lqr"], model)
    check_cost(source, params["cost"], model)
    check_evaluation(source, params["evaluation"], model)
