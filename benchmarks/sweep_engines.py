"""Time the same sweep through DVC's local queue and through Ray on this machine, and the landing overhead.

Clones the committed HEAD twice into a scratch folder (the work tree is left
alone). The queue copy runs `gps sweep ... -j N` (`dvc exp run --queue`, then
`dvc queue start -j N`) and is timed until `dvc queue status` shows nothing
queued or running (polled every 5 s). The Ray copy gets a bare git remote and a
local-directory DVC remote and runs `gps sweep ... --engine ray`, which starts a
local Ray instance with this machine's CPUs; its lines give each experiment's
clone, run, data-push and ref-push seconds.

    python benchmarks/sweep_engines.py [--tasks peg] [--methods ...] [--seeds 0-3] [--engines queue,ray] [--out DIR]

Prints the wall time of each engine, the per-experiment figures of the Ray
sweep, and a projection of the paper's 150-run comparison onto M machines of
this size from them.
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
LINE = re.compile(r"^(\S+): landed on .* in ([\d.]+) s \((.*)\)$")


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="peg")
    ap.add_argument("--methods", default="badmm,off_classic,off_global,on_classic,on_global")
    ap.add_argument("--seeds", default="0-3")
    ap.add_argument("--engines", default="queue,ray")
    ap.add_argument("--out", type=Path, help="scratch folder (default: a new temporary one, removed afterwards)")
    args = ap.parse_args()
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
