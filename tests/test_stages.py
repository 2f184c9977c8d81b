"""Every `gps` command run through its CLI on small data, in pipeline order."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from stages.main import registered_app

app = registered_app()
from stages.errors import UserError
from stages.pipeline.generate import build_pipeline, check_in_sync, iteration_stages, render_pipeline, stage_file, write_pipeline

from conftest import ROOT, gps, small_params

runner = CliRunner()

M, N, T, dX, dU, dO = 2, 3, 30, 10, 2, 10


def shapes(path: Path) -> dict[str, tuple]:
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj.shape) if isinstance(obj, h5py.Dataset) else None)
        for key in ("schema_version", "stage", "iteration", "params"):
            assert key in f.attrs, f"{path.name} lacks root attribute {key}"
    return out


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """Run two iterations of every stage by hand, as dvc.yaml would."""
    from conftest import run_stages_by_hand

    d = tmp_path_factory.mktemp("stages")
    params = d / "params.yaml"
    params.write_text(yaml.safe_dump(small_params()))
    run_stages_by_hand(d, params, 2)
    return d


def test_init_writes_controllers_policy_and_step(run_dir):
    s = shapes(run_dir / "init" / "controllers.h5")
    assert s["K"] == (M, T, dU, dX) and s["k"] == (M, T, dU) and s["pol_covar"] == (M, T, dU, dU) and s["eta"] == (M,)
    assert shapes(run_dir / "init" / "step.h5")["step_mult"] == (M,)
    assert shapes(run_dir / "init" / "policy.h5")["policy/var"] == (dU,)


def test_sample_writes_documented_datasets(run_dir):
    s = shapes(run_dir / "itr_00" / "samples.h5")
    assert s["X"] == (M, N, T, dX) and s["U"] == (M, N, T, dU) and s["obs"] == (M, N, T, dO)
    assert s["cost"] == (M, N, T) and s["noise"] == (M, N, T, dU)
    assert s["Cm"] == (M, T, dX + dU, dX + dU) and s["cv"] == (M, T, dX + dU) and s["cc"] == (M, T)
    with h5py.File(run_dir / "itr_01" / "samples.h5") as f:
        assert bool(f.attrs["on_policy"])  # default params: on-policy after iteration 0
        assert f.attrs["iteration"] == 1 and f.attrs["stage"] == "sample"
        assert json.loads(f.attrs["params"])["algorithm.sample_on_policy"] is True


def test_fit_dynamics_writes_model_and_prior(run_dir):
    s = shapes(run_dir / "itr_01" / "dynamics.h5")
    assert s["Fm"] == (M, T, dX, dX + dU) and s["fv"] == (M, T, dX) and s["dyn_covar"] == (M, T, dX, dX)
    assert s["x0mu"] == (M, dX) and s["x0sigma"] == (M, dX, dX)
    assert s["prior/X"][:2] == (M, 4)  # keeps max_samples - 1 = 4 of the 3 + 3 trajectories
    assert "prior/gmm_mu" in s


def test_fit_policy_and_c_step(run_dir):
    s = shapes(run_dir / "itr_00" / "policy_lin.h5")
    assert s["K"] == (M, T, dU, dX) and s["pol_covar"] == (M, T, dU, dU)
    with h5py.File(run_dir / "itr_00" / "controllers.h5") as f:
        kl, bound, converged = f["kl"][()], f["kl_step"][()], f["converged"][()]
        assert f["eta"].shape == (M,)
    np.testing.assert_allclose(bound, 2.0 * 1.0 * T)  # kl_step * step_mult * T
    assert converged.all(), "the dual search should meet the bound on this small problem"
    assert np.all(np.abs(kl - bound) < 0.1 * bound)


def test_c_step_that_cannot_meet_the_bound_says_so_in_the_file_and_the_log(run_dir, tmp_path):
    from conftest import small_params

    params = small_params()
    params["traj_opt"]["max_iterations"] = 1  # one round of the dual search: it cannot converge from eta = 1
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    itr, init = run_dir / "itr_00", run_dir / "init"
    result = runner.invoke(app, [str(a) for a in [
        "c-step", "-i", 0, "--params", tmp_path / "params.yaml", "--samples", itr / "samples.h5", "--dynamics",
        itr / "dynamics.h5", "--policy-lin", itr / "policy_lin.h5", "--step", init / "step.h5",
        "--prev-controllers", init / "controllers.h5", "--out", tmp_path / "c.h5"]])
    assert result.exit_code == 0, result.output
    with h5py.File(tmp_path / "c.h5") as f:
        converged, kl, bound = f["converged"][()], f["kl"][()], f["kl_step"][()]
        assert list(f["dual_iterations"][()]) == [1, 1]
    assert not converged.any() and np.all(np.abs(kl - bound) >= 0.1 * bound)
    for m in range(2):
        assert f"condition {m}: dual search did not converge in 1 rounds (KL {kl[m]:.3f}, bound {bound[m]:.3f})" in result.stderr


def test_adjust_step_within_bounds(run_dir):
    with h5py.File(run_dir / "itr_01" / "step.h5") as f:
        mult = f["step_mult"][()]
        assert f["J_prev"].shape == (M,)
    assert np.all((mult >= 0.4) & (mult <= 1.0))


def test_s_step_and_evaluate(run_dir):
    s = shapes(run_dir / "itr_01" / "policy.h5")
    assert s["policy/W0"] == (40, dO) and s["loss"] == (60,)
    with h5py.File(run_dir / "itr_01" / "policy.h5") as f:
        assert f.attrs["adam_step"] == 3 * 60  # catch-up + two S-steps: Adam state persists
    metrics = json.loads((run_dir / "itr_01" / "metrics.json").read_text())
    assert metrics["iteration"] == 2 and metrics["final_distance"] > 0
    assert shapes(run_dir / "itr_01" / "eval.h5")["X"] == (M, T, dX)


def test_summary_checks_pipeline_sync(run_dir, tmp_path):

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(small_params()))
    metrics = [run_dir / "itr_00" / "metrics.json", run_dir / "itr_01" / "metrics.json"]
    args = ["summary", "--params", params, "--out", tmp_path / "m.json", "--curve", tmp_path / "c.csv",
            "--root", tmp_path, *metrics]
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 2 and "gps pipeline" in result.output
    write_pipeline(yaml.safe_load(params.read_text()), params, tmp_path)
    (tmp_path / "pipelines" / "itr_01" / "c_step" / "dvc.yaml").write_text("stages: {}\n")  # one stage file edited
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 2 and "pipelines/itr_01/c_step/dvc.yaml does not match" in result.output
    write_pipeline(yaml.safe_load(params.read_text()), params, tmp_path)
    gps(*args)
    lines = (tmp_path / "c.csv").read_text().splitlines()
    header = lines[0].split(",")
    assert header[0] == "iteration" and {"final_distance", "sample_cost", "kl", "eta", "step_mult"} <= set(header)
    assert len(lines) == 3 and lines[2].startswith("2,")


def test_user_error_is_one_line_exit_2(tmp_path):
    """Run as a real process: no traceback, one line naming the file."""
    missing = tmp_path / "nope.h5"
    proc = subprocess.run(
        [sys.executable, "-m", "stages.main", "c-step", "-i", "0", "--params", str(ROOT / "params.yaml"),
         "--samples", str(missing), "--dynamics", str(missing), "--policy-lin", str(missing), "--step", str(missing),
         "--prev-controllers", str(missing), "--out", str(tmp_path / "out.h5")],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "nope.h5" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out.h5").exists()


def test_pipeline_in_sync_with_params():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    check_in_sync(params, ROOT / "params.yaml", ROOT)  # every file equal, none left over


def test_pipeline_files_one_per_stage(tmp_path):
    params = small_params(iterations=3)
    files = render_pipeline(params)
    doc = build_pipeline(3)
    assert list(files) == ["dvc.yaml", *(stage_file(n) for n in doc["stages"] if n not in ("init", "summary", "plot"))]
    assert "pipelines/itr_01/c_step/dvc.yaml" in files and "pipelines/itr_00/catch_up/dvc.yaml" in files
    root = yaml.safe_load(files["dvc.yaml"])
    assert list(root["stages"]) == ["init", "summary", "plot"]
    itr1 = iteration_stages(files, 1)
    assert list(itr1) == ["sample_01", "fit_dynamics_01", "fit_policy_01", "adjust_step_01", "c_step_01", "s_step_01", "evaluate_01"]
    assert all(stage["wdir"] == "../../.." for stage in itr1.values())  # paths stay relative to the project root
    assert "catch_up" in iteration_stages(files, 0)
    # shrinking the run removes the iterations it no longer has (and their lock files)
    params_path = tmp_path / "params.yaml"
    write_pipeline(params, params_path, tmp_path)
    (tmp_path / "pipelines" / "itr_02" / "c_step" / "dvc.lock").write_text("schema: '2.0'\n")
    write_pipeline(small_params(iterations=2), params_path, tmp_path)
    assert sorted(p.name for p in (tmp_path / "pipelines").iterdir()) == ["itr_00", "itr_01"]
    check_in_sync(small_params(iterations=2), params_path, tmp_path)
    # the earlier layout, one dvc.yaml and dvc.lock per iteration, is cleared away
    (tmp_path / "pipelines" / "itr_01" / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "pipelines" / "itr_01" / "dvc.lock").write_text("schema: '2.0'\n")
    with pytest.raises(UserError, match="left over"):
        check_in_sync(small_params(iterations=2), params_path, tmp_path)
    write_pipeline(small_params(iterations=2), params_path, tmp_path)
    assert not (tmp_path / "pipelines" / "itr_01" / "dvc.yaml").exists()
    assert not (tmp_path / "pipelines" / "itr_01" / "dvc.lock").exists()
    check_in_sync(small_params(iterations=2), params_path, tmp_path)


def test_pipeline_lists_each_stage_once_per_iteration():
    doc = build_pipeline(3)
    names = list(doc["stages"])
    assert names[:3] == ["init", "sample_00", "fit_dynamics_00"]
    for step in ("sample", "fit_dynamics", "fit_policy", "c_step", "s_step", "evaluate"):
        assert [n for n in names if n.startswith(step + "_")] == [f"{step}_{k:02d}" for k in range(3)]
    assert [n for n in names if n.startswith("adjust_step_")] == ["adjust_step_01", "adjust_step_02"]
    assert names[-2:] == ["summary", "plot"] and "catch_up" in names
    # iteration-major: iteration 0 is evaluated before iteration 1 samples
    assert names.index("evaluate_00") < names.index("sample_01")
    # only the summary reads `iterations` (and algorithm.name, to notice a switch); the S-step reads only its own params
    assert doc["stages"]["summary"]["params"] == ["iterations", "algorithm.name"]
    assert "kl_step" not in str(doc["stages"]["s_step_01"]["params"])


def test_only_the_s_step_imports_torch(tmp_path, small_params_file):
    """Sampling, fitting, the C-step and evaluation start without torch (2 s of imports)."""
    script = f"""
import sys
from typer.testing import CliRunner
from stages.main import registered_app

app = registered_app()
d = {str(tmp_path)!r}
p = ["--params", {str(small_params_file)!r}]
run = lambda *a: CliRunner().invoke(app, [*a, *p]).exit_code
assert run("init", "--controllers-out", d + "/c.h5", "--policy-out", d + "/p.h5", "--step-out", d + "/s.h5") == 0
assert run("sample", "-i", "0", "--controllers", d + "/c.h5", "--policy", d + "/p.h5", "--out", d + "/x.h5") == 0
assert run("fit-dynamics", "-i", "0", "--samples", d + "/x.h5", "--out", d + "/dyn.h5") == 0
assert run("fit-policy", "-i", "0", "--samples", d + "/x.h5", "--policy", d + "/p.h5", "--out", d + "/lin.h5") == 0
assert run("c-step", "-i", "0", "--samples", d + "/x.h5", "--dynamics", d + "/dyn.h5", "--policy-lin", d + "/lin.h5",
           "--step", d + "/s.h5", "--prev-controllers", d + "/c.h5", "--out", d + "/new.h5") == 0
assert run("evaluate", "-i", "0", "--policy", d + "/p.h5", "--samples", d + "/x.h5", "--controllers", d + "/new.h5",
           "--step", d + "/s.h5", "--out", d + "/e.h5", "--metrics", d + "/m.json") == 0
assert "torch" not in sys.modules, "a stage other than the S-step imported torch"
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr


def _unstable_dynamics(src: Path, dst: Path, factor: float) -> None:
    """A copy of a real dynamics.h5 whose fitted state matrices are scaled by `factor` (growth factor^T)."""
    import shutil

    shutil.copyfile(src, dst)
    with h5py.File(dst, "r+") as f:
        Fm = f["Fm"][()]
        Fm[..., :dX] *= factor
        f["Fm"][...] = Fm


@pytest.mark.parametrize("on_fault", ["recover", "abort"])
def test_c_step_on_an_unstable_fitted_model_recovers_or_aborts_as_set(run_dir, tmp_path, on_fault):
    params = small_params()
    params["traj_opt"]["on_fault"] = on_fault
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    itr, init = run_dir / "itr_00", run_dir / "init"
    _unstable_dynamics(itr / "dynamics.h5", tmp_path / "dynamics.h5", 4.0)
    out = tmp_path / "c.h5"
    result = runner.invoke(app, [str(a) for a in [
        "c-step", "-i", 0, "--params", tmp_path / "params.yaml", "--samples", itr / "samples.h5", "--dynamics",
        tmp_path / "dynamics.h5", "--policy-lin", itr / "policy_lin.h5", "--step", init / "step.h5",
        "--prev-controllers", init / "controllers.h5", "--out", out]])
    if on_fault == "abort":
        assert result.exit_code == 2 and not out.exists()
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("gps c-step: error: condition ")
        assert "Q_uu stayed non-positive-definite while eta was raised to 1e16" in lines[0]
        return
    assert result.exit_code == 0, result.output
    with h5py.File(out) as f:
        safeguard, kl, bound = f["safeguard"][()], f["kl"][()], f["kl_step"][()]
        assert json.loads(f.attrs["safeguard_names"]) == ["none", "relative_coordinates", "kl_reference"]
    assert np.all(safeguard == 1) and np.all(np.abs(kl - bound) < 0.1 * bound)
    logged = [line for line in result.stderr.splitlines() if "safeguard" in line]
    assert len(logged) == 1 and all(f"condition {m}: solved relative to the KL reference" in logged[0] for m in range(M))
