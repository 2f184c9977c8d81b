"""Sweeps whose experiments land on a git remote and a DVC remote: the `ray` and `inline` engines, and `--status`.

The driver (`gps sweep --engine ray|inline`) checks that the commit it runs is
clean and pushed, asks the git remote which experiments are done, hands the
rest to the engine, and prints a line per finished experiment under a bar over
the whole sweep. What one experiment does is `stages.sweep.job.run_experiment`,
the same for every engine. Rerunning the same command after any failure does
only the experiments the git remote lacks.

The driver also keeps a ledger, `.dvc/tmp/gps-sweep/<commit>.json`, of what it
has handed out and what failed, for `gps sweep --status`; it is a convenience,
never consulted to decide what to run.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator

from stages.errors import UserError
from stages.process_clock import running_here, start_ticks
from stages.sweep.job import (Experiment, ExperimentFailed, Origin, Outcome, clean_here, default_workdir, git_identity_problem,
                              leftover_text, leftovers, remote_experiments, run_experiment)

ENGINES = ("queue", "ray", "inline")
Result = tuple[Experiment, "Outcome | Exception"]


# --------------------------------------------------------------------------- the sweep's origin

def dvc_default_remote(config_text: str) -> tuple[str, str] | None:
    """(name, url) of the default remote of a .dvc/config text, or None."""
    section, default, urls = "", None, {}
    for raw in config_text.splitlines():
        line = raw.strip()
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip().strip("'\"")
            continue
        key, sep, value = line.partition("=")
        if not sep:
            continue
        key, value = key.strip(), value.strip()
        if section == "core" and key == "remote":
            default = value
        elif section.startswith("remote ") and key == "url":
            urls[section[len("remote "):].strip().strip("'\"")] = value
    return (default, urls[default]) if default in urls else None


def _absolute_url(url: str, root: Path) -> str:
    """A git remote given as a local path, made absolute (workers clone it from elsewhere)."""
    if "://" in url or (":" in url.split("/")[0] and not Path(url).exists()):
        return url  # scheme://... or scp-like user@host:path
    return str((root / url).resolve())


def sweep_origin(root: Path, git_remote: str, to_run: bool = True) -> Origin:
    """The sweep's commit (HEAD) and git remote, after checking (to_run) that workers can run and land it.

    The commit's code, configs and DVC config must be what the workspace has (the
    experiments' files are generated here, from them), the commit must be on the
    git remote (workers clone it), and its .dvc/config must name a default DVC
    remote that other machines can reach (workers push the runs' data there).
    """
    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)

    head = git("rev-parse", "HEAD")
    if head.returncode != 0:
        raise UserError(f"{root.resolve()}: not a git repository with a commit (a sweep runs a commit)")
    commit = head.stdout.strip()
    got = git("remote", "get-url", git_remote)
    if got.returncode != 0:
        raise UserError(f"--git-remote {git_remote}: no such git remote (git remote add {git_remote} URL: "
                        "workers clone from it and push their experiments to it)")
    url = _absolute_url(got.stdout.strip(), root)
    if not to_run:
        return Origin(url, commit)
    if git("status", "--porcelain", "--", "configs", "gps_core", "stages", ".dvc/config").stdout.strip():
        raise UserError(f"configs/, gps_core/, stages/ or .dvc/config differ from HEAD ({commit[:7]}): "
                        "the experiments run the commit, so commit and push first")
    remote = dvc_default_remote(git("show", f"{commit}:.dvc/config").stdout)
    if remote is None:
        raise UserError(f".dvc/config of {commit[:7]} names no default DVC remote: dvc remote add -d NAME URL, "
                        "then commit and push (workers push the runs' data there)")
    name, dvc_url = remote
    if "://" not in dvc_url and not Path(dvc_url).is_absolute():
        raise UserError(f".dvc/config: remote {name} has the relative url {dvc_url!r}; workers run in clones "
                        "elsewhere, so give an absolute path or a URL")
    listed = subprocess.run(["git", "ls-remote", "--heads", "--tags", url], capture_output=True, text=True)
    if listed.returncode != 0:
        last = (listed.stderr.strip().splitlines() or ["no answer"])[-1]
        raise UserError(f"git remote {git_remote} ({url}): {last}")
    tips = {line.split("\t")[0] for line in listed.stdout.splitlines() if line}
    if not any(tip == commit or git("merge-base", "--is-ancestor", commit, tip).returncode == 0 for tip in tips):
        raise UserError(f"HEAD ({commit[:7]}) is not on the git remote {git_remote} ({url}): "
                        f"git push {git_remote} HEAD first")
    return Origin(url, commit)


# --------------------------------------------------------------------------- the ledger

class Ledger:
    """What a driver handed out and what failed: `.dvc/tmp/gps-sweep/<commit>.json` (not in git)."""

    def __init__(self, root: Path, commit: str, keep: bool = True):
        self.path = root / ".dvc" / "tmp" / "gps-sweep" / f"{commit}.json"
        self.keep = keep  # False: track in memory only, write nothing
        self.data = self.read()

    def read(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {"driver": {}, "experiments": {}}

    def claim(self, engine: str) -> None:
        """This process is the sweep's driver now."""
        pid = os.getpid()
        self.data["driver"] = {"pid": pid, "host": socket.gethostname(), "start": start_ticks(pid), "engine": engine}
        self.save()

    def mark(self, name: str, state: str, detail: str = "") -> None:
        self.data["experiments"][name] = {"state": state, "detail": detail, "time": time.strftime("%Y-%m-%d %H:%M:%S")}
        self.save()

    def save(self) -> None:
        """Through a temporary file of this process's own and a rename: never half-written, even
        when two drivers of the same commit write at once."""
        if not self.keep:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.data, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, self.path)

    def driver_alive(self) -> bool | None:
        """Whether the driver that wrote this ledger still runs (None: it ran on another host)."""
        driver = self.data.get("driver") or {}
        if not driver:
            return False
        return running_here(driver.get("host"), driver.get("pid"), driver.get("start"))


def status_rows(experiments: list[Experiment], done: dict[str, str], ledger: Ledger) -> list[tuple[str, str, str]]:
    """(name, state, detail) per experiment; state: done, running, failed, interrupted or missing.

    done comes from the git remote; running and failed from the ledger. A
    `running` entry whose driver has died is `interrupted`.
    """
    alive = ledger.driver_alive()
    driver = ledger.data.get("driver") or {}
    rows = []
    for exp in experiments:
        entry = ledger.data["experiments"].get(exp.name) or {}
        if exp.name in done:
            rows.append((exp.name, "done", done[exp.name][:7]))
        elif entry.get("state") == "failed":
            rows.append((exp.name, "failed", entry.get("detail", "")))
        elif entry.get("state") == "running" and alive is not False:
            where = "" if alive else f" (driver on {driver.get('host')})"
            rows.append((exp.name, "running", f"since {entry.get('time')}{where}"))
        elif entry.get("state") == "running":
            rows.append((exp.name, "interrupted", f"driver pid {driver.get('pid')} is gone"))
        elif entry.get("state") == "interrupted":
            rows.append((exp.name, "interrupted", entry.get("detail", "")))
        else:
            rows.append((exp.name, "missing", ""))
    return rows


def status_report(experiments: list[Experiment], root: Path, git_remote: str, workdir: Path | None = None) -> list[str]:
    """`gps sweep --status`: a summary line, one line per experiment, and what killed attempts left on this machine."""
    origin = sweep_origin(root, git_remote, to_run=False)
    rows = status_rows(experiments, _remote_done(origin), Ledger(root, origin.commit))
    counts = {state: sum(r[1] == state for r in rows) for state in ("done", "running", "failed", "interrupted", "missing")}
    width = max(len(r[0]) for r in rows)
    head = f"{len(rows)} experiments of {origin.commit[:7]}: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    folder = workdir or default_workdir()
    found, running = leftovers(folder)
    tail = (f"{folder} on this machine: {leftover_text(found)} of killed attempts "
            "(the next sweep here, or gps sweep --clean, removes them)" if found
            else f"{folder} on this machine: no leftovers of killed attempts")
    tail += f"; {running} attempt(s) running" if running else ""
    return [head, *(f"{name:<{width}}  {state:<11}  {detail}".rstrip() for name, state, detail in rows), tail]


def _remote_done(origin: Origin) -> dict[str, str]:
    try:
        return remote_experiments(origin)
    except ExperimentFailed as exc:
        raise UserError(str(exc)) from None


# --------------------------------------------------------------------------- driving an engine

def inline_results(todo: list[Experiment], origin: Origin, workdir: Path | None) -> Iterator[Result]:
    """The `inline` engine: each experiment in this process, one after another."""
    for exp in todo:
        try:
            yield exp, run_experiment(exp, origin, workdir)
        except ExperimentFailed as exc:
            yield exp, exc


def run_remote_sweep(experiments: list[Experiment], root: Path, git_remote: str, engine: str,
                     workdir: Path | None = None, address: str | None = None,
                     echo: Callable[[str], None] = print, ledger: bool = True) -> tuple[int, int]:
    """Run the experiments the git remote lacks on `engine` (ray or inline); returns (landed, failed).

    First the leftovers of killed attempts are removed from the work folder of every
    machine the engine uses (`stages.sweep.job.remove_leftovers`), never a running attempt's.

    ledger: keep the ledger for --status (off for one experiment of a job array).
    """
    from stages.progress import progress_bar

    origin = sweep_origin(root, git_remote)
    problem = git_identity_problem()
    if problem:  # said once, before any clone (each experiment's `dvc exp run` would fail on it)
        raise UserError(problem)
    done = _remote_done(origin)
    todo = [exp for exp in experiments if exp.name not in done]
    echo(f"{len(experiments)} experiments of {origin.commit[:7]}: {len(experiments) - len(todo)} already on "
         f"{git_remote}, {len(todo)} to run ({engine})")
    record = Ledger(root, origin.commit, keep=ledger)
    record.claim(engine)
    if engine == "inline":
        clean_here(workdir, echo)
    if not todo:
        if engine == "ray":  # otherwise each machine cleans when the engine connects, before its attempts
            from stages.sweep.ray_engine import ray_clean
            ray_clean(workdir, address, echo)
        return 0, 0
    if engine == "ray":
        from stages.sweep.ray_engine import ray_results
        results: Iterable[Result] = ray_results(todo, origin, workdir, address, echo)
    else:
        results = inline_results(todo, origin, workdir)
    for exp in todo:
        record.mark(exp.name, "running")
    landed = failed = 0
    finished = len(experiments) - len(todo)
    try:
        with progress_bar("sweep", len(experiments)) as advance:
            advance(finished, len(experiments))
            for exp, result in results:
                finished += 1
                if isinstance(result, Outcome):
                    landed += result.status == "landed"
                    record.mark(exp.name, "done", result.line())
                    echo(result.line())
                else:
                    failed += 1
                    message = str(result).splitlines()[0] if str(result) else type(result).__name__
                    record.mark(exp.name, "failed", message)
                    echo(f"{exp.name}: FAILED: {message}")
                advance(finished, len(experiments))
    except BaseException:
        for exp in todo:
            if (record.data["experiments"].get(exp.name) or {}).get("state") == "running":
                record.mark(exp.name, "interrupted", "the driver was stopped")
        raise
    return landed, failed
