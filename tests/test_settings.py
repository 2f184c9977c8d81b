"""stages.settings.load: params.yaml as typed settings, the same values the file holds."""

from __future__ import annotations

import subprocess
import sys
import zlib

import numpy as np
import pytest

from conftest import ROOT
from stages.settings.params import load_params
from stages.settings.load import Settings, load_settings


@pytest.mark.parametrize("task", ["peg", "peg_blind", "obstacle"])
def test_settings_hold_the_values_of_the_file(task):
    path = ROOT / "configs" / f"{task}.yaml"
    params, s = load_params(path), load_settings(path)
    agent, task_section = params["agent"], params["task"]
    assert (s.seed, s.iterations, s.task.name, s.task.T, s.task.dt, s.task.substeps, s.task.stepping) == (
        params["seed"], params["iterations"], task_section["name"], task_section["T"], task_section["dt"],
        task_section["substeps"], task_section["stepping"])
    assert (s.task.state, s.task.observation) == (tuple(task_section["state"]), tuple(task_section["observation"]))
    assert (s.task.dX, s.task.dO) == {"peg": (26, 26), "peg_blind": (26, 14), "obstacle": (10, 10)}[task]
    assert vars(s.agent.noise) == {"smooth": agent["smooth_noise"], "sigma": agent["smooth_noise_var"],
                                   "renormalize": agent["smooth_noise_renormalize"]}
    conditions = task_section["conditions"]
    np.testing.assert_array_equal(s.task.train.qpos0, np.asarray([c["qpos"] for c in conditions], dtype=float))
    if "offset_body" in task_section:
        np.testing.assert_array_equal(s.task.train.offsets, np.asarray([c["offset"] for c in conditions], dtype=float))
    else:
        assert s.task.train.offsets is None
    assert len(s.task.test) == len(task_section.get("test_conditions", []))
    assert s.agent.redraw_limit == agent["max_draws"]
    assert s.algorithm.kl_step == params["algorithm"]["kl_step"] and s.policy.hidden == tuple(params["policy"]["hidden"])
    assert vars(s.traj_opt) == params["traj_opt"]
    assert s.dynamics.prior.max_clusters == params["dynamics"]["prior"]["max_clusters"]
    assert s.policy_prior.max_samples == params["policy_prior"]["max_samples"]
    assert s.init_lqr.dt == task_section["dt"] and s.badmm.inner_iterations == params["badmm"]["inner_iterations"]
    np.testing.assert_array_equal(s.evaluation.target, params["evaluation"]["target"])
    # the scored point: the particle x[4:7] (obstacle), the peg bottom x[14:17] (peg)
    assert (s.evaluation.point, s.evaluation.point_start) == (params["evaluation"]["point"], 4 if task == "obstacle" else 14)
    pol = params["policy"]
    assert (s.s_step.iterations, s.s_step.batch_size, s.s_step.lr, s.s_step.weight_decay, s.s_step.ent_reg) == (
        pol["iterations"], pol["batch_size"], pol["lr"], pol["weight_decay"], pol["ent_reg"])
    camera = params["render"]["camera"]
    assert (s.render.camera.lookat, s.render.camera.distance) == (tuple(camera["lookat"]), camera["distance"])
    assert [m.at for m in s.render.markers] == [m["at"] for m in params["render"]["markers"]]
    assert s.recorded("c_step") == {"algorithm.kl_step": params["algorithm"]["kl_step"], "traj_opt": params["traj_opt"]}
    expected = np.random.default_rng([params["seed"], 3, zlib.crc32(b"sample")]).standard_normal(4)
    np.testing.assert_array_equal(s.rng(3, "sample").standard_normal(4), expected)


def test_stop_mode_has_no_redraws(small_params_file):
    import yaml

    from gps_core.sim.task import compile_task

    params = yaml.safe_load(small_params_file.read_text())
    params["agent"]["on_divergence"] = "stop"
    assert Settings.from_params(params, compile_task(params["task"])).agent.redraw_limit is None


def test_float_settings_written_as_integers_are_floats(small_params_file):
    """The schema accepts 2 for a number; the settings hold 2.0 (stages.settings.schema.Field.typed)."""
    import yaml

    from gps_core.sim.task import compile_task

    params = yaml.safe_load(small_params_file.read_text())
    params["algorithm"]["kl_step"], params["traj_opt"]["tolerance"], params["badmm"]["lg_step_schedule"] = 2, 1, 10
    s = Settings.from_params(params, compile_task(params["task"]))
    for value in (s.algorithm.kl_step, s.traj_opt.tolerance, s.badmm.lg_step_schedule):
        assert type(value) is float
    assert s.badmm.ent_reg_schedule == tuple(params["badmm"]["ent_reg_schedule"])


def test_loading_settings_imports_no_algorithm_module():
    """Every stage loads the settings: they import gps_core.configs and gps_core.sim.task, not the algorithm,
    the simulator or torch (stages/pipeline/code_deps.py would make every stage depend on them)."""
    code = ("import sys; from stages.settings.load import load_settings; load_settings('configs/peg.yaml'); "
            "print(sorted(m for m in sys.modules if m.startswith('gps_core') or m == 'torch'))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == str(["gps_core", "gps_core.configs", "gps_core.sim", "gps_core.sim.task"])


def test_loading_settings_does_not_import_torch():
    """The typed settings build gps_core's configs, which are plain dataclasses, so loading them stays light."""
    code = ("import sys; from stages.settings.load import load_settings; s = load_settings('configs/peg.yaml'); "
            "s.traj_opt; s.dynamics.prior; s.s_step; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
