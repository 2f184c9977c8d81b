"""Linear-Gaussian controllers (controllers.h5, policy_lin.h5: K, k, pol_covar) <-> gps_core.traj_opt.lingauss."""

from __future__ import annotations

import numpy as np

from gps_core.traj_opt.lingauss import LinearGaussianPolicy
from stages.artifacts.checks import Known, array, check, check_covariance
from stages.artifacts.io import read_artifact
from stages.artifacts.layouts import spec
from stages.errors import UserError

CONTROLLER_FIELDS = ("K", "k", "pol_covar")


def controllers_to_datasets(pols: list[LinearGaussianPolicy]) -> dict[str, np.ndarray]:
    return {
        "K": np.stack([p.K for p in pols]),
        "k": np.stack([p.k for p in pols]),
        "pol_covar": np.stack([p.covar for p in pols]),
    }


def controllers_from_datasets(data: dict[str, np.ndarray], path: str = "", known: Known | None = None) -> list[LinearGaussianPolicy]:
    K, k, covar = (array(path, data, name) for name in CONTROLLER_FIELDS)
    if K.ndim != 4 or k.shape != K.shape[:3] or covar.shape != K.shape[:3] + (K.shape[2],):
        raise UserError(
            f"{path}: datasets K {K.shape}, k {k.shape}, pol_covar {covar.shape} do not have the shapes "
            "[M,T,dU,dX], [M,T,dU], [M,T,dU,dU]"
        )
    check(path, data, spec("controllers", *CONTROLLER_FIELDS), known)
    check_covariance(covar, path, "pol_covar")
    return [LinearGaussianPolicy(K=K[m], k=k[m], covar=covar[m]) for m in range(K.shape[0])]


def load_controllers(path, known: Known | None = None) -> list[LinearGaussianPolicy]:
    """Controllers or a policy linearisation (K, k, pol_covar) of every condition."""
    return controllers_from_datasets(read_artifact(path, kind="controllers")[0], str(path), known)
