"""A GPS task from settings: a MuJoCo model and what GPS reads of it, all by name.

The `task` section of params.yaml names the model file, how time advances, the
blocks GPS reads from the simulation, which blocks make the state x and the
global policy's observation o, and the initial conditions. `compile_task`
resolves every name on the compiled model once and returns a `Task` of indices;
a name or size that does not fit raises `TaskError(key, message)`.

Blocks, read from MjData after each control step (kinds and their entries):

    qpos      joints            q_j                              one per joint
    qvel      joints            q̇_j                              one per joint
    cos, sin  joints            cos q_j, sin q_j                 one per joint
    position  points, axes      p_i[axes]                        len(axes) per point
    relative  point, to, axes   (p_a − p_b)[axes]                len(axes)
    velocity  of                (b_t − b_{t−1}) / dt, 0 at t=0   as block b (a position or relative block)
    constraint_force  joints    MjData.qfrc_constraint at the joint's dof   one per joint (observation only)

qvel and constraint_force blocks may carry `clip: [lo, hi]` (Gymnasium's observations clip some
readings); a clipped block and a constraint_force block belong to the observation only: the state is
what the dynamics fit and the linearisation differentiate. The constraint force comes from MuJoCo's
last forward pass, like the points below (Gymnasium reads it the same way).

x = concat(state blocks), o = concat(observation blocks). A point is a site or a
body of the model (its frame origin: MjData.site_xpos or MjData.xpos); a name
that is both needs `site:` or `body:` before it (`site:#3`, `body:#2`: by index, for unnamed ones).

The state's first two blocks are the configuration: a qpos block of the joints
the actuators drive, in actuator order, then a qvel block of the same joints
(gps_core.traj_opt.init_lqr treats x[:dU] and x[dU:2dU] so). Point-like blocks of the
state (position, relative) also give their Jacobian with respect to those
joints, ∂b/∂q: [len(b), dU]; the fk cost terms use it (gps_core.costs.FKCost).

Stepping: `split` is the paper's wrapper (per substep mj_step1, set the
control, mj_step2: semi-implicit Euler whatever the model says); `mj_step` is
MuJoCo's own step with the model's integrator, as Gymnasium runs its models.
Either way the points and Jacobians read after a control step belong to the
positions before its last substep, which is also what Gymnasium observes.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

BLOCK_KINDS = ("qpos", "qvel", "cos", "sin", "constraint_force", "position", "relative", "velocity")
JOINT_KINDS = ("qpos", "qvel", "cos", "sin", "constraint_force")
# Readings that only the observation may hold: no derivative of them is formed (gps_core.sim.linearise).
OBSERVATION_ONLY = ("constraint_force",)
POINT_KINDS = ("position", "relative")  # blocks with a Jacobian
STEPPING = ("split", "mj_step")
AXES = {"x": 0, "y": 1, "z": 2}


class TaskError(ValueError):
    """A task setting that does not fit its model or another setting. key: the dotted setting."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key, self.message = key, message


@dataclass(frozen=True)
class Point:
    """A site or a body (its frame origin)."""

    name: str
    kind: str  # site | body
    id: int


@dataclass(frozen=True)
class Block:
    """One named block, resolved. qadr, dadr: [n] qpos and dof addresses of a joint block."""

    name: str
    kind: str
    size: int
    qadr: np.ndarray
    dadr: np.ndarray
    points: tuple[Point, ...] = ()  # position: its points; relative: (point, to)
    axes: tuple[int, ...] = (0, 1, 2)
    of: str | None = None  # velocity: the block it differentiates
    clip: tuple[float, float] | None = None  # observation-only readings clipped to [lo, hi] (Gymnasium's clip)


@dataclass(frozen=True)
class Conditions:
    """qpos0: [M, nq] initial joint positions; offsets: [M, 3] shift of the offset body, or None."""

    qpos0: np.ndarray
    offsets: np.ndarray | None

    def __len__(self) -> int:
        return self.qpos0.shape[0]


@dataclass(frozen=True)
class Task:
    """A task compiled against its model: every name resolved to indices.

    blocks: every block the state and observation need, in reading order (a velocity after its source).
    state, observation: block names; x_slices / o_slices: name -> slice of x / o.
    jac_rows: state point-like block -> slice of the rows of the recorded Jacobian [n_jac, dU].
    """

    name: str
    model_path: str
    T: int
    dt: float
    substeps: int
    stepping: str
    nq: int
    nv: int
    nu: int
    blocks: tuple[Block, ...]
    state: tuple[str, ...]
    observation: tuple[str, ...]
    x_slices: Mapping[str, slice]
    o_slices: Mapping[str, slice]
    jac_rows: Mapping[str, slice]
    config_dofs: np.ndarray  # [dU] dof addresses of the configuration joints
    offset_body: int | None
    train: Conditions
    test: Conditions
    action_low: np.ndarray  # [dU] the actuators' control range (-inf/inf where unlimited)
    action_high: np.ndarray

    @property
    def dX(self) -> int:
        return sum(b.size for b in self.blocks if b.name in self.state)

    @property
    def dO(self) -> int:
        return sum(b.size for b in self.blocks if b.name in self.observation)

    @property
    def dU(self) -> int:
        return self.nu

    @property
    def n_jac(self) -> int:
        return sum(s.stop - s.start for s in self.jac_rows.values())

    def block(self, name: str) -> Block:
        return next(b for b in self.blocks if b.name == name)

    def point_slice(self, name: str) -> tuple[slice, str]:
        """x entries of a point-like state block, or of one point inside a state position block.

        Returns (slice of x, what it is); raises KeyError if `name` is neither."""
        if name in self.x_slices and self.block(name).kind in POINT_KINDS:
            return self.x_slices[name], f"block {name}"
        for b in self.blocks:
            if b.name in self.state and b.kind == "position":
                for i, p in enumerate(b.points):
                    if p.name == name:
                        start = self.x_slices[b.name].start + i * len(b.axes)
                        return slice(start, start + len(b.axes)), f"point {name} of block {b.name}"
        raise KeyError(name)


# ---------------------------------------------------------------------------------------------
# Model files


def package_file(model: str) -> Path | None:
    """The file of an installed package a relative `task.model` names
    (`gymnasium/envs/mujoco/assets/reacher.xml`: the first part is the package), read where the package is
    installed, not copied; None when the first part is no installed package or the package has no such file."""
    path = Path(model)
    head = path.parts[0] if path.parts and not path.is_absolute() else ""
    if head.isidentifier():
        spec = importlib.util.find_spec(head)  # finds the package without importing it
        # a regular package only: a plain folder (the project's models/) on sys.path, as the working folder is
        # for `python -m`, is found as a namespace package, and would then not be read by the project's rule
        if spec is not None and spec.origin not in (None, "namespace") and spec.submodule_search_locations:
            for location in spec.submodule_search_locations:
                candidate = Path(location).joinpath(*path.parts[1:])
                if candidate.exists():
                    return candidate
    return None


def resolve_model(model: str, base: Path | None = None) -> Path:
    """The file a `task.model` setting names.

    An absolute path; else a file of an installed package (package_file); else a path relative to `base`.
    Which folder that is, is the caller's rule, not gps_core's: the stages pass the project root of the
    params file (stages.settings.model_check.model_base), so that the same text names the same file in
    configs/NAME.yaml and in the root's params.yaml. Without `base`, the working folder.
    """
    path = Path(model)
    if path.is_absolute():
        return path
    return package_file(model) or (base or Path.cwd()) / path


# ---------------------------------------------------------------------------------------------
# Compiling the settings


def _names(model, objtype, n: int) -> list[str]:
    import mujoco

    return [mujoco.mj_id2name(model, objtype, i) or "" for i in range(n)]


def _point(model, name: str, key: str) -> Point:
    import mujoco

    if not isinstance(name, str) or not name:
        raise TaskError(key, f"{name!r} is not a point name (a site or body of the model)")
    kind, _, bare = name.rpartition(":")
    sites = _names(model, mujoco.mjtObj.mjOBJ_SITE, model.nsite)
    bodies = _names(model, mujoco.mjtObj.mjOBJ_BODY, model.nbody)
    if kind and kind not in ("site", "body"):
        raise TaskError(key, f"{name!r}: a point is NAME, site:NAME or body:NAME")
    if kind and bare.startswith("#") and bare[1:].isdigit():  # site:#3, body:#2: by index, for unnamed ones
        i, n = int(bare[1:]), len(sites if kind == "site" else bodies)
        if not (kind == "site" and i < n or kind == "body" and 0 < i < n):
            raise TaskError(key, f"{name!r}: the model has {n} {kind}s" + (" (body 0 is the world)" if kind == "body" else ""))
        return Point(name, kind, i)
    in_sites, in_bodies = bare in sites and kind != "body", bare in bodies and kind != "site"
    if in_sites and in_bodies:
        raise TaskError(key, f"{bare!r} is both a site and a body of the model: write site:{bare} or body:{bare}")
    if in_sites:
        return Point(bare, "site", sites.index(bare))
    if in_bodies:
        if bodies.index(bare) == 0:
            raise TaskError(key, "the world body does not move: name a site or a body of the model")
        return Point(bare, "body", bodies.index(bare))
    listed = ", ".join(([f"site {s}" for s in sites if s] if kind != "body" else [])
                       + ([f"body {b}" for b in bodies[1:] if b] if kind != "site" else [])) or "none"
    raise TaskError(key, f"the model has no {'site' if kind == 'site' else 'body' if kind == 'body' else 'site or body'} "
                         f"{bare!r}; it has: {listed}")


def _joints(model, names: Any, key: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """qpos and dof addresses of named hinge or slide joints (every joint of the model if names is None)."""
    import mujoco

    all_names = _names(model, mujoco.mjtObj.mjOBJ_JOINT, model.njnt)
    if names is None:  # every joint, by index (a model's joints need no names)
        ids = list(range(model.njnt))
        names = [all_names[j] or f"#{j}" for j in ids]
    elif not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise TaskError(key, f"{names!r}: expected a non-empty list of joint names")
    else:
        ids = []
        for name in names:
            if not name or name not in all_names:
                raise TaskError(key, f"the model has no joint {name!r}; its joints: {', '.join(n for n in all_names if n)}")
            ids.append(all_names.index(name))
    for j, name in zip(ids, names):
        if not _one_dof(model, j):
            raise TaskError(key, f"joint {name!r} is not a hinge or slide joint (one position, one velocity)")
    return (np.array([model.jnt_qposadr[j] for j in ids], dtype=np.int64),
            np.array([model.jnt_dofadr[j] for j in ids], dtype=np.int64), tuple(names))


def _axes(spec: Mapping[str, Any], key: str) -> tuple[int, ...]:
    axes = spec.get("axes", "xyz")
    if not isinstance(axes, str) or not axes or any(a not in AXES for a in axes) or len(set(axes)) != len(axes):
        raise TaskError(f"{key}.axes", f"{axes!r}: expected some of x, y, z in order, each once (for example xy)")
    return tuple(AXES[a] for a in axes)


_BLOCK_KEYS = {
    "qpos": {"kind", "joints"}, "qvel": {"kind", "joints", "clip"}, "cos": {"kind", "joints"}, "sin": {"kind", "joints"},
    "constraint_force": {"kind", "joints", "clip"},
    "position": {"kind", "points", "axes"}, "relative": {"kind", "point", "to", "axes"}, "velocity": {"kind", "of"},
}


def _block(model, name: str, spec: Any, key: str, defined: Mapping[str, Block]) -> Block:
    if not isinstance(spec, dict) or spec.get("kind") not in BLOCK_KINDS:
        got = spec.get("kind") if isinstance(spec, dict) else spec
        raise TaskError(f"{key}.kind", f"{got!r}: expected one of {', '.join(BLOCK_KINDS)}")
    kind = spec["kind"]
    unknown = set(spec) - _BLOCK_KEYS[kind]
    if unknown:
        raise TaskError(f"{key}.{sorted(unknown)[0]}", f"not a setting of a {kind} block; it takes "
                        + ", ".join(sorted(_BLOCK_KEYS[kind] - {'kind'})))
    empty = np.zeros(0, dtype=np.int64)
    if kind in JOINT_KINDS:
        qadr, dadr, _ = _joints(model, spec.get("joints"), f"{key}.joints")
        clip = spec.get("clip")
        if clip is not None:
            if not (isinstance(clip, list) and len(clip) == 2 and all(isinstance(c, (int, float)) and not isinstance(c, bool)
                                                                    and np.isfinite(c) for c in clip) and clip[0] < clip[1]):
                raise TaskError(f"{key}.clip", f"{clip!r}: expected [lo, hi], two numbers with lo < hi")
            clip = (float(clip[0]), float(clip[1]))
        return Block(name, kind, len(qadr), qadr, dadr, clip=clip)
    if kind == "position":
        points = spec.get("points")
        if not isinstance(points, list) or not points:
            raise TaskError(f"{key}.points", f"{points!r}: expected a non-empty list of site or body names")
        pts = tuple(_point(model, p, f"{key}.points[{i}]") for i, p in enumerate(points))
        axes = _axes(spec, key)
        return Block(name, kind, len(pts) * len(axes), empty, empty, pts, axes)
    if kind == "relative":
        for field in ("point", "to"):
            if field not in spec:
                raise TaskError(f"{key}.{field}", "missing: a relative block is point - to, both sites or bodies")
        pts = (_point(model, spec["point"], f"{key}.point"), _point(model, spec["to"], f"{key}.to"))
        axes = _axes(spec, key)
        return Block(name, kind, len(axes), empty, empty, pts, axes)
    of = spec.get("of")
    if of not in defined or defined[of].kind not in POINT_KINDS:
        choices = [n for n, b in defined.items() if b.kind in POINT_KINDS]
        raise TaskError(f"{key}.of", f"{of!r}: expected a position or relative block of task.blocks "
                        f"({', '.join(choices) or 'there is none'})")
    return Block(name, kind, defined[of].size, empty, empty, of=of)


def _condition_rows(model, rows: Any, key: str, offset_body: int | None) -> Conditions:
    """Conditions from a list of {qpos: [nq] or {joint: value}, offset: [3]}."""
    import mujoco

    if not isinstance(rows, list):
        raise TaskError(key, f"{rows!r}: expected a list of conditions, each with qpos and (with offset_body) offset")
    names = _names(model, mujoco.mjtObj.mjOBJ_JOINT, model.njnt)
    qpos0, offsets = [], []
    for m, row in enumerate(rows):
        k = f"{key}[{m}]"
        if not isinstance(row, dict) or set(row) - {"qpos", "offset"}:
            raise TaskError(k, f"{row!r}: expected a mapping with qpos and, for a task with offset_body, offset")
        q = model.qpos0.copy()
        given = row.get("qpos", {})
        if isinstance(given, list):
            if len(given) != model.nq or not all(_is_number(v) for v in given):
                raise TaskError(f"{k}.qpos", f"{given!r} ({len(given)} entr{'y' if len(given) == 1 else 'ies'}): "
                                f"expected {model.nq} numbers, one per "
                                "joint position (nq) of the model, or a mapping from joint names to values")
            q[:] = given
        elif isinstance(given, dict):
            for joint, value in given.items():
                if joint not in names:
                    raise TaskError(f"{k}.qpos.{joint}", f"the model has no joint {joint!r}; its joints: {', '.join(names)}")
                j = names.index(joint)
                if not _one_dof(model, j) or not _is_number(value):
                    raise TaskError(f"{k}.qpos.{joint}", f"{value!r}: expected a number for a hinge or slide joint")
                q[model.jnt_qposadr[j]] = value
        else:
            raise TaskError(f"{k}.qpos", f"{given!r}: expected a list of {model.nq} numbers or a mapping joint: value")
        qpos0.append(q)
        if offset_body is None:
            if "offset" in row:
                raise TaskError(f"{k}.offset", "an offset needs task.offset_body, the body it shifts")
        else:
            off = row.get("offset")
            if not isinstance(off, list) or len(off) != 3 or not all(_is_number(v) for v in off):
                raise TaskError(f"{k}.offset", f"{off!r}: expected 3 numbers, the shift of the offset body")
            offsets.append(off)
    qpos0_arr = np.asarray(qpos0, dtype=float).reshape(len(rows), model.nq)
    return Conditions(qpos0_arr, None if offset_body is None else np.asarray(offsets, dtype=float).reshape(len(rows), 3))


def _one_dof(model, j: int) -> bool:
    """A hinge or slide joint: one position, one velocity."""
    import mujoco

    return int(model.jnt_type[j]) in (int(mujoco.mjtJoint.mjJNT_HINGE), int(mujoco.mjtJoint.mjJNT_SLIDE))


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)


def _check_configuration(model, state: Sequence[str], blocks: Mapping[str, Block]) -> np.ndarray:
    """The state's first blocks: qpos then qvel of the actuated joints in actuator order. Returns their dof addresses."""
    import mujoco

    names = _names(model, mujoco.mjtObj.mjOBJ_JOINT, model.njnt)
    driven = []
    for a in range(model.nu):
        if int(model.actuator_trntype[a]) != int(mujoco.mjtTrn.mjTRN_JOINT):
            raise TaskError("task.model", f"actuator {a} does not drive a joint: GPS tasks need one actuator per joint")
        driven.append(int(model.actuator_trnid[a, 0]))
    want = [names[j] for j in driven]
    want_q = np.array([model.jnt_qposadr[j] for j in driven])
    first = blocks[state[0]] if state else None
    if first is None or first.kind != "qpos" or not np.array_equal(first.qadr, want_q):
        raise TaskError("task.state", f"{list(state)!r}: expected a qpos block of the actuated joints {want} (in actuator "
                        "order) first and a qvel block of the same joints second (init_lqr and the fk costs read them there)")
    second = blocks[state[1]] if len(state) > 1 else None
    if second is None or second.kind != "qvel" or not np.array_equal(second.dadr, first.dadr):
        raise TaskError("task.state", f"{list(state)!r}: expected a qvel block of the joints {want} second, after the qpos block")
    return first.dadr


def compile_task(task: Mapping[str, Any], base: Path | None = None) -> Task:
    """Resolve the `task` section on its model. Raises TaskError(key, message) for the first misfit."""
    import mujoco

    path = resolve_model(str(task["model"]), base)
    if not path.exists():
        raise TaskError("task.model", f"{task['model']!r}: no such file ({path})")
    try:
        model = mujoco.MjModel.from_xml_path(str(path))
    except ValueError as exc:  # what MuJoCo raises for a model it cannot compile
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TaskError("task.model", f"{task['model']!r} does not load: {first}") from None
    if abs(model.opt.timestep * task["substeps"] - task["dt"]) > 1e-12:
        raise TaskError("task.dt", f"{task['dt']!r}: expected {model.opt.timestep * task['substeps']:g} = task.substeps "
                        f"({task['substeps']}) x the model's timestep ({model.opt.timestep:g} s)")
    if task["stepping"] == "split" and int(model.opt.integrator) != int(mujoco.mjtIntegrator.mjINT_EULER):
        raise TaskError("task.stepping", "split steps with semi-implicit Euler, but the model asks for integrator "
                        f"{mujoco.mjtIntegrator(model.opt.integrator).name}: use stepping mj_step")

    specs = task["blocks"]
    if not isinstance(specs, dict) or not specs:
        raise TaskError("task.blocks", f"{specs!r}: expected a mapping from block names to blocks")
    # Velocity blocks after the others, so that the order of the mapping does not matter (YAML
    # writers may sort it); the mapping's order is kept for everything else.
    defined: dict[str, Block] = {}
    later = [n for n, spec in specs.items() if isinstance(spec, dict) and spec.get("kind") == "velocity"]
    for name, spec in specs.items():
        if name not in later:
            defined[str(name)] = _block(model, str(name), spec, f"task.blocks.{name}", defined)
    for name in later:
        defined[str(name)] = _block(model, str(name), specs[name], f"task.blocks.{name}", defined)

    lists = {}
    for field in ("state", "observation"):
        names = task[field]
        if not isinstance(names, list) or not names:
            raise TaskError(f"task.{field}", f"{names!r}: expected a non-empty list of block names")
        for i, n in enumerate(names):
            if n not in defined:
                raise TaskError(f"task.{field}[{i}]", f"{n!r} is not a block of task.blocks ({', '.join(defined)})")
        if len(set(names)) != len(names):
            raise TaskError(f"task.{field}", f"{names!r}: a block is listed twice")
        lists[field] = tuple(names)
    state, observation = lists["state"], lists["observation"]
    for i, n in enumerate(state):  # the state's blocks are what the dynamics and the C-step differentiate
        if defined[n].kind in OBSERVATION_ONLY or defined[n].clip is not None:
            what = f"a {defined[n].kind} block" if defined[n].kind in OBSERVATION_ONLY else "a clipped block"
            raise TaskError(f"task.state[{i}]", f"{n!r} is {what}: the observation may hold it, the state may not")
    config_dofs = _check_configuration(model, state, defined)

    needed = set(state) | set(observation)
    needed |= {defined[n].of for n in needed if defined[n].kind == "velocity"}
    blocks = tuple(b for b in defined.values() if b.name in needed)
    x_slices, o_slices, jac_rows = {}, {}, {}
    for names, slices in ((state, x_slices), (observation, o_slices)):
        start = 0
        for n in names:
            slices[n] = slice(start, start + defined[n].size)
            start += defined[n].size
    row = 0
    for n in state:
        if defined[n].kind in POINT_KINDS:
            jac_rows[n] = slice(row, row + defined[n].size)
            row += defined[n].size

    offset_body = None
    if task.get("offset_body") is not None:
        offset_body = _point(model, f"body:{task['offset_body']}", "task.offset_body").id
    train = _condition_rows(model, task["conditions"], "task.conditions", offset_body)
    if not len(train):
        raise TaskError("task.conditions", "[]: expected at least one training condition")
    test = _condition_rows(model, task.get("test_conditions", []), "task.test_conditions", offset_body)

    limited = model.actuator_ctrllimited.astype(bool) & (not model.opt.disableflags & int(mujoco.mjtDisableBit.mjDSBL_CLAMPCTRL))
    return Task(
        name=str(task["name"]), model_path=str(path), T=int(task["T"]), dt=float(task["dt"]),
        substeps=int(task["substeps"]), stepping=str(task["stepping"]), nq=int(model.nq), nv=int(model.nv),
        nu=int(model.nu), blocks=blocks, state=state, observation=observation, x_slices=x_slices,
        o_slices=o_slices, jac_rows=jac_rows, config_dofs=config_dofs, offset_body=offset_body, train=train, test=test,
        action_low=np.where(limited, model.actuator_ctrlrange[:, 0], -np.inf),
        action_high=np.where(limited, model.actuator_ctrlrange[:, 1], np.inf),
    )


def plain_layout(xml_path: str) -> dict[str, Any]:
    """Blocks, state and observation of the paper's tasks for any model: x = o = [qpos, qvel, the
    positions of every site, their velocities] (the sites' blocks left out if the model has none)."""
    import mujoco

    model = mujoco.MjModel.from_xml_path(xml_path)
    blocks: dict[str, Any] = {"joint_positions": {"kind": "qpos"}, "joint_velocities": {"kind": "qvel"}}
    if model.nsite:
        sites = [f"site:{mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_SITE, i) or f'#{i}'}" for i in range(model.nsite)]
        blocks["sites"] = {"kind": "position", "points": sites}
        blocks["site_velocities"] = {"kind": "velocity", "of": "sites"}
    return {"blocks": blocks, "state": list(blocks), "observation": list(blocks)}


def plain_task(xml_path: str, qpos0: np.ndarray, dt: float, substeps: int, body_offsets: np.ndarray | None = None,
               offset_body: int = 1, stepping: str = "split", T: int = 1) -> Task:
    """A Task of a model with plain_layout: qpos0 [M, nq] initial joint positions, body_offsets [M, 3] of body
    `offset_body` (by index) or None. For tests and quick experiments; settings go through compile_task."""
    import mujoco

    qpos0 = np.asarray(qpos0, dtype=float)
    spec = {"name": Path(xml_path).stem, "model": str(xml_path), "T": T, "dt": dt, "substeps": substeps,
            "stepping": stepping, **plain_layout(str(xml_path)),
            "conditions": [{"qpos": [float(v) for v in q]} for q in qpos0]}
    if body_offsets is not None:
        model = mujoco.MjModel.from_xml_path(str(xml_path))
        spec["offset_body"] = mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_BODY, offset_body)
        for row, off in zip(spec["conditions"], np.asarray(body_offsets, dtype=float)):
            row["offset"] = [float(v) for v in off]
    return compile_task(spec)
