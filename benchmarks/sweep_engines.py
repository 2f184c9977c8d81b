"""Time the same sweep through DVC's local queue and through Ray on this machine, and the landing overhead.

Clones the committed HEAD twice into a scratch folder (the work tree is left
alone). The queue copy runs `gps sweep ... -j N` (`dvc exp run --queue`, then
`dvc queue start -j N`) and is timed until `dvc queue status` shows nothing
queued or running (polled every 5 s). The Ray copy gets a bare git remote and a
local-directory DVC remote and runs `gps sweep ... --engine ray`, which starts a
local Ray instance with this machine's CPUs; its lines give each experiment's
clone, run, data-push and ref-push seconds.

    python benchmarks/sweep_engines.py [--tasks peg] [--methods ...] [--seeds 0-3] [--engines queue,ray] [--out DIR]
    python benchmarks/sweep_engines.py --project DIR/results.json [...] [--machines 10,50] [--push-mb-per-s 50]

Prints the wall time of each engine and the per-experiment figures of the Ray
sweep (kept in DIR/results.json with --out). --project turns such results into
the wall time of the paper's comparison (10 seeds of every task x method
measured) on M machines of this size: each (task, method) takes its measured
mean run time plus the landing overhead (and, with --push-mb-per-s, its data
pushed at that rate instead of this disk's), the runs are dealt longest first
to the free CPUs, and the driver's start-up is added.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
LINE = re.compile(r"^(\S+): landed as \w+ on .* in ([\d.]+) s \((.*)\)$")


def sh(cmd: list[str], cwd: Path, env: dict, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def project_copy(out: Path, name: str, env: dict) -> Path:
    path = out / name
    sh(["git", "clone", "-q", str(ROOT), str(path)], out, env)
    sh([str(BIN / "dvc"), "config", "--local", "core.analytics", "false"], path, env)
    return path


def queue_sweep(out: Path, selection: list[str], jobs: int, env: dict) -> dict:
    repo = project_copy(out, "queue", env)
    start = time.perf_counter()
    sh([str(BIN / "gps"), "sweep", *selection, "-j", str(jobs)], repo, env)
    while True:
        status = sh([str(BIN / "dvc"), "queue", "status"], repo, env).stdout
        if not re.search(r"\b(Queued|Running)\b", status):
            break
        time.sleep(5)
    wall = time.perf_counter() - start
    return {"wall": wall, "status": status.strip().splitlines()}


def ray_sweep(out: Path, selection: list[str], env: dict) -> dict:
    repo = project_copy(out, "ray", env)
    remote, store = out / "remote.git", out / "dvc-store"
    sh(["git", "init", "-q", "--bare", str(remote)], out, env)
    store.mkdir()
    sh([str(BIN / "dvc"), "remote", "add", "-q", "-d", "store", str(store)], repo, env)
    sh(["git", "-c", "user.email=bench@localhost", "-c", "user.name=bench", "commit", "-qam", "DVC remote"], repo, env)
    sh(["git", "remote", "set-url", "origin", str(remote)], repo, env)
    sh(["git", "push", "-q", "origin", "HEAD:refs/heads/main"], repo, env)
    start = time.perf_counter()
    proc = subprocess.run([str(BIN / "gps"), "sweep", *selection, "--engine", "ray", "--workdir", str(out / "clones")],
                          cwd=repo, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    print(proc.stdout, proc.stderr, sep="\n")
    experiments = {}
    for line in proc.stdout.splitlines():
        m = LINE.match(line)
        if m:
            parts = dict((k.strip(), float(v)) for k, v in (p.rsplit(" ", 1) for p in m.group(3).split(",")))
            experiments[m.group(1)] = {"total": float(m.group(2)), **parts}
    store_mb = sum(p.stat().st_size for p in store.rglob("*") if p.is_file()) / 1e6
    return {"wall": wall, "returncode": proc.returncode, "experiments": experiments, "store_mb": store_mb}


def summary(results: dict, n: int, cpus: int) -> None:
    print(f"\n## {n} experiments on {cpus} CPUs")
    for engine in ("queue", "ray"):
        if engine in results:
            print(f"{engine:>5}: wall {results[engine]['wall']:.0f} s ({results[engine]['wall'] / n:.1f} s per experiment)")
    if "ray" not in results or not results["ray"]["experiments"]:
        return
    exps = results["ray"]["experiments"].values()
    keys = ["clone", "run", "data push", "ref push", "total"]
    print("\nRay, per experiment (seconds): " + ", ".join(
        f"{k} mean {statistics.mean(e[k] for e in exps):.2f} (min {min(e[k] for e in exps):.2f}, max {max(e[k] for e in exps):.2f})"
        for k in keys))
    overhead = statistics.mean(e["total"] - e["run"] for e in exps)
    run = statistics.mean(e["run"] for e in exps)
    print(f"landing overhead (skip check, clone, pushes, check): {overhead:.2f} s = {100 * overhead / run:.1f} % of the run; "
          f"DVC remote holds {results['ray']['store_mb']:.0f} MB")


def lpt_makespan(durations: list[float], slots: int) -> float:
    """Wall time of jobs dealt longest first to whichever of `slots` CPUs frees first."""
    import heapq

    free = [0.0] * slots
    for d in sorted(durations, reverse=True):
        heapq.heappush(free, heapq.heappop(free) + d)
    return max(free)


def project(files: list[Path], seeds: int, machines: list[int], cpus: int, push_mb_per_s: float | None) -> None:
    per_pair: dict[str, list[float]] = {}
    overheads, mb_per_run = [], []
    for f in files:
        res = json.loads(f.read_text())["ray"]
        exps = res["experiments"]
        mb_per_run.append(res["store_mb"] / max(1, len(exps)))
        for name, e in exps.items():
            per_pair.setdefault(name.rsplit("-s", 1)[0], []).append(e["run"])
            overheads.append(e["total"] - e["run"])
    overhead = statistics.mean(overheads)
    mb = statistics.mean(mb_per_run)
    if push_mb_per_s:
        overhead += mb / push_mb_per_s
    runs = [statistics.mean(v) + overhead for v in per_pair.values() for _ in range(seeds)]
    print(f"{len(per_pair)} task x method pairs measured, {seeds} seeds each: {len(runs)} runs, "
          f"{sum(runs) / 3600:.1f} CPU-hours; landing overhead {overhead:.1f} s per run "
          f"({mb:.0f} MB of data per run{f' pushed at {push_mb_per_s} MB/s' if push_mb_per_s else ''})")
    for pair, v in sorted(per_pair.items()):
        print(f"  {pair}: run {statistics.mean(v):.0f} s (n = {len(v)})")
    start = 10.0  # the driver: Ray's connection, the experiments' files, the remote's refs
    for m in machines:
        wall = lpt_makespan(runs, m * cpus) + start
        print(f"{m} machines x {cpus} CPUs: {wall / 60:.1f} min (longest run {max(runs) / 60:.1f} min)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--project", type=Path, nargs="+", help="results.json files of Ray sweeps to project from")
    ap.add_argument("--machines", default="1,10,50")
    ap.add_argument("--project-seeds", type=int, default=10)
    ap.add_argument("--push-mb-per-s", type=float, help="with --project: push each run's data at this rate")
    ap.add_argument("--tasks", default="peg")
    ap.add_argument("--methods", default="badmm,off_classic,off_global,on_classic,on_global")
    ap.add_argument("--seeds", default="0-3")
    ap.add_argument("--engines", default="queue,ray")
    ap.add_argument("--out", type=Path, help="scratch folder (default: a new temporary one, removed afterwards)")
    args = ap.parse_args()
    if args.project:
        project(args.project, args.project_seeds, [int(m) for m in args.machines.split(",")], os.cpu_count() or 1,
                args.push_mb_per_s)
        return
    out = args.out or Path(tempfile.mkdtemp(prefix="gps-sweep-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", DVC_NO_ANALYTICS="1")
    env.pop("GPS_PROGRESS", None)
    selection = ["--tasks", args.tasks, "--methods", args.methods, "--seeds", args.seeds]
    cpus = os.cpu_count() or 1
    results = {}
    for engine in args.engines.split(","):
        print(f"# {engine}: gps sweep {' '.join(selection)}", flush=True)
        results[engine] = queue_sweep(out, selection, cpus, env) if engine == "queue" else ray_sweep(out, selection, env)
        print(json.dumps({k: v for k, v in results[engine].items() if k != "experiments"}), flush=True)
    n = len(args.tasks.split(",")) * len(args.methods.split(","))
    n *= len(sum((list(range(int(a), int(b or a) + 1)) for a, _, b in (p.partition("-") for p in args.seeds.split(","))), []))
    summary(results, n, cpus)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    if args.out is None:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
