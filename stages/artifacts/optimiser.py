"""The S-step's optimiser state stored with the network (policy.h5: group `adam`) <-> gps_core.policy.s_step.AdamState.

Apart from stages/artifacts/policy.py because gps_core.policy.s_step imports torch: only the stages
that train the network (s-step, badmm-inner) read it.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from stages.artifacts.checks import Known
from stages.artifacts.io import read_artifact
from stages.artifacts.policy import policy_from_datasets


def adam_from_datasets(data: dict[str, np.ndarray], attrs: dict[str, Any]):
    """The Adam state (None before the first S-step); check_policy has checked it."""
    from gps_core.policy.s_step import AdamState

    if "adam_step" not in attrs:
        return None
    n = 2 * int(attrs["n_layers"])
    return AdamState(
        exp_avg=[data[f"adam/exp_avg{i}"] for i in range(n)],
        exp_avg_sq=[data[f"adam/exp_avg_sq{i}"] for i in range(n)],
        step=int(attrs["adam_step"]),
    )


def load_policy_and_adam(path, known: Known | None = None, hidden: Sequence[int] | None = None):
    """The network and its Adam state (None before the first S-step); imports torch."""
    data, attrs = read_artifact(path, kind="policy")
    return policy_from_datasets(data, attrs, str(path), known, hidden), adam_from_datasets(data, attrs)
