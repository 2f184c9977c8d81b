"""The LQR's models: fitted dynamics (dynamics.h5) and cost expansions (samples.h5) <-> gps_core.traj_opt.lqr."""

from __future__ import annotations

import numpy as np

from gps_core.traj_opt.lqr import Dynamics, QuadraticCost
from stages.artifacts.checks import Known, check, check_covariance, check_symmetric, load_samples, with_D
from stages.artifacts.io import read_artifact
from stages.artifacts.layouts import spec
from stages.errors import UserError


def dynamics_from_datasets(data: dict[str, np.ndarray], path: str = "", known: Known | None = None) -> list[Dynamics]:
    sizes = check(path, data, spec("dynamics", "Fm", "fv", "dyn_covar", "x0mu", "x0sigma"), with_D(known))
    if sizes["D"] <= sizes["dX"]:
        raise UserError(f"{path}: dataset 'Fm' has shape {data['Fm'].shape}: D = {sizes['D']} must exceed dX = {sizes['dX']} (D = dX + dU)")
    check_symmetric(data["dyn_covar"], path, "dyn_covar")  # zero at t = T-1, so only symmetric
    check_covariance(data["x0sigma"], path, "x0sigma")
    return [
        Dynamics(Fm=data["Fm"][m], fv=data["fv"][m], covar=data["dyn_covar"][m], x0mu=data["x0mu"][m], x0sigma=data["x0sigma"][m])
        for m in range(data["Fm"].shape[0])
    ]


def load_dynamics(path, known: Known | None = None) -> list[Dynamics]:
    return dynamics_from_datasets(read_artifact(path, kind="dynamics")[0], str(path), known)


def costs_from_datasets(data: dict[str, np.ndarray], path: str = "") -> list[QuadraticCost]:
    check(path, data, spec("samples", "Cm", "cv", "cc"))
    return [QuadraticCost(Cm=data["Cm"][m], cv=data["cv"][m], cc=data["cc"][m]) for m in range(data["Cm"].shape[0])]


def load_cost_models(path, known: Known | None = None) -> list[QuadraticCost]:
    """The cost expansion stored with the samples (the whole samples file is checked)."""
    data, _ = load_samples(path, known)
    return costs_from_datasets(data, str(path))
