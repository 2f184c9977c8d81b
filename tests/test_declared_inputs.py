"""Each stage reads and checks every HDF5 file it declares in its dvc.yaml deps.

A short real run (two iterations of the smallest settings, MDGPS and BADMM: the session's runs
of tests/small_runs.py, which run every stage in the pipeline's order), then for each stage of `build_pipeline` and each
.h5 file in its deps: a copy of the run with that one file emptied (0 bytes), or with one
dataset the stage reads replaced by one of the wrong rank, and the stage's command run on it.
The command must exit 2 with one line naming the file, and write none of its outputs.
"""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path

import h5py
import pytest
import yaml
from typer.testing import CliRunner

from small_runs import badmm_run, obstacle_run
from stages.main import registered_app
from stages.pipeline.generate import build_pipeline

app = registered_app()
runner = CliRunner()

ITERATIONS = 2  # iteration 1 has the stages that read the previous iteration (adjust_step, the --prev priors)
SKIPPED = ("summary", "evaluate_gym")  # no HDF5 input, or a stage these params do not have
PIPELINES = {algorithm: build_pipeline(ITERATIONS, algorithm=algorithm)["stages"] for algorithm in ("mdgps", "badmm")}

# The dataset of each file that the stage reading it uses (by the file's name), replaced by one of the wrong rank.
READ = {"samples.h5": "X", "dynamics.h5": "Fm", "policy_lin.h5": "K", "policy_lin_final.h5": "K", "step.h5": "step_mult",
        "controllers.h5": "K", "policy.h5": "policy/var", "policy_catchup.h5": "policy/var", "duals.h5": "pol_wt",
        "eval.h5": "X"}
# Where a stage reads other datasets of a file: (step, option or file) -> dataset.
READ_BY = {("c-step", "--prev-controllers"): "eta", ("evaluate", "--controllers"): "kl",
           ("fit-dynamics", "--prev"): "prior/X", ("fit-policy", "--prev"): "prior/gmm_mu",
           ("badmm-inner", "--policy-lin"): "prior/gmm_mu", ("plot", "samples.h5"): "ee_jac"}


def cases() -> list[tuple[str, str, str]]:
    """(algorithm, stage, declared .h5 input) of every stage with HDF5 inputs."""
    return [(algorithm, name, dep) for algorithm, stages in PIPELINES.items() for name, stage in stages.items()
            if name not in SKIPPED for dep in stage["deps"] if dep.endswith(".h5")]


def invoke(cmd: str):
    args = shlex.split(cmd)
    assert args[0] == "gps"
    return runner.invoke(app, args[1:])


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Each algorithm's run of ITERATIONS iterations: params.yaml and data/ as the pipeline's commands write
    them (the session's runs by hand of tests/small_runs.py, read only: each case works on a copy)."""
    return {"mdgps": obstacle_run(tmp_path_factory), "badmm": badmm_run(tmp_path_factory)}


def _outputs(stage: dict) -> list[str]:
    return [*stage.get("outs", []), *stage.get("metrics", []), *(p for p in stage.get("plots", []) if isinstance(p, str))]


def _option(args: list[str], dep: str) -> str:
    """The option that passes `dep` to the command, or the file's name when the command finds it in a folder (plot)."""
    return args[args.index(dep) - 1] if dep in args else Path(dep).name


def wrong_rank(path: Path, name: str) -> None:
    with h5py.File(path, "r+") as f:
        assert name in f, f"{path} has no dataset {name!r} to replace"
        value = f[name][()]
        del f[name]
        f.create_dataset(name, data=value[..., 0])


@pytest.mark.parametrize("how", ["empty", "wrong_rank"])
@pytest.mark.parametrize("algorithm,stage_name,dep", cases(), ids=[f"{a}-{s}-{d.split('data/')[1]}" for a, s, d in cases()])
def test_a_bad_declared_input_stops_the_stage(runs, tmp_path, monkeypatch, algorithm, stage_name, dep, how):
    stage = PIPELINES[algorithm][stage_name]
    args = shlex.split(stage["cmd"])
    shutil.copytree(runs[algorithm] / "data", tmp_path / "data")
    shutil.copy(runs[algorithm] / "params.yaml", tmp_path / "params.yaml")
    outputs = _outputs(stage)
    for out in outputs:
        (tmp_path / out).unlink(missing_ok=True)
    bad = tmp_path / dep
    if how == "empty":
        bad.write_bytes(b"")
    else:
        wrong_rank(bad, READ_BY.get((args[1], _option(args, dep)), READ[bad.name]))
    monkeypatch.chdir(tmp_path)
    result = invoke(stage["cmd"])
    message = result.output.strip()
    assert result.exit_code == 2, f"{stage_name} accepted a bad {dep} ({how}): exit {result.exit_code}\n{result.output}"
    assert "\n" not in message and "Traceback" not in message, message
    assert message.startswith(f"gps {args[1]}: error: {dep}: "), message
    for out in outputs:
        assert not (tmp_path / out).exists(), f"{stage_name} wrote {out} from a bad {dep}"
    assert not list(tmp_path.rglob(".*.tmp*")), "a temporary file was left behind"


@pytest.mark.parametrize("how", ["truncated", "empty", "nan"])
def test_the_on_policy_sample_stage_reads_and_checks_the_previous_controllers(runs, tmp_path, monkeypatch, how):
    """The issue's case: iteration 1 samples the global policy (sample_on_policy: true), and a truncated,
    empty or NaN-filled controllers.h5 of iteration 0, which it declares, still stops it."""
    stage = PIPELINES["mdgps"]["sample_01"]
    assert yaml.safe_load((runs["mdgps"] / "params.yaml").read_text())["algorithm"]["sample_on_policy"] is True
    shutil.copytree(runs["mdgps"] / "data", tmp_path / "data")
    shutil.copy(runs["mdgps"] / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / "data/itr_01/samples.h5").unlink()
    bad = tmp_path / "data/itr_00/controllers.h5"
    if how == "truncated":
        bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    elif how == "empty":
        bad.write_bytes(b"")
    else:
        with h5py.File(bad, "r+") as f:
            f["K"][...] = float("nan")
    monkeypatch.chdir(tmp_path)
    result = invoke(stage["cmd"])
    assert result.exit_code == 2, result.output
    assert result.output.strip().startswith("gps sample: error: data/itr_00/controllers.h5: "), result.output
    assert not (tmp_path / "data/itr_01/samples.h5").exists()
