"""The client side of the warm worker: hand a pipeline command to a worker (stages.worker.server).

A stage process spends most of its life starting up: the interpreter, numpy,
h5py and typer take about 0.4 s, mujoco and scipy 0.3 s each, torch 2 s, and a
peg run starts 86 of them. So the pipeline commands (the ones `dvc.yaml` runs)
go to a worker (`stages.worker.server`) that has imported all of that once and forks
a fresh child per command. The child takes over this process's stdin, stdout
and stderr (passed over a Unix socket), its working directory, environment and
arguments, runs the command exactly as `gps` would, and its exit status
becomes this process's. Everything that makes the command's results is the
same in both cases: `tests/test_determinism.py` checks that a whole run's
artifacts are bit-identical, and `tests/test_worker.py` the files of `init`.

This module imports only the standard library (and stages.process_clock, which does too), so
this process costs tens of milliseconds. The worker is keyed by the interpreter, the code (path, size and
mtime of every source file) and the environment variables read at import time:
edit a file and the next command starts a new worker; the old one exits after
`GPS_WORKER_IDLE` seconds (default 300) without work. The first command finds
no worker: it starts one in the background and runs in this process.

- `GPS_WORKER=0` runs every command in this process (no worker).
- If this process is killed, the child notices the closed socket and kills
  itself; SIGINT, SIGTERM and SIGHUP are passed on to it.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import struct
import sys
from pathlib import Path

from stages.process_clock import process_start_time

# The checkout whose code runs: the `stages` package Python resolved (normally this file's).
ROOT = Path(sys.modules["stages"].__file__).resolve().parent.parent

# The commands of the generated dvc.yaml. The others (report, sweep, render, ...)
# are run by hand, rarely, and render must pick its OpenGL backend at import.
WORKER_COMMANDS = frozenset({
    "init", "init-model", "sample", "fit-dynamics", "fit-policy", "adjust-step", "c-step", "s-step", "evaluate",
    "badmm-inner", "badmm-adjust-step", "res-percent", "lqr-step", "pi2", "summary", "plot", "evaluate-gym",
})
# Read when the worker imports numpy, torch and mujoco: a worker serves one set of values.
IMPORT_TIME_ENV = ("PYTHONPATH", "PYTHONHASHSEED", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
                   "MKL_NUM_THREADS", "MUJOCO_GL")
HEADER = struct.Struct("!I")  # length of the JSON request that follows
STATUS = struct.Struct("!i")  # the reply: exit code >= 0, or -signal


def command_name(argv: list[str]) -> str | None:
    """The subcommand of `gps [--debug] COMMAND ...`, or None."""
    for arg in argv:
        if not arg.startswith("-"):
            return arg
    return None


def code_key(root: Path = ROOT) -> str:
    """A hash of what the worker has imported: interpreter, source files, import-time environment."""
    h = hashlib.sha256()
    h.update(f"{sys.executable}\0{sys.version}\0{root}\0".encode())
    for name in IMPORT_TIME_ENV:
        h.update(f"{name}={os.environ.get(name)}\0".encode())
    for entry in sys.path:  # installing or removing a package changes its folder's mtime
        if not entry.endswith(("site-packages", "dist-packages")):
            continue
        try:
            h.update(f"{entry}:{os.stat(entry).st_mtime_ns}\0".encode())
        except OSError:
            pass
    for package in ("stages", "gps_core"):  # subpackages too (stages/steps)
        for path in sorted((root / package).rglob("*.py")):
            st = path.stat()
            h.update(f"{path.relative_to(root).as_posix()}:{st.st_size}:{st.st_mtime_ns}\0".encode())
    return h.hexdigest()[:20]


def worker_dir() -> Path | None:
    """The per-user folder of the workers' sockets (mode 0700), or None if it is not safely ours."""
    path = Path(os.environ.get("GPS_WORKER_DIR") or Path(os.environ.get("TMPDIR", "/tmp")) / f"gps-worker-{os.getuid()}")
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = path.stat()
    except OSError:
        return None
    if st.st_uid != os.getuid() or st.st_mode & 0o077:
        return None
    return path


def socket_path(root: Path = ROOT) -> Path | None:
    folder = worker_dir()
    return None if folder is None else folder / f"{code_key(root)}.sock"


def start_worker(sock: Path) -> None:
    """Start a worker for `sock` in the background, detached from this process's session.

    Except under a sweep's process-group guard (stages/sweep/group_guard.py): there the
    worker stays in the guarded group, so that it dies with the experiment's attempt.
    """
    import subprocess

    guarded = os.environ.get("GPS_GUARDED_GROUP") == str(os.getpgid(0))
    log = sock.with_suffix(".log")
    with open(log, "ab") as out:
        # cwd=ROOT: `-m stages.worker.server` imports ROOT's code. stdin is /dev/null, so that the
        # worker holds no terminal or pipe of the command that started it.
        subprocess.Popen([sys.executable, "-m", "stages.worker.server", str(sock)], cwd=ROOT, stdin=subprocess.DEVNULL,
                         stdout=out, stderr=out, start_new_session=not guarded, close_fds=True)


def send_request(conn: socket.socket, request: dict, fds: list[int]) -> None:
    body = json.dumps(request).encode()
    socket.send_fds(conn, [HEADER.pack(len(body)) + body], fds)


def run_in_worker(sock: Path, argv: list[str]) -> int | None:
    """Run `gps argv` in the worker; its exit status, or None if no worker took the command."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(str(sock))
        request = {"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ), "umask": _umask(),
                   "start": process_start_time(),
                   "encodings": [getattr(s, "encoding", None) for s in (sys.stdin, sys.stdout, sys.stderr)]}
        send_request(conn, request, [0, 1, 2])
    except OSError:
        conn.close()
        return None
    # From here on the command is the worker's: pass signals on, wait for its status.
    def forward(signum, frame):
        try:
            conn.sendall(bytes([signum]))
        except OSError:
            pass

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, forward)
    data = b""
    while len(data) < STATUS.size:
        try:
            chunk = conn.recv(STATUS.size - len(data))
        except InterruptedError:
            continue
        if not chunk:
            sys.stderr.write(f"gps {command_name(argv)}: error: the gps worker ended without an exit status\n")
            return 1
        data += chunk
    (status,) = STATUS.unpack(data)
    if status < 0:  # the child died of signal -status: die the same way
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), -status)
        return 128 - status
    return status


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def stop_workers(folder: Path | None = None) -> int:
    """Ask every worker with a socket in `folder` (default: this user's) to exit; how many were asked."""
    folder = worker_dir() if folder is None else folder
    asked = 0
    for sock in sorted(folder.glob("*.sock")) if folder else []:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            conn.connect(str(sock))
            send_request(conn, {"stop": True}, [])
            conn.recv(1)
            asked += 1
        except OSError:
            pass
        finally:
            conn.close()
    return asked
