"""`gps inspect` on the artifacts of a small real run."""

from __future__ import annotations

import json
import re
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from stages.main import registered_app

app = registered_app()
from stages.artifacts.io import write_artifact

from small_runs import obstacle_run, peg_start

runner = CliRunner()

KINDS = [  # every artifact kind the pipeline writes: (file, stage, iteration)
    ("init/controllers.h5", "init", 0),
    ("init/policy.h5", "init", 0),
    ("init/step.h5", "init", 0),
    ("itr_00/samples.h5", "sample", 0),
    ("itr_00/dynamics.h5", "fit_dynamics", 0),
    ("itr_00/policy_catchup.h5", "catch_up", 0),
    ("itr_00/policy_lin.h5", "fit_policy", 0),
    ("itr_00/controllers.h5", "c_step", 0),
    ("itr_00/policy.h5", "s_step", 0),
    ("itr_00/eval.h5", "evaluate", 0),
    ("itr_01/step.h5", "adjust_step", 1),
    ("itr_01/dynamics.h5", "fit_dynamics", 1),
]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return obstacle_run(tmp_path_factory) / "data"


def inspect(*args):
    return runner.invoke(app, ["inspect", *map(str, args)])


def ok(*args) -> str:
    result = inspect(*args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.stdout


def fails(*args) -> str:
    """The one-line error of a failing inspect (exit code 2)."""
    result = inspect(*args)
    assert result.exit_code == 2, result.output
    err = result.stderr.strip()
    assert err.startswith("gps inspect: error: ") and "\n" not in err and "Traceback" not in result.output
    return err


def values(text: str) -> np.ndarray:
    """The numbers of the printed array (after the statistics lines)."""
    body = text.split("NaN/Inf", 1)[1].split("\n", 1)[1]
    return np.array([float(x) for x in re.findall(r"[-+]?\d+\.?\d*(?:e[-+]?\d+)?", body)])


@pytest.mark.parametrize("name,stage,iteration", KINDS)
def test_lists_every_dataset_of_every_kind(data, name, stage, iteration):
    path = data / name
    out = ok(path)
    assert out.startswith(f"{path}\n  stage {stage}, iteration {iteration}, schema_version 1\n")
    with h5py.File(path) as f:
        params = json.loads(f.attrs["params"])
        shapes = {}
        f.visititems(lambda n, o: shapes.__setitem__(n, o.shape) if isinstance(o, h5py.Dataset) else None)
    for key, value in params.items():  # the params that made the file, one per line
        assert f"    {key}: {json.dumps(value, separators=(', ', ': '))}" in out
    lines = out.splitlines()
    for dataset, shape in shapes.items():  # recursively through groups (prior/..., policy/..., adam/...)
        row = next(line for line in lines if line.split()[:1] == [dataset])
        assert str(shape) in row and ("float64" in row or "int64" in row or "int8" in row or "bool" in row)
        assert row.rstrip().endswith(" 0"), f"no NaN/Inf expected: {row}"


def test_statistics_match_the_data(data):
    out = ok(data / "itr_00" / "samples.h5")
    row = next(line for line in out.splitlines() if line.split()[:1] == ["cost"])
    with h5py.File(data / "itr_00" / "samples.h5") as f:
        cost = f["cost"][()]
    name, layout, *rest = row.split()
    assert layout == "[M,N,T]"
    lo, hi, mean = (float(x) for x in row.split("float64")[1].split()[:3])
    np.testing.assert_allclose([lo, hi, mean], [cost.min(), cost.max(), cost.mean()], rtol=1e-3)


def test_gain_matrix_of_one_condition_and_step(data):
    path = data / "itr_00" / "controllers.h5"
    out = ok(path, "--dataset", "K", "--condition", 1, "--time", 5)
    assert "K[1, 5, :, :]" in out and "layout [dU,dX]" in out and "shape (2, 10)" in out
    with h5py.File(path) as f:
        K = f["K"][1, 5]
    np.testing.assert_allclose(values(out), K.ravel(), rtol=2e-3, atol=1e-12)


def test_peg_gain_is_7_by_26(tmp_path_factory):
    path = peg_start(tmp_path_factory) / "data" / "init" / "controllers.h5"
    out = ok(path, "-d", "K", "-m", 1, "-t", 10)
    assert "shape (7, 26)" in out
    matrix = out.split("\n[[", 1)[1]
    assert matrix.count("\n") == 7  # one line per row of the gain
    with h5py.File(path) as f:
        np.testing.assert_allclose(values(out), f["K"][1, 10].ravel(), rtol=2e-3, atol=1e-12)


def test_samples_have_a_sample_axis_between_condition_and_time(data):
    path = data / "itr_01" / "samples.h5"
    with h5py.File(path) as f:
        X = f["X"][()]
    one = ok(path, "-d", "X", "--condition", 1, "--sample", 2, "--time", -1)
    assert "X[1, 2, -1, :]" in one and "layout [dX]" in one
    np.testing.assert_allclose(values(one), X[1, 2, -1], rtol=2e-3, atol=1e-6)
    every_sample = ok(path, "-d", "X", "--condition", 1, "--time", 3)
    assert "layout [N,dX]" in every_sample and "shape (3, 10)" in every_sample
    np.testing.assert_allclose(values(every_sample), X[1, :, 3].ravel(), rtol=2e-3, atol=1e-6)


def test_eval_rollout_has_no_sample_axis(data):
    path = data / "itr_00" / "eval.h5"
    out = ok(path, "-d", "X", "-m", 0, "-t", 29)
    assert "X[0, 29, :]" in out and "layout [dX]" in out
    assert "has no sample axis" in fails(path, "-d", "X", "-m", 0, "--sample", 0)


def test_prior_buffer_is_indexed_by_sample(data):
    out = ok(data / "itr_01" / "dynamics.h5", "-d", "prior/X", "-m", 0, "-n", 3, "-t", 0)
    assert "prior/X[0, 3, 0, :]" in out and "shape (10,)" in out


def test_whole_dataset_and_policy_groups(data):
    out = ok(data / "itr_01" / "policy.h5", "--dataset", "policy/var")
    assert "layout [dU]" in out and "shape (2,)" in out
    out = ok(data / "itr_01" / "controllers.h5", "--dataset", "converged")
    assert "dtype bool" in out and "[ True  True]" in out


@pytest.mark.parametrize("args,message", [
    (("nope.h5",), "nope.h5: file not found"),
    (("itr_00/controllers.h5", "-d", "Q"), "no dataset 'Q'"),
    (("itr_00/controllers.h5", "-d", "K", "-m", 2), "--condition 2 is out of range for dataset 'K' [M,T,dU,dX] with 2 conditions"),
    (("itr_00/controllers.h5", "-d", "K", "-t", 30), "--time 30 is out of range"),
    (("itr_00/controllers.h5", "-d", "eta", "-t", 0), "dataset 'eta' [M] has no time axis"),
    (("itr_00/policy.h5", "-d", "loss", "-m", 0), "dataset 'loss' [iterations] has no condition axis"),
    (("itr_00/controllers.h5", "-m", 0), "--condition needs --dataset"),
])
def test_bad_input_is_one_line_exit_2(data, args, message):
    file, *rest = args
    err = fails(data / file, *rest)
    assert message in err
    assert file.split("/")[-1] in err or "--dataset" in message


def test_not_hdf5(tmp_path):
    bad = tmp_path / "notes.h5"
    bad.write_text("hello")
    assert "notes.h5: not an HDF5 file" in fails(bad)


def test_reports_nan_and_other_schema_versions(tmp_path):
    path = tmp_path / "odd.h5"
    a = np.arange(6.0).reshape(2, 3)
    a[1, 2] = np.nan
    write_artifact(path, "c_step", 4, {"algorithm.kl_step": 2.0}, {"kl": a[0], "weird": a})
    with h5py.File(path, "a") as f:
        f.attrs["schema_version"] = 7
    out = ok(path)
    assert "schema_version 7  (the stages read only schema_version 1)" in out
    row = next(line for line in out.splitlines() if line.split()[:1] == ["weird"])
    assert row.endswith("1 NaN") and " 4 " in row  # max over the finite entries
    assert "algorithm.kl_step: 2.0" in out


def test_the_docs_tables_are_the_layout_table():
    """docs/artifacts.md's dataset tables are stages/artifacts/layouts.py's (python -m stages.artifacts.doc_tables)."""
    from stages.artifacts.doc_tables import DOC, BLOCK, render
    from stages.artifacts.layouts import LAYOUTS

    text = DOC.read_text()
    assert sorted(m.group(2) for m in BLOCK.finditer(text)) == sorted(LAYOUTS), "a kind without its table in the doc"
    assert render(text) == text, "docs/artifacts.md differs from the layout table: run python -m stages.artifacts.doc_tables"
