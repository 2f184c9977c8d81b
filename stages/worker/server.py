"""The warm worker behind `gps`: imports everything once, forks a child per command.

`python -m stages.worker.server SOCKET` is started by `stages.worker.client` when a pipeline
command finds no worker. It takes an exclusive lock beside SOCKET (a second
worker for the same code exits at once), imports what the pipeline commands
import (numpy, h5py, scipy, mujoco, torch, matplotlib, the project), and
serves requests on SOCKET until nothing has come for `GPS_WORKER_IDLE` seconds.

The worker itself never runs a command. Each request forks a child, which:
takes over the client's stdin/stdout/stderr (file descriptors passed over the
socket), working directory, environment, umask and arguments; runs the Typer
app as `gps` would; and sends back its exit status. A forked child starts from
the state the imports left, never from another command's, so its results are
those of a fresh process. If the client goes away (killed with its process
group, say) the child kills itself, as a stage process of a killed run would
die. If the child dies of a signal, the worker reports that to the client.
"""

from __future__ import annotations

import fcntl
import gc
import io
import json
import os
import selectors
import signal
import socket
import sys
import threading
import time
import traceback
from pathlib import Path

from stages.main import registered_app
from stages.worker.client import HEADER, STATUS


# What the pipeline commands import (found by running each with an eye on sys.modules).
PRELOAD = (
    "matplotlib.backends.backend_agg", "matplotlib.pyplot", "PIL.Image", "rich.console", "rich.progress",
    "scipy.special", "scipy.ndimage", "stages.pipeline.generate",
    *(f"stages.artifacts.{name}" for name in ("checks", "controllers", "duals", "models", "optimiser", "policy", "priors")),
)


def preload() -> None:
    """Import everything the pipeline commands import, so that a forked child imports nothing."""
    import importlib
    import pkgutil

    import matplotlib

    matplotlib.use("Agg")
    for name in PRELOAD:
        importlib.import_module(name)
    # typer converts arguments with pydantic, imported on first use (0.1 s per command)
    for name in ("typer._adapters", "typer._click.decorators", "pydantic.plugin._loader"):
        try:
            importlib.import_module(name)
        except ImportError:  # another typer or pydantic version
            pass
    import gps_core  # all of it: mujoco, scipy.linalg and torch come with it

    for module in pkgutil.walk_packages(gps_core.__path__, "gps_core."):
        importlib.import_module(module.name)
    import typer.main

    global _command
    sys.modules["PIL.Image"].preinit()  # the image plugins savefig loads
    _command = typer.main.get_command(registered_app())  # what `app()` builds on every call
    # The summary stage renders the pipeline to check it, which reads the import graph of every step
    # (0.15 s): a worker serves one version of the code, so its children can share the graph.
    from stages.pipeline.code_deps import command_modules, stage_code
    from stages.pipeline.generate import CODE_ROOT

    for command in command_modules(CODE_ROOT):
        stage_code(command, CODE_ROOT)


_command = None  # the click command of the gps app, built once by preload


# --------------------------------------------------------------------------- the child


def _reopen_stdio(encodings: list[str | None]) -> None:
    """New sys.stdin/stdout/stderr on fds 0-2, buffered as Python buffers them at start-up."""
    streams = []
    for fd, enc in zip((0, 1, 2), encodings):
        enc = enc or "utf-8"
        if fd == 0:
            streams.append(io.TextIOWrapper(io.BufferedReader(io.FileIO(fd, "r", closefd=False)), encoding=enc))
            continue
        line = fd == 2 or os.isatty(fd)  # stderr is line-buffered; stdout only on a terminal
        streams.append(io.TextIOWrapper(io.BufferedWriter(io.FileIO(fd, "w", closefd=False)), encoding=enc,
                                        errors="backslashreplace" if fd == 2 else "strict", line_buffering=line))
    sys.stdin = sys.__stdin__ = streams[0]
    sys.stdout = sys.__stdout__ = streams[1]
    sys.stderr = sys.__stderr__ = streams[2]


def _watch_client(conn: socket.socket, done: threading.Event) -> None:
    """Pass on the client's signals; if the client is gone before the command ends, die."""
    while True:
        try:
            data = conn.recv(64)
        except OSError:
            data = b""
        if not data:
            if not done.is_set():
                os.kill(os.getpid(), signal.SIGKILL)
            return
        for signum in data:
            os.kill(os.getpid(), signum)


def _run_command(argv: list[str]) -> int:
    sys.argv = ["gps", *argv]
    try:
        _command.main(args=argv, prog_name="gps")  # what app() does, without rebuilding the command
    except SystemExit as exc:
        if exc.code is None:
            return 0
        if isinstance(exc.code, int):
            return exc.code
        print(exc.code, file=sys.stderr)
        return 1
    except BaseException:  # what the interpreter would print for an uncaught exception
        traceback.print_exc()
        return 1
    return 0


def child_main(conn: socket.socket, request: dict, fds: list[int]) -> None:
    """Run one command in this freshly forked process, then exit with its status."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
        signal.signal(signum, signal.SIG_DFL)
    for target, fd in zip((0, 1, 2), fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    os.umask(request["umask"])
    import tempfile

    tempfile.tempdir = None  # chosen anew from this environment's TMPDIR
    _reopen_stdio(request.get("encodings", [None, None, None]))
    import stages.app

    stages.app.PROCESS_START = request["start"]
    done = threading.Event()
    threading.Thread(target=_watch_client, args=(conn, done), daemon=True).start()
    code = _run_command(request["argv"])
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    done.set()
    try:
        conn.sendall(STATUS.pack(code))
    except OSError:
        pass
    os._exit(code & 0xFF)


# --------------------------------------------------------------------------- the server


def _read_request(conn: socket.socket) -> tuple[dict, list[int]]:
    conn.settimeout(10)
    data, fds, _, _ = socket.recv_fds(conn, 1 << 16, 3)
    while len(data) < HEADER.size or len(data) < HEADER.size + HEADER.unpack_from(data)[0]:
        chunk = conn.recv(1 << 16)
        if not chunk:
            raise OSError("request cut short")
        data += chunk
    conn.settimeout(None)
    (n,) = HEADER.unpack_from(data)
    return json.loads(data[HEADER.size:HEADER.size + n]), list(fds)


def serve(sock_path: Path, idle: float) -> None:
    lock = open(sock_path.with_suffix(".lock"), "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return  # another worker serves this code
    sock_path.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(sock_path))  # bound before the imports: early clients wait in the backlog
    listener.listen(64)
    preload()
    gc.collect()
    gc.freeze()  # the children's collections skip what the imports made (fewer copied pages)
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ, None)
    children: dict[int, socket.socket] = {}  # pid -> connection
    last = time.monotonic()
    stopping = False
    try:
        while not stopping:
            timeout = None if children else max(0.0, last + idle - time.monotonic())
            events = sel.select(timeout)
            if not events and not children and time.monotonic() - last >= idle:
                break
            for key, _ in events:
                if key.data is None:
                    stopping = _accept(listener, sel, children)
                else:
                    _reap(key, sel, children)
            last = time.monotonic()
    finally:
        sock_path.unlink(missing_ok=True)
        listener.close()


def _accept(listener: socket.socket, sel: selectors.BaseSelector, children: dict) -> bool:
    """Take one request: fork its child (or, for a stop request, say to stop)."""
    conn, _ = listener.accept()
    fds: list[int] = []
    try:
        request, fds = _read_request(conn)
    except (OSError, ValueError) as exc:
        print(f"gps worker: bad request: {exc}", file=sys.stderr, flush=True)
        for fd in fds:
            os.close(fd)
        conn.close()
        return False
    if request.get("stop"):
        conn.sendall(b"\0")
        conn.close()
        return True
    if len(fds) != 3:
        for fd in fds:
            os.close(fd)
        conn.close()
        return False
    print(f"{time.strftime('%H:%M:%S')} gps {' '.join(request['argv'])} (in {request['cwd']})", flush=True)
    pid = os.fork()
    if pid == 0:
        try:  # the child keeps only its own connection and descriptors
            for key in list(sel.get_map().values()):
                key.fileobj.close() if isinstance(key.fileobj, socket.socket) else os.close(key.fd)
            for other in children.values():
                other.close()
            child_main(conn, request, fds)
        except BaseException:  # a fault of the worker, not of the command: say so on the client's stderr
            traceback.print_exc()
            sys.stderr.flush()
        finally:
            os._exit(70)
    for fd in fds:
        os.close(fd)
    pidfd = os.pidfd_open(pid)
    sel.register(pidfd, selectors.EVENT_READ, pid)
    children[pid] = conn
    return False


def _reap(key: selectors.SelectorKey, sel: selectors.BaseSelector, children: dict) -> None:
    """A child ended: send its client the status (the client reads only the first one it gets,
    which is the child's own after a normal exit; this one counts if the child died of a signal)."""
    pid = key.data
    sel.unregister(key.fileobj)
    os.close(key.fd)
    _, status = os.waitpid(pid, 0)
    conn = children.pop(pid)
    code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
    try:
        conn.sendall(STATUS.pack(code))
    except OSError:
        pass
    conn.close()


def main() -> None:
    sock_path = Path(sys.argv[1])
    idle = float(os.environ.get("GPS_WORKER_IDLE", "300"))
    serve(sock_path, idle)
    log = sock_path.with_suffix(".log")
    if log.exists() and log.stat().st_size == 0:
        log.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
