"""The paper's comparison (tasks x methods x seeds) as plain run folders, and what the safeguards did.

Each run is a folder OUT/<task>_<method>_s<seed>/ holding params.yaml (configs/<task>.yaml
with the method's overrides, the seed and any --set), the generated pipeline files and
data/. Its stages run in pipeline order in one Python process (the stage commands of
dvc.yaml, called in-process: what `dvc repro` runs, without DVC's bookkeeping or a
process per stage); the run stops at the first stage that fails. run.json records the
outcome. A run whose run.json says it finished is skipped, so the same command resumes
an interrupted comparison. `gps report OUT/*` tabulates the finished runs.

    python benchmarks/paper_comparison.py run --out /tmp/cmp -j 2                 # all 150 runs
    python benchmarks/paper_comparison.py run --out /tmp/cmp --tasks obstacle --methods on_classic --seeds 1,2
    python benchmarks/paper_comparison.py run --out /tmp/ref --set traj_opt.on_fault=abort   # the reference's rules
    python benchmarks/paper_comparison.py summary --out /tmp/cmp                  # status and safeguard tables

The code that runs is the checkout this script lives in (not an installed copy), so run it
from a clone of the commit to be measured if you go on editing.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's stages/ and gps_core/, before an installed copy


def run_name(task: str, method: str, seed: int) -> str:
    return f"{task}_{method}_s{seed}"


def make_params(task: str, method: str, seed: int, overrides: list[str], config: Path | None = None) -> dict:
    """configs/<task>.yaml (or the settings file `config`) with the method's settings, the seed and the
    `key=value` overrides."""
    import yaml

    from gps_core.sim.task import package_file
    from stages.settings.model_check import settings_model
    from stages.sweep.queue import METHODS, set_dotted

    config = config or ROOT / "configs" / f"{task}.yaml"
    params = yaml.safe_load(config.read_text())
    model = str(params["task"]["model"])
    if not Path(model).is_absolute() and package_file(model) is None:
        # the run folder is elsewhere and a project root of its own (run_one writes its dvc.yaml): the file the
        # settings' rule names from the config, by its absolute path
        params["task"]["model"] = str(settings_model(model, config).resolve())
    settings = {**METHODS[method], "seed": seed}
    for item in overrides:
        key, _, value = item.partition("=")
        settings[key] = yaml.safe_load(value)
    for dotted, value in settings.items():
        set_dotted(params, dotted, value)
    return params


def stage_commands(params: dict) -> list[tuple[str, list[str]]]:
    """(stage name, argv without the leading `gps`) of every stage, in execution order."""
    from stages.pipeline.generate import pipeline_of

    doc = pipeline_of(params)
    return [(name, shlex.split(st["cmd"])[1:]) for name, st in doc["stages"].items() if name != "plot"]


def run_one(run_dir: Path) -> dict:
    """Run every stage of run_dir (params.yaml there) in this process; returns and writes run.json."""
    import io
    from contextlib import redirect_stderr

    import yaml
    from typer.testing import CliRunner

    from stages.main import registered_app

    app = registered_app()
    from stages.pipeline.generate import write_pipeline

    os.chdir(run_dir)
    params = yaml.safe_load(Path("params.yaml").read_text())
    write_pipeline(params, Path("params.yaml"), Path("."))
    start = time.perf_counter()
    result = {"status": "finished", "stage": None, "error": None}
    ended: dict[str, float] = {}  # stage -> seconds since the run started, when it ended
    with open("run.log", "w") as log:
        for name, argv in stage_commands(params):
            buf = io.StringIO()
            with redirect_stderr(buf):
                res = CliRunner().invoke(app, argv)
            log.write(res.output + buf.getvalue())
            log.flush()
            if res.exit_code != 0:
                lines = [ln for ln in (res.output + buf.getvalue()).splitlines() if "error" in ln] or [repr(res.exception)]
                result = {"status": "stopped", "stage": name, "error": lines[-1]}
                break
            ended[name] = round(time.perf_counter() - start, 3)
    result["seconds"] = round(time.perf_counter() - start, 1)
    result["stage_ended"] = ended
    Path("run.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def cmd_run(args) -> None:
    import yaml

    from stages.sweep.queue import parse_list, parse_seeds, METHODS, known_tasks

    out = Path(args.out).resolve()
    runs = []
    for task in parse_list(args.tasks, known_tasks(ROOT), "tasks"):
        for method in parse_list(args.methods, tuple(METHODS), "methods"):
            for seed in parse_seeds(args.seeds):
                d = out / run_name(task, method, seed)
                done = d / "run.json"
                if done.exists() and json.loads(done.read_text())["status"] == "finished" and not args.redo:
                    continue
                d.mkdir(parents=True, exist_ok=True)
                (d / "params.yaml").write_text(yaml.safe_dump(make_params(task, method, seed, args.set), sort_keys=False))
                (d / "run.json").unlink(missing_ok=True)
                runs.append(d)
    print(f"{len(runs)} runs to do in {out}, {args.jobs} at a time", flush=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1", GPS_PROGRESS="0")
    pending, running, started = list(runs), {}, time.perf_counter()
    finished = 0
    while pending or running:
        while pending and len(running) < args.jobs:
            d = pending.pop(0)
            running[d] = subprocess.Popen([sys.executable, __file__, "one", str(d)], env=env,
                                          stdout=subprocess.DEVNULL, stderr=open(d / "stderr.log", "w"))
        time.sleep(0.5)
        for d, proc in list(running.items()):
            if proc.poll() is None:
                continue
            del running[d]
            finished += 1
            res = json.loads((d / "run.json").read_text()) if (d / "run.json").exists() else {"status": f"crashed ({proc.returncode})"}
            extra = "" if res["status"] == "finished" else f"  {res.get('stage')}: {res.get('error')}"
            print(f"[{finished}/{len(runs)} {time.perf_counter() - started:7.0f} s] {d.name}: {res['status']} "
                  f"in {res.get('seconds', '?')} s{extra}", flush=True)


def safeguard_events(run_dir: Path) -> list[tuple[int, str, str]]:
    """(iteration, stage, what) of every place a safeguard acted in one run, in order, from its artifacts:
    a C-step condition solved relative to π̄ or kept at π̄, a sample drawn again, an evaluation that diverged.
    Up to the first of them the run is the one the reference's rules give; there they stop it."""
    import h5py
    import numpy as np

    events = []
    for itr_dir in sorted((run_dir / "data").glob("itr_*")):
        k = int(itr_dir.name[4:])
        if (itr_dir / "samples.h5").exists():
            with h5py.File(itr_dir / "samples.h5", "r") as f:
                if "draws" in f:
                    for m, n in np.argwhere(f["draws"][()] > 1):
                        events.append((k, "sample", f"condition {m} sample {n}: {int(f['draws'][m, n])} draws"))
        if (itr_dir / "controllers.h5").exists():
            with h5py.File(itr_dir / "controllers.h5", "r") as f:
                if "safeguard" in f:
                    names = json.loads(f.attrs["safeguard_names"])
                    for m in np.flatnonzero(f["safeguard"][()]):
                        events.append((k, "c-step", f"condition {m}: {names[int(f['safeguard'][m])]}"))
        if (itr_dir / "eval.h5").exists():
            with h5py.File(itr_dir / "eval.h5", "r") as f:
                if "diverged" in f:
                    for m in np.flatnonzero(f["diverged"][()]):
                        events.append((k, "evaluate", f"condition {m} diverged at t={int(f['diverged_at'][m])}"))
    return events


def _safeguards(run_dir: Path) -> dict[str, int]:
    """What the safeguards did in one run, counted by kind."""
    counts: Counter = Counter()
    for _, stage, what in safeguard_events(run_dir):
        kind = what.split(": ")[-1] if stage == "c-step" else ("sample redrawn" if stage == "sample" else "evaluation diverged")
        counts[f"{stage}: {kind}" if stage == "c-step" else kind] += 1
    return dict(counts)


def cmd_summary(args) -> None:
    out = Path(args.out)
    status: dict[tuple[str, str], Counter] = defaultdict(Counter)
    acted: dict[tuple[str, str], Counter] = defaultdict(Counter)
    runs_acted: dict[tuple[str, str], Counter] = defaultdict(Counter)
    touched: Counter = Counter()
    stopped, firsts = [], []
    import yaml

    from stages.settings.schema import algorithm_name
    from stages.tools.report import method_name

    for d in sorted(p for p in out.iterdir() if (p / "params.yaml").exists()):
        params = yaml.safe_load((d / "params.yaml").read_text())
        alg = params["algorithm"]
        task, method = params["task"]["name"], method_name(algorithm_name(params), alg["sample_on_policy"], alg["step_rule"])
        res = json.loads((d / "run.json").read_text()) if (d / "run.json").exists() else {"status": "not run"}
        status[task, method][res["status"]] += 1
        if res["status"] != "finished":
            stopped.append(f"{d.name}: {res['status']} at {res.get('stage')}: {res.get('error')}")
        for what, n in _safeguards(d).items():
            acted[task, method][what] += n
            runs_acted[task, method][what] += n > 0
        events = safeguard_events(d)
        if events:
            touched[task, method] += 1
            k, stage, what = events[0]
            firsts.append(f"{d.name}: first at iteration {k + 1} ({stage}, {what}); {len(events)} in all")
    kinds = sorted({w for c in acted.values() for w in c})
    print("| task | method | runs | finished | runs where a safeguard acted | " + " | ".join(kinds) + " |")
    print("|---|---|---|---|---|" + "---|" * len(kinds))
    for key in sorted(status):
        n = sum(status[key].values())
        cells = [f"{acted[key][w]} in {runs_acted[key][w]} run{'s' if runs_acted[key][w] > 1 else ''}" if acted[key][w] else "0"
                 for w in kinds]
        print(f"| {key[0]} | {key[1]} | {n} | {status[key]['finished']} | {touched[key]} | " + " | ".join(cells) + " |")
    print("\nwhere the reference's rules would have stopped each run (1-based iterations):")
    for line in firsts:
        print(line)
    for line in stopped:
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run (or resume) the comparison")
    run.add_argument("--out", required=True, help="folder of the run folders")
    run.add_argument("--tasks", default="peg,peg_blind,obstacle")
    run.add_argument("--methods", default="badmm,off_classic,off_global,on_classic,on_global")
    run.add_argument("--seeds", default="0-9")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a params override, e.g. traj_opt.on_fault=abort")
    run.add_argument("-j", "--jobs", type=int, default=2)
    run.add_argument("--redo", action="store_true", help="run finished runs again too")
    one = sub.add_parser("one", help="run the stages of one run folder (used by `run`)")
    one.add_argument("run_dir")
    summary = sub.add_parser("summary", help="status and safeguard counts per task and method")
    summary.add_argument("--out", required=True)
    args = parser.parse_args()
    if args.command == "run":
        cmd_run(args)
    elif args.command == "one":
        run_one(Path(args.run_dir))
    else:
        cmd_summary(args)


if __name__ == "__main__":
    main()
