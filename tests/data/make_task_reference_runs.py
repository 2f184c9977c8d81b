"""Made tests/data/task_runs_<task>.npz: every dataset of short runs of the paper's tasks.

Run at commit de9ae8a (the code of dba323d), before the task format of issue 16 (tasks wired by name,
`agent.task`), with `python tests/data/make_task_reference_runs.py` from the project root
(its helpers, then in this file, now live in the test). Run on today's code it writes the
same arrays, in the task format.
tests/test_task_reference_runs.py runs the same small settings written in the task format
and compares each dataset with these: the refactor must not change a number.

Each archive holds `<file>/<dataset>` for every HDF5 artifact of the run (the recorded
params attributes differ by construction and are not compared) and `cpu`, the processor
the arrays were made on (tests/test_task_reference_runs.py explains what it does with it).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from conftest import run_badmm_stages_by_hand, run_stages_by_hand, small_badmm_params, small_params, small_peg_params  # noqa: E402
from test_task_reference_runs import cpu_model, datasets  # noqa: E402  (the test reads the arrays as they are written)


RUNS = {
    "obstacle": (lambda: small_params(2), run_stages_by_hand, 2),
    "peg": (lambda: small_peg_params("peg", 2), run_stages_by_hand, 2),
    "peg_blind": (lambda: small_peg_params("peg_blind", 2), run_stages_by_hand, 2),
    "obstacle_badmm": (lambda: small_badmm_params(2), run_badmm_stages_by_hand, 2),
}


def main() -> None:
    for name, (make, run, iterations) in RUNS.items():
        with tempfile.TemporaryDirectory() as tmp:
            d = Path(tmp)
            (d / "params.yaml").write_text(yaml.safe_dump(make()))
            run(d / "data", d / "params.yaml", iterations)
            arrays = datasets(d / "data")
        out = ROOT / "tests" / "data" / f"task_runs_{name}.npz"
        np.savez_compressed(out, cpu=np.array(cpu_model()), **arrays)
        print(f"{out.name}: {len(arrays)} datasets, {out.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
