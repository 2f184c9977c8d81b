"""One module per pipeline step; importing them registers their `gps` commands on stages.cli.app.

The order is the order of `gps --help` (and of an iteration).
"""

from stages.steps import (  # noqa: F401
    init, sample, fit_dynamics, fit_policy, adjust_step, badmm, c_step, s_step, evaluate, summary, evaluate_gym,
)
