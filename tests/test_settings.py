"""stages.settings: params.yaml as typed settings, the same values the file holds."""

from __future__ import annotations

import subprocess
import sys
import zlib

import numpy as np
import pytest

from conftest import ROOT
from stages.config import load_params
from stages.settings import Settings, load_settings


@pytest.mark.parametrize("task", ["peg", "peg_blind", "obstacle"])
def test_settings_hold_the_values_of_the_file(task):
    path = ROOT / "configs" / f"{task}.yaml"
    params, s = load_params(path), load_settings(path)
    agent = params["agent"]
    assert (s.seed, s.iterations, s.agent.task, s.agent.T, s.agent.obs_dim) == (
        params["seed"], params["iterations"], agent["task"], agent["T"], agent["obs_dim"])
    assert vars(s.agent.noise) == {"smooth": agent["smooth_noise"], "sigma": agent["smooth_noise_var"],
                                   "renormalize": agent["smooth_noise_renormalize"]}
    np.testing.assert_array_equal(s.agent.qpos0, np.asarray(agent["qpos0"], dtype=float))
    assert s.agent.redraw_limit == agent["max_draws"]
    assert s.algorithm.kl_step == params["algorithm"]["kl_step"] and s.policy.hidden == tuple(params["policy"]["hidden"])
    assert vars(s.traj_opt) == params["traj_opt"]
    assert s.dynamics_prior.max_clusters == params["dynamics"]["prior"]["max_clusters"]
    assert s.policy_prior.max_samples == params["policy_prior"]["max_samples"]
    assert s.init_lqr.dt == agent["dt"] and s.badmm.inner_iterations == params["badmm"]["inner_iterations"]
    np.testing.assert_array_equal(s.evaluation.target, params["evaluation"]["target"])
    assert s.recorded("c_step") == {"algorithm.kl_step": params["algorithm"]["kl_step"], "traj_opt": params["traj_opt"]}
    expected = np.random.default_rng([params["seed"], 3, zlib.crc32(b"sample")]).standard_normal(4)
    np.testing.assert_array_equal(s.rng(3, "sample").standard_normal(4), expected)


def test_stop_mode_has_no_redraws(small_params_file):
    import yaml

    params = yaml.safe_load(small_params_file.read_text())
    params["agent"]["on_divergence"] = "stop"
    assert Settings.from_params(params).agent.redraw_limit is None


def test_loading_settings_does_not_import_torch():
    """The typed settings build gps_core's configs on first use, so loading them stays light."""
    code = ("import sys; from stages.settings import load_settings; s = load_settings('configs/peg.yaml'); "
            "s.traj_opt; s.dynamics_prior; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
