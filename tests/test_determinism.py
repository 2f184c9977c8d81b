"""Same params and seed: every artifact of a from-scratch run is bit-identical; another seed: it is not.

Each run executes every stage of the generated dvc.yaml, in pipeline order, in one fresh Python
process (without DVC, which costs 30 s more). The two runs with the same seed use different
PYTHONHASHSEEDs, so nothing may depend on set or hash ordering. A third run with another seed
shows that the comparison can fail. A fourth runs each stage as its own `gps` process, served by
the warm worker (stages/worker/server.py), and must equal the first byte for byte. The DVC tests (test_dvc_pipeline.py) compare runs in which
every stage is its own process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from conftest import ROOT, small_params
from stages.worker.client import stop_workers
from stages.pipeline.generate import build_pipeline, write_pipeline

# Every stage of dvc.yaml, in order, through the CLI (as `dvc repro` would run them).
RUN_ALL_STAGES = r"""
import shlex, sys, yaml
from typer.testing import CliRunner
from stages.main import registered_app

app = registered_app()
from stages.pipeline.generate import build_pipeline
params = yaml.safe_load(open("params.yaml"))
for name, stage in build_pipeline(params["iterations"])["stages"].items():
    argv = shlex.split(stage["cmd"])
    assert argv[0] == "gps", argv
    result = CliRunner().invoke(app, argv[1:])
    if result.exit_code != 0:
        sys.exit(f"stage {name} failed ({result.exit_code}): {result.output} {result.exception!r}")
"""

# The same, each stage its own `gps` process (argv[1]), so that the warm worker serves them.
RUN_EACH_STAGE = r"""
import shlex, subprocess, sys, yaml
from stages.pipeline.generate import build_pipeline
params = yaml.safe_load(open("params.yaml"))
for name, stage in build_pipeline(params["iterations"])["stages"].items():
    argv = shlex.split(stage["cmd"])
    assert argv[0] == "gps", argv
    if subprocess.run([sys.argv[1], *argv[1:]]).returncode != 0:
        sys.exit(f"stage {name} failed")
"""

# What each artifact holds, to check that the runs cover every kind of stage.
EXPECTED = {
    "init/controllers.h5", "init/policy.h5", "init/step.h5",
    *(f"itr_{k:02d}/{name}.h5" for k in range(2) for name in ("samples", "dynamics", "policy_lin", "controllers", "policy", "eval")),
    "itr_00/policy_catchup.h5", "itr_01/step.h5",
}


def start_run(ws: Path, seed: int, hash_seed: str, worker: bool = False) -> subprocess.Popen:
    ws.mkdir(parents=True)
    params = small_params()
    params["seed"] = seed
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    write_pipeline(params, ws / "params.yaml", ws)
    env = dict(os.environ, PYTHONHASHSEED=hash_seed, PYTHONPATH=str(ROOT))
    script = [RUN_ALL_STAGES]
    if worker:
        (ws / "workers").mkdir(mode=0o700)
        env.update(GPS_WORKER="1", GPS_WORKER_DIR=str(ws / "workers"))
        script = [RUN_EACH_STAGE, str(Path(sys.executable).parent / "gps")]
    return subprocess.Popen([sys.executable, "-c", *script], cwd=ws, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> None:
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]


def contents(path: Path) -> dict[str, tuple]:
    """Every object of the file: name -> (kind, attributes, data); "/" is the root group."""
    out: dict[str, tuple] = {}
    with h5py.File(path, "r") as f:
        def attrs(obj):
            return {k: obj.attrs[k] for k in obj.attrs}

        out["/"] = ("group", attrs(f), None)

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                out[name] = ("dataset", attrs(obj), obj[()])
            else:
                out[name] = ("group", attrs(obj), None)

        f.visititems(visit)
    return out


def same_value(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b) and a.tobytes() == b.tobytes()


def assert_identical(a: Path, b: Path) -> None:
    """Same groups, datasets and attributes (root included), every value bit for bit."""
    ca, cb = contents(a), contents(b)
    assert ca.keys() == cb.keys(), f"{a.name}: objects differ: {sorted(ca.keys() ^ cb.keys())}"
    for name, (kind, attrs_a, data_a) in ca.items():
        kind_b, attrs_b, data_b = cb[name]
        assert kind == kind_b, f"{a}:{name}: {kind} vs {kind_b}"
        assert attrs_a.keys() == attrs_b.keys(), f"{a}:{name}: attributes {sorted(attrs_a)} vs {sorted(attrs_b)}"
        for key in attrs_a:
            assert same_value(attrs_a[key], attrs_b[key]), f"{a}:{name}: attribute {key!r} differs"
        if kind == "dataset":
            assert same_value(data_a, data_b), f"{a}:{name}: dataset differs"


def artifacts(ws: Path) -> set[str]:
    return {str(p.relative_to(ws / "data")) for p in (ws / "data").rglob("*.h5")}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Four runs in parallel: seed 0 twice (different hash seeds), seed 1, and seed 0 through the worker."""
    base = tmp_path_factory.mktemp("determinism")
    spec = {"a": (0, "0"), "b": (0, "12345"), "other_seed": (1, "0"), "worker": (0, "0")}
    procs = {key: start_run(base / key, seed, hash_seed, worker=key == "worker") for key, (seed, hash_seed) in spec.items()}
    try:
        for proc in procs.values():
            finish(proc)
    finally:
        stop_workers(base / "worker" / "workers")
    return {key: base / key for key in spec}


def test_same_seed_gives_bit_identical_artifacts(runs):
    a, b = runs["a"], runs["b"]
    assert artifacts(a) == EXPECTED and artifacts(b) == EXPECTED
    for rel in sorted(EXPECTED):
        assert_identical(a / "data" / rel, b / "data" / rel)
        # docs/artifacts.md promises more: no timestamps, so the files themselves are equal
        assert (a / "data" / rel).read_bytes() == (b / "data" / rel).read_bytes(), f"{rel}: same contents but different bytes"
    for rel in ("itr_00/metrics.json", "itr_01/metrics.json", "metrics.json", "learning_curve.csv"):
        assert (a / "data" / rel).read_text() == (b / "data" / rel).read_text(), rel


def test_stages_served_by_the_warm_worker_give_the_same_bytes(runs):
    """Each stage its own `gps` process, all but the first forked from the warm worker
    (stages/worker/server.py): the artifacts equal those of the in-process run, byte for byte."""
    a, w = runs["a"], runs["worker"]
    stages = build_pipeline(2)["stages"]
    log = "".join(p.read_text() for p in (w / "workers").glob("*.log"))
    served = [line for line in log.splitlines() if " gps " in line]
    assert len(served) >= len(stages) - 2, f"only {len(served)} of {len(stages)} stages were served:\n{log}"
    assert artifacts(w) == EXPECTED
    for rel in sorted(EXPECTED):
        assert (w / "data" / rel).read_bytes() == (a / "data" / rel).read_bytes(), rel
    for rel in ("itr_00/metrics.json", "itr_01/metrics.json", "metrics.json", "learning_curve.csv"):
        assert (w / "data" / rel).read_text() == (a / "data" / rel).read_text(), rel


def test_another_seed_gives_other_samples_and_everything_after(runs):
    a, c = runs["a"], runs["other_seed"]
    # init does not read the seed (the network has its own policy.init_seed): identical
    for rel in ("init/controllers.h5", "init/policy.h5", "init/step.h5"):
        assert_identical(a / "data" / rel, c / "data" / rel)
    # the comparison catches the difference: the samples file
    with pytest.raises(AssertionError, match="differs"):
        assert_identical(a / "data" / "itr_00" / "samples.h5", c / "data" / "itr_00" / "samples.h5")
    with h5py.File(a / "data" / "itr_00" / "samples.h5") as fa, h5py.File(c / "data" / "itr_00" / "samples.h5") as fc:
        for name in ("noise", "X", "U", "cost"):  # (not Cm, cv, cc: the expansion of a quadratic cost is exact)
            assert not np.array_equal(fa[name][()], fc[name][()]), f"samples {name} did not change with the seed"
        assert np.array_equal(fa["X"][:, :, 0], fc["X"][:, :, 0]), "the initial states do not depend on the seed"
    # and every later stage sees other data
    changed = {
        "itr_00/dynamics.h5": "Fm", "itr_00/policy_catchup.h5": "policy/W0", "itr_00/policy_lin.h5": "K",
        "itr_00/controllers.h5": "K", "itr_00/policy.h5": "policy/W0", "itr_01/samples.h5": "X",
        "itr_01/dynamics.h5": "prior/X", "itr_01/step.h5": "J_actual", "itr_01/controllers.h5": "k", "itr_01/policy.h5": "loss",
    }
    for rel, name in changed.items():
        with h5py.File(a / "data" / rel) as fa, h5py.File(c / "data" / rel) as fc:
            assert not np.array_equal(fa[name][()], fc[name][()]), f"{rel}:{name} did not change with the seed"
