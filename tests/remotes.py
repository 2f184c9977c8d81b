"""A tiny project with a bare git remote and a local-directory DVC remote, for the sweeps that land results there."""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from stages.tools.report import runs_from_experiments
from test_dvc_pipeline import BIN, env, run
from test_sweep import make_repo


@dataclass(frozen=True)
class Landing:
    repo: Path     # the user's checkout, where `gps sweep` runs
    remote: Path   # bare git repository: the git remote `origin`
    store: Path    # the DVC remote (a local directory standing in for S3 or SSH)


def landing_project(tmp: Path) -> Landing:
    """make_repo's tiny obstacle project, with its default DVC remote committed and HEAD pushed to origin."""
    repo = make_repo(tmp / "repo")
    remote, store = tmp / "remote.git", tmp / "dvc-store"
    run(["git", "init", "-q", "--bare", str(remote)], tmp)
    store.mkdir()
    run([str(BIN / "dvc"), "remote", "add", "-q", "-d", "store", str(store)], repo)
    run(["git", "add", ".dvc/config"], repo)
    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "the DVC remote"], repo)
    run(["git", "remote", "add", "origin", str(remote)], repo)
    run(["git", "push", "-q", "origin", "HEAD:refs/heads/main"], repo)
    return Landing(repo, remote, store)


def sweep(*args: str) -> list[str]:
    """`gps sweep` of the tiny project's task (the caller adds methods, seeds and the engine)."""
    return [str(BIN / "gps"), "sweep", "--tasks", "obstacle", *args]


def gps_sweep(landing: Landing, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(sweep(*args), cwd=landing.repo, env=env(), capture_output=True, text=True, timeout=timeout)
    return proc


def remote_refs(landing: Landing) -> dict[str, str]:
    """{experiment name: commit} of every experiment ref on the git remote."""
    out = run(["git", "ls-remote", str(landing.remote), "refs/exps/*"], landing.remote.parent).stdout
    refs = {}
    for line in out.splitlines():
        sha, ref = line.split("\t")
        refs[ref.rsplit("/", 1)[1]] = sha
    return refs


def wait_for(predicate, timeout: float, what: str, every: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def attempts(workdir: Path) -> list[dict]:
    """The markers of the attempts running under a --workdir (see stages.sweep.job.run_experiment)."""
    out = []
    for path in sorted(workdir.glob("*.json")) if workdir.exists() else []:
        try:
            out.append(json.loads(path.read_text()))
        except ValueError:  # being written
            pass
    return out


def fresh_clone_experiments(landing: Landing, where: Path) -> tuple[list[str], list[str]]:
    """In a fresh clone: `dvc exp pull origin`, `gps report --experiments`; returns (finished runs, failed)."""
    run(["git", "clone", "-q", "-b", "main", str(landing.remote), str(where)], landing.remote.parent)
    run([str(BIN / "dvc"), "exp", "pull", "origin"], where)
    report = run([str(BIN / "gps"), "report", "--experiments"], where)
    assert "Obstacle" in report.stdout, report.stdout
    shown = json.loads(run([str(BIN / "dvc"), "exp", "show", "--json"], where).stdout)
    runs, failed = runs_from_experiments(shown)
    for r in runs:  # each experiment's data came along: applied, its pipeline is up to date, nothing missing
        applied = run([str(BIN / "dvc"), "exp", "apply", str(r.path)], where)
        assert "missing" not in (applied.stdout + applied.stderr).lower(), applied.stdout + applied.stderr
        assert "up to date" in run([str(BIN / "dvc"), "status"], where).stdout, r.path
        run(["git", "reset", "-q", "--hard"], where)
        run(["git", "clean", "-fdq"], where)
    return sorted(str(r.path) for r in runs), failed


def processes_in(folder: Path) -> list[str]:
    """Processes whose working directory is inside `folder` (the warm `gps` worker of a clone too: it
    runs in the clone it serves)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cwd = os.readlink(proc / "cwd")
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if cwd.startswith(str(folder)):
            found.append(f"{proc.name}: {cmdline.strip()}")
    return found


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """{file: (size, mtime)} of every file under `folder` (one being removed meanwhile: what is left)."""
    out = {}
    for top, _, names in os.walk(folder):  # os.walk skips folders that vanish under it
        for name in names:
            path = Path(top) / name
            try:
                st = path.lstat()
            except OSError:
                continue
            out[str(path.relative_to(folder))] = (st.st_size, st.st_mtime_ns)
    return out


def _stat(pid: int | str) -> list[str] | None:
    """/proc/PID/stat's fields after the command name (state, ppid, pgrp, ...), or None if no such process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def alive(pid: int) -> bool:
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z"


def group_members(pgid: int) -> list[int]:
    """Live processes of a process group."""
    found = []
    for proc in Path("/proc").iterdir():
        fields = _stat(proc.name) if proc.name.isdigit() else None
        if fields and fields[0] != "Z" and int(fields[2]) == pgid:
            found.append(int(proc.name))
    return found


def attempt_processes(marker: dict) -> tuple[set[int], set[int]]:
    """An attempt's process groups (one per guarded command: the guard leads it) and every live
    process that is in one of them or descends from one of its members."""
    parents: dict[int, int] = {}
    groups_of: dict[int, int] = {}
    for proc in Path("/proc").iterdir():
        fields = _stat(proc.name) if proc.name.isdigit() else None
        if fields and fields[0] != "Z":
            parents[int(proc.name)], groups_of[int(proc.name)] = int(fields[1]), int(fields[2])
    guards = {pid for pid, parent in parents.items() if parent == marker["pid"] and pid != marker["pid"]
              and "group_guard.py" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")}
    members = {pid for pid, group in groups_of.items() if group in guards}
    grew = True
    while grew:  # descendants, wherever they went
        more = {pid for pid, parent in parents.items() if parent in members} - members
        members |= more
        grew = bool(more)
    return guards, members


def nothing_of_the_attempt_left(marker: dict, guards: set[int], members: set[int], within: float) -> None:
    """Within `within` seconds: no process of the attempt's groups, none of the processes seen in them
    or below them, and none working in its clone; then nothing in the clone is written for 2 s (no file
    appears or changes; files may go: the driver removes a failed attempt's clone, sooner or later)."""
    clone = Path(marker["clone"])
    wait_for(lambda: not any(group_members(g) for g in guards) and not any(alive(p) for p in members)
             and not processes_in(clone), within, "the attempt's processes to die")
    before = snapshot(clone)
    time.sleep(2)
    written = {name: st for name, st in snapshot(clone).items() if before.get(name) != st}
    assert not written, f"written in the clone after its processes died: {sorted(written)[:5]}"
