"""`gps`, the entry point: hand a pipeline command to a warm worker, or run it in this process.

This is the only module that imports every command: the pipeline steps (stages/steps/, one
module each) and the user tools (stages/tools/commands.py) register themselves on the
application of stages.app when `registered_app` imports them. Nothing imports this module
but the worker's server, which runs the same application in its children.

At module level it imports only the standard library and the worker's client, so that a
command handed to a worker costs tens of milliseconds (stages/worker/client.py).
"""

from __future__ import annotations

import os
import sys

from stages.worker.client import WORKER_COMMANDS, command_name, run_in_worker, socket_path, start_worker

def registered_app():
    """The Typer application with every `gps` command registered (in the order of `gps --help`: an
    iteration's steps in order, then the user tools)."""
    from stages.app import app
    from stages.steps import (  # noqa: F401  (each registers its command on import)
        init, init_model, sample, fit_dynamics, fit_policy, adjust_step, badmm_adjust_step, badmm_inner, c_step, res_percent,
        lqr_step, pi2, s_step, evaluate, summary, plot, evaluate_gym,
    )
    from stages.tools import commands  # noqa: F401

    return app


def run_here() -> int:
    registered_app()(prog_name="gps")
    return 0


def main() -> None:
    argv = sys.argv[1:]
    if os.environ.get("GPS_WORKER", "1") != "0" and command_name(argv) in WORKER_COMMANDS:
        sock = socket_path()
        if sock is not None:
            status = run_in_worker(sock, argv)
            if status is not None:
                sys.exit(status)
            try:
                start_worker(sock)
            except OSError:
                pass
    sys.exit(run_here())


if __name__ == "__main__":  # pragma: no cover
    main()
