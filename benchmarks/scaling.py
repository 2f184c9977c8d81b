"""Time per MDGPS iteration as T, the number of conditions M and the number of samples N double.

Runs three iterations of the default peg params (and variants with 2T, 2M, 2N)
stage by stage in one Python process, after a warm-up run, so imports and DVC
are left out and the numbers are the stages' own work. Iterations 1 and 2 are
timed and averaged (iteration 0 lacks the step adjustment and has the extra
catch-up S-step). EM iteration counts of the GMM fits depend on the data, so
the fits scale less smoothly than the rest.

    python benchmarks/scaling.py [--params params.yaml] [--s-step-iterations N]
"""

from __future__ import annotations

import argparse
import copy
import os
import shlex
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
STEPS = ("sample", "fit_dynamics", "fit_policy", "adjust_step", "c_step", "s_step", "evaluate")


def variants(base: dict) -> dict[str, dict]:
    out = {"base": copy.deepcopy(base)}
    p = copy.deepcopy(base)
    p["task"]["T"] *= 2
    out["2T"] = p
    p = copy.deepcopy(base)
    p["agent"]["num_samples"] *= 2
    out["2N"] = p
    p = copy.deepcopy(base)
    conditions = p["task"]["conditions"]
    if p["task"].get("offset_body"):
        # the same conditions again, the offsets shifted by 1 cm so that the new conditions differ from the old
        extra = [{**c, "offset": [c["offset"][0] + 0.01, c["offset"][1] + 0.01, c["offset"][2]]} for c in conditions]
    else:
        extra = [{**c, "qpos": [c["qpos"][0], c["qpos"][1] + 0.1] + list(c["qpos"][2:])} for c in conditions]
    p["task"]["conditions"] = conditions + extra
    out["2M"] = p
    return out


def time_iteration(params: dict, workdir: Path) -> dict[str, float]:
    from typer.testing import CliRunner

    from stages.main import registered_app

    app = registered_app()
    from stages.pipeline.generate import build_pipeline

    params = copy.deepcopy(params)
    params["iterations"] = 3
    workdir.mkdir(parents=True)
    (workdir / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    times: dict[str, float] = defaultdict(float)
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        for name, stage in build_pipeline(3)["stages"].items():
            if name in ("summary", "plot"):
                continue
            argv = shlex.split(stage["cmd"])[1:]
            start = time.perf_counter()
            result = CliRunner().invoke(app, argv)
            elapsed = time.perf_counter() - start
            if result.exit_code != 0:
                raise SystemExit(f"{name} failed: {result.output}")
            if name.endswith(("_01", "_02")):
                times[name.rsplit("_", 1)[0]] += elapsed / 2
    finally:
        os.chdir(cwd)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    ap.add_argument("--s-step-iterations", type=int, default=None, help="override policy.iterations")
    args = ap.parse_args()
    base = yaml.safe_load(args.params.read_text())
    if args.s_step_iterations:
        base["policy"]["iterations"] = args.s_step_iterations
    rows = {}
    with tempfile.TemporaryDirectory(prefix="mdgps-scaling-") as tmp:
        warm = copy.deepcopy(base)
        warm["task"]["T"], warm["policy"]["iterations"] = 20, 100
        time_iteration(warm, Path(tmp) / "warm-up")  # imports, first-call costs
        for label, params in variants(base).items():
            rows[label] = time_iteration(params, Path(tmp) / label)
            a, t = params["agent"], params["task"]
            print(f"{label}: M={len(t['conditions'])} N={a['num_samples']} T={t['T']}: {sum(rows[label].values()):.2f} s", flush=True)
    print()
    print(f"{'stage':<14}" + "".join(f"{k:>10}" for k in rows))
    for step in STEPS:
        print(f"{step:<14}" + "".join(f"{rows[k].get(step, np.nan):>10.2f}" for k in rows))
    print(f"{'iteration':<14}" + "".join(f"{sum(rows[k].values()):>10.2f}" for k in rows))
    base_total = sum(rows["base"].values())
    print(f"{'ratio':<14}" + "".join(f"{sum(rows[k].values()) / base_total:>10.2f}" for k in rows))


if __name__ == "__main__":
    main()
