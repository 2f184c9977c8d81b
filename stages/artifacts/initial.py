"""The init stage's files, the same whichever command made the initial controllers (gps init: guessed;
gps init-model: iLQR on the model)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from stages.artifacts.io import write_artifact

DUALS_HELP = "BADMM: also write the dual variables (λ = 0, ν = badmm.init_pol_wt)"


def write_initial(s, sim, pols: list, controllers_out: Path, policy_out: Path, step_out: Path,
                  duals_out: Optional[Path]) -> None:
    """The init stage's files from the initial controllers `pols` (one per condition): controllers.h5 (with
    η = 1 and each condition's x0), the untrained network, step multipliers of 1, and BADMM's duals if asked."""
    from gps_core.policy.policy_net import init_policy
    from stages.artifacts.controllers import controllers_to_datasets
    from stages.artifacts.policy import policy_to_datasets
    from stages.settings.params import init_stage

    sp = s.recorded(init_stage(s.params))
    data = controllers_to_datasets(pols)
    data["eta"] = np.ones(sim.M)
    data["x0"] = sim.initial_states()
    write_artifact(controllers_out, "init", 0, sp, data)
    pol = init_policy(sim.dO, sim.dU, s.policy.hidden, s.policy.init_var, s.policy.init_seed)
    pdata, pattrs = policy_to_datasets(pol, None, None)
    write_artifact(policy_out, "init", 0, sp, pdata, pattrs)
    write_artifact(step_out, "init", 0, sp, {"step_mult": np.ones(sim.M)})
    if duals_out is not None:
        from gps_core.badmm.duals import init_duals
        from stages.artifacts.duals import duals_to_datasets

        duals = init_duals(sim.M, s.task.T, sim.dU, sim.dX, s.badmm.init_pol_wt)
        write_artifact(duals_out, "init", 0, sp, duals_to_datasets(duals))
