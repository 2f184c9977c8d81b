"""BADMM (algorithm.name: badmm) through the CLI: init's duals, badmm-adjust-step, badmm-inner, the
generated pipeline, params validation, status and report."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from gps_core.badmm import algorithm as badmm
from gps_core.badmm.duals import init_duals
from gps_core.sim.task import compile_task
from stages.artifacts.duals import load_duals
from stages.main import registered_app

app = registered_app()
from stages.settings.load import Settings
from stages.artifacts.io import write_artifact
from stages.errors import UserError
from stages.pipeline.generate import build_pipeline, check_in_sync, iteration_stages, render_pipeline, write_pipeline

from conftest import run_badmm_stages_by_hand, small_badmm_params, small_params

runner = CliRunner()

M, N, T, dX, dU, dO = 2, 3, 30, 10, 2, 10
J = 4  # badmm.inner_iterations of the obstacle task
GRAD = 60  # policy.iterations of small_params


def read(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    data = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda n, o: data.__setitem__(n, o[()]) if isinstance(o, h5py.Dataset) else None)
        attrs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()}
    return data, attrs


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """Two BADMM iterations, every stage by hand as the generated dvc.yaml runs them: <dir>/params.yaml, <dir>/data."""
    d = tmp_path_factory.mktemp("badmm")
    (d / "params.yaml").write_text(yaml.safe_dump(small_badmm_params(2)))
    run_badmm_stages_by_hand(d / "data", d / "params.yaml", 2)
    return d


def test_init_writes_zero_duals_and_initial_weights(run):
    data, attrs = read(run / "data" / "init" / "duals.h5")
    assert set(data) == {"lam_k", "lam_K", "pol_wt"}  # no prev_kl before the first weight update
    assert data["lam_k"].shape == (M, T, dU) and data["lam_K"].shape == (M, T, dU, dX) and data["pol_wt"].shape == (M, T)
    assert not data["lam_k"].any() and not data["lam_K"].any()
    np.testing.assert_array_equal(data["pol_wt"], 0.005)  # obstacle's init_pol_wt
    assert attrs["stage"] == "init" and attrs["iteration"] == 0
    assert json.loads(attrs["params"])["badmm.init_pol_wt"] == 0.005


def test_duals_datasets_shapes_and_they_change(run):
    d = run / "data"
    lam = [read(d / "init" / "duals.h5")[0]["lam_k"]]
    for k in range(2):
        data, attrs = read(d / f"itr_{k:02d}" / "duals.h5")
        assert set(data) == {"lam_k", "lam_K", "pol_wt", "prev_kl"}
        assert data["lam_k"].shape == (M, T, dU) and data["lam_K"].shape == (M, T, dU, dX)
        assert data["pol_wt"].shape == (M, T) and data["prev_kl"].shape == (M, T)
        assert all(a.dtype == np.float64 and np.all(np.isfinite(a)) for a in data.values())
        assert attrs["stage"] == "badmm_inner" and attrs["iteration"] == k and bool(attrs["pol_wt_updated"])
        assert not data["lam_K"].any()  # policy_dual_rate_covar = 0
        lam.append(data["lam_k"])
        duals = load_duals(d / f"itr_{k:02d}" / "duals.h5")  # the checked loader accepts what the stage wrote
        np.testing.assert_array_equal(duals.pol_wt, data["pol_wt"])
    assert np.abs(lam[1] - lam[0]).max() > 0 and np.abs(lam[2] - lam[1]).max() > 0
    nu0, nu1 = (read(d / f"itr_{k:02d}" / "duals.h5")[0]["pol_wt"] for k in range(2))
    assert not np.array_equal(nu0, nu1)


def test_nu_follows_the_weight_rule_and_schedules(run):
    """ν: unchanged (and kl recorded) at iteration 0, rule 3 of the recorded policy KL at iteration 1; only the
    last inner iteration updates it; the S-step's entropy regulariser follows ent_reg_schedule."""
    params = yaml.safe_load((run / "params.yaml").read_text())
    bcfg = Settings.from_params(params, compile_task(params["task"])).badmm
    d = run / "data"
    prev = read(d / "init" / "duals.h5")[0]
    prev_kl = None
    for k in range(2):
        duals, dattrs = read(d / f"itr_{k:02d}" / "duals.h5")
        inner, iattrs = read(d / f"itr_{k:02d}" / "inner.h5")
        kl = inner["policy_kl"][-1]  # the KL of p̄ against the network at the last dual step
        want = badmm.update_pol_wt(prev["pol_wt"], kl, prev_kl, bcfg, badmm.lg_step_at(bcfg, k, 2))
        np.testing.assert_allclose(duals["pol_wt"], want, rtol=1e-12)
        np.testing.assert_array_equal(duals["prev_kl"], kl)
        for j in range(J - 1):  # before the last inner iteration ν is the one the iteration started with
            np.testing.assert_array_equal(inner["pol_wt"][j], prev["pol_wt"])
        np.testing.assert_array_equal(inner["pol_wt"][-1], duals["pol_wt"])
        np.testing.assert_array_equal(inner["lam_k"][-1], duals["lam_k"])
        assert dattrs["ent_reg"] == pytest.approx(badmm.ent_reg_at(bcfg, k, 2))
        assert iattrs["ent_reg"] == dattrs["ent_reg"]
        prev, prev_kl = duals, kl
    nu0 = read(d / "itr_00" / "duals.h5")[0]["pol_wt"]
    np.testing.assert_array_equal(nu0, 0.005)  # rule 3 needs a previous KL: the first update only records it
    nu1 = read(d / "itr_01" / "duals.h5")[0]["pol_wt"]
    assert set(np.unique(np.round(nu1 / 0.005, 12))) <= {0.5, 1.0, 2.0}  # the band rule halves, keeps or doubles


def test_inner_loop_record(run):
    for k, s_steps in ((0, [False, True, True, True]), (1, [True] * J)):
        inner, _ = read(run / "data" / f"itr_{k:02d}" / "inner.h5")
        assert inner["s_step"].tolist() == s_steps and inner["dual_step"].tolist() == s_steps
        assert inner["kl"].shape == inner["eta"].shape == inner["kl_step"].shape == (J, M)
        assert inner["residual"].shape == (J, M, T, dU) and inner["policy_kl"].shape == (J, M, T)
        assert inner["s_step_loss"].shape == (J, GRAD)
        assert (inner["s_step_loss"][~inner["s_step"]] == 0).all() and (inner["s_step_loss"][inner["s_step"]] > 0).all()
        np.testing.assert_allclose(inner["kl_step"], 2.0 * 1.0 * T)  # kl_step * step_mult (at most 1 here) * T


def test_final_controllers_policy_and_linearisation(run):
    d = run / "data"
    for k in range(2):
        itr = d / f"itr_{k:02d}"
        c, cattrs = read(itr / "controllers.h5")
        inner, _ = read(itr / "inner.h5")
        assert c["K"].shape == (M, T, dU, dX) and c["k"].shape == (M, T, dU) and c["pol_covar"].shape == (M, T, dU, dU)
        assert cattrs["stage"] == "badmm_inner"
        for name in ("kl", "kl_step", "eta", "converged", "dual_iterations"):  # what evaluate and status read
            assert c[name].shape == (M,)
            np.testing.assert_array_equal(c[name], inner[name][-1])  # the last inner C-step's
        assert c["converged"].all()
        p, pattrs = read(itr / "policy.h5")
        assert p["policy/W0"].shape == (40, dO) and p["loss"].shape == (GRAD,)
        np.testing.assert_array_equal(p["loss"], inner["s_step_loss"][-1])
        lin, _ = read(itr / "policy_lin_final.h5")
        assert lin["K"].shape == (M, T, dU, dX) and lin["U_pol"].shape == (M, N, T, dU) and "prior/gmm_mu" in lin
        metrics = json.loads((itr / "metrics.json").read_text())
        assert metrics["iteration"] == k + 1 and metrics["final_distance"] > 0
    # Adam state carries over: 3 S-steps in iteration 0 (none before the first C-step), 4 in iteration 1
    assert read(d / "itr_00" / "policy.h5")[1]["adam_step"] == 3 * GRAD
    assert read(d / "itr_01" / "policy.h5")[1]["adam_step"] == 7 * GRAD


def test_badmm_adjust_step(run):
    step, attrs = read(run / "data" / "itr_01" / "step.h5")
    assert attrs["stage"] == "badmm_adjust_step"
    for name in ("J_prev", "J_predicted", "J_actual", "predicted_improvement", "actual_improvement", "step_mult"):
        assert step[name].shape == (M,) and np.all(np.isfinite(step[name]))
    np.testing.assert_allclose(step["predicted_improvement"], step["J_prev"] - step["J_predicted"])
    assert np.all((step["step_mult"] >= 0.4) & (step["step_mult"] <= 1.0))
    assert set(json.loads(attrs["params"])) == {"algorithm.min_step_mult", "algorithm.max_step_mult"}


def test_inner_stage_is_deterministic(run, tmp_path):
    """badmm-inner rerun on the same inputs gives the same files (one random stream per inner step)."""
    d, itr = run / "data", run / "data" / "itr_01"
    outs = {f"--{n}-out": tmp_path / f"{n}.h5" for n in ("controllers", "policy", "duals", "policy-lin", "inner")}
    result = runner.invoke(app, [str(a) for a in [
        "badmm-inner", "-i", 1, "--params", run / "params.yaml", "--samples", itr / "samples.h5",
        "--dynamics", itr / "dynamics.h5", "--policy-lin", itr / "policy_lin.h5", "--policy", d / "itr_00" / "policy.h5",
        "--prev-controllers", d / "itr_00" / "controllers.h5", "--step", itr / "step.h5", "--duals", d / "itr_00" / "duals.h5",
        *sum(([o, p] for o, p in outs.items()), [])]])
    assert result.exit_code == 0, result.output
    for name, ref in (("controllers", "controllers"), ("policy", "policy"), ("duals", "duals"),
                      ("policy-lin", "policy_lin_final"), ("inner", "inner")):
        a, b = read(tmp_path / f"{name}.h5")[0], read(itr / f"{ref}.h5")[0]
        assert a.keys() == b.keys()
        for key in a:
            assert a[key].tobytes() == b[key].tobytes(), f"{name}:{key}"


def test_duals_loader_rejects_bad_files(tmp_path):
    good = init_duals(M, T, dU, dX, 0.01)
    cases = [
        ({"lam_k": good.lam_k, "lam_K": good.lam_K}, "dataset 'pol_wt' is missing"),
        ({"lam_k": good.lam_k[:, :, :1], "lam_K": good.lam_K, "pol_wt": good.pol_wt}, "dataset 'lam_K' has shape"),
        ({"lam_k": good.lam_k, "lam_K": good.lam_K, "pol_wt": -good.pol_wt}, "expected every entry >= 0"),
        ({"lam_k": good.lam_k, "lam_K": good.lam_K, "pol_wt": 0 * good.pol_wt}, "'pol_wt' is 0 everywhere"),
        ({"lam_k": good.lam_k, "lam_K": good.lam_K, "pol_wt": good.pol_wt, "prev_kl": np.zeros(T)}, "dataset 'prev_kl' has shape"),
        ({"lam_k": np.full((M, T, dU), np.nan), "lam_K": good.lam_K, "pol_wt": good.pol_wt}, "contains NaN or Inf"),
    ]
    for i, (data, words) in enumerate(cases):
        path = tmp_path / f"d{i}.h5"
        write_artifact(path, "init", 0, {}, data)
        with pytest.raises(UserError, match=words) as exc:
            load_duals(path)
        assert str(path) in str(exc.value) and "\n" not in str(exc.value)
    write_artifact(tmp_path / "ok.h5", "init", 0, {}, {"lam_k": good.lam_k, "lam_K": good.lam_K, "pol_wt": good.pol_wt})
    with pytest.raises(UserError, match=r"with M = 3 \(conditions in params\)"):
        load_duals(tmp_path / "ok.h5", {"M": (3, "conditions in params")})


# --------------------------------------------------------------------------- pipeline


def test_generated_badmm_pipeline_has_its_stages_per_iteration():
    files = render_pipeline(small_badmm_params(3))
    assert "pipelines/itr_01/badmm_inner/dvc.yaml" in files and not any("c_step" in f for f in files)
    root = yaml.safe_load(files["dvc.yaml"])["stages"]
    assert list(root) == ["init", "summary", "plot"]
    assert "--duals-out data/init/duals.h5" in root["init"]["cmd"] and "data/init/duals.h5" in root["init"]["outs"]
    assert "badmm.init_pol_wt" in root["init"]["params"]
    assert root["summary"]["params"] == ["iterations", "algorithm.name"]
    itr = [iteration_stages(files, k) for k in range(3)]
    assert list(itr[0]) == ["sample_00", "fit_dynamics_00", "fit_policy_00", "badmm_inner_00", "evaluate_00"]
    for k in (1, 2):
        assert list(itr[k]) == [f"{s}_{k:02d}" for s in ("sample", "fit_dynamics", "fit_policy", "adjust_step", "badmm_inner", "evaluate")]
    # the step rule reads the controllers of two iterations back; ν and the last linearisation of the previous one
    assert "data/init/controllers.h5" in itr[1]["adjust_step_01"]["deps"]
    assert {"data/itr_00/controllers.h5", "data/itr_01/duals.h5", "data/itr_01/policy_lin_final.h5"} <= set(itr[2]["adjust_step_02"]["deps"])
    inner = itr[2]["badmm_inner_02"]
    assert inner["cmd"].startswith("gps badmm-inner -i 2 ")
    assert {"data/itr_01/duals.h5", "data/itr_02/step.h5", "data/itr_01/policy.h5", "data/itr_01/controllers.h5"} <= set(inner["deps"])
    assert inner["outs"] == [f"data/itr_02/{f}.h5" for f in ("controllers", "policy", "duals", "policy_lin_final", "inner")]
    assert {"iterations", "badmm", "algorithm.kl_step", "traj_opt", "policy_prior"} <= set(inner["params"])
    assert "fit_policy_00" in itr[0] and "--prev" not in itr[0]["fit_policy_00"]["cmd"]
    assert "--prev data/itr_01/policy_lin_final.h5" in itr[2]["fit_policy_02"]["cmd"]
    names = list(build_pipeline(3, algorithm="badmm")["stages"])
    assert not any(n.startswith(("c_step", "s_step", "catch_up")) for n in names)


def test_summary_notices_a_changed_algorithm(tmp_path):
    params_path = tmp_path / "params.yaml"
    write_pipeline(small_params(2), params_path, tmp_path)  # an MDGPS pipeline on disk
    with pytest.raises(UserError, match="algorithm.name=badmm.*gps pipeline"):
        check_in_sync(small_badmm_params(2), params_path, tmp_path)
    write_pipeline(small_badmm_params(2), params_path, tmp_path)
    check_in_sync(small_badmm_params(2), params_path, tmp_path)
    assert not list((tmp_path / "pipelines").glob("*/dvc.lock"))


# --------------------------------------------------------------------------- params


@pytest.mark.parametrize("change,words", [
    (lambda p: p["algorithm"].__setitem__("sample_on_policy", True), ["algorithm.sample_on_policy is true", "set algorithm.sample_on_policy to false"]),
    (lambda p: p["algorithm"].__setitem__("name", "admm"), ["algorithm.name", "'admm'", "mdgps, badmm"]),
    (lambda p: p.pop("badmm"), ["missing key 'badmm'"]),
    (lambda p: p["badmm"].__setitem__("fixed_lg_step", 4), ["badmm.fixed_lg_step", "<= 3"]),
    (lambda p: p["badmm"].__setitem__("ent_reg_schedule", [0.0, 1e-2]), ["badmm.ent_reg_schedule", "list of numbers > 0"]),
    (lambda p: p["badmm"].__setitem__("target_shift", "x"), ["badmm.target_shift", "coded, derived, sub"]),
    (lambda p: p["badmm"].__setitem__("inner_iterations", 0), ["badmm.inner_iterations", ">= 1"]),
    (lambda p: p["badmm"].__setitem__("nu", 1.0), ["unknown key 'badmm.nu'"]),
])
def test_bad_badmm_params_one_line_exit_2(tmp_path, change, words):
    params = small_badmm_params()
    change(params)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    result = runner.invoke(app, ["pipeline", "--params", str(path), "--root", str(tmp_path)])
    assert result.exit_code == 2, result.output
    message = result.output.strip()
    assert "\n" not in message and message.startswith("gps pipeline: error: ") and str(path) in message
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    assert not (tmp_path / "dvc.yaml").exists()


def test_params_without_the_new_keys_are_an_mdgps_run():
    """params files written before algorithm.name and badmm existed still validate, as MDGPS."""
    from stages.settings.schema import validate_params

    params = small_params()
    del params["algorithm"]["name"], params["badmm"]
    validate_params(params)
    files = render_pipeline(params)
    assert "pipelines/itr_00/c_step/dvc.yaml" in files and not any("badmm" in f for f in files)


# --------------------------------------------------------------------------- status, report


def test_status_of_a_badmm_run(run, tmp_path, monkeypatch):
    result = runner.invoke(app, ["status", "--data", str(run / "data"), "--params", str(run / "params.yaml")])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].endswith("2 of 2 iterations done (task obstacle, BADMM, 2 conditions)")
    header = lines[2].split()
    assert "nu" in header and header.index("nu") == header.index("eta") + 1
    assert lines[3].split()[1] == "done" and "0.005" in lines[3]
    # half-way through iteration 1's inner loop (and without params: the files tell it is BADMM)
    import shutil

    data = tmp_path / "data"
    shutil.copytree(run / "data", data)
    for name in ("controllers.h5", "policy.h5", "duals.h5", "policy_lin_final.h5", "inner.h5", "eval.h5", "metrics.json"):
        (data / "itr_01" / name).unlink()
    result = runner.invoke(app, ["status", "--data", str(data), "--params", str(run / "params.yaml")])
    assert result.exit_code == 0 and "next: badmm_inner" in result.stdout
    monkeypatch.chdir(tmp_path)  # no ./params.yaml
    result = runner.invoke(app, ["status", "--data", str(data)])
    assert result.exit_code == 0 and "next: badmm_inner" in result.stdout and "nu" in result.stdout.splitlines()[2]


def test_report_labels_badmm_runs(run, tmp_path):
    d = tmp_path / "runs" / "badmm"
    (d / "data").mkdir(parents=True)
    (d / "params.yaml").write_text((run / "params.yaml").read_text())
    (d / "data" / "learning_curve.csv").write_text("iteration,final_distance,success_0.5\n1,2.9,0\n2,2.8,0.5\n")
    result = runner.invoke(app, ["report", str(d), "--iterations", "1,2"])
    assert result.exit_code == 0, result.output
    assert "| task | itr | BADMM |" in result.stdout
