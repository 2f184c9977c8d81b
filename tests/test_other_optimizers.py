"""The reference's other optimizers as pipelines (algorithm.name traj_opt, pi2, pilqr, mdgps_pilqr, pigps):
every stage in pipeline order on the small obstacle task, what each new stage writes checked against its
inputs by hand, determinism, the settings' one-line errors; end to end through DVC and a resume after
SIGKILL (slow)."""

from __future__ import annotations

import copy
import json
import os
import shlex
import signal
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from conftest import small_params
from stages.errors import UserError
from stages.pipeline.generate import build_pipeline, pipeline_of
from stages.settings.schema import validate_params

ALGORITHMS = ("traj_opt", "pi2", "pilqr", "mdgps_pilqr", "pigps")
LOCAL_ONLY = ("traj_opt", "pi2", "pilqr")


def algorithm_params(algorithm: str, iterations: int = 3) -> dict:
    params = small_params(iterations)
    params["algorithm"]["name"] = algorithm
    params["algorithm"]["sample_on_policy"] = algorithm not in LOCAL_ONLY
    return params


def run_in_process(ws: Path, params: dict) -> None:
    """Every stage of the generated pipeline but plot, in order, in-process, with ws as the project root."""
    from stages.main import registered_app

    ws.mkdir(parents=True, exist_ok=True)
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    doc = pipeline_of(params)
    app, cwd = registered_app(), os.getcwd()
    os.chdir(ws)
    try:
        for name, stage in doc["stages"].items():
            if name in ("plot", "summary"):  # the summary checks dvc.yaml files these runs do not write
                continue
            result = CliRunner().invoke(app, shlex.split(stage["cmd"])[1:])
            assert result.exit_code == 0, f"{name}: {result.output}"
    finally:
        os.chdir(cwd)


def datasets(path: Path) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda n, o: out.__setitem__(n, o[()]) if isinstance(o, h5py.Dataset) else None)
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Each algorithm's 3-iteration small run, made once."""
    out = {}
    for algorithm in ALGORITHMS:
        ws = tmp_path_factory.mktemp(algorithm)
        run_in_process(ws, algorithm_params(algorithm))
        out[algorithm] = ws
    return out


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_each_algorithm_writes_its_files_and_is_deterministic(runs, algorithm, tmp_path):
    """The files the pipeline declares exist; a second run gives the same bytes in every dataset."""
    ws = runs[algorithm]
    doc = build_pipeline(3, "params.yaml", algorithm)
    declared = {o for name, st in doc["stages"].items() if name not in ("plot", "summary") for o in st.get("outs", [])}
    assert all((ws / o).exists() for o in declared)
    steps = {name.rsplit("_", 1)[0] for name in doc["stages"] if name[-2:].isdigit()}
    expected = {
        "traj_opt": {"sample", "fit_dynamics", "adjust_step", "c_step", "evaluate"},
        "pi2": {"sample", "pi2", "evaluate"},
        "pilqr": {"sample", "fit_dynamics", "res_percent", "lqr_step", "pi2", "evaluate"},
        "mdgps_pilqr": {"sample", "fit_dynamics", "fit_policy", "res_percent", "lqr_step", "pi2", "s_step", "evaluate"},
        "pigps": {"sample", "pi2", "s_step", "evaluate"},
    }[algorithm]
    assert steps == expected
    again = tmp_path / "again"
    run_in_process(again, algorithm_params(algorithm))
    for path in sorted((ws / "data").rglob("*.h5")):
        a, b = datasets(path), datasets(again / path.relative_to(ws))
        assert a.keys() == b.keys(), path
        for name in a:
            assert a[name].dtype == b[name].dtype and a[name].tobytes() == b[name].tobytes(), f"{path}:{name}"
    for path in sorted((ws / "data").rglob("metrics.json")):
        assert path.read_text() == (again / path.relative_to(ws)).read_text()


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_status_shows_every_iteration_done(runs, algorithm):
    from stages.tools.status import status_text

    text = status_text(runs[algorithm] / "data", runs[algorithm] / "params.yaml")
    rows = [line for line in text.splitlines() if line[:3].strip().isdigit()]
    assert len(rows) == 3 and all(" done " in r for r in rows), text


def test_pi2_reweights_the_samples_feedforward_controls(runs):
    """PI2 alone: K carried over; k_t the weighted mean of u − K x under the recorded weights, which are the
    softmax of −cost-to-go / η_t; the weights' KL to uniform at most kl_threshold; the summary datasets."""
    ws = runs["pi2"]
    for k in range(3):
        d = ws / "data" / f"itr_{k:02d}"
        prev = ws / "data" / ("init" if k == 0 else f"itr_{k - 1:02d}") / "controllers.h5"
        s, old, new, pi2 = (datasets(p) for p in (d / "samples.h5", prev, d / "controllers.h5", d / "pi2.h5"))
        np.testing.assert_array_equal(new["K"], old["K"])
        ffw = s["U"] - np.einsum("mtux,mntx->mntu", old["K"], s["X"])
        np.testing.assert_allclose(new["k"], np.einsum("mtn,mntu->mtu", pi2["weights"], ffw), rtol=1e-12, atol=1e-12)
        togo = np.flip(np.cumsum(np.flip(s["cost"], -1), -1), -1)  # [M, N, T]
        logits = -(togo - togo.min(axis=1, keepdims=True)) / pi2["temperatures"][:, None, :]
        w = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        np.testing.assert_allclose(pi2["weights"], np.swapaxes(w, 1, 2), rtol=1e-10, atol=1e-14)
        kl = np.sum(pi2["weights"] * np.log(np.maximum(pi2["weights"], 1e-300) * s["cost"].shape[1]), axis=-1)
        np.testing.assert_allclose(pi2["weights_kl"], kl, atol=1e-9)
        assert np.all(kl[~pi2["temperature_raised"]] <= 1.0 + 1e-9)  # pi2.kl_threshold of the obstacle config
        np.testing.assert_allclose(new["kl"], pi2["weights_kl"].sum(1))
        np.testing.assert_allclose(new["eta"], np.exp(np.log(pi2["temperatures"]).mean(1)))


@pytest.mark.parametrize("algorithm", ["pilqr", "mdgps_pilqr"])
def test_pilqr_stages_agree_with_each_other(runs, algorithm):
    """The residual is sampled minus predicted cost; the step rule and PI2 predict the same costs (the
    controllers that drew the samples through this iteration's dynamics); K is the LQR step's; the LQR
    step's bounds are the kl_step schedule times the step rule's multipliers; its KL meets them where it
    converged; the controllers file summarises it."""
    from gps_core.traj_opt.pilqr import schedule

    ws = runs[algorithm]
    p = algorithm_params(algorithm)
    for k in range(3):
        d = ws / "data" / f"itr_{k:02d}"
        s, lqr, pi2, new = (datasets(d / f) for f in ("samples.h5", "lqr_step.h5", "pi2.h5", "controllers.h5"))
        np.testing.assert_allclose(pi2["residual"], s["cost"] - pi2["predicted"], rtol=0, atol=1e-12)
        np.testing.assert_array_equal(new["K"], lqr["K"])
        mult = np.ones((2, 1)) if k == 0 else datasets(d / "res_percent.h5")["step_mult"]
        np.testing.assert_allclose(lqr["kl_step"], schedule(p["pilqr"]["kl_step"], 30) * mult, rtol=1e-12)
        tol = p["pilqr"]["tolerance"]
        for m in np.flatnonzero(lqr["converged"]):
            assert np.all(np.abs(lqr["kl"][m] - lqr["kl_step"][m]) < tol * lqr["kl_step"][m])
        np.testing.assert_allclose(new["kl"], lqr["kl"].sum(1))
        np.testing.assert_allclose(new["kl_step"], lqr["kl_step"].sum(1))
        if k > 0:
            rule = datasets(d / "res_percent.h5")
            np.testing.assert_allclose(rule["predicted"], pi2["predicted"], rtol=1e-12)
            np.testing.assert_allclose(rule["ratio"], pi2["residual_ratio"], rtol=1e-12)
            prev = np.ones((2, 1)) if k == 1 else datasets(ws / "data" / f"itr_{k - 1:02d}" / "res_percent.h5")["step_mult"]
            factor = np.where(rule["direction"] < 0, 0.5, np.where(rule["direction"] > 0, 2.0, 1.0))
            lo, hi = schedule(p["pilqr"]["min_step_mult"], 30), schedule(p["pilqr"]["max_step_mult"], 30)
            np.testing.assert_allclose(rule["step_mult"], np.maximum(np.minimum(factor * prev, hi), lo))
            dec, inc = p["pilqr"]["step_rule_res_ratio_dec"], p["pilqr"]["step_rule_res_ratio_inc"]
            assert np.all((rule["direction"] == -1) == (rule["ratio"] > dec))
            assert np.all((rule["direction"] == 1) == (rule["ratio"] < inc))


def test_pilqr_references_the_sampling_controllers_and_mdgps_pilqr_the_policy(runs):
    """The LQR step's KL is measured against its KL reference: PILQR's the controllers that drew the
    samples, MDGPS-PILQR's the policy linearisation (recomputed here from the files)."""
    from gps_core.traj_opt.lqr import controller_marginals, quadratic_form_batched, traj_kl_batched
    from stages.artifacts.controllers import load_controllers
    from stages.artifacts.models import load_dynamics
    from stages.artifacts.pilqr import load_lqr_step

    for algorithm, reference in (("pilqr", "controllers.h5"), ("mdgps_pilqr", "policy_lin.h5")):
        ws = runs[algorithm]
        d, prev = ws / "data" / "itr_01", ws / "data" / "itr_00"
        ref = load_controllers((prev if reference == "controllers.h5" else d) / reference)
        lqr, dyns = load_lqr_step(d / "lqr_step.h5"), load_dynamics(d / "dynamics.h5")
        for m in range(2):
            pol = lqr.policy(m)
            mu, S = controller_marginals(pol, dyns[m])
            terms = lambda c: quadratic_form_batched(*(np.asarray(a)[None] for a in (c.K, c.k, c.covar)))  # noqa: E731
            kl = traj_kl_batched(mu[None], S[None], terms(pol), terms(ref[m]))[0]
            np.testing.assert_allclose(lqr.kl[m], kl, rtol=1e-8, atol=1e-10)


def test_traj_opt_c_step_is_bounded_against_the_sampling_controllers(runs):
    from gps_core.traj_opt.lqr import controller_marginals, quadratic_form_batched, traj_kl_batched
    from stages.artifacts.controllers import load_controllers
    from stages.artifacts.models import load_dynamics

    ws = runs["traj_opt"]
    for k in (1, 2):
        d, prev = ws / "data" / f"itr_{k:02d}", ws / "data" / f"itr_{k - 1:02d}"
        new, old, dyns = load_controllers(d / "controllers.h5"), load_controllers(prev / "controllers.h5"), load_dynamics(d / "dynamics.h5")
        summary = datasets(d / "controllers.h5")
        for m in range(2):
            mu, S = controller_marginals(new[m], dyns[m])
            terms = lambda c: quadratic_form_batched(*(np.asarray(a)[None] for a in (c.K, c.k, c.covar)))  # noqa: E731
            kl = traj_kl_batched(mu[None], S[None], terms(new[m]), terms(old[m]))[0].sum()
            np.testing.assert_allclose(summary["kl"][m], kl, rtol=1e-6)
            if summary["converged"][m]:
                assert abs(kl - summary["kl_step"][m]) < 0.1 * summary["kl_step"][m]


@pytest.mark.parametrize("algorithm", LOCAL_ONLY)
def test_local_optimizers_evaluate_the_mean_of_their_controllers(runs, algorithm):
    """Without a policy, eval.h5 is the noise-free rollout of each condition's controller: u = K x + k."""
    ws = runs[algorithm]
    d = ws / "data" / "itr_02"
    c, ev = datasets(d / "controllers.h5"), datasets(d / "eval.h5")
    np.testing.assert_allclose(ev["U"], np.einsum("mtux,mtx->mtu", c["K"], ev["X"]) + c["k"], rtol=1e-10, atol=1e-10)
    assert not any(name.startswith("test/") for name in ev)


def test_report_names_each_method(runs, tmp_path):
    """The summary stage runs on each algorithm's files; `gps report` labels them by their literature names."""
    from stages.main import registered_app
    from stages.pipeline.generate import write_pipeline

    app, cwd = registered_app(), os.getcwd()
    for algorithm in ALGORITHMS:
        ws = runs[algorithm]
        params = yaml.safe_load((ws / "params.yaml").read_text())
        write_pipeline(params, ws / "params.yaml", ws)
        os.chdir(ws)
        try:
            result = CliRunner().invoke(app, shlex.split(build_pipeline(3, "params.yaml", algorithm)["stages"]["summary"]["cmd"])[1:])
        finally:
            os.chdir(cwd)
        assert result.exit_code == 0, result.output
    result = CliRunner().invoke(app, ["report", *(str(runs[a]) for a in ALGORITHMS), "--out", str(tmp_path / "report")])
    assert result.exit_code == 0, result.output
    header = next(line for line in result.output.splitlines() if line.startswith("| task | itr |"))
    assert header == "| task | itr | On/MDGPS-PILQR | On/PIGPS | LQR-FLM | PI2 | PILQR |"


def test_pigps_fits_no_dynamics_and_trains_the_policy_on_pi2s_controllers(runs):
    ws = runs["pigps"]
    assert not list((ws / "data").rglob("dynamics.h5")) and not list((ws / "data").rglob("policy_lin.h5"))
    metrics = json.loads((ws / "data" / "itr_02" / "metrics.json").read_text())
    assert np.isfinite(metrics["final_distance"]) and metrics["step_mult"] == 1.0


# ------------------------------------------------------------------------------------------- settings


def refused(params: dict) -> str:
    with pytest.raises(UserError) as err:
        validate_params(params, "p.yaml")
    message = str(err.value)
    assert "\n" not in message and message.startswith("p.yaml: ")
    return message


def test_settings_errors_are_one_line():
    p = algorithm_params("pilqr")
    del p["pilqr"]
    assert "missing key 'pilqr'" in refused(p) and "pilqr" in refused(p)
    p = algorithm_params("pigps")
    del p["pi2"]
    assert "missing key 'pi2'" in refused(p)
    p = algorithm_params("pilqr")
    p["algorithm"]["sample_on_policy"] = True
    assert "algorithm.sample_on_policy is true" in refused(p)
    p = algorithm_params("pilqr")
    p["pilqr"]["step_rule_res_ratio_inc"] = 0.3
    assert "step_rule_res_ratio_inc (0.3) must be below" in refused(p)
    p = algorithm_params("pilqr")
    p["pilqr"]["min_step_mult"] = [0.01, 6.0]
    assert "pilqr.min_step_mult (6.0) is greater than pilqr.max_step_mult (5.0) at t = T-1" in refused(p)
    p = algorithm_params("pilqr")
    p["pilqr"]["kl_step"] = [0.4]
    assert "pilqr.kl_step" in refused(p) and "length 2" in refused(p)
    p = algorithm_params("mdgps_pilqr")
    p["pilqr"]["step_rule"] = "classic"
    assert "pilqr.step_rule is 'classic', expected one of res_percent, const" in refused(p)


@pytest.mark.parametrize("algorithm", ["mdgps", "badmm", "traj_opt"])
def test_a_cost_without_derivatives_is_refused_by_the_lqr_only_algorithms(algorithm):
    p = algorithm_params(algorithm)
    p["algorithm"]["sample_on_policy"] = False
    p["cost"].append({"type": "binary_region", "block": "joint_positions", "target": [3.0, 0.0],
                      "max_distance": 0.5, "inside_cost": -3.0, "outside_cost": 0.0})
    message = refused(p)
    assert f"cost[1] is a binary_region term, which has no derivatives, and algorithm.name {algorithm}" in message
    for ok in ("pi2", "pilqr", "mdgps_pilqr", "pigps"):
        q = copy.deepcopy(p)
        q["algorithm"]["name"] = ok
        q["algorithm"]["sample_on_policy"] = ok not in LOCAL_ONLY
        validate_params(q, "p.yaml")


def test_pi2_without_damping_needs_more_samples_than_actions(tmp_path):
    """A setting that passes the schema but not the model: one line naming it, exit 2, nothing written."""
    from stages.main import registered_app

    p = algorithm_params("pi2", iterations=1)
    p["pi2"]["covariance_damping"] = 0.0
    p["agent"]["num_samples"] = 2  # the obstacle's point mass has 2 actions
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        result = CliRunner().invoke(registered_app(), shlex.split(build_pipeline(1, "params.yaml", "pi2")["stages"]["init"]["cmd"])[1:])
    finally:
        os.chdir(cwd)
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1] == (
        "gps init: error: params.yaml: agent.num_samples is 2, expected more than the 2 actions of the model of task "
        "obstacle: PI2 without covariance damping (pi2.covariance_damping 0.0) needs N > dU")
    assert not (tmp_path / "data").exists()
    p["pi2"]["covariance_damping"] = 2.0  # damped: a scalar multiple of the old covariance, any N
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    from stages.settings.params import load_params

    load_params(tmp_path / "params.yaml")


# ----------------------------------------------------------------------------------------- through DVC


# Per algorithm, the command line of its own step of iteration 1 (run as a process of its own): the kill point.
OWN_STEP = {"traj_opt": "gps c-step -i 1 ", "pi2": "gps pi2 -i 1 ", "pilqr": "gps lqr-step -i 1 ",
            "mdgps_pilqr": "gps lqr-step -i 1 ", "pigps": "gps pi2 -i 1 "}


def kill_repro_when(ws: Path, ready, env: dict, command: list[str]) -> None:
    """Start `command` (dvc repro) in ws and SIGKILL its whole process group once ready(proc) holds."""
    import time

    proc = subprocess.Popen(command, cwd=ws, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 180
        while time.time() < deadline and proc.poll() is None and not ready(proc):
            time.sleep(0.01)
        assert proc.poll() is None, "the run ended before the kill point"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_dvc_repro_runs_each_algorithm_and_resumes_after_sigkill_bit_identical(algorithm, tmp_path):
    """dvc repro end to end; then another workspace killed while the algorithm's own step of iteration 1 runs,
    resumed with dvc repro: the killed stage left nothing, and every artifact equals the uninterrupted run's
    (so the run is deterministic across processes too)."""
    from test_dvc_pipeline import BIN, artifacts, assert_same_datasets, env, make_workspace, run, stage_processes

    params = algorithm_params(algorithm, iterations=2)
    finished = make_workspace(tmp_path / "finished", params)
    run([str(BIN / "dvc"), "repro"], finished)
    metrics = json.loads((finished / "data" / "metrics.json").read_text())
    assert metrics["iteration"] == 2 and np.isfinite(metrics["final_distance"])
    assert "up to date" in run([str(BIN / "dvc"), "status"], finished).stdout

    ws = make_workspace(tmp_path / "ws", params)
    e = dict(env(), GPS_WORKER="0")
    kill_repro_when(ws, lambda proc: any(line.startswith(OWN_STEP[algorithm]) for _, line in stage_processes(proc)),
                    e, [str(BIN / "dvc"), "repro"])
    stage = next(name for name, st in build_pipeline(2, "params.yaml", algorithm)["stages"].items()
                 if st["cmd"].startswith(OWN_STEP[algorithm]))
    for out in build_pipeline(2, "params.yaml", algorithm)["stages"][stage]["outs"]:
        assert not (ws / out).exists(), f"the killed {stage} left {out}"
    run([str(BIN / "dvc"), "repro"], ws)
    assert artifacts(ws) == artifacts(finished)
    for rel in artifacts(ws):
        assert_same_datasets(ws / rel, finished / rel)


@pytest.mark.slow
def test_mdgps_pilqr_resumes_after_a_kill_between_its_stages(tmp_path):
    """Killed after pi2_01 wrote its files, while DVC records them: `gps resume` finishes the run as an
    uninterrupted one."""
    from test_dvc_pipeline import BIN, artifacts, assert_same_datasets, env, make_workspace, run, stage_processes

    params = algorithm_params("mdgps_pilqr", iterations=2)
    finished = make_workspace(tmp_path / "finished", params)
    run([str(BIN / "dvc"), "repro"], finished)
    ws = make_workspace(tmp_path / "ws", params)
    e = dict(env(), GPS_WORKER="0")
    pi2_out = [ws / o for o in build_pipeline(2, "params.yaml", "mdgps_pilqr")["stages"]["pi2_01"]["outs"]]
    kill_repro_when(ws, lambda proc: all(o.exists() for o in pi2_out) and not stage_processes(proc), e,
                    [str(BIN / "dvc"), "repro"])
    resumed = subprocess.run([str(BIN / "gps"), "resume"], cwd=ws, env=e, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "up to date" in run([str(BIN / "dvc"), "status"], ws).stdout
    assert artifacts(ws) == artifacts(finished)
    for rel in artifacts(ws):
        assert_same_datasets(ws / rel, finished / rel)


def test_status_marks_iterations_beyond_params_as_left_over(runs, tmp_path):
    """A shorter run over the data of a longer one: the extra itr_NN folders are not this run's."""
    import shutil

    from stages.tools.status import status_text

    ws = tmp_path / "ws"
    shutil.copytree(runs["pi2"], ws)
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["iterations"] = 2
    (ws / "params.yaml").write_text(yaml.safe_dump(params))
    text = status_text(ws / "data", ws / "params.yaml")
    assert ": 2 of 2 iterations done" in text.splitlines()[0]
    row = next(line for line in text.splitlines() if line.startswith(" 02 "))
    assert " left over " in row and "left over: beyond params' iterations (2)" in text
