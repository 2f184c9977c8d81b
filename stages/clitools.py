"""Shared by the inspection commands (inspect, status, plot, render): one-line errors with exit code 2."""

from __future__ import annotations

import contextlib
from typing import Iterator

import typer

from stages.h5io import UserError


@contextlib.contextmanager
def user_errors(command: str, debug: bool = False) -> Iterator[None]:
    """Turn a UserError into `gps COMMAND: error: ...` on stderr and exit code 2 (a traceback with --debug)."""
    try:
        yield
    except UserError as exc:
        if debug:
            raise
        typer.echo(f"gps {command}: error: {exc}", err=True)
        raise typer.Exit(2) from None
