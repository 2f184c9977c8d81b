"""When a process started, read from /proc: the stages' "process" times and the sweep ledger's liveness check.

Standard library only, so that the `gps` client (stages.worker.client) can use it without slowing its start.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path


def start_ticks(pid: int | str = "self") -> int | None:
    """When a process started, in clock ticks since boot (/proc/PID/stat), or None if there is no such process."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def process_start_time() -> float:
    """When this process started, in seconds of CLOCK_BOOTTIME (exact to a clock tick).

    psutil's create_time adds the start to the boot time of /proc/stat, which is whole
    seconds, so its process ages are off by up to a second.
    """
    ticks = start_ticks()
    if ticks is None:
        return time.clock_gettime(time.CLOCK_BOOTTIME)
    return ticks / os.sysconf("SC_CLK_TCK")


def running_here(hostname: str | None, pid: int | None, start: int | None) -> bool | None:
    """Whether the process (pid, start ticks) recorded on `hostname` still runs: True or False on this host,
    None when it ran on another one (a folder or ledger shared between machines: not checkable here).
    The start time tells the process from a later one that got its pid; no start recorded: not running."""
    if hostname != socket.gethostname():
        return None
    return start is not None and pid is not None and start_ticks(pid) == start
