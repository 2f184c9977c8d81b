"""When a process started, read from /proc: the stages' "process" times and the sweep ledger's liveness check.

Standard library only, so that the `gps` client (stages.worker.client) can use it without slowing its start.
"""

from __future__ import annotations

import os
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
