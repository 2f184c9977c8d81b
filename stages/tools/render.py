"""`gps render`: a rollout of a policy drawn offscreen with mujoco.Renderer, to a GIF (or MP4, or one PNG).

The rollout is the one the stages would run: the global policy of a policy.h5
(as the evaluate stage: noise-free), or the local controller of a
controllers.h5 (mean action, no noise), in the chosen condition of the task
in params.yaml. Its states are replayed into MuJoCo and drawn from a fixed
camera, with markers at the evaluation target and the scored point: both are
the `render` section of params.yaml (configs/peg.yaml: the hole's floor gets a
green pole and the peg bottom a yellow ball; the obstacle and Gymnasium's models
show their own targets).

Offscreen rendering needs an OpenGL backend without a display: EGL (Debian
package libegl1, with Mesa's libegl-mesa0 for software rendering) or OSMesa
(libosmesa6). MUJOCO_GL picks it; when it is unset, EGL is tried, then OSMesa,
each in a throw-away subprocess. When none works the command stops with one
line saying what to install. GIFs are written with Pillow (a matplotlib
dependency); MP4 only when the imageio-ffmpeg package is installed.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from stages.errors import UserError

if TYPE_CHECKING:
    from stages.settings.load import CameraSettings, RenderSettings, Settings

BACKENDS = ("egl", "osmesa")
INSTALL_HINT = ("install the system package for EGL (Debian: libegl1 libegl-mesa0) or OSMesa (libosmesa6), "
                "or set MUJOCO_GL to a backend that works here")
_PROBE = """
import mujoco
m = mujoco.MjModel.from_xml_string('<mujoco><worldbody><geom size="1"/></worldbody></mujoco>')
r = mujoco.Renderer(m, 8, 8)
r.update_scene(mujoco.MjData(m))
r.render()
r.close()
print("ok")
"""
_chosen: dict[str, str] = {}


# ------------------------------------------------------------------ the OpenGL backend


def _probe(backend: str) -> str | None:
    """None if a fresh interpreter can render with MUJOCO_GL=backend, else the reason (one line)."""
    env = dict(os.environ, MUJOCO_GL=backend)
    if backend in BACKENDS:
        env["PYOPENGL_PLATFORM"] = backend
    try:
        proc = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return "timed out"
    if proc.returncode == 0 and proc.stdout.strip().endswith("ok"):
        return None
    lines = [ln.strip() for ln in proc.stderr.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else f"exit code {proc.returncode}"


def gl_backend() -> str:
    """The offscreen backend to render with, set up for this process; a one-line UserError if there is none.

    MUJOCO_GL wins when set; otherwise the first of egl, osmesa that works in a
    subprocess. mujoco fixes its backend when it is first imported, so if it
    was imported already (with another backend), the backend's context class is
    swapped in, which works as long as no OpenGL context was made before.
    """
    if "backend" in _chosen:
        return _chosen["backend"]
    wanted = os.environ.get("MUJOCO_GL", "").strip().lower()
    candidates = [wanted] if wanted else list(BACKENDS)
    reasons = []
    for backend in candidates:
        reason = _probe(backend)
        if reason is None:
            _use(backend)
            _chosen["backend"] = backend
            return backend
        reasons.append(f"MUJOCO_GL={backend}: {reason}")
    raise UserError(f"offscreen rendering is unavailable ({'; '.join(reasons)}): {INSTALL_HINT}")


def _use(backend: str) -> None:
    """Make mujoco in this process render with `backend`, leaving os.environ as it was.

    The environment is restored so that subprocesses started later (dvc, other
    stages) do not load OpenGL when they import mujoco.
    """
    saved = {k: os.environ.get(k) for k in ("MUJOCO_GL", "PYOPENGL_PLATFORM")}
    try:
        os.environ["MUJOCO_GL"] = backend
        if backend in BACKENDS:
            os.environ.setdefault("PYOPENGL_PLATFORM", backend)
        import mujoco  # noqa: F401 - on its first import it takes the backend from MUJOCO_GL
        from mujoco.rendering.classic import gl_context

        if getattr(gl_context, "_MUJOCO_GL", backend) == backend or backend not in BACKENDS:
            return
        try:  # mujoco was imported before with another backend: swap the context class
            if backend == "egl":
                from mujoco.egl import GLContext
            else:
                from mujoco.osmesa import GLContext
        except Exception as exc:  # noqa: BLE001 - e.g. PyOpenGL already bound to another platform
            raise UserError(f"offscreen rendering is unavailable in this process (MUJOCO_GL={backend}: {exc}); "
                            "run `gps render` in a fresh process") from None
        gl_context.GLContext = GLContext
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# ------------------------------------------------------------------ cameras and markers


def view_for(settings: "RenderSettings", model) -> "CameraSettings":
    """The camera of the settings (render.camera); without one, MuJoCo's free camera of the model's extent."""
    from stages.settings.load import CameraSettings

    if settings.camera is not None:
        return settings.camera
    return CameraSettings(lookat=tuple(float(v) for v in model.stat.center), distance=2.0 * float(model.stat.extent),
                          azimuth=90.0, elevation=-60.0)


@dataclass
class Marker:
    """A sphere of radius `size` at `pos`, or a capsule from `pos` to `to`, added to every frame (not simulated)."""

    pos: np.ndarray
    size: float
    rgba: tuple[float, float, float, float]
    to: np.ndarray | None = None


def markers_for(settings: "RenderSettings", target: np.ndarray, point: np.ndarray) -> list[Marker]:
    """The markers of the settings (render.markers) at the evaluation target or the scored point [3]."""
    out = []
    for mk in settings.markers:
        at = target if mk.at == "target" else point
        out.append(Marker(at, mk.radius, mk.rgba, to=None if mk.pole is None else at + np.asarray(mk.pole)))
    return out


class Scene:
    """One condition's model drawn from a fixed free camera, with marker spheres added to each frame."""

    def __init__(self, model, view: "CameraSettings", width: int, height: int, shadows: bool = False):
        import mujoco

        gl_backend()
        self.mujoco = mujoco
        self.model = copy.copy(model)  # hide_geoms must not change the caller's model
        self.data = mujoco.MjData(model)
        self.width, self.height = width, height
        try:
            self.renderer = mujoco.Renderer(self.model, height, width)
        except ValueError as exc:  # size above the model's offscreen buffer
            raise UserError(f"cannot render {width}x{height}: {exc}".splitlines()[0]) from None
        except Exception as exc:  # noqa: BLE001 - backend failures surface as many types
            raise UserError(f"offscreen rendering failed ({type(exc).__name__}: {exc}): {INSTALL_HINT}") from None
        self.camera = mujoco.MjvCamera()
        self.camera.type = mujoco.mjtCamera.mjCAMERA_FREE
        self.camera.lookat[:] = view.lookat
        self.camera.distance = view.distance
        self.camera.azimuth = view.azimuth
        self.camera.elevation = view.elevation
        self.option = mujoco.MjvOption()
        self.shadows = shadows
        self.markers: list[Marker] = []

    def close(self) -> None:
        self.renderer.close()

    def __enter__(self) -> "Scene":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def set_state(self, qpos: np.ndarray, qvel: np.ndarray | None = None) -> None:
        self.data.qpos[:] = qpos
        self.data.qvel[:] = 0.0 if qvel is None else qvel
        self.mujoco.mj_forward(self.model, self.data)

    def hide_geoms(self, names: list[str], group: int = 5) -> None:
        """Move geoms to a group that is not drawn (for tests: the picture without the object)."""
        for name in names:
            g = self.mujoco.mj_name2id(self.model, self.mujoco.mjtObj.mjOBJ_GEOM, name)
            if g < 0:
                raise UserError(f"the model has no geom {name!r}")
            self.model.geom_group[g] = group
        self.option.geomgroup[group] = 0

    def render(self) -> np.ndarray:
        """The current state as an RGB image [height, width, 3] uint8."""
        mj = self.mujoco
        self.renderer.update_scene(self.data, self.camera, self.option)
        scene = self.renderer.scene
        scene.flags[mj.mjtRndFlag.mjRND_SHADOW] = int(self.shadows)  # shadows cost 3-5x on software GL
        scene.flags[mj.mjtRndFlag.mjRND_REFLECTION] = 0
        for mk in self.markers:
            if scene.ngeom >= scene.maxgeom:
                break
            geom = scene.geoms[scene.ngeom]
            rgba = np.asarray(mk.rgba, dtype=np.float32)
            mj.mjv_initGeom(geom, mj.mjtGeom.mjGEOM_SPHERE, np.array([mk.size, 0.0, 0.0]),
                            np.asarray(mk.pos, dtype=float), np.eye(3).ravel(), rgba)
            if mk.to is not None:  # a pole from pos to `to`
                mj.mjv_connector(geom, mj.mjtGeom.mjGEOM_CAPSULE, mk.size, np.asarray(mk.pos, dtype=float),
                                 np.asarray(mk.to, dtype=float))
                geom.rgba[:] = rgba
            scene.ngeom += 1
        return self.renderer.render().copy()

    def project(self, point: np.ndarray) -> tuple[float, float]:
        """Pixel (column, row) of a world point in the last rendered frame (perspective camera)."""
        scene = self.renderer.scene  # mono rendering draws from the average of the two stereo eyes
        cam = self.mujoco.mjv_averageCamera(scene.camera[0], scene.camera[1])
        pos, fwd, up = (np.asarray(v, dtype=float) for v in (cam.pos, cam.forward, cam.up))
        right = np.cross(fwd, up)
        d = np.asarray(point, dtype=float) - pos
        z = d @ fwd
        if z <= 0:
            raise ValueError("point is behind the camera")
        x, y = (d @ right) * cam.frustum_near / z, (d @ up) * cam.frustum_near / z
        top, bottom = cam.frustum_top, cam.frustum_bottom
        half_w = cam.frustum_width / 2 if cam.frustum_width else (top - bottom) / 2 * self.width / self.height
        col = (x - (cam.frustum_center - half_w)) / (2 * half_w) * self.width
        row = (top - y) / (top - bottom) * self.height
        return float(col), float(row)


# ------------------------------------------------------------------ rollouts


@dataclass
class Rollout:
    X: np.ndarray  # [T, dX]
    what: str  # for the caption
    scored_point: np.ndarray  # [T, 3] the point scored by evaluation (particle or peg bottom)
    target: np.ndarray  # [3]
    distance: np.ndarray  # [T] distance of the scored point to the target


def _pad3(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=float)
    return np.concatenate([v, np.zeros(3 - v.shape[-1])]) if v.shape[-1] < 3 else v[..., :3]


def policy_rollout(s: "Settings", path: Path, condition: int, held_out: bool = False):
    """(simulator, Rollout) of the policy or controllers in `path`, noise-free, in one condition
    (held_out: one of the task's held-out conditions, where only the global policy acts)."""
    from gps_core.sim.env import Simulator
    from gps_core.sim.sampling import rollout_controllers, rollout_policy
    from stages.artifacts.controllers import load_controllers
    from stages.artifacts.policy import load_policy
    from stages.tools.inspect import read_any

    art = read_any(path)
    sim = Simulator(s.task, s.task.test if held_out else s.task.train)
    ev = s.evaluation
    T = s.task.T
    what_conditions = "held-out conditions (task.test_conditions)" if held_out else "conditions"
    if not -sim.M <= condition < sim.M:
        raise UserError(f"--condition {condition} is out of range: params has {sim.M} {what_conditions}"
                        + (f" (0..{sim.M - 1})" if sim.M else ""))
    if held_out and "policy/W0" not in art.datasets:
        raise UserError(f"{path}: --held-out rolls out a global policy (policy.h5); local controllers exist only for "
                        "the training conditions")
    condition %= sim.M
    stage, itr = art.attrs.get("stage", "?"), art.attrs.get("iteration", "?")
    noise = np.zeros((sim.M, 1, T, sim.dU))
    if "policy/W0" in art.datasets:
        known = {"dO": (sim.dO, "the observation of task.observation"), "dU": (sim.dU, "actions of the model")}
        net = load_policy(path, known, hidden=s.policy.hidden)
        X = rollout_policy(sim, net, noise).X[condition, 0]
        what = f"policy itr {itr}"
    elif "K" in art.datasets:
        known = {"M": (sim.M, "conditions in params"), "T": (T, "task.T in params"),
                 "dX": (sim.dX, "states of the model"), "dU": (sim.dU, "actions of the model")}
        X = rollout_controllers(sim, load_controllers(path, known), noise).X[condition, 0]
        what = f"controller itr {itr} ({stage})"
    else:
        raise UserError(f"{path}: neither a policy (policy/W0) nor controllers (K, k, pol_covar); "
                        f"it has {', '.join(art.datasets) or 'no datasets'}")
    start, target = ev.point_start, ev.target
    point = X[:, start:start + len(target)]
    distance = np.linalg.norm(point - target, axis=-1)
    return sim, Rollout(X=X, what=what, scored_point=np.stack([_pad3(p) for p in point]), target=_pad3(target),
                        distance=distance)


# ------------------------------------------------------------------ writing


def _caption(frame: np.ndarray, text: str) -> np.ndarray:
    from PIL import Image, ImageDraw

    img = Image.fromarray(frame)
    draw = ImageDraw.Draw(img)
    draw.rectangle([0, 0, img.width, 13], fill=(255, 255, 255))
    draw.text((3, 1), text, fill=(0, 0, 0))
    return np.asarray(img)


def _ffmpeg(out: Path):
    try:
        import imageio_ffmpeg
    except ImportError:
        raise UserError(f"{out}: MP4 needs the imageio-ffmpeg package (pip install imageio-ffmpeg); "
                        "write a .gif instead") from None
    return imageio_ffmpeg


def write_frames(frames: list[np.ndarray], out: Path, fps: float) -> None:
    """GIF (Pillow), MP4 (imageio-ffmpeg, if installed) or PNG (the first frame), chosen by the suffix; atomic."""
    from PIL import Image

    suffix = out.suffix.lower()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp{out.suffix}")
    try:
        if suffix == ".gif":
            images = [Image.fromarray(f) for f in frames]
            images[0].save(tmp, save_all=True, append_images=images[1:], duration=max(20, round(1000 / fps)), loop=0)
        elif suffix == ".png":
            Image.fromarray(frames[0]).save(tmp)
        elif suffix == ".mp4":
            imageio_ffmpeg = _ffmpeg(out)
            h, w = frames[0].shape[:2]
            writer = imageio_ffmpeg.write_frames(str(tmp), (w, h), fps=fps, macro_block_size=1)
            writer.send(None)
            for f in frames:
                writer.send(np.ascontiguousarray(f))
            writer.close()
        else:
            raise UserError(f"{out}: unknown format {suffix or '(no suffix)'}; use .gif, .mp4 or .png")
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)


def render_rollout(params_path: Path, policy: Path, condition: int, out: Path, width: int = 320, height: int = 240,
                   every: int = 1, time: int | None = None, fps: float | None = None, shadows: bool = False,
                   held_out: bool = False) -> str:
    """Roll out, draw and write; returns a one-line description of what was written."""
    from stages.settings.load import load_settings

    if every < 1:
        raise UserError(f"--every is {every}, expected an integer >= 1")
    settings = load_settings(params_path)
    if out.suffix.lower() not in (".gif", ".mp4", ".png"):
        raise UserError(f"{out}: unknown format {out.suffix or '(no suffix)'}; use .gif, .mp4 or .png")
    if out.suffix.lower() == ".mp4":
        _ffmpeg(out)
    gl_backend()  # fail early, before the rollout, when there is no way to draw
    sim, r = policy_rollout(settings, policy, condition, held_out)
    m = condition % sim.M
    T = len(r.X)
    if out.suffix.lower() == ".png":
        t_sel = T - 1 if time is None else time
        if not -T <= t_sel < T:
            raise UserError(f"--time {t_sel} is out of range: the rollout has {T} time steps (0..{T - 1})")
        steps = [t_sel % T]
    else:
        if time is not None:
            raise UserError("--time selects the frame of a .png; a .gif or .mp4 shows every --every'th step")
        steps = list(range(0, T, every))
        if steps[-1] != T - 1:
            steps.append(T - 1)
    task = settings.task
    # The state holds the configuration joints first (gps_core.sim.task); the other joints keep the condition's values.
    config = task.block(task.state[0])
    dU = len(config.qadr)
    frames = []
    with Scene(sim.models[m], view_for(settings.render, sim.models[m]), width, height, shadows) as scene:
        for t in steps:
            scene.markers = markers_for(settings.render, r.target, r.scored_point[t])
            qpos, qvel = sim.qpos0[m].copy(), np.zeros(sim.nv)
            qpos[config.qadr], qvel[config.dadr] = r.X[t, :dU], r.X[t, dU:2 * dU]
            scene.set_state(qpos, qvel)
            frames.append(_caption(scene.render(), f"{r.what} | {'held-out ' if held_out else ''}cond {m} | t={t} | dist {r.distance[t]:.3f}"))
    write_frames(frames, out, fps if fps else 1.0 / (settings.task.dt * every))
    return (f"wrote {out}: {len(frames)} frame(s) {width}x{height} of the {r.what} in {'held-out ' if held_out else ''}condition {m} "
            f"(final distance {r.distance[-1]:.3f}; backend {gl_backend()})")
