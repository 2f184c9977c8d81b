"""BADMM's dual variables (duals.h5) <-> gps_core.badmm.duals.DualState."""

from __future__ import annotations

from typing import Any

import numpy as np

from stages.artifacts.checks import Known, check, positive
from stages.artifacts.io import read_artifact
from stages.artifacts.layouts import spec
from stages.errors import UserError


def duals_to_datasets(duals: Any) -> dict[str, np.ndarray]:
    """gps_core.badmm.duals.DualState -> datasets; prev_kl is left out while there is none (before the first ν update)."""
    data = {"lam_k": duals.lam_k, "lam_K": duals.lam_K, "pol_wt": duals.pol_wt}
    if duals.prev_kl is not None:
        data["prev_kl"] = duals.prev_kl
    return {k: np.asarray(v, dtype=np.float64) for k, v in data.items()}


def duals_from_datasets(data: dict[str, np.ndarray], path: str = "", known: Known | None = None):
    """λ_k [M,T,dU], λ_K [M,T,dU,dX], ν = pol_wt [M,T] (>= 0, not all 0), optional prev_kl [M,T]."""
    from gps_core.badmm.duals import DualState

    sizes = check(path, data, spec("duals", "lam_k", "lam_K", "pol_wt"), known)
    pol_wt = np.asarray(data["pol_wt"])
    positive(path, pol_wt, "pol_wt", strict=False)
    if not np.any(pol_wt > 0):  # the S-step weights are ν
        raise UserError(f"{path}: dataset 'pol_wt' is 0 everywhere, expected some entry > 0")
    prev_kl = None
    if "prev_kl" in data:
        check(path, data, spec("duals", "prev_kl"), {s: (n, "as in dataset 'pol_wt'") for s, n in sizes.items() if s in ("M", "T")})
        prev_kl = data["prev_kl"]
    return DualState(lam_k=data["lam_k"], lam_K=data["lam_K"], pol_wt=pol_wt, prev_kl=prev_kl)


def load_duals(path, known: Known | None = None):
    """The BADMM dual variables of a duals.h5 (gps_core.badmm.duals.DualState), checked."""
    return duals_from_datasets(read_artifact(path, kind="duals")[0], str(path), known)
