"""One experiment of a sweep, on whatever machine runs it: the engine-neutral part of `gps sweep`.

`run_experiment(experiment, origin, workdir)` is all an engine calls: Ray's
tasks (`stages.sweep.ray_engine`), `gps sweep --engine inline` (one process, or one
experiment of a Slurm job array with `--index`), or any other scheduler that
can run a Python function or a command on a machine with the project
installed. The git remote and the DVC remote are the record of what is done,
so engines keep no state of their own and an experiment lands at most once and
never without its data:

1. skip it if the git remote already holds its experiment ref;
2. make a fresh full clone at the sweep's commit (DVC's lock forbids sharing a
   workspace between runs) and write the experiment's params.yaml and
   pipeline files into it;
3. `dvc exp run -n NAME -S ...` under the experiment's fixed name;
4. `dvc push` the run's data to the DVC remote, then `git push` the experiment
   ref (DVC's refs are plain git refs; `dvc exp pull` fetches them);
5. read the ref on the git remote: this attempt's commit means `landed`;
   another attempt's means `superseded` (the push is never forced, so git
   refuses to replace it; `dvc exp push` would only warn, exit 0). The remote's
   ref decides, not the push's exit status: a twin attempt that made the same
   commit and pushed it at the same moment is refused the ref's lock, yet landed.

Every command runs under `group_guard.py`, in a process group of its own that is
killed when this process or the guard dies, so a killed attempt leaves no stage
behind. The clone is removed afterwards, whatever happened; if this process is
killed too (SIGKILL, a node lost), the attempt's files stay until the next
sweep on that machine, or `gps sweep --clean`, removes them (`remove_leftovers`):
each attempt's marker names the process that runs it, and only attempts whose
process is gone are removed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from stages.process_clock import running_here, start_ticks

GUARD = Path(__file__).with_name("group_guard.py")
LOG_TAIL_LINES = 15
# The warm worker (stages.worker.server) of an experiment's clone serves no other run: let it go soon.
WORKER_IDLE_SECONDS = "20"


@dataclass(frozen=True)
class Experiment:
    """One run of a sweep: its fixed name, the files that make it, and its `dvc exp run -S` settings.

    files: {path relative to the project root: text}: params.yaml and every
    dvc.yaml of the pipeline, written over the sweep commit's own.
    """

    name: str
    task: str
    method: str
    seed: int
    sets: tuple[str, ...]
    files: dict[str, str] = field(repr=False, compare=False)


@dataclass(frozen=True)
class Origin:
    """Where a sweep's code comes from and its results go: a git remote (URL) and a commit on it.

    The DVC remote is the commit's own default remote (.dvc/config).
    """

    git_url: str
    commit: str

    @property
    def ref_prefix(self) -> str:
        """DVC's experiment refs of this baseline commit: refs/exps/<sha[:2]>/<sha[2:]>/<name>."""
        return f"refs/exps/{self.commit[:2]}/{self.commit[2:]}/"

    def ref(self, name: str) -> str:
        return self.ref_prefix + name


@dataclass(frozen=True)
class Outcome:
    """What became of an experiment: `landed` (this attempt's ref is on the remote), `skipped` (the
    remote held it already) or `superseded` (another attempt's ref won; this one's was dropped)."""

    name: str
    status: str
    commit: str
    host: str
    seconds: dict[str, float]

    def line(self) -> str:
        if self.status == "skipped":
            return f"{self.name}: already on the remote ({self.commit[:7]}), skipped"
        parts = ", ".join(f"{k} {v:.1f}" for k, v in self.seconds.items() if k != "total")
        what = (f"landed as {self.commit[:7]}" if self.status == "landed"
                else f"superseded by {self.commit[:7]} (another attempt landed first)")
        return f"{self.name}: {what} on {self.host} in {self.seconds['total']:.1f} s ({parts})"


class ExperimentFailed(Exception):
    """An attempt failed: which experiment, at which step, and the end of that step's output."""

    def __init__(self, name: str, step: str, detail: str):
        super().__init__(f"{name}: {step} failed: {detail}")
        self.name, self.step, self.detail = name, step, detail

    def __reduce__(self):  # engines pass it between processes
        return type(self), (self.name, self.step, self.detail)


def executable(name: str) -> str:
    """A command installed next to this Python (the project's environment), else the one on PATH."""
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else name


def guarded(cmd: list[str], cwd: Path | None = None, env: dict[str, str] | None = None,
            log: Path | None = None) -> subprocess.CompletedProcess:
    """Run `cmd` in a process group of its own that dies with this process; output to `log` (or captured)."""
    full = [sys.executable, "-I", "-S", str(GUARD), str(os.getpid()), *cmd]
    if log is None:
        return subprocess.run(full, cwd=cwd, env=env, capture_output=True, text=True, start_new_session=True)
    with open(log, "w") as out:
        proc = subprocess.run(full, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return subprocess.CompletedProcess(full, proc.returncode, log.read_text(errors="replace"), "")


def default_workdir() -> Path:
    """Where a machine's attempts go without --workdir: its temporary folder's gps-sweep/."""
    return Path(tempfile.gettempdir()) / "gps-sweep"


@dataclass(frozen=True)
class AttemptFiles:
    """What one attempt writes beside the others in the work folder, all named after `<experiment>-<id>`.

    clone: the fresh clone; marker: `.json`, which process runs the attempt; log: `.log`, the
    run's output; worker: the folder of the socket of the clone's warm `gps` worker, `<id>.w`
    (short, as a Unix socket's path has at most 107 bytes; beside the clone unless the work
    folder's own path is too long for that, then in the system's temporary folder).
    """

    clone: Path
    worker: Path

    @classmethod
    def new(cls, workdir: Path, experiment: str) -> "AttemptFiles":
        attempt_id = uuid.uuid4().hex[:8]
        worker = workdir / f"{attempt_id}.w"
        if len(os.fsencode(worker)) + len("/0123456789abcdef0123.sock") > 107:  # stages.worker.client.socket_path
            worker = Path(tempfile.gettempdir()) / f"gps-sweep-worker-{attempt_id}"
        return cls(workdir / f"{experiment}-{attempt_id}", worker)

    @property
    def marker(self) -> Path:
        return self.clone.parent / (self.clone.name + ".json")  # not with_suffix: names may hold a "." (kl_step=0.5)

    @property
    def log(self) -> Path:
        return self.clone.parent / (self.clone.name + ".log")

    def remove(self) -> None:
        """The clone and worker folder first, the marker last: a removal cut short is found again."""
        for folder in (self.clone, self.worker):
            shutil.rmtree(folder, ignore_errors=True)
        for path in (self.log, self.marker):
            path.unlink(missing_ok=True)

    def size(self) -> int:
        total = 0
        for path in (self.clone, self.worker, self.log, self.marker):
            for f in (path.rglob("*") if path.is_dir() else [path]):
                try:
                    total += f.lstat().st_size
                except OSError:
                    pass
        return total


@dataclass(frozen=True)
class Leftover:
    """An attempt found in a work folder whose process is gone: its files and their size in bytes."""

    experiment: str
    files: AttemptFiles
    size: int


def leftovers(workdir: Path) -> tuple[list[Leftover], int]:
    """The attempts in `workdir` whose process is gone, and how many others still run (here or elsewhere)."""
    found, running = [], 0
    for marker_path in sorted(workdir.glob("*.json")) if workdir.is_dir() else []:
        try:
            marker = json.loads(marker_path.read_text())
            files = AttemptFiles(Path(marker["clone"]), Path(marker["worker"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not an attempt's marker
        if files.marker != marker_path:
            continue  # a marker moved here from elsewhere: its files are not these
        if running_here(marker.get("hostname"), marker.get("pid"), marker.get("start")) is not False:
            running += 1
            continue
        found.append(Leftover(marker.get("experiment", files.clone.name), files, files.size()))
    return found, running


def remove_leftovers(workdir: Path) -> list[Leftover]:
    """Remove the attempts in `workdir` whose process is gone (never one that still runs); what was removed."""
    found, _ = leftovers(workdir)
    for leftover in found:
        leftover.files.remove()
    return found


def leftover_text(found: list[Leftover]) -> str:
    """'3 clones, 272.4 MB'."""
    return f"{len(found)} clone{'s' * (len(found) != 1)}, {sum(f.size for f in found) / 1e6:.1f} MB"


def clean_here(workdir: Path | None, echo: Callable[[str], None]) -> list[Leftover]:
    """Remove what killed attempts left in this machine's work folder, and say so (if anything)."""
    folder = workdir or default_workdir()
    removed = remove_leftovers(folder)
    if removed:
        echo(f"removed the leftovers of killed attempts from {folder}: {leftover_text(removed)} "
             f"({', '.join(sorted({r.experiment for r in removed}))})")
    return removed


def git_identity_problem() -> str | None:
    """Why DVC could not commit an experiment on this machine, or None.

    DVC commits each experiment with the author and committer of git's user.name and
    user.email (global or system configuration; a fresh clone has no local one), or of
    GIT_AUTHOR_NAME/EMAIL and GIT_COMMITTER_NAME/EMAIL.
    """
    config: dict[str, str] = {}
    for scope in ("--system", "--global"):  # the global configuration wins
        out = subprocess.run(["git", "config", scope, "--get-regexp", r"^user\.(name|email)$"],
                             capture_output=True, text=True).stdout
        for line in out.splitlines():
            key, _, value = line.partition(" ")
            config[key.lower()] = value
    for role in ("AUTHOR", "COMMITTER"):
        for item in ("name", "email"):
            if not (os.environ.get(f"GIT_{role}_{item.upper()}") or config.get(f"user.{item}")):
                return (f"git has no user name and email on {socket.gethostname()}, and DVC commits each experiment: "
                        "git config --global user.name NAME; git config --global user.email EMAIL")
    return None


def _status_text(code: int) -> str:
    """What an exit status of a guarded command says when a signal ended it."""
    if code < 0:
        return f"its process-group guard was killed ({signal.Signals(-code).name})"
    if code > 128 and code - 128 in signal.valid_signals():
        return f"killed by {signal.Signals(code - 128).name}"
    return ""


def _tail(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return " | ".join(lines[-LOG_TAIL_LINES:]) or "(no output)"


def remote_experiments(origin: Origin) -> dict[str, str]:
    """{experiment name: commit} of the sweep commit's experiment refs on the git remote."""
    proc = subprocess.run(["git", "ls-remote", origin.git_url, origin.ref_prefix + "*"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise ExperimentFailed("(sweep)", f"git ls-remote {origin.git_url}", _tail(proc.stderr))
    refs = {}
    for line in proc.stdout.splitlines():
        sha, _, ref = line.partition("\t")
        if ref.startswith(origin.ref_prefix):
            refs[ref[len(origin.ref_prefix):]] = sha
    return refs


def run_environment(clone: Path) -> dict[str, str]:
    """The stages' environment: the clone's own code first on the path, this Python's commands on PATH."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(clone), *filter(None, [env.get("PYTHONPATH")])])
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["DVC_NO_ANALYTICS"] = "1"
    env.setdefault("GPS_WORKER_IDLE", WORKER_IDLE_SECONDS)
    env.pop("GPS_PROGRESS", None)
    return env


def write_experiment_files(clone: Path, experiment: Experiment) -> None:
    """Replace the commit's params.yaml and pipeline files by the experiment's, staged for `dvc exp run`."""
    shutil.rmtree(clone / "pipelines", ignore_errors=True)
    for rel, text in experiment.files.items():
        path = clone / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    subprocess.run(["git", "add", "-A", "--", "params.yaml", "dvc.yaml", "pipelines"], cwd=clone, check=True,
                   capture_output=True)


def landing_status(ours: str, theirs: str | None) -> str | None:
    """What an attempt's ref push came to, read from the remote's ref after it: `landed` if the remote
    holds this attempt's commit, `superseded` if it holds another, None (failed) if it holds none.

    Not from git push's exit code: two attempts that made the same commit (runs are deterministic and
    DVC's commit time is in whole seconds) and push it at the same moment race for the ref's lock, and
    the loser is refused ("cannot lock ref ... reference already exists") although the remote holds
    its very commit: that attempt landed too.
    """
    if theirs is None:
        return None
    return "landed" if theirs == ours else "superseded"


def run_experiment(experiment: Experiment, origin: Origin, workdir: str | Path | None = None,
                   where: str = "") -> Outcome:
    """Run one experiment in a fresh clone and land it on the remotes (see the module's docstring).

    workdir: where the clone goes (default: `default_workdir()`).
    where: the engine's name for the place it runs (Ray's node), shown with the host.
    While the attempt runs, its marker beside the clone (`AttemptFiles`) says
    which process and place run it, and its log holds the run's output.
    Raises ExperimentFailed, naming the step, when a step fails.
    """
    started = time.perf_counter()
    host = socket.gethostname() + (f" ({where})" if where else "")
    done = remote_experiments(origin)
    if experiment.name in done:
        return Outcome(experiment.name, "skipped", done[experiment.name], host, {"total": time.perf_counter() - started})
    problem = git_identity_problem()
    if problem:
        raise ExperimentFailed(experiment.name, "git identity", problem)

    workdir = Path(workdir or default_workdir())
    workdir.mkdir(parents=True, exist_ok=True)
    files = AttemptFiles.new(workdir, experiment.name)
    attempt = files.clone
    marker = {"experiment": experiment.name, "commit": origin.commit, "pid": os.getpid(), "start": start_ticks(),
              "hostname": socket.gethostname(), "host": host, "where": where, "clone": str(attempt),
              "worker": str(files.worker)}
    tmp = files.marker.with_name(f".{files.marker.name}.tmp")
    tmp.write_text(json.dumps(marker))
    os.replace(tmp, files.marker)  # whole or absent: a sweep starting elsewhere reads markers
    seconds: dict[str, float] = {}

    def step(label: str, what: str, cmd: list[str], cwd: Path | None = None, env: dict | None = None,
             check: bool = True) -> subprocess.CompletedProcess:
        t = time.perf_counter()
        proc = guarded(cmd, cwd, env, log=files.log if label == "run" else None)
        seconds[label] = seconds.get(label, 0.0) + time.perf_counter() - t
        if check and proc.returncode != 0:
            signal_text = _status_text(proc.returncode)
            raise ExperimentFailed(experiment.name, what, (f"{signal_text}: " if signal_text else "")
                                   + _tail(proc.stdout + proc.stderr))
        return proc

    try:
        # --no-local: a remote on this machine's disk is copied like a remote one, never hard-linked
        # (git's hard links race with another attempt's push into the remote: "hardlink different from source")
        step("clone", "git clone", ["git", "clone", "-q", "--no-local", "--no-checkout", origin.git_url, str(attempt)])
        step("clone", f"git checkout {origin.commit[:7]}", ["git", "checkout", "-q", "--detach", origin.commit], attempt)
        write_experiment_files(attempt, experiment)
        env = run_environment(attempt)
        env["GPS_WORKER_DIR"] = str(files.worker)  # the clone's own worker, removed with the attempt
        dvc = executable("dvc")
        sets = [arg for s in experiment.sets for arg in ("-S", s)]
        step("run", "dvc exp run", [dvc, "exp", "run", "-n", experiment.name, *sets], attempt, env)
        step("data push", "dvc push", [dvc, "push"], attempt, env)
        # The ref by plain git: never forced, so git refuses to replace another attempt's ref
        # of this name (dvc exp push would only warn).
        ref = origin.ref(experiment.name)
        ours = subprocess.run(["git", "rev-parse", "--verify", "-q", ref], cwd=attempt, capture_output=True,
                              text=True).stdout.strip()
        if not ours:
            raise ExperimentFailed(experiment.name, "dvc exp run", f"it made no {ref}")
        pushed = step("ref push", "git push", ["git", "push", "-q", "origin", f"{ref}:{ref}"], attempt, check=False)
        theirs = remote_experiments(origin).get(experiment.name)
        status = landing_status(ours, theirs)
        if status is None:
            raise ExperimentFailed(experiment.name, "git push",
                                   _tail(pushed.stdout + pushed.stderr) if pushed.returncode else f"{ref} is not on the remote after the push")
        seconds["total"] = time.perf_counter() - started
        return Outcome(experiment.name, status, theirs, host, seconds)
    finally:
        files.remove()
