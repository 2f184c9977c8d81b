"""End to end through DVC: a 2-iteration small BADMM run (algorithm.name: badmm), as test_dvc_pipeline does for MDGPS."""

from __future__ import annotations

import json
import re
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from conftest import small_badmm_params
from small_runs import badmm_run
from test_dvc_pipeline import BIN, make_workspace, run

pytestmark = pytest.mark.slow


def test_badmm_repro_runs_its_stages_and_matches_the_stages_run_by_hand(tmp_path, tmp_path_factory):
    ws = make_workspace(tmp_path / "ws", small_badmm_params(2))
    proc = run([str(BIN / "dvc"), "repro"], ws)
    ran = [name.rsplit(":", 1)[-1] for name in re.findall(r"Running stage '([^']+)'", proc.stdout)]
    assert ran == ["init", "sample_00", "fit_dynamics_00", "fit_policy_00", "badmm_inner_00", "evaluate_00",
                   "sample_01", "fit_dynamics_01", "fit_policy_01", "adjust_step_01", "badmm_inner_01", "evaluate_01",
                   "summary", "plot"], ran
    metrics = json.loads((ws / "data" / "metrics.json").read_text())
    assert metrics["iteration"] == 2 and metrics["final_distance"] > 0
    for k in range(2):
        for name in ("controllers.h5", "policy.h5", "duals.h5", "policy_lin_final.h5", "inner.h5", "eval.h5"):
            assert (ws / "data" / f"itr_{k:02d}" / name).exists(), name
    assert "up to date" in run([str(BIN / "dvc"), "repro"], ws).stdout
    # the files DVC made are those of the commands run by hand in the same order (the session's
    # BADMM run: small_badmm_params(2) too)
    by_hand = badmm_run(tmp_path_factory) / "data"
    made = sorted(p.relative_to(ws / "data") for p in (ws / "data").rglob("*.h5") if "plots" not in p.parts)
    assert made == sorted(p.relative_to(by_hand) for p in by_hand.rglob("*.h5"))
    for rel in made:
        with h5py.File(ws / "data" / rel) as a, h5py.File(by_hand / rel) as b:
            names: list[str] = []
            a.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
            for n in names:
                np.testing.assert_array_equal(a[n][()], b[n][()], err_msg=f"{rel}:{n}")
    # a changed BADMM setting reruns the inner loops and what follows them, not sampling of iteration 0
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["badmm"]["policy_dual_rate"] = 0.2
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = json.loads(run([str(BIN / "dvc"), "status", "--json"], ws).stdout)
    assert {s.rsplit(":", 1)[-1] for s in status} == {"badmm_inner_00", "badmm_inner_01"}, status
    # switching the algorithm back without `gps pipeline`: the summary stops the run
    params["badmm"]["policy_dual_rate"] = 0.1
    params["algorithm"]["name"] = "mdgps"
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    proc = run([str(BIN / "dvc"), "repro"], ws, check=False)
    assert proc.returncode != 0 and "run `gps pipeline`" in proc.stdout + proc.stderr
