"""The warm worker behind `gps` (stages/worker/client.py, stages/worker/server.py), through the real console script.

What a user relies on: a command served by the worker writes the same bytes, prints the same
lines and exits with the same status as one run in its own process; killing or interrupting
the `gps` process stops the command; a code change gets a new worker; an idle worker exits.
(test_determinism.py runs a whole pipeline through the worker and compares every artifact.)
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from conftest import small_params
from small_runs import obstacle_run
from stages.worker import client as launch

BIN = Path(sys.executable).parent
INIT_OUTS = ("controllers.h5", "policy.h5", "step.h5")


@pytest.fixture
def wdir(tmp_path) -> Path:
    folder = tmp_path / "workers"
    folder.mkdir(mode=0o700)
    yield folder
    launch.stop_workers(folder)


def cli_env(wdir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "GPS_WORKER"}
    env.update({"GPS_WORKER_DIR": str(wdir), "GPS_WORKER_IDLE": "60", **extra})
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def gps_cli(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "gps"), *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)


def served(wdir: Path) -> list[str]:
    """The commands the workers in wdir have served (their log lines)."""
    return [line for log in wdir.glob("*.log") for line in log.read_text().splitlines() if " gps " in line]


def servers(wdir: Path) -> list[psutil.Process]:
    """The workers of wdir (not their children, which have the same command line)."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if "stages.worker.server" in cmd and str(wdir) in cmd:
            found.append(p)
    pids = {p.pid for p in found}
    return [p for p in found if p.ppid() not in pids]


def wait_for(predicate, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def init_args(out: str) -> list[str]:
    return ["init", "--controllers-out", f"{out}/controllers.h5", "--policy-out", f"{out}/policy.h5",
            "--step-out", f"{out}/step.h5"]


@pytest.fixture
def ws(tmp_path) -> Path:
    d = tmp_path / "ws"
    d.mkdir()
    (d / "params.yaml").write_text(yaml.safe_dump(small_params()))
    return d


def test_a_served_command_writes_and_prints_what_its_own_process_does(ws, wdir):
    alone = gps_cli(init_args("alone"), ws, cli_env(wdir, GPS_WORKER="0"))
    assert alone.returncode == 0, alone.stderr
    assert not list(wdir.iterdir()), "GPS_WORKER=0 must not start a worker"
    first = gps_cli(init_args("first"), ws, cli_env(wdir))  # starts the worker, runs here
    assert first.returncode == 0, first.stderr
    wait_for(lambda: list(wdir.glob("*.sock")), 30, "the worker's socket")
    second = gps_cli(init_args("second"), ws, cli_env(wdir))
    assert second.returncode == 0, second.stderr
    assert [line.split(" ", 1)[1] for line in served(wdir)] == [f"gps {' '.join(init_args('second'))} (in {ws})"]
    for name in INIT_OUTS:  # relative paths resolved in the client's working directory
        assert (ws / "second" / name).read_bytes() == (ws / "alone" / name).read_bytes(), name
    # same output streams: stdout empty, stderr the stage's summary line
    assert second.stdout == alone.stdout
    assert second.stderr.startswith("gps init: done in ") and second.stderr.count("\n") == alone.stderr.count("\n")


def test_the_worker_holds_none_of_its_starters_files(ws, wdir):
    """Started detached, with stdin /dev/null and output to its log: a terminal or a pipe of the
    command that started it (say, a CI job's) is not kept open by it."""
    starter = subprocess.Popen([str(BIN / "gps"), *init_args("a")], cwd=ws, env=cli_env(wdir),
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    starter.communicate(timeout=120)
    (server,) = wait_for(lambda: servers(wdir), 30, "the worker process")
    fds = {fd: os.readlink(f"/proc/{server.pid}/fd/{fd}") for fd in (0, 1, 2)}
    assert fds[0] == "/dev/null", fds
    assert fds[1] == fds[2] and fds[1].endswith(".log"), fds
    assert server.pid == os.getsid(server.pid), "the worker should lead a session of its own"


def test_a_user_error_is_the_same_one_line_and_exit_status(ws, wdir):
    args = ["c-step", "-i", "1", "--samples", "missing.h5", "--dynamics", "d.h5", "--policy-lin", "p.h5",
            "--step", "s.h5", "--prev-controllers", "c.h5", "--out", "out.h5"]
    alone = gps_cli(args, ws, cli_env(wdir, GPS_WORKER="0"))
    assert alone.returncode == 2 and alone.stderr.count("\n") == 1, alone.stderr
    gps_cli(init_args("x"), ws, cli_env(wdir))
    wait_for(lambda: list(wdir.glob("*.sock")), 30, "the worker's socket")
    worker = gps_cli(args, ws, cli_env(wdir))
    assert len(served(wdir)) == 1, "the command was not served by the worker"
    assert (worker.returncode, worker.stdout, worker.stderr) == (alone.returncode, alone.stdout, alone.stderr)
    assert not (ws / "out.h5").exists()


@pytest.fixture
def long_s_step(tmp_path_factory, tmp_path) -> tuple[Path, list[str]]:
    """An S-step of the small obstacle run made to train for a minute or so: (cwd, arguments)."""
    run = obstacle_run(tmp_path_factory)
    params = yaml.safe_load((run / "params.yaml").read_text())
    params["policy"]["iterations"] = 300_000
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    d = run / "data" / "itr_01"
    args = ["s-step", "-i", "1", "--params", tmp_path / "params.yaml", "--samples", d / "samples.h5",
            "--controllers", d / "controllers.h5", "--policy", run / "data" / "itr_00" / "policy.h5",
            "--out", tmp_path / "policy.h5"]
    return tmp_path, args


@pytest.fixture
def served_s_step(long_s_step, wdir):
    """Start the long S-step once the worker is ready; yield (cwd, client, the worker's child running it).

    Whatever the test does, the client and the child are gone afterwards."""
    cwd, args = long_s_step
    gps_cli(init_args("warm"), cwd, cli_env(wdir))  # starts the worker
    assert gps_cli(init_args("warm"), cwd, cli_env(wdir)).returncode == 0  # served: the imports are done
    assert len(served(wdir)) == 1
    (server,) = servers(wdir)
    wait_for(lambda: not server.children(), 30, "the warm-up command's child to be reaped")
    client = subprocess.Popen([str(BIN / "gps"), *map(str, args)], cwd=cwd, env=cli_env(wdir),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        (child,) = wait_for(lambda: server.children(), 30, "the worker's child")
        time.sleep(1.0)  # well into training
        assert client.poll() is None and child.is_running()
        yield cwd, client, child
    finally:
        client.kill()
        client.communicate()
        for p in psutil.wait_procs(server.children(), timeout=10)[1]:
            p.kill()


def test_killing_the_gps_process_kills_the_command(served_s_step):
    cwd, client, child = served_s_step
    client.kill()
    client.communicate()
    gone, alive = psutil.wait_procs([child], timeout=10)
    assert not alive, "the worker's child survived its client"
    assert not (cwd / "policy.h5").exists()


def test_ctrl_c_reaches_the_command(served_s_step):
    cwd, client, child = served_s_step
    client.send_signal(signal.SIGINT)
    _, err = client.communicate(timeout=30)
    assert client.returncode == 130, err  # Typer's answer to KeyboardInterrupt, as in a process of its own
    psutil.wait_procs([child], timeout=10)
    assert not child.is_running()
    assert not (cwd / "policy.h5").exists() and not list(cwd.glob("*.tmp*")), "an interrupted S-step left files"


def test_a_code_change_gives_another_worker(tmp_path):
    for package in ("stages", "gps_core"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "a.py").write_text("x = 1\n")
    before = launch.code_key(tmp_path)
    assert launch.code_key(tmp_path) == before
    st = (tmp_path / "gps_core" / "a.py").stat()
    os.utime(tmp_path / "gps_core" / "a.py", ns=(st.st_atime_ns, st.st_mtime_ns + 1000))
    edited = launch.code_key(tmp_path)
    assert edited != before
    (tmp_path / "stages" / "b.py").write_text("")
    added = launch.code_key(tmp_path)
    assert added not in (before, edited)
    (tmp_path / "stages" / "steps").mkdir()  # a module of a subpackage counts too
    (tmp_path / "stages" / "steps" / "c.py").write_text("")
    assert launch.code_key(tmp_path) not in (before, edited, added)


def test_an_idle_worker_exits_and_removes_its_socket(ws, wdir):
    assert gps_cli(init_args("a"), ws, cli_env(wdir, GPS_WORKER_IDLE="1")).returncode == 0
    wait_for(lambda: list(wdir.glob("*.sock")), 30, "the worker's socket")
    (server,) = wait_for(lambda: servers(wdir), 30, "the worker process")
    server.wait(timeout=30)
    assert not list(wdir.glob("*.sock"))


def test_a_stale_socket_is_replaced(ws, wdir):
    gps_cli(init_args("a"), ws, cli_env(wdir))
    (sock,) = wait_for(lambda: list(wdir.glob("*.sock")), 30, "the worker's socket")
    launch.stop_workers(wdir)
    wait_for(lambda: not servers(wdir), 30, "the worker to stop")
    dead = socket.socket(socket.AF_UNIX)  # a socket file nobody listens on, as a killed worker leaves
    dead.bind(str(sock))
    dead.close()
    assert gps_cli(init_args("b"), ws, cli_env(wdir)).returncode == 0  # refused: runs here, starts a worker
    wait_for(lambda: servers(wdir), 30, "a new worker")
    assert (ws / "b" / "policy.h5").exists()


def test_a_worker_folder_that_others_can_read_is_not_used(ws, tmp_path):
    folder = tmp_path / "open"
    folder.mkdir(mode=0o755)
    os.chmod(folder, 0o755)
    result = gps_cli(init_args("a"), ws, cli_env(folder))
    assert result.returncode == 0, result.stderr
    assert not list(folder.iterdir()) and not servers(folder)


def test_gps_worker_lists_and_stops_workers(ws, wdir):
    gps_cli(init_args("a"), ws, cli_env(wdir))
    (sock,) = wait_for(lambda: list(wdir.glob("*.sock")), 30, "the worker's socket")
    listed = gps_cli(["worker"], ws, cli_env(wdir))
    assert str(sock) in listed.stdout
    stopped = gps_cli(["worker", "--stop"], ws, cli_env(wdir))
    assert "asked 1 worker(s) to stop" in stopped.stdout
    wait_for(lambda: not servers(wdir), 30, "the worker to stop")
    assert "no workers" in gps_cli(["worker"], ws, cli_env(wdir)).stdout
