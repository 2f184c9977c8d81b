"""gps sweep's landing engines without Ray: the checks on the sweep's origin, --status, the
process-group guard, and the inline engine on a real git remote and a real DVC remote."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from remotes import (attempt_processes, attempts, fresh_clone_experiments, gps_sweep, group_members, landing_project,
                     nothing_of_the_attempt_left, remote_refs, sweep, wait_for)
from stages.main import registered_app

app = registered_app()
from stages.sweep.job import Experiment, ExperimentFailed, landing_status
from stages.sweep.remote import Ledger, dvc_default_remote, status_rows
from test_dvc_pipeline import BIN, env, run
from test_sweep import make_repo

runner = CliRunner()
GIT = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]


def test_dvc_default_remote_of_a_config_text():
    text = "[core]\n    remote = store\n    autostage = false\n['remote \"store\"']\n    url = /data/store\n"
    assert dvc_default_remote(text) == ("store", "/data/store")
    assert dvc_default_remote("[core]\n    remote = other\n['remote \"store\"']\n    url = /x\n") is None
    assert dvc_default_remote("[core]\n    autostage = false\n") is None


def sweep_output(repo: Path, monkeypatch, *args: str):
    monkeypatch.chdir(repo)
    return runner.invoke(app, ["sweep", "--tasks", "obstacle", "--methods", "on_classic", "--seeds", "0", *args])


def test_a_sweep_that_workers_could_not_run_or_land_is_refused_in_one_line(tmp_path, monkeypatch):
    landing = landing_project(tmp_path)
    cases = []
    result = sweep_output(landing.repo, monkeypatch, "--status", "--git-remote", "upstream")
    cases.append((result, "--git-remote upstream: no such git remote"))
    (landing.repo / "stages" / "sweep" / "queue.py").write_text((landing.repo / "stages" / "sweep" / "queue.py").read_text() + "\n# edit\n")
    cases.append((sweep_output(landing.repo, monkeypatch, "--engine", "inline"), "differ from HEAD"))
    run(["git", "checkout", "-q", "--", "stages"], landing.repo)
    run([*GIT, "commit", "-q", "--allow-empty", "-m", "not pushed"], landing.repo)
    cases.append((sweep_output(landing.repo, monkeypatch, "--engine", "inline"), "is not on the git remote origin"))
    run([str(BIN / "dvc"), "remote", "default", "--unset"], landing.repo)
    run([*GIT, "commit", "-qam", "no default DVC remote"], landing.repo)
    run(["git", "push", "-q", "origin", "HEAD:refs/heads/main"], landing.repo)
    cases.append((sweep_output(landing.repo, monkeypatch, "--engine", "inline"), "names no default DVC remote"))
    run([str(BIN / "dvc"), "remote", "add", "-f", "-d", "rel", "../store"], landing.repo)
    (landing.repo / ".dvc" / "config").write_text((landing.repo / ".dvc" / "config").read_text()
                                                    .replace(str(landing.repo.parent / "store"), "../store"))
    run([*GIT, "commit", "-qam", "a relative DVC remote"], landing.repo)
    run(["git", "push", "-q", "origin", "HEAD:refs/heads/main"], landing.repo)
    cases.append((sweep_output(landing.repo, monkeypatch, "--engine", "inline"), "relative url"))
    cases.append((sweep_output(landing.repo, monkeypatch, "--address", "10.0.0.1:6379"), "--address goes with --engine ray"))
    cases.append((sweep_output(landing.repo, monkeypatch, "--engine", "inline", "-j", "2"), "--jobs goes with --engine queue"))
    cases.append((sweep_output(landing.repo, monkeypatch, "--engine", "inline", "--index", "1"),
                  "--index is 1; the sweep has 1 experiments (0-0)"))
    cases.append((sweep_output(landing.repo, monkeypatch, "--engine", "ray", "--index", "0"), "--index goes with"))
    cases.append((sweep_output(landing.repo, monkeypatch, "--engine", "slurm"), "--engine is 'slurm'"))
    for result, words in cases:
        assert result.exit_code == 2, result.output
        assert words in result.output and len(result.output.strip().splitlines()) == 1, result.output
    assert remote_refs(landing) == {}


def test_engine_ray_without_ray_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError, as without the extra
    repo = make_repo(tmp_path / "repo", with_dvc=False)
    result = sweep_output(repo, monkeypatch, "--engine", "ray")
    assert result.exit_code == 2
    assert result.output.strip() == "gps sweep: error: --engine ray needs Ray, an optional extra: pip install '.[ray]'"


def test_status_reads_done_from_the_remote_and_the_rest_from_the_ledger(tmp_path):
    names = [f"obstacle-on_classic-s{s}" for s in range(6)]
    exps = [Experiment(n, "obstacle", "on_classic", s, (), {}) for s, n in enumerate(names)]
    ledger = Ledger(tmp_path, "c0ffee")
    ledger.claim("ray")
    for name, state in zip(names[1:5], ("running", "failed", "running", "interrupted")):
        ledger.mark(name, state, "dvc exp run failed: boom" if state == "failed" else "")
    ledger.mark(names[0], "failed", "an earlier attempt")  # the remote has it now: done wins
    rows = status_rows(exps, {names[0]: "a" * 40, names[3]: "b" * 40}, Ledger(tmp_path, "c0ffee"))
    assert [r[1] for r in rows] == ["done", "running", "failed", "done", "interrupted", "missing"]
    assert rows[2][2] == "dvc exp run failed: boom"
    # the driver dies: what it had running is interrupted
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    ledger.data["driver"]["pid"] = dead.pid
    ledger.save()
    rows = status_rows(exps, {}, Ledger(tmp_path, "c0ffee"))
    assert rows[1][1] == "interrupted" and f"driver pid {dead.pid} is gone" in rows[1][2]


def test_experiment_failed_survives_pickling():
    import pickle

    exc = pickle.loads(pickle.dumps(ExperimentFailed("peg-badmm-s0", "dvc exp run", "ERROR: boom")))
    assert (exc.name, exc.step, exc.detail) == ("peg-badmm-s0", "dvc exp run", "ERROR: boom")
    assert str(exc) == "peg-badmm-s0: dvc exp run failed: ERROR: boom"


GUARDED_PARENT = """
import sys, time
from pathlib import Path
from stages.sweep.job import guarded
# a stage-like grandchild that would write for a long while
guarded(["sh", "-c", "echo $$ > {pids}.sh; sleep 60 & echo $! > {pids}.bg; while true; do date >> {out}; sleep 0.1; done"])
"""


def test_the_guard_kills_the_whole_group_when_its_caller_is_killed(tmp_path):
    pids, out = tmp_path / "pids", tmp_path / "out.txt"
    parent = subprocess.Popen([sys.executable, "-c", GUARDED_PARENT.format(pids=pids, out=out)], env=env())
    wait_for(lambda: Path(f"{pids}.bg").exists() and out.exists(), 20, "the guarded command to start")
    children = [int(Path(f"{pids}.{k}").read_text()) for k in ("sh", "bg")]
    parent.send_signal(signal.SIGKILL)
    parent.wait()

    def gone(pid: int) -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
        except OSError:
            return True
    wait_for(lambda: all(gone(p) for p in children), 5, "the group to die")
    size = out.stat().st_size
    time.sleep(0.5)
    assert out.stat().st_size == size  # nothing writes afterwards


def start_guarded(tmp_path: Path, script: str) -> tuple[subprocess.Popen, Path]:
    """The guard on `sh -c script` (which may write pids to files in tmp_path), started as job.guarded does."""
    from stages.sweep.job import GUARD

    out = tmp_path / "out.txt"
    guard = subprocess.Popen([sys.executable, "-I", "-S", str(GUARD), str(os.getpid()), "sh", "-c",
                              script.format(tmp=tmp_path, out=out)], start_new_session=True)
    return guard, out


def test_the_guard_killed_with_sigkill_takes_its_group_along(tmp_path):
    """Ray SIGKILLs a dying worker's direct children, which is the guard: its watchman kills the group."""
    guard, out = start_guarded(tmp_path, "sleep 60 & echo $! > {tmp}/bg; while true; do date >> {out}; sleep 0.1; done")
    wait_for(lambda: (tmp_path / "bg").exists() and out.exists(), 20, "the guarded command to start")
    assert len(group_members(guard.pid)) >= 4  # the guard, its watchman, sh, sleep (and date at times)
    guard.kill()
    guard.wait()
    wait_for(lambda: not group_members(guard.pid), 5, "the group to die")
    size = out.stat().st_size
    time.sleep(0.5)
    assert out.stat().st_size == size  # nothing writes afterwards


def test_what_the_command_leaves_running_in_its_group_dies_when_it_ends(tmp_path):
    """The command's status is passed on, and a process it left behind in the group (as the warm gps
    worker of an experiment's clone stays there) is killed."""
    guard, out = start_guarded(tmp_path, "sleep 60 & echo $! > {tmp}/bg; exit 5")
    assert guard.wait(timeout=20) == 5
    left = int((tmp_path / "bg").read_text())
    wait_for(lambda: not group_members(guard.pid), 5, "the group to die")
    assert not Path(f"/proc/{left}").exists() or "Z" == Path(f"/proc/{left}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_the_guard_passes_the_exit_status_on(tmp_path):
    from stages.sweep.job import guarded

    assert guarded(["sh", "-c", "echo hi; exit 3"]).returncode == 3
    assert guarded(["sh", "-c", "kill -TERM $$"]).returncode == 128 + signal.SIGTERM
    assert guarded(["echo", "out"]).stdout == "out\n"


@pytest.mark.slow
def test_inline_sweep_lands_each_experiment_once_and_a_rerun_runs_nothing(tmp_path):
    landing = landing_project(tmp_path)
    one = gps_sweep(landing, "--methods", "on_classic,badmm", "--seeds", "0", "--engine", "inline", "--index", "1")
    assert one.returncode == 0, one.stdout + one.stderr
    assert "1 experiments of" in one.stdout and "obstacle-badmm-s0: landed as " in one.stdout
    assert set(remote_refs(landing)) == {"obstacle-badmm-s0"}
    status = gps_sweep(landing, "--methods", "on_classic,badmm", "--seeds", "0", "--status")
    assert status.stdout.splitlines()[0].endswith(": 1 done, 1 missing"), status.stdout
    both = gps_sweep(landing, "--methods", "on_classic,badmm", "--seeds", "0", "--engine", "inline")
    assert both.returncode == 0, both.stdout + both.stderr
    assert "1 already on origin, 1 to run (inline)" in both.stdout and "obstacle-on_classic-s0: landed" in both.stdout
    refs = remote_refs(landing)
    again = gps_sweep(landing, "--methods", "on_classic,badmm", "--seeds", "0", "--engine", "inline")
    assert "2 already on origin, 0 to run" in again.stdout and remote_refs(landing) == refs
    assert not list((Path(os.environ.get("TMPDIR", "/tmp")) / "gps-sweep").glob("obstacle-*-s0-*"))  # clones removed
    runs, failed = fresh_clone_experiments(landing, tmp_path / "fresh")
    assert runs == ["obstacle-badmm-s0", "obstacle-on_classic-s0"] and failed == []


# Another attempt's ref lands on the remote while this attempt's push is under way: the remote's
# pre-receive hook runs after this push's objects arrived and before its ref is written, so a ref it
# writes there is the other attempt's, and git then refuses this push ("cannot lock ref ... reference
# already exists"), as it does when two attempts really push at the same moment.
OTHER_ATTEMPT_LANDS_FIRST = """#!/bin/sh
while read old new ref; do
  case "$ref" in
    */obstacle-on_classic-s0) commit="$new" ;;                    # the same commit: a twin attempt
    *) commit=$(git rev-parse refs/heads/main) ;;                 # another commit
  esac
  env -u GIT_QUARANTINE_PATH git update-ref "$ref" "$commit"
done
"""


@pytest.mark.slow
def test_a_refused_push_is_landed_when_the_remote_holds_this_commit_and_superseded_when_another(tmp_path):
    landing = landing_project(tmp_path)
    hook = landing.remote / "hooks" / "pre-receive"
    hook.write_text(OTHER_ATTEMPT_LANDS_FIRST)
    hook.chmod(0o755)
    main = run(["git", "rev-parse", "HEAD"], landing.repo).stdout.strip()
    out = gps_sweep(landing, "--methods", "on_classic", "--seeds", "0,1", "--engine", "inline")
    assert out.returncode == 0, out.stdout + out.stderr
    refs = remote_refs(landing)
    assert refs["obstacle-on_classic-s1"] == main
    assert f"obstacle-on_classic-s0: landed as {refs['obstacle-on_classic-s0'][:7]} " in out.stdout, out.stdout
    assert f"obstacle-on_classic-s1: superseded by {main[:7]} " in out.stdout, out.stdout


def test_landing_status_reads_the_remote_not_the_push():
    assert landing_status("abc", "abc") == "landed"
    assert landing_status("abc", "def") == "superseded"
    assert landing_status("abc", None) is None


@pytest.mark.slow
def test_of_two_attempts_at_once_one_lands_and_the_other_sees_it_lost(tmp_path):
    """Two drivers start the same experiment together: both run it, git takes the first ref, and
    the second attempt's unforced push is refused: it reports itself superseded. Runs are
    deterministic and DVC's experiment commit is made of the parent, the files, a message naming
    their hash and a time in whole seconds, so two attempts finishing within the same second make
    the same commit: then both say landed, of one and the same ref."""
    landing = landing_project(tmp_path)
    args = ["--methods", "on_classic", "--seeds", "3", "--engine", "inline"]
    procs = [subprocess.Popen(sweep(*args, "--workdir", str(tmp_path / f"w{i}")), cwd=landing.repo, env=env(), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    lines = [line for out in outs for line in out.splitlines() if line.startswith("obstacle-on_classic-s3:")]
    refs = remote_refs(landing)
    assert list(refs) == ["obstacle-on_classic-s3"]
    winner = refs["obstacle-on_classic-s3"][:7]
    said = sorted(line.split(":")[1].split()[0] for line in lines)
    if said == ["landed", "landed"]:  # the same commit, finished within one second
        assert all(f"landed as {winner} " in line for line in lines), outs
    else:
        assert said == ["landed", "superseded"], outs
        assert any(f"superseded by {winner}" in line for line in lines), outs


def start_inline(landing, workdir: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(sweep("--methods", "on_classic", *args, "--engine", "inline", "--workdir", str(workdir)),
                            cwd=landing.repo, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def stage_under_way(workdir: Path) -> dict:
    """The marker of the attempt in `workdir` once its pipeline's first stage has written."""
    marker = wait_for(lambda: attempts(workdir), 60, "an attempt to start")[0]
    wait_for(lambda: (Path(marker["clone"]) / "data" / "init").exists(), 120, "the run's first stage")
    return marker


@pytest.mark.slow
def test_the_driver_killed_leaves_no_process_and_the_rerun_removes_its_clone(tmp_path):
    """SIGKILL to the inline driver (the attempt's own process): its groups die within seconds and
    the clone stops changing; --status counts the clone's disk; the same command again removes it
    and lands the experiment."""
    landing = landing_project(tmp_path)
    work = tmp_path / "work"
    driver = start_inline(landing, work, "--seeds", "8")
    marker = stage_under_way(work)
    guards, members = attempt_processes(marker)
    assert guards and len(members) >= 3, (guards, members)  # the guard, its watchman, dvc exp run, ...
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    nothing_of_the_attempt_left(marker, guards, members, within=5)

    status = gps_sweep(landing, "--methods", "on_classic", "--seeds", "8", "--status", "--workdir", str(work))
    assert "interrupted" in status.stdout and f"{work} on this machine: 1 clone, " in status.stdout, status.stdout
    again = gps_sweep(landing, "--methods", "on_classic", "--seeds", "8", "--engine", "inline", "--workdir", str(work))
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"removed the leftovers of killed attempts from {work}: 1 clone, " in again.stdout, again.stdout
    assert "obstacle-on_classic-s8: landed as " in again.stdout
    assert not list(work.iterdir()) and not Path(marker["worker"]).exists()
    status = gps_sweep(landing, "--methods", "on_classic", "--seeds", "8", "--status", "--workdir", str(work))
    assert "no leftovers of killed attempts" in status.stdout, status.stdout


@pytest.mark.slow
def test_the_guard_killed_fails_the_attempt_and_leaves_no_process(tmp_path):
    landing = landing_project(tmp_path)
    work = tmp_path / "work"
    driver = start_inline(landing, work, "--seeds", "9")
    marker = stage_under_way(work)
    guards, members = attempt_processes(marker)
    assert len(guards) == 1, guards  # dvc exp run's
    os.kill(next(iter(guards)), signal.SIGKILL)
    nothing_of_the_attempt_left(marker, guards, members, within=5)
    out = driver.communicate(timeout=60)[0]
    assert driver.returncode == 1, out
    assert "obstacle-on_classic-s9: FAILED: obstacle-on_classic-s9: dvc exp run failed: its process-group guard was " \
           "killed (SIGKILL)" in out, out
    assert not list(work.iterdir())  # the attempt removed its clone, as after any failure
    assert remote_refs(landing) == {}


def test_a_machine_without_git_identity_is_told_once_before_any_clone(tmp_path):
    landing = landing_project(tmp_path)
    home = tmp_path / "home"
    home.mkdir()
    bare = {**env(), "HOME": str(home), "XDG_CONFIG_HOME": str(home), "GIT_CONFIG_NOSYSTEM": "1"}
    for key in ("GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL"):
        bare.pop(key, None)
    proc = subprocess.run(sweep("--methods", "on_classic,badmm", "--seeds", "0-2", "--engine", "inline", "--workdir",
                                str(tmp_path / "work")), cwd=landing.repo, env=bare, capture_output=True, text=True)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.count("git has no user name and email") == 1 and "git config --global user.name" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert not (tmp_path / "work").exists()


def test_only_attempts_whose_process_is_gone_are_removed(tmp_path, monkeypatch):
    """A running attempt's files (this process's marker), an attempt on another host (a shared work
    folder) and files that are no attempt's stay; a dead attempt's clone, log, worker folder and marker go."""
    import json
    import socket

    from stages.process_clock import start_ticks
    from stages.sweep.job import AttemptFiles, leftovers

    dead_pid = subprocess.Popen(["true"])
    dead_pid.wait()

    def attempt(name: str, **marker) -> AttemptFiles:
        files = AttemptFiles.new(tmp_path / "work", name)
        (files.clone / "data").mkdir(parents=True)
        (files.clone / "data" / "x.h5").write_bytes(b"\0" * 1000)
        files.worker.mkdir()
        files.log.write_text("log\n")
        files.marker.write_text(json.dumps({"experiment": name, "clone": str(files.clone), "worker": str(files.worker),
                                            "hostname": socket.gethostname(), **marker}))
        return files

    running = attempt("peg-badmm-kl_step=0.5-s1", pid=os.getpid(), start=start_ticks())
    dead = attempt("peg-badmm-kl_step=0.5-s2", pid=dead_pid.pid, start=start_ticks(os.getpid()))
    elsewhere = attempt("peg-badmm-s3", pid=dead_pid.pid, start=1)
    elsewhere.marker.write_text(elsewhere.marker.read_text().replace(socket.gethostname(), "other-host"))
    reused = attempt("peg-badmm-s4", pid=os.getpid(), start=start_ticks() - 1)  # the pid now belongs to another process
    (tmp_path / "work" / "notes.json").write_text("{}")

    found, still = leftovers(tmp_path / "work")
    assert sorted(f.experiment for f in found) == ["peg-badmm-kl_step=0.5-s2", "peg-badmm-s4"] and still == 2
    assert all(f.size > 1000 for f in found)
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["sweep", "--clean", "--workdir", str(tmp_path / "work")])
    assert result.exit_code == 0, result.output
    assert "removed the leftovers of killed attempts from" in result.output and ": 2 clones, 0.0 MB (" in result.output
    for files in (dead, reused):
        assert not any(p.exists() for p in (files.clone, files.worker, files.log, files.marker))
    for files in (running, elsewhere):
        assert all(p.exists() for p in (files.clone, files.worker, files.log, files.marker))
    assert (tmp_path / "work" / "notes.json").exists()
    again = runner.invoke(app, ["sweep", "--clean", "--workdir", str(tmp_path / "work")])
    assert again.exit_code == 0 and "no leftovers of killed attempts" in again.output, again.output
    for files in (running, elsewhere):
        files.remove()
