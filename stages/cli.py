"""`gps`: one command per MDGPS step, each reading and writing HDF5 artifacts, and the user tools.

Each step command takes its input and output files as options, so any stage can be
rerun by hand on any artifacts; dvc.yaml (written by `gps pipeline`) chains
them per iteration. Heavy imports (mujoco, torch) happen inside the commands
that need them, so the other stages start fast.

This module holds the application and what every command shares (`stage_command`, the
options, `log`); the steps live one per module in stages/steps/, the user tools in
stages/tools.py, and both register themselves on `app` when imported (at the end).
"""

from __future__ import annotations

import functools
import sys
import time
from pathlib import Path

import typer

from stages.h5io import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False)
_debug = {"on": False}

ParamsOpt = typer.Option(Path("params.yaml"), "--params", help="params.yaml to read")
ItrOpt = typer.Option(..., "--iteration", "-i", min=0, help="0-based iteration number")


@app.callback()
def main(debug: bool = typer.Option(False, "--debug", help="show tracebacks for errors")) -> None:
    """MDGPS pipeline stages."""
    _debug["on"] = debug


def stage_command(name: str):
    """Register a command: user errors print one line and exit 2."""

    def wrap(fn):
        @functools.wraps(fn)
        def run(*args, **kwargs):
            start = time.perf_counter()
            try:
                fn(*args, **kwargs)
            except (UserError, FloatingPointError) as exc:
                if _debug["on"]:
                    raise
                typer.echo(f"gps {name}: error: {exc}", err=True)
                raise typer.Exit(2) from None
            typer.echo(f"gps {name}: done in {time.perf_counter() - start:.2f} s (process {_process_age():.2f} s)", err=True)

        return app.command(name)(run)

    return wrap


# When the `gps` process started (CLOCK_BOOTTIME seconds); the worker's child sets it to its client's.
PROCESS_START: float | None = None


def _process_age() -> float:
    """Seconds since the `gps` process started, interpreter start-up and imports included."""
    global PROCESS_START
    if PROCESS_START is None:
        from stages.launch import process_start_time

        PROCESS_START = process_start_time()
    return time.clock_gettime(time.CLOCK_BOOTTIME) - PROCESS_START


def dvc_executable() -> str:
    """The dvc installed next to this Python (the project's venv), else the one on PATH."""
    here = Path(sys.executable).parent / "dvc"
    return str(here) if here.exists() else "dvc"


def log(msg: str) -> None:
    """One line of what a stage did, on stderr."""
    typer.echo(msg, err=True)


def debugging() -> bool:
    """Whether `gps --debug` asked for tracebacks instead of one-line errors."""
    return _debug["on"]


# The commands register themselves on `app` (after everything above exists).
from stages import steps, tools  # noqa: E402,F401

if __name__ == "__main__":  # pragma: no cover
    # Run as `python -m stages.cli`, this file is __main__, a module apart from the stages.cli
    # the commands registered on.
    from stages.cli import app as registered

    sys.exit(registered())
