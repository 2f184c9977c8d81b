"""Progress bars for the stages that take more than a second, on stderr.

gps_core never imports rich: its long loops take an optional callback
`progress(done, total)`, and a stage passes the one `progress_bar` yields.
The bar is drawn only when stderr is a terminal, so `dvc repro` logs, pipes and
tests see nothing (and rich is not even imported). `GPS_PROGRESS=0` turns the
bars off on a terminal too; `GPS_PROGRESS=1` forces them on.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Callable, Iterator, TextIO

Callback = Callable[[int, int], None]


def _noop(done: int, total: int) -> None:
    pass


def bars_enabled(stream: TextIO | None = None) -> bool:
    """Whether to draw bars on `stream` (default stderr): a terminal, unless GPS_PROGRESS says otherwise."""
    forced = os.environ.get("GPS_PROGRESS", "").strip().lower()
    if forced in ("0", "false", "no", "off"):
        return False
    if forced in ("1", "true", "yes", "on"):
        return True
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or not a real stream
        return False


@contextlib.contextmanager
def progress_bar(description: str, total: int | None = None, stream: TextIO | None = None,
                 enabled: bool | None = None) -> Iterator[Callback]:
    """Yield a callback `progress(done, total)` that moves a rich bar on stderr (or does nothing).

    The bar is transient: it disappears when the block ends, leaving the stage's
    one-line summary as the only trace in the terminal.
    """
    stream = sys.stderr if stream is None else stream
    if not (bars_enabled(stream) if enabled is None else enabled):
        yield _noop
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    console = Console(file=stream, force_terminal=True)  # a terminal, or GPS_PROGRESS=1 / enabled=True asked for it
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("eta"), TimeRemainingColumn(), console=console, transient=True) as bar:
        task = bar.add_task(description, total=total)

        def advance(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield advance
