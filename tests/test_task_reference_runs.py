"""The paper's tasks written in the task format run exactly as the code that wired them by name.

tests/data/task_runs_<run>.npz hold every dataset of short runs (2 iterations of every stage)
made at commit dba323d, before the task format, by tests/data/make_task_reference_runs.py.
The same small settings, written as `task` sections, must give the same arrays: bit for bit
on the processor the arrays were made on. On another processor the floating-point kernels
(BLAS, MuJoCo's and PyTorch's vectorised code) may differ in the last bits
(docs/results.md, "The same code on another machine"), and the fits amplify that: between
two AMD EPYC machines of this workplace the same code's arrays differed by up to 2.2e-6
relative (peg's dynamics fit at iteration 1). There the arrays must agree to 1e-4 relative.

The archives were made again on 2 December 2026 (session 9) by the code before the task
format (de9ae8a, whose gps_core and stages equal dba323d's) on the machine that found the
name-only processor check too weak; HEAD's arrays were bit-identical to them there.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import ROOT, run_stages_by_hand, small_peg_params
from small_runs import badmm_run, obstacle_run

DATA = ROOT / "tests" / "data"
CROSS_PROCESSOR_RTOL = 1e-4
# Each run's folder (<dir>/params.yaml, <dir>/data). The obstacle's (small_params(2)) and its BADMM
# run's (small_badmm_params(2)) are the session's shared runs (small_runs.py), which other tests read too.
RUNS = {
    "obstacle": lambda tmp_path_factory, tmp_path: obstacle_run(tmp_path_factory),
    "peg": lambda tmp_path_factory, tmp_path: peg_run(tmp_path, "peg"),
    "peg_blind": lambda tmp_path_factory, tmp_path: peg_run(tmp_path, "peg_blind"),
    "obstacle_badmm": lambda tmp_path_factory, tmp_path: badmm_run(tmp_path_factory),
}


def peg_run(d: Path, task: str) -> Path:
    """Two iterations of every stage of small_peg_params(task, 2), by hand: <d>/params.yaml, <d>/data."""
    (d / "params.yaml").write_text(yaml.safe_dump(small_peg_params(task, 2)))
    run_stages_by_hand(d / "data", d / "params.yaml", 2)
    return d


def cpu_model() -> str:
    """The processor: its model name and a hash of its feature flags.

    The name alone is not enough: two machines of this workplace both say "AMD EPYC",
    one with AVX-512 kernels and one without, and their runs differ in the last bits.
    """
    import hashlib

    name, flags = "unknown", ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name") and name == "unknown":
            name = line.split(":", 1)[1].strip()
        elif line.startswith("flags") and not flags:
            flags = " ".join(sorted(line.split(":", 1)[1].split()))
    return f"{name} | flags {hashlib.sha256(flags.encode()).hexdigest()[:12]}"


def datasets(run: Path) -> dict[str, np.ndarray]:
    import h5py

    arrays: dict[str, np.ndarray] = {}
    for path in sorted(run.rglob("*.h5")):
        rel = path.relative_to(run).as_posix()
        with h5py.File(path, "r") as f:
            f.visititems(lambda name, obj: arrays.__setitem__(f"{rel}/{name}", obj[()])
                         if isinstance(obj, h5py.Dataset) else None)
    return arrays


@pytest.mark.parametrize("name", list(RUNS))
def test_paper_task_runs_are_unchanged(name, tmp_path_factory, tmp_path):
    stored = np.load(DATA / f"task_runs_{name}.npz")
    now = datasets(RUNS[name](tmp_path_factory, tmp_path) / "data")
    expected = {k: stored[k] for k in stored.files if k != "cpu"}
    assert sorted(now) == sorted(expected), "the runs write other datasets than before"
    exact = str(stored["cpu"]) == cpu_model()
    differ = []
    for key, want in expected.items():
        got = now[key]
        assert got.shape == want.shape and got.dtype == want.dtype, key
        if exact:
            if got.tobytes() != want.tobytes():
                differ.append(key)
        elif np.issubdtype(want.dtype, np.floating):
            np.testing.assert_allclose(got, want, rtol=CROSS_PROCESSOR_RTOL, atol=1e-8, err_msg=key)
        else:
            np.testing.assert_array_equal(got, want, err_msg=key)
    assert not differ, f"{len(differ)} datasets differ in bytes on the processor they were made on: {differ[:5]}"
