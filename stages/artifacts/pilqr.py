"""PILQR's and PI2's files: the per-step step multipliers (res_percent.h5, or the init's step.h5), the LQR
step before PI2 (lqr_step.h5) <-> gps_core.traj_opt.pilqr.PerStepLQRResult, and the samples' exploration
noise and per-step costs that PI2 reweights."""

from __future__ import annotations

import numpy as np

from gps_core.traj_opt.pilqr import PerStepLQRResult
from stages.artifacts.checks import Known, check, check_covariance, positive
from stages.artifacts.io import read_artifact
from stages.artifacts.layouts import spec
from stages.errors import UserError


def lqr_step_to_datasets(r: PerStepLQRResult) -> dict[str, np.ndarray]:
    return {"K": r.K, "k": r.k, "pol_covar": r.covar, "eta": r.eta, "kl": r.kl, "kl_step": r.kl_bound,
            "converged": r.converged, "bisection_rounds": r.bisection_rounds, "adam_rounds": r.adam_rounds,
            "safeguard": r.safeguard}


def load_lqr_step(path, known: Known | None = None) -> PerStepLQRResult:
    """The LQR step of lqr_step.h5, checked: K, k, pol_covar (positive definite), eta > 0, kl >= 0, kl_step > 0."""
    data, _ = read_artifact(path, kind="lqr_step")
    p = str(path)
    sizes = check(p, data, spec("lqr_step", "K", "k", "pol_covar", "eta", "kl", "kl_step", "bisection_rounds",
                                "adam_rounds", "safeguard"), known)
    if "converged" not in data or np.shape(data["converged"]) != (sizes["M"],):
        raise UserError(f"{p}: dataset 'converged' is missing or not of shape [M] = [{sizes['M']}]")
    check_covariance(data["pol_covar"], p, "pol_covar")
    positive(p, data["eta"], "eta")
    positive(p, data["kl"], "kl", strict=False)
    positive(p, data["kl_step"], "kl_step")
    return PerStepLQRResult(K=data["K"], k=data["k"], covar=data["pol_covar"], eta=data["eta"], kl=data["kl"],
                            kl_bound=data["kl_step"], converged=data["converged"].astype(bool),
                            bisection_rounds=data["bisection_rounds"].astype(np.int64),
                            adam_rounds=data["adam_rounds"].astype(np.int64),
                            safeguard=data["safeguard"].astype(np.int8))


def load_eta_per_step(path, known: Known | None = None) -> np.ndarray:
    """The warm start of the LQR step: eta [M, T] (> 0) of the previous lqr_step.h5."""
    data, _ = read_artifact(path, ["eta"], kind="lqr_step")
    check(str(path), data, spec("lqr_step", "eta"), known)
    positive(str(path), data["eta"], "eta")
    return data["eta"]


def sampled_noise(path: str, sdata: dict[str, np.ndarray], known: Known) -> np.ndarray:
    """The samples' exploration noise [M, N, T, dU] (u = K x + k + chol(Σ)ᵀ ε), checked against the samples."""
    check(path, sdata, spec("samples", "noise"), known)
    return sdata["noise"]
