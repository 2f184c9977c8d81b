"""Conversion between gps_core objects and the datasets of the HDF5 artifacts, with full checks on read.

Dataset names and shapes are documented in docs/artifacts.md. The loaders check
everything they read: each dataset is present, float64 (or the documented integer
type), of the documented shape, finite; covariances are symmetric (and positive
definite where they must be inverted); variances and step multipliers are positive.
Sizes can be pinned with `known` (symbol -> (size, where it comes from)): a stage
that reads several files passes the sizes found in the first, so that all of them
must describe the same conditions (M), horizon (T) and dimensions (dX, dU, dO).
Every failure is a one-line UserError naming the file and the dataset.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from gps_core.lingauss import LinearGaussianPolicy
from gps_core.lqr import Dynamics, QuadraticCost
from stages.artifacts.io import read_artifact
from stages.errors import UserError

CONTROLLER_FIELDS = ("K", "k", "pol_covar")

Known = dict[str, tuple[int, str]]
PROBLEM = ("M", "T", "dX", "dU")  # what every file of one run agrees on
MAY_BE_EMPTY = ("Nb",)  # the dynamics prior's trajectory buffer


# ---------------------------------------------------------------- generic checks


def _dtype_name(a: np.ndarray) -> str:
    return "string" if a.dtype.kind in "SUO" else a.dtype.name


_KINDS = {
    "float": ("float64", lambda dt: dt == np.float64),
    "int": ("an integer type", lambda dt: dt.kind in "iu"),
}


def _array(path: str, data: dict[str, Any], name: str, kind: str = "float") -> np.ndarray:
    """The dataset, present and of the right dtype."""
    if name not in data:
        raise UserError(f"{path}: dataset {name!r} is missing")
    a = np.asarray(data[name])
    expected, ok = _KINDS[kind]
    if not ok(a.dtype):
        raise UserError(f"{path}: dataset {name!r} has dtype {_dtype_name(a)}, expected {expected}")
    return a


def _check(path: str, data: dict[str, Any], spec: dict[str, str | tuple[str, str]], known: Known | None = None) -> dict[str, int]:
    """Check datasets against symbolic shapes like "M,T,dX,D" (or (dims, "int")); returns the sizes found.

    Each dataset must be present, float64 (or an integer type), of the given rank,
    agree with the sizes in `known` and with the other datasets, and be finite.
    Raises a one-line UserError naming the file and dataset on the first problem.
    """
    sizes = {s: n for s, (n, _) in (known or {}).items()}
    where = {s: src for s, (_, src) in (known or {}).items()}
    for name, dims in spec.items():
        dims, kind = dims if isinstance(dims, tuple) else (dims, "float")
        a = _array(path, data, name, kind)
        symbols = dims.split(",") if dims else []
        if a.ndim != len(symbols):
            raise UserError(f"{path}: dataset {name!r} has shape {a.shape}, expected [{dims}]")
        for symbol, n in zip(symbols, a.shape):
            if sizes.setdefault(symbol, n) != n:
                src = f" ({where[symbol]})" if symbol in where else ""
                raise UserError(f"{path}: dataset {name!r} has shape {a.shape}, expected [{dims}] with {symbol} = {sizes[symbol]}{src}")
            where.setdefault(symbol, f"as in dataset {name!r}")
            if n == 0 and symbol not in MAY_BE_EMPTY:
                raise UserError(f"{path}: dataset {name!r} has shape {a.shape}, expected [{dims}] with {symbol} >= 1")
        if kind == "float" and not np.all(np.isfinite(a)):
            raise UserError(f"{path}: dataset {name!r} contains NaN or Inf")
    return sizes


def known_from(sizes: dict[str, int], path: Any, symbols: Sequence[str] = PROBLEM) -> Known:
    """Sizes found in one file, to check the next file of the same stage against."""
    return {s: (sizes[s], f"as in {path}") for s in symbols if s in sizes}


def _positive(path: str, a: np.ndarray, name: str, strict: bool = True) -> None:
    bad = (a <= 0) if strict else (a < 0)
    if np.any(bad):
        raise UserError(f"{path}: dataset {name!r} has an entry {a[bad].flat[0]:.6g}, expected every entry {'>' if strict else '>='} 0")


def check_symmetric(a: np.ndarray, path: str, name: str) -> None:
    """Symmetric in every [..., d, d] block (up to rounding), or a one-line UserError."""
    asym = np.abs(a - np.swapaxes(a, -1, -2)).max(initial=0.0)
    if asym > 1e-8 * max(1.0, np.abs(a).max(initial=0.0)):
        raise UserError(f"{path}: dataset {name!r} is not symmetric (largest asymmetry {asym:.3g})")


def check_covariance(covar: np.ndarray, path: str, name: str) -> None:
    """Symmetric and positive definite in every [..., d, d] block, or a one-line UserError."""
    check_symmetric(covar, path, name)
    try:
        np.linalg.cholesky(covar)
    except np.linalg.LinAlgError:
        raise UserError(f"{path}: dataset {name!r} is not positive definite") from None


def _int_attr(path: str, attrs: dict[str, Any], name: str, lo: int) -> int:
    if name not in attrs:
        raise UserError(f"{path}: attribute {name!r} is missing")
    v = attrs[name]
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or v < lo:
        raise UserError(f"{path}: attribute {name!r} is {v!r}, expected an integer >= {lo}")
    return int(v)


# ---------------------------------------------------------------- controllers


def controllers_to_datasets(pols: list[LinearGaussianPolicy]) -> dict[str, np.ndarray]:
    return {
        "K": np.stack([p.K for p in pols]),
        "k": np.stack([p.k for p in pols]),
        "pol_covar": np.stack([p.covar for p in pols]),
    }


CONTROLLER_SPEC = {"K": "M,T,dU,dX", "k": "M,T,dU", "pol_covar": "M,T,dU,dU"}


def controllers_from_datasets(data: dict[str, np.ndarray], path: str = "", known: Known | None = None) -> list[LinearGaussianPolicy]:
    K, k, covar = (_array(path, data, name) for name in CONTROLLER_FIELDS)
    if K.ndim != 4 or k.shape != K.shape[:3] or covar.shape != K.shape[:3] + (K.shape[2],):
        raise UserError(
            f"{path}: datasets K {K.shape}, k {k.shape}, pol_covar {covar.shape} do not have the shapes "
            "[M,T,dU,dX], [M,T,dU], [M,T,dU,dU]"
        )
    _check(path, data, CONTROLLER_SPEC, known)
    check_covariance(covar, path, "pol_covar")
    return [LinearGaussianPolicy(K=K[m], k=k[m], covar=covar[m]) for m in range(K.shape[0])]


# ---------------------------------------------------------------- GMM priors


def gmms_to_datasets(prefix: str, gmms: list) -> dict[str, np.ndarray]:
    if any(g is None for g in gmms):
        return {}
    return {
        f"{prefix}/gmm_mu": np.stack([g.mu for g in gmms]),
        f"{prefix}/gmm_sigma": np.stack([g.sigma for g in gmms]),
        f"{prefix}/gmm_logmass": np.stack([g.logmass for g in gmms]),
        f"{prefix}/gmm_n_init": np.array([g.n_init for g in gmms], dtype=np.int64),
    }


def gmm_names(prefix: str) -> tuple[str, str, str, str]:
    """The datasets of the per-condition GMMs stored under `prefix`: mu, sigma, logmass, n_init."""
    return f"{prefix}/gmm_mu", f"{prefix}/gmm_sigma", f"{prefix}/gmm_logmass", f"{prefix}/gmm_n_init"


def check_gmms(path: str, data: dict[str, Any], prefix: str, known: Known) -> None:
    """The stored GMMs: [M,K,E], [M,K,E,E] positive definite, [M,K], [M] integers >= 0.

    All four datasets are required: every stage that writes a prior writes its GMMs, and a file
    given as a prior without them must not pass for "no prior yet" (that is what leaving out
    --prev means).
    """
    mu, sigma, logmass, n_init = gmm_names(prefix)
    _check(path, data, {mu: "M,K,E", sigma: "M,K,E,E", logmass: "M,K", n_init: ("M", "int")}, known)
    check_covariance(np.asarray(data[sigma]), path, sigma)
    _positive(path, np.asarray(data[n_init]), n_init, strict=False)


def gmms_from_datasets(prefix: str, data: dict[str, np.ndarray], M: int, path: str = "") -> list:
    """Per-condition GMMs of datasets that check_gmms has checked. Imports scipy via gps_core.gmm.

    A missing dataset is an error, never "no GMM": the loaders (load_dynamics_prior,
    load_policy_lin_prior) report it with the file's name first.
    """
    from gps_core.gmm import GMM

    names = gmm_names(prefix)
    for name in names:
        if name not in data:
            raise UserError(f"{path + ': ' if path else ''}dataset {name!r} is missing")
    mu, sigma, logmass, n_init = (data[name] for name in names)
    return [GMM(mu=mu[m], sigma=sigma[m], logmass=logmass[m], n_init=int(n_init[m])) for m in range(M)]


# ---------------------------------------------------------------- dynamics, costs, samples


DYNAMICS_SPEC = {"Fm": "M,T,dX,D", "fv": "M,T,dX", "dyn_covar": "M,T,dX,dX", "x0mu": "M,dX", "x0sigma": "M,dX,dX"}
SAMPLES_SPEC = {"X": "M,N,T,dX", "U": "M,N,T,dU", "obs": "M,N,T,dO", "cost": "M,N,T"}
COST_SPEC = {"Cm": "M,T,D,D", "cv": "M,T,D", "cc": "M,T"}


def _with_D(known: Known | None) -> Known:
    """`known` plus D = dX + dU when both are known."""
    known = dict(known or {})
    if "dX" in known and "dU" in known and "D" not in known:
        (dX, src), (dU, _) = known["dX"], known["dU"]
        known["D"] = (dX + dU, f"dX + dU, {src}" if src.startswith("as in") else "dX + dU")
    return known


def dynamics_from_datasets(data: dict[str, np.ndarray], path: str = "", known: Known | None = None) -> list[Dynamics]:
    sizes = _check(path, data, DYNAMICS_SPEC, _with_D(known))
    if sizes["D"] <= sizes["dX"]:
        raise UserError(f"{path}: dataset 'Fm' has shape {data['Fm'].shape}: D = {sizes['D']} must exceed dX = {sizes['dX']} (D = dX + dU)")
    check_symmetric(data["dyn_covar"], path, "dyn_covar")  # zero at t = T-1, so only symmetric
    check_covariance(data["x0sigma"], path, "x0sigma")
    return [
        Dynamics(Fm=data["Fm"][m], fv=data["fv"][m], covar=data["dyn_covar"][m], x0mu=data["x0mu"][m], x0sigma=data["x0sigma"][m])
        for m in range(data["Fm"].shape[0])
    ]


def check_samples(data: dict[str, Any], path: str = "", known: Known | None = None) -> dict[str, int]:
    """X, U, obs, cost and the cost expansion Cm, cv, cc of a samples file; returns the sizes."""
    sizes = _check(path, data, SAMPLES_SPEC, known)
    inner = {"M": (sizes["M"], "as in dataset 'X'"), "T": (sizes["T"], "as in dataset 'X'"),
             "D": (sizes["dX"] + sizes["dU"], "dX + dU of datasets 'X' and 'U'")}
    _check(path, data, COST_SPEC, inner)
    check_symmetric(data["Cm"], path, "Cm")
    return sizes


def costs_from_datasets(data: dict[str, np.ndarray], path: str = "") -> list[QuadraticCost]:
    _check(path, data, COST_SPEC)
    return [QuadraticCost(Cm=data["Cm"][m], cv=data["cv"][m], cc=data["cc"][m]) for m in range(data["Cm"].shape[0])]


# ---------------------------------------------------------------- policy


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


def check_policy(
    data: dict[str, Any], attrs: dict[str, Any], path: str = "", known: Known | None = None, hidden: Sequence[int] | None = None
) -> dict[str, int]:
    """Weights [out,in] chained dO -> h1 -> ... -> dU, biases, normalisation [dO], variance [dU] > 0, Adam state.

    `hidden`: the hidden layer sizes the params ask for (policy.hidden).
    """
    n = _int_attr(path, attrs, "n_layers", 1)
    if hidden is not None and n != len(hidden) + 1:
        raise UserError(f"{path}: attribute 'n_layers' is {n}, expected {len(hidden) + 1} (policy.hidden in params has {len(hidden)} hidden layers)")
    if "normalised" not in attrs:
        raise UserError(f"{path}: attribute 'normalised' is missing")
    if f"policy/W{n}" in data:
        raise UserError(f"{path}: dataset 'policy/W{n}' is present but attribute 'n_layers' is {n}")
    # Without adam_step the Adam state would be taken as absent (a fresh optimiser), so its datasets without it are an error.
    adam = sorted(name for name in data if name.startswith("adam/"))
    if adam and "adam_step" not in attrs:
        raise UserError(f"{path}: dataset {adam[0]!r} is present but attribute 'adam_step' is missing")
    symbols = ["dO", *(f"h{i}" for i in range(1, n)), "dU"]
    spec: dict[str, str | tuple[str, str]] = {}
    for i in range(n):
        spec[f"policy/W{i}"] = f"{symbols[i + 1]},{symbols[i]}"
        spec[f"policy/b{i}"] = symbols[i + 1]
    params_spec = dict(spec)
    spec.update({"policy/obs_scale": "dO", "policy/obs_bias": "dO", "policy/var": "dU"})
    known = dict(known or {})
    known.update({f"h{i}": (int(h), "policy.hidden in params") for i, h in enumerate(hidden or (), start=1)})
    sizes = _check(path, data, spec, known)
    _positive(path, np.asarray(data["policy/var"]), "policy/var")
    if "adam_step" in attrs:
        _int_attr(path, attrs, "adam_step", 0)
        adam_spec = {}
        for j, dims in enumerate(params_spec.values()):  # order W0, b0, W1, b1, ...
            adam_spec[f"adam/exp_avg{j}"] = dims
            adam_spec[f"adam/exp_avg_sq{j}"] = dims
        _check(path, data, adam_spec, {s: (v, "as in the policy weights") for s, v in sizes.items()})
        for j in range(len(params_spec)):
            _positive(path, np.asarray(data[f"adam/exp_avg_sq{j}"]), f"adam/exp_avg_sq{j}", strict=False)
    return sizes


def policy_from_datasets(data: dict[str, np.ndarray], attrs: dict[str, Any], path: str = "", known: Known | None = None,
                         hidden: Sequence[int] | None = None):
    from gps_core.policy_net import PolicyParams

    check_policy(data, attrs, path, known, hidden)
    n = int(attrs["n_layers"])
    return PolicyParams(
        weights=[data[f"policy/W{i}"] for i in range(n)],
        biases=[data[f"policy/b{i}"] for i in range(n)],
        obs_scale=data["policy/obs_scale"],
        obs_bias=data["policy/obs_bias"],
        var=data["policy/var"],
        normalised=bool(attrs["normalised"]),
    )


def adam_from_datasets(data: dict[str, np.ndarray], attrs: dict[str, Any]):
    """The Adam state (None before the first S-step); check_policy has checked it."""
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


def load_controllers(path, known: Known | None = None) -> list[LinearGaussianPolicy]:
    """Controllers or a policy linearisation (K, k, pol_covar) of every condition."""
    return controllers_from_datasets(read_artifact(path)[0], str(path), known)


def load_eta(path, known: Known | None = None) -> np.ndarray:
    """The C-step dual variables `eta` [M] (> 0) of a controllers file."""
    data = read_artifact(path)[0]
    _check(str(path), data, {"eta": "M"}, known)
    _positive(str(path), data["eta"], "eta")
    return data["eta"]


def check_controller_stats(path, known: Known | None = None) -> dict[str, np.ndarray]:
    """The C-step's summary of a controllers file: eta [M] > 0, kl [M] >= 0, kl_step [M] > 0."""
    data = read_artifact(path)[0]
    _check(str(path), data, {"eta": "M", "kl": "M", "kl_step": "M"}, known)
    _positive(str(path), data["eta"], "eta")
    _positive(str(path), data["kl"], "kl", strict=False)
    _positive(str(path), data["kl_step"], "kl_step")
    return data


def load_dynamics(path, known: Known | None = None) -> list[Dynamics]:
    return dynamics_from_datasets(read_artifact(path)[0], str(path), known)


def load_dynamics_prior(path, known: Known | None = None) -> dict[str, np.ndarray]:
    """The prior part of a dynamics file: buffer prior/X [M,Nb,T,dX], prior/U [M,Nb,T,dU] and the GMM over [x; u; x'].

    Every one of them is required (a file given as --prev is never "no prior").
    """
    data = read_artifact(path)[0]
    sizes = _check(str(path), data, {"prior/X": "M,Nb,T,dX", "prior/U": "M,Nb,T,dU"}, known)
    width = 2 * sizes["dX"] + sizes["dU"]
    check_gmms(str(path), data, "prior", {"M": (sizes["M"], "as in dataset 'prior/X'"),
                                          "E": (width, "2 dX + dU of datasets 'prior/X' and 'prior/U'")})
    return data


def load_policy_lin_prior(path, known: Known) -> dict[str, np.ndarray]:
    """The GMM over [x; u] of a policy_lin file, required (known must give M, dX and dU)."""
    data = read_artifact(path)[0]
    check_gmms(str(path), data, "prior", {"M": known["M"], "E": (known["dX"][0] + known["dU"][0], "dX + dU, " + known["dX"][1])})
    return data


def load_samples(path, known: Known | None = None) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """All datasets of a samples file, checked, and the sizes M, N, T, dX, dU, dO."""
    data = read_artifact(path)[0]
    return data, check_samples(data, str(path), known)


def load_cost_models(path, known: Known | None = None) -> list[QuadraticCost]:
    """The cost expansion stored with the samples (the whole samples file is checked)."""
    data, _ = load_samples(path, known)
    return costs_from_datasets(data, str(path))


def load_step(path, known: Known | None = None) -> np.ndarray:
    """step_mult [M], finite and > 0."""
    data = read_artifact(path)[0]
    _check(str(path), data, {"step_mult": "M"}, known)
    _positive(str(path), data["step_mult"], "step_mult")
    return data["step_mult"]


def load_policy(path, known: Known | None = None, hidden: Sequence[int] | None = None):
    """The network (PolicyParams), checked including its Adam state. Does not import torch."""
    data, attrs = read_artifact(path)
    return policy_from_datasets(data, attrs, str(path), known, hidden)


def load_policy_and_adam(path, known: Known | None = None, hidden: Sequence[int] | None = None):
    """The network and its Adam state (None before the first S-step); imports torch."""
    data, attrs = read_artifact(path)
    return policy_from_datasets(data, attrs, str(path), known, hidden), adam_from_datasets(data, attrs)


# ---------------------------------------------------------------- BADMM dual variables


DUALS_SPEC = {"lam_k": "M,T,dU", "lam_K": "M,T,dU,dX", "pol_wt": "M,T"}


def duals_to_datasets(duals: Any) -> dict[str, np.ndarray]:
    """gps_core.badmm.DualState -> datasets; prev_kl is left out while there is none (before the first ν update)."""
    data = {"lam_k": duals.lam_k, "lam_K": duals.lam_K, "pol_wt": duals.pol_wt}
    if duals.prev_kl is not None:
        data["prev_kl"] = duals.prev_kl
    return {k: np.asarray(v, dtype=np.float64) for k, v in data.items()}


def duals_from_datasets(data: dict[str, np.ndarray], path: str = "", known: Known | None = None):
    """λ_k [M,T,dU], λ_K [M,T,dU,dX], ν = pol_wt [M,T] (>= 0, not all 0), optional prev_kl [M,T]."""
    from gps_core.badmm import DualState

    sizes = _check(path, data, DUALS_SPEC, known)
    pol_wt = np.asarray(data["pol_wt"])
    _positive(path, pol_wt, "pol_wt", strict=False)
    if not np.any(pol_wt > 0):  # the S-step weights are ν
        raise UserError(f"{path}: dataset 'pol_wt' is 0 everywhere, expected some entry > 0")
    prev_kl = None
    if "prev_kl" in data:
        _check(path, data, {"prev_kl": "M,T"}, {s: (n, "as in dataset 'pol_wt'") for s, n in sizes.items() if s in ("M", "T")})
        prev_kl = data["prev_kl"]
    return DualState(lam_k=data["lam_k"], lam_K=data["lam_K"], pol_wt=pol_wt, prev_kl=prev_kl)


def load_duals(path, known: Known | None = None):
    """The BADMM dual variables of a duals.h5 (gps_core.badmm.DualState), checked."""
    return duals_from_datasets(read_artifact(path)[0], str(path), known)
