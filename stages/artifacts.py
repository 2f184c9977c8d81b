"""Conversion between gps_core objects and the datasets of the HDF5 artifacts.

Dataset names and shapes are documented in docs/artifacts.md.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gps_core.lingauss import LinearGaussianPolicy
from gps_core.lqr import Dynamics, QuadraticCost
from stages.h5io import UserError, read_artifact

CONTROLLER_FIELDS = ("K", "k", "pol_covar")


def controllers_to_datasets(pols: list[LinearGaussianPolicy]) -> dict[str, np.ndarray]:
    return {
        "K": np.stack([p.K for p in pols]),
        "k": np.stack([p.k for p in pols]),
        "pol_covar": np.stack([p.covar for p in pols]),
    }


def controllers_from_datasets(data: dict[str, np.ndarray], path: str = "") -> list[LinearGaussianPolicy]:
    K, k, covar = data["K"], data["k"], data["pol_covar"]
    if K.ndim != 4 or k.shape != K.shape[:3] or covar.shape != K.shape[:3] + (K.shape[2],):
        raise UserError(
            f"{path}: datasets K {K.shape}, k {k.shape}, pol_covar {covar.shape} do not have the shapes "
            "[M,T,dU,dX], [M,T,dU], [M,T,dU,dU]"
        )
    check_covariance(covar, path, "pol_covar")
    return [LinearGaussianPolicy(K=K[m], k=k[m], covar=covar[m]) for m in range(K.shape[0])]


def check_covariance(covar: np.ndarray, path: str, name: str) -> None:
    """Symmetric and positive definite in every [..., d, d] block, or a one-line UserError."""
    asym = np.abs(covar - np.swapaxes(covar, -1, -2)).max(initial=0.0)
    if asym > 1e-8 * max(1.0, np.abs(covar).max(initial=0.0)):
        raise UserError(f"{path}: dataset {name!r} is not symmetric (largest asymmetry {asym:.3g})")
    try:
        np.linalg.cholesky(covar)
    except np.linalg.LinAlgError:
        raise UserError(f"{path}: dataset {name!r} is not positive definite") from None


def gmms_to_datasets(prefix: str, gmms: list) -> dict[str, np.ndarray]:
    if any(g is None for g in gmms):
        return {}
    return {
        f"{prefix}/gmm_mu": np.stack([g.mu for g in gmms]),
        f"{prefix}/gmm_sigma": np.stack([g.sigma for g in gmms]),
        f"{prefix}/gmm_logmass": np.stack([g.logmass for g in gmms]),
        f"{prefix}/gmm_n_init": np.array([g.n_init for g in gmms], dtype=np.int64),
    }


def gmms_from_datasets(prefix: str, data: dict[str, np.ndarray], M: int) -> list:
    """Per-condition GMMs (None where the file has none). Imports scipy via gps_core.gmm."""
    from gps_core.gmm import GMM

    if f"{prefix}/gmm_mu" not in data:
        return [None] * M
    return [
        GMM(
            mu=data[f"{prefix}/gmm_mu"][m],
            sigma=data[f"{prefix}/gmm_sigma"][m],
            logmass=data[f"{prefix}/gmm_logmass"][m],
            n_init=int(data[f"{prefix}/gmm_n_init"][m]),
        )
        for m in range(M)
    ]


def _expect_shapes(path: str, data: dict[str, np.ndarray], spec: dict[str, str]) -> dict[str, int]:
    """Check datasets against symbolic shapes like "M,T,dX,D"; returns the sizes found.

    Raises a one-line UserError naming the file and dataset on the first mismatch.
    """
    sizes: dict[str, int] = {}
    for name, dims in spec.items():
        shape = data[name].shape
        symbols = dims.split(",")
        if len(shape) != len(symbols):
            raise UserError(f"{path}: dataset {name!r} has shape {shape}, expected [{dims}]")
        for symbol, n in zip(symbols, shape):
            if sizes.setdefault(symbol, n) != n:
                raise UserError(f"{path}: dataset {name!r} has shape {shape}, expected [{dims}] with {symbol} = {sizes[symbol]}")
    if "D" in sizes and "dX" in sizes and sizes["D"] <= sizes["dX"]:
        raise UserError(f"{path}: D = {sizes['D']} must exceed dX = {sizes['dX']} (D = dX + dU)")
    return sizes


def dynamics_from_datasets(data: dict[str, np.ndarray], path: str = "") -> list[Dynamics]:
    _expect_shapes(path, data, {"Fm": "M,T,dX,D", "fv": "M,T,dX", "dyn_covar": "M,T,dX,dX", "x0mu": "M,dX", "x0sigma": "M,dX,dX"})
    return [
        Dynamics(Fm=data["Fm"][m], fv=data["fv"][m], covar=data["dyn_covar"][m], x0mu=data["x0mu"][m], x0sigma=data["x0sigma"][m])
        for m in range(data["Fm"].shape[0])
    ]


def costs_from_datasets(data: dict[str, np.ndarray], path: str = "") -> list[QuadraticCost]:
    _expect_shapes(path, data, {"Cm": "M,T,D,D", "cv": "M,T,D", "cc": "M,T"})
    return [QuadraticCost(Cm=data["Cm"][m], cv=data["cv"][m], cc=data["cc"][m]) for m in range(data["Cm"].shape[0])]


def policy_to_datasets(params: Any, adam: Any | None, losses: np.ndarray | None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """PolicyParams (+ Adam state and S-step losses) -> datasets, attributes."""
    data = {f"policy/W{i}": w for i, w in enumerate(params.weights)}
    data.update({f"policy/b{i}": b for i, b in enumerate(params.biases)})
    data.update({"policy/obs_scale": params.obs_scale, "policy/obs_bias": params.obs_bias, "policy/var": params.var})
    attrs: dict[str, Any] = {"normalised": bool(params.normalised), "n_layers": len(params.weights)}
    if adam is not None:
        for i, (m1, m2) in enumerate(zip(adam.exp_avg, adam.exp_avg_sq)):
            data[f"adam/exp_avg{i}"] = m1
            data[f"adam/exp_avg_sq{i}"] = m2
        attrs["adam_step"] = int(adam.step)
    if losses is not None:
        data["loss"] = losses
    return data, attrs


def policy_from_datasets(data: dict[str, np.ndarray], attrs: dict[str, Any], path: str = ""):
    from gps_core.policy_net import PolicyParams

    try:
        n = int(attrs["n_layers"])
        params = PolicyParams(
            weights=[data[f"policy/W{i}"] for i in range(n)],
            biases=[data[f"policy/b{i}"] for i in range(n)],
            obs_scale=data["policy/obs_scale"],
            obs_bias=data["policy/obs_bias"],
            var=data["policy/var"],
            normalised=bool(attrs["normalised"]),
        )
    except KeyError as exc:
        raise UserError(f"{path}: policy dataset or attribute {exc.args[0]!r} is missing") from None
    return params


def adam_from_datasets(data: dict[str, np.ndarray], attrs: dict[str, Any]):
    from gps_core.s_step import AdamState

    if "adam_step" not in attrs:
        return None
    n = 2 * int(attrs["n_layers"])
    return AdamState(
        exp_avg=[data[f"adam/exp_avg{i}"] for i in range(n)],
        exp_avg_sq=[data[f"adam/exp_avg_sq{i}"] for i in range(n)],
        step=int(attrs["adam_step"]),
    )


# ---------------------------------------------------------------- whole-file loaders

DYNAMICS_FIELDS = ("Fm", "fv", "dyn_covar", "x0mu", "x0sigma")
COST_FIELDS = ("Cm", "cv", "cc")


def check_same_problem(**files: tuple[str, tuple[int, ...]]) -> None:
    """Files that must describe the same conditions, horizon and dimensions: name -> (path, (M, T, ...))."""
    items = list(files.items())
    _, (first_path, first_dims) = items[0]
    for _, (path, dims) in items[1:]:
        if dims != first_dims:
            raise UserError(f"{path}: conditions/steps/dimensions {dims} do not match {first_path} {first_dims}")


def load_controllers(path) -> list[LinearGaussianPolicy]:
    """Controllers or a policy linearisation (K, k, pol_covar) of every condition."""
    return controllers_from_datasets(read_artifact(path, CONTROLLER_FIELDS)[0], str(path))


def load_dynamics(path) -> list[Dynamics]:
    return dynamics_from_datasets(read_artifact(path, DYNAMICS_FIELDS)[0], str(path))


def load_cost_models(path) -> list[QuadraticCost]:
    """The cost expansion stored with the samples."""
    return costs_from_datasets(read_artifact(path, COST_FIELDS)[0], str(path))


def load_policy(path):
    """The network (PolicyParams). Does not import torch."""
    data, attrs = read_artifact(path)
    return policy_from_datasets(data, attrs, str(path))


def load_policy_and_adam(path):
    """The network and its Adam state (None before the first S-step); imports torch."""
    data, attrs = read_artifact(path)
    return policy_from_datasets(data, attrs, str(path)), adam_from_datasets(data, attrs)
