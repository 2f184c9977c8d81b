"""`gps`: one command per MDGPS step, each reading and writing HDF5 artifacts, and the user tools.

Each step command takes its input and output files as options, so any stage can be
rerun by hand on any artifacts; dvc.yaml (written by `gps pipeline`) chains
them per iteration. Heavy imports (mujoco, torch) happen inside the commands
that need them, so the other stages start fast.

This module holds the application and what every command shares (`stage_command`,
`user_errors`, the options, `log`) and imports no command: a leaf that every command
imports. The steps live one per module in stages/steps/, the user tools in
stages/tools/commands.py; each registers itself on `app` when imported, and only
stages.main (the entry point) imports them all.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import time
from pathlib import Path
from typing import Iterator

import typer

from stages.errors import UserError

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
        from stages.process_clock import process_start_time

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


@contextlib.contextmanager
def user_errors(command: str, debug: bool = False) -> Iterator[None]:
    """Turn a UserError into `gps COMMAND: error: ...` on stderr and exit code 2 (a traceback with --debug).

    For the user tools, which report their own errors; the steps use `stage_command`."""
    try:
        yield
    except UserError as exc:
        if debug:
            raise
        typer.echo(f"gps {command}: error: {exc}", err=True)
        raise typer.Exit(2) from None
