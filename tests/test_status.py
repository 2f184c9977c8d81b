"""`gps status` on a finished and on a half-finished small run."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from stages.main import registered_app

app = registered_app()
from stages.tools.status import iteration_files

from small_runs import obstacle_run

runner = CliRunner()


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return obstacle_run(tmp_path_factory)


def status(*args) -> tuple[int, str, str]:
    result = runner.invoke(app, ["status", *map(str, args)])
    return result.exit_code, result.stdout, result.stderr


def table(out: str) -> dict[str, dict[str, str]]:
    """Rows of the printed table by iteration, cells by column (columns are separated by 2+ spaces)."""
    import re

    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("itr"))
    header = re.split(r"\s{2,}", lines[start].strip())
    rows = {}
    for line in lines[start + 1:]:
        if not line[:3].strip().isdigit():
            break
        cells = re.split(r"\s{2,}", line.strip())
        assert len(cells) == len(header), (header, cells)
        rows[cells[0]] = dict(zip(header, cells))
    return rows


def test_finished_run(run):
    code, out, _ = status("--data", run / "data", "--params", run / "params.yaml")
    assert code == 0, out
    assert out.splitlines()[0] == f"{run / 'data'}: 2 of 2 iterations done (task obstacle, On/Classic, 2 conditions)"
    rows = table(out)
    assert list(rows) == ["00", "01"]
    for k, row in rows.items():
        d = run / "data" / f"itr_{k}"
        metrics = json.loads((d / "metrics.json").read_text())
        assert row["state"] == "done"
        assert float(row["cost"]) == pytest.approx(metrics["sample_cost"], rel=1e-3)
        assert float(row["dist"]) == pytest.approx(metrics["final_distance"], rel=2e-2)
        hits = sum(v for v in metrics["per_condition"]["success_0.5"].values())
        assert row["succ<0.5"] == f"{int(hits)}/2"
        kl, bound = row["KL/bound"].rstrip("*").split("/")
        assert float(kl) == pytest.approx(metrics["kl"], rel=1e-2) and float(bound) == pytest.approx(metrics["kl_bound"], rel=1e-2)
        assert float(row["eta"]) == pytest.approx(metrics["eta"], rel=1e-2)
        mult = [float(v) for v in row["step_mult"].split()]
        np.testing.assert_allclose(mult, list(metrics["per_condition"]["step_mult"].values()), rtol=0.05)
        assert row["time"].endswith(" s") or row["time"].endswith(" min")
    assert rows["00"]["drawn by"] == "controllers" and rows["01"]["drawn by"] == "policy"


def test_half_finished_run(run, tmp_path):
    """Iteration 1 stopped after fit_policy, iteration 2 not started: show what exists, the rest pending."""
    ws = tmp_path / "ws"
    shutil.copytree(run / "data", ws / "data")
    params = yaml.safe_load((run / "params.yaml").read_text())
    params["iterations"] = 3
    (ws / "params.yaml").write_text(yaml.safe_dump(params))
    for name in ("step.h5", "controllers.h5", "policy.h5", "eval.h5", "metrics.json"):
        (ws / "data" / "itr_01" / name).unlink()
    # modification times: init at t0, iteration 0 finished 10 s later, iteration 1's last file 4 s after that
    t0 = 1_700_000_000
    for f in (ws / "data" / "init").iterdir():
        os.utime(f, (t0, t0))
    files = [name for _, name in iteration_files(0)]
    for i, name in enumerate(files):
        os.utime(ws / "data" / "itr_00" / name, (t0, t0 + 10 - len(files) + 1 + i))  # the last one at t0 + 10
    for name in ("samples.h5", "dynamics.h5", "policy_lin.h5"):
        os.utime(ws / "data" / "itr_01" / name, (t0, t0 + 14))

    code, out, _ = status("--data", ws / "data", "--params", ws / "params.yaml")
    assert code == 0, out
    assert out.splitlines()[0].startswith(f"{ws / 'data'}: 1 of 3 iterations done")
    rows = table(out)
    assert rows["00"]["state"] == "done" and rows["00"]["time"] == "10.0 s"
    one = rows["01"]
    assert one["state"] == "next: adjust_step"
    assert one["drawn by"] == "policy" and float(one["cost"]) > 0  # from samples.h5
    assert one["dist"] == one["KL/bound"] == one["eta"] == one["step_mult"] == one["succ<0.5"] == "-"
    assert one["time"] == "4.0 s+"
    assert rows["02"]["state"] == "pending" and set(rows["02"].values()) == {"02", "pending", "-"}
    assert "- pending: the file it comes from is not written yet" in out


def test_default_params_from_the_working_directory(run, monkeypatch):
    monkeypatch.chdir(run)
    code, out, _ = status()
    assert code == 0 and "2 of 2 iterations done (task obstacle" in out


def test_unreadable_file_is_reported_not_fatal(run, tmp_path):
    shutil.copytree(run / "data", tmp_path / "data")
    (tmp_path / "data" / "itr_01" / "controllers.h5").write_bytes(b"torn")
    with h5py.File(tmp_path / "data" / "itr_00" / "controllers.h5", "a") as f:
        f.attrs["schema_version"] = 0
    code, out, _ = status("--data", tmp_path / "data", "--params", run / "params.yaml")
    assert code == 0, out
    assert f"itr_01: unreadable: {tmp_path / 'data' / 'itr_01' / 'controllers.h5'}: not an HDF5 file" in out
    assert "schema_version is 0, expected 1" in out
    assert table(out)["01"]["KL/bound"] == "-"


def test_missing_data_folder_is_one_line_exit_2(tmp_path):
    code, _, err = status("--data", tmp_path / "nothing", "--params", tmp_path / "nope.yaml")
    assert code == 2 and err.strip().count("\n") == 0
    assert err.startswith("gps status: error: ") and "nothing: no such directory" in err
    (tmp_path / "data").mkdir()
    code, _, err = status("--data", tmp_path / "data", "--params", tmp_path / "nope.yaml")
    assert code == 2 and "nope.yaml: params file not found" in err


def test_safeguards_column_names_what_acted(run, tmp_path):
    """A run where a C-step safeguard, a redraw and a diverged evaluation acted: the column says which, and a
    diverged condition counts as failed however close it ended."""
    ws = tmp_path / "ws"
    shutil.copytree(run / "data", ws / "data")
    one = ws / "data" / "itr_01"
    with h5py.File(one / "controllers.h5", "r+") as f:
        f["safeguard"][...] = np.array([1, 0], dtype=np.int8)
    with h5py.File(one / "samples.h5", "r+") as f:
        draws = f["draws"][()]
        draws[1, 2] = 3
        f["draws"][...] = draws
    with h5py.File(one / "eval.h5", "r+") as f:
        f["diverged"][...] = np.array([False, True])
        f["final_distance"][...] = np.array([0.1, 0.1])  # both below 0.5; condition 1 must not count
    code, out, _ = status("--data", ws / "data", "--params", run / "params.yaml")
    assert code == 0, out
    rows = table(out)
    assert rows["00"]["safeguards"] == "none"
    assert rows["01"]["safeguards"] == "c0:rel 1 redrawn c1 diverged"
    assert rows["01"]["succ<0.5"] == "1/2"
    assert "safeguards (README, item 13)" in out
