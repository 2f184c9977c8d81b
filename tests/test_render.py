"""`gps render`: offscreen frames of real rollouts, checked against the simulation's positions.

Needs an offscreen OpenGL backend (EGL or OSMesa); without one these tests
skip and say what to install. The unavailable-backend path is tested anyway.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from stages.tools import render
from stages.main import registered_app

app = registered_app()
from stages.errors import UserError

from small_runs import obstacle_run, peg_start

runner = CliRunner()


@pytest.fixture(scope="module")
def backend() -> str:
    try:
        return render.gl_backend()
    except UserError as exc:
        pytest.skip(f"no offscreen OpenGL here: {exc}")


def invoke(*args):
    return runner.invoke(app, ["render", *map(str, args)])


def scene_for(params: dict, condition: int, width: int = 320, height: int = 240):
    from gps_core.sim.env import Simulator
    from gps_core.sim.task import compile_task
    from stages.settings.load import Settings

    task = compile_task(params["task"])
    sim = Simulator(task)
    view = render.view_for(Settings.from_params(params, task).render, sim.models[condition])
    scene = render.Scene(sim.models[condition], view, width, height)
    return sim, scene


def object_mask(scene: render.Scene, geoms: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The frame, and the pixels that change when the geoms are not drawn (where the object is seen)."""
    with_object = scene.render()
    scene.hide_geoms(geoms)
    without = scene.render()
    scene.option.geomgroup[5] = 1  # show them again for later frames
    return with_object, np.abs(with_object.astype(int) - without.astype(int)).sum(-1) > 30


def near(mask: np.ndarray, col: float, row: float, radius: float) -> bool:
    rows, cols = np.nonzero(mask)
    return bool(np.min(np.hypot(cols - col, rows - row)) <= radius)


def not_blank(img: np.ndarray) -> None:
    assert img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.uint8
    assert img.std() > 10 and len(np.unique(img.reshape(-1, 3), axis=0)) > 20, "frame looks blank"


def test_particle_is_drawn_where_the_simulation_puts_it(backend):
    from conftest import small_params

    params = small_params()
    sim, scene = scene_for(params, 1)
    with scene:
        for qpos in ([0.0, 0.75], [2.6, -0.4]):
            scene.set_state(np.array(qpos))
            img, mask = object_mask(scene, ["particle"])
            not_blank(img)
            site = scene.data.site_xpos[0]
            np.testing.assert_allclose(site[:2], qpos)
            col, row = scene.project(site)
            rows, cols = np.nonzero(mask)
            assert 20 < mask.sum() < 2000
            assert np.hypot(cols.mean() - col, rows.mean() - row) < 2, "the particle is not where the simulation says"
        # moving the particle moves the drawing: the difference is at the two places only
        scene.set_state(np.array([0.0, 0.75]))
        a = scene.render()
        scene.set_state(np.array([2.6, -0.4]))
        b = scene.render()
        diff = np.abs(a.astype(int) - b.astype(int)).sum(-1) > 30
        rows, cols = np.nonzero(diff)
        p1, p2 = scene.project([0.0, 0.75, 0.0]), scene.project([2.6, -0.4, 0.0])
        d = np.minimum(np.hypot(cols - p1[0], rows - p1[1]), np.hypot(cols - p2[0], rows - p2[1]))
        assert d.max() < 12 and near(diff, *p1, 2) and near(diff, *p2, 2)


def test_peg_is_drawn_where_the_simulation_puts_it(backend):
    from conftest import small_peg_params

    params = small_peg_params()
    sim, scene = scene_for(params, 0)
    with scene:
        scene.set_state(sim.qpos0[0])
        img, mask = object_mask(scene, ["peg"])
        not_blank(img)
        bottom, top = scene.data.site_xpos[0], scene.data.site_xpos[1]  # leg_bottom, leg_top: the peg's ends
        points = [scene.project(bottom + f * (top - bottom)) for f in np.linspace(0.05, 0.95, 7)]
        on_peg = [near(mask, c, r, 1.5) for c, r in points]
        assert sum(on_peg) >= 5, f"peg axis points on the drawn peg: {on_peg}"  # a finger may hide one or two
        rows, cols = np.nonzero(mask)
        for c, r in (points[0], points[-1]):
            assert cols.min() - 5 <= c <= cols.max() + 5 and rows.min() - 5 <= r <= rows.max() + 5
        hole = scene.project(np.asarray(params["evaluation"]["target"]))
        assert not near(mask, *hole, 10), "the hole should be away from the peg at the start"


def test_render_gif_of_the_global_policy(backend, tmp_path_factory, tmp_path):
    run = obstacle_run(tmp_path_factory)
    out = tmp_path / "policy.gif"
    result = invoke(run / "data" / "itr_01" / "policy.h5", "--params", run / "params.yaml", "--condition", 1,
                    "--out", out, "--every", 7, "--width", 160, "--height", 120)
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert result.stdout.startswith(f"wrote {out}: 6 frame(s) 160x120 of the policy itr 1 in condition 1")
    assert f"backend {backend}" in result.stdout
    with Image.open(out) as gif:
        assert gif.n_frames == 6 and gif.size == (160, 120)  # t = 0, 7, 14, 21, 28 and the last, 29
        frames = []
        for i in range(gif.n_frames):
            gif.seek(i)
            frames.append(np.asarray(gif.convert("RGB")))
    for f in frames:
        not_blank(f)
    assert any(np.abs(frames[0].astype(int) - f.astype(int)).sum() > 0 for f in frames[1:]), "nothing moves"


def test_render_png_of_peg_controllers_marks_target_and_peg(backend, tmp_path_factory, tmp_path):
    run = peg_start(tmp_path_factory)
    out = tmp_path / "peg.png"
    result = invoke(run / "data" / "init" / "controllers.h5", "--params", run / "params.yaml", "-m", 1, "-o", out, "-t", 0)
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "1 frame(s) 320x240 of the controller itr 0 (init) in condition 1" in result.stdout
    img = np.asarray(Image.open(out).convert("RGB")).astype(int)
    not_blank(img.astype(np.uint8))
    params = yaml.safe_load((run / "params.yaml").read_text())
    sim, scene = scene_for(params, 1)
    with scene:
        scene.set_state(sim.qpos0[1])
        scene.render()
        bottom = scene.project(scene.data.site_xpos[0])
        pole_top = scene.project(np.asarray(params["evaluation"]["target"]) + [0, 0, 0.2])
    yellow = (img[..., 0] > 150) & (img[..., 1] > 120) & (img[..., 2] < 60)
    green = (img[..., 1] > img[..., 0] + 40) & (img[..., 1] > img[..., 2] + 40)
    rows, cols = np.nonzero(yellow)
    assert 20 < yellow.sum() < 1000, "no yellow marker"  # only the marker is yellow
    assert np.hypot(cols.mean() - bottom[0], rows.mean() - bottom[1]) < 3, "the peg bottom marker is not at the peg bottom"
    assert near(green, *pole_top, 3), "the target pole is not above the hole"


@pytest.mark.parametrize("args,message", [
    (("itr_00/samples.h5",), "neither a policy (policy/W0) nor controllers"),
    (("itr_00/policy.h5", "-m", 2), "--condition 2 is out of range: params has 2 conditions"),
    (("itr_00/policy.h5", "-o", "x.avi"), "unknown format .avi"),
    (("itr_00/policy.h5", "-o", "x.gif", "-t", 3), "--time selects the frame of a .png"),
    (("nope.h5",), "nope.h5: file not found"),
])
def test_bad_input_is_one_line_exit_2(backend, tmp_path_factory, tmp_path, args, message):
    run = obstacle_run(tmp_path_factory)
    file, *rest = args
    if "-o" not in rest:
        rest += ["-o", tmp_path / "x.gif"]
    result = invoke(run / "data" / file, "--params", run / "params.yaml", *rest)
    assert result.exit_code == 2, result.output
    err = result.stderr.strip()
    assert err.startswith("gps render: error: ") and "\n" not in err and message in err


def test_mp4_needs_imageio_ffmpeg(backend, tmp_path_factory, tmp_path):
    pytest.importorskip("PIL")
    try:
        import imageio_ffmpeg  # noqa: F401
    except ImportError:
        run = obstacle_run(tmp_path_factory)
        result = invoke(run / "data" / "itr_00" / "policy.h5", "--params", run / "params.yaml", "-o", tmp_path / "a.mp4")
        assert result.exit_code == 2 and "pip install imageio-ffmpeg" in result.stderr
        assert not (tmp_path / "a.mp4").exists()
    else:
        pytest.skip("imageio-ffmpeg is installed: MP4 works")


def test_no_backend_is_one_line_exit_2(monkeypatch, tmp_path):
    """Without a working backend (here: a MUJOCO_GL that does not exist) the command says what to install."""
    monkeypatch.setattr(render, "_chosen", {})
    monkeypatch.setenv("MUJOCO_GL", "nonexistent")
    params = tmp_path / "params.yaml"
    from conftest import small_params

    params.write_text(yaml.safe_dump(small_params()))
    result = invoke(tmp_path / "policy.h5", "--params", params, "-o", tmp_path / "x.gif")
    assert result.exit_code == 2
    err = result.stderr.strip()
    assert err.startswith("gps render: error: offscreen rendering is unavailable (MUJOCO_GL=nonexistent: ")
    assert "libegl1" in err and "libosmesa6" in err and "\n" not in err
