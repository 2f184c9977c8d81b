"""Time `dvc repro` of the default params.yaml from scratch, per stage kind.

Clones the committed HEAD into a temporary folder (so the work tree is left
alone), runs `dvc repro` there and reads the lines each stage prints:
"gps <stage>: done in A s (process B s)" — A is time inside the stage's code,
B the whole `gps` process (interpreter start-up and imports included; with the
warm worker, the client's start-up, the hand-over and the fork). DVC's own
overhead is the total wall time minus the summed process times.

The worker gets a folder of its own, so the run starts it as a first run would;
`--no-worker` sets GPS_WORKER=0 (every stage a process of its own). Commits from
before the worker (no stages/worker/client.py) run that way too, and their process ages,
which came from psutil, are corrected for its whole-second boot time.

    python benchmarks/run_pipeline.py [--params FILE] [--commit REV] [--no-worker] [--keep]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINE = re.compile(r"gps (\S+): done in ([\d.]+) s \(process ([\d.]+) s\)")


def psutil_age_bias() -> float:
    """How much psutil overstates process ages on this boot: it adds start times to the boot
    time of /proc/stat, which is truncated to whole seconds."""
    btime = next(float(line.split()[1]) for line in open("/proc/stat") if line.startswith("btime"))
    return (time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)) - btime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=Path, help="params.yaml to use instead of the committed one")
    ap.add_argument("--commit", default="HEAD", help="benchmark this commit instead of HEAD (e.g. to compare before/after)")
    ap.add_argument("--no-worker", action="store_true", help="GPS_WORKER=0: every stage a process of its own")
    ap.add_argument("--keep", action="store_true", help="keep the temporary workspace")
    args = ap.parse_args()
    bin_dir = Path(sys.executable).parent
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    ws = Path(tempfile.mkdtemp(prefix="mdgps-bench-"))
    try:
        subprocess.run(["git", "clone", "-q", str(ROOT), str(ws / "repo")], check=True)
        repo = ws / "repo"
        subprocess.run(["git", "checkout", "-q", args.commit], cwd=repo, check=True)
        env["PYTHONPATH"] = str(repo)  # the clone's code, not this checkout's editable install
        # ... and the clone's own entry point (pyproject's [project.scripts] gps = "module:function"), which
        # moved with the layout of issue 25: a `gps` of the workspace, first on PATH, calls it.
        entry = re.search(r'^gps = "([\w.]+):(\w+)"', (repo / "pyproject.toml").read_text(), re.M)
        (ws / "bin").mkdir()
        gps = ws / "bin" / "gps"
        gps.write_text(f"#!{sys.executable}\nimport sys\nfrom {entry[1]} import {entry[2]}\nsys.exit({entry[2]}())\n")
        gps.chmod(0o755)
        env["PATH"] = f"{ws / 'bin'}{os.pathsep}{env['PATH']}"
        has_worker = any((repo / "stages" / f).exists() for f in ("launch.py", "worker/client.py"))  # before and after the layout of issue 25
        (ws / "workers").mkdir(mode=0o700)
        env["GPS_WORKER_DIR"] = str(ws / "workers")
        env["GPS_WORKER"] = "0" if args.no_worker or not has_worker else "1"
        bias = 0.0 if has_worker else psutil_age_bias()
        if args.params:
            shutil.copy(args.params, repo / "params.yaml")
            subprocess.run([str(gps), "pipeline"], cwd=repo, env=env, check=True, capture_output=True)
        start = time.perf_counter()
        proc = subprocess.run([str(bin_dir / "dvc"), "repro"], cwd=repo, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            sys.exit(f"dvc repro failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        inside, process, count = defaultdict(float), defaultdict(float), defaultdict(int)
        for stage, a, b in LINE.findall(proc.stdout + proc.stderr):
            inside[stage] += float(a)
            process[stage] += float(b) - bias
            count[stage] += 1
        n = sum(count.values())
        print(f"{'stage':<14}{'runs':>6}{'in code [s]':>14}{'process [s]':>14}")
        for stage in sorted(process, key=process.get, reverse=True):
            print(f"{stage:<14}{count[stage]:>6}{inside[stage]:>14.2f}{process[stage]:>14.2f}")
        total_in, total_proc = sum(inside.values()), sum(process.values())
        print(f"{'all stages':<14}{n:>6}{total_in:>14.2f}{total_proc:>14.2f}")
        print(f"process start-up and imports: {total_proc - total_in:.2f} s ({(total_proc - total_in) / n:.2f} s per stage)")
        print(f"DVC overhead: {wall - total_proc:.2f} s ({(wall - total_proc) / n:.2f} s per stage)")
        print(f"dvc repro wall time: {wall:.2f} s ({'warm worker' if env['GPS_WORKER'] == '1' else 'a process per stage'})")
    finally:
        if (ws / "bin" / "gps").exists():
            subprocess.run([str(ws / "bin" / "gps"), "worker", "--stop"], env=env, capture_output=True)
        if args.keep:
            print(f"workspace kept at {ws / 'repo'}")
        else:
            shutil.rmtree(ws, ignore_errors=True)


if __name__ == "__main__":
    main()
