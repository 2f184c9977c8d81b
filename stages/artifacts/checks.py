"""The checks every artifact reader shares: dtypes, shapes against the layout table and each other, finiteness.

The loaders (one module of stages/artifacts/ per kind of gps_core object, so that a
stage imports only the algorithm code of the files it reads) check everything they
read: each dataset is present, float64 (or the documented integer type), of the
documented shape (stages/artifacts/layouts.py), finite; covariances are symmetric
(and positive definite where they must be inverted); variances and step multipliers
are positive. Sizes can be pinned with `known` (symbol -> (size, where it comes
from)): a stage that reads several files passes the sizes found in the first, so that
all of them must describe the same conditions (M), horizon (T) and dimensions (dX,
dU, dO). Every failure is a one-line UserError naming the file and the dataset.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from stages.artifacts.io import read_artifact
from stages.artifacts.layouts import spec
from stages.errors import UserError

Known = dict[str, tuple[int, str]]
PROBLEM = ("M", "T", "dX", "dU")  # what every file of one run agrees on
MAY_BE_EMPTY = ("Nb",)  # the dynamics prior's trajectory buffer


def _dtype_name(a: np.ndarray) -> str:
    return "string" if a.dtype.kind in "SUO" else a.dtype.name


_KINDS = {
    "float": ("float64", lambda dt: dt == np.float64),
    "int": ("an integer type", lambda dt: dt.kind in "iu"),
}


def array(path: str, data: dict[str, Any], name: str, kind: str = "float") -> np.ndarray:
    """The dataset, present and of the right dtype."""
    if name not in data:
        raise UserError(f"{path}: dataset {name!r} is missing")
    a = np.asarray(data[name])
    expected, ok = _KINDS[kind]
    if not ok(a.dtype):
        raise UserError(f"{path}: dataset {name!r} has dtype {_dtype_name(a)}, expected {expected}")
    return a


def check(path: str, data: dict[str, Any], layout: dict[str, str | tuple[str, str]], known: Known | None = None) -> dict[str, int]:
    """Check datasets against symbolic shapes like "M,T,dX,D" (or (dims, "int")); returns the sizes found.

    Each dataset must be present, float64 (or an integer type), of the given rank,
    agree with the sizes in `known` and with the other datasets, and be finite.
    Raises a one-line UserError naming the file and dataset on the first problem.
    """
    sizes = {s: n for s, (n, _) in (known or {}).items()}
    where = {s: src for s, (_, src) in (known or {}).items()}
    for name, dims in layout.items():
        dims, kind = dims if isinstance(dims, tuple) else (dims, "float")
        a = array(path, data, name, kind)
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


def with_D(known: Known | None) -> Known:
    """`known` plus D = dX + dU when both are known."""
    known = dict(known or {})
    if "dX" in known and "dU" in known and "D" not in known:
        (dX, src), (dU, _) = known["dX"], known["dU"]
        known["D"] = (dX + dU, f"dX + dU, {src}" if src.startswith("as in") else "dX + dU")
    return known


def positive(path: str, a: np.ndarray, name: str, strict: bool = True) -> None:
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


def int_attr(path: str, attrs: dict[str, Any], name: str, lo: int) -> int:
    if name not in attrs:
        raise UserError(f"{path}: attribute {name!r} is missing")
    v = attrs[name]
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or v < lo:
        raise UserError(f"{path}: attribute {name!r} is {v!r}, expected an integer >= {lo}")
    return int(v)


# ---------------------------------------------------------------- the kinds of plain arrays (no gps_core object)


def check_samples(data: dict[str, Any], path: str = "", known: Known | None = None) -> dict[str, int]:
    """X, U, obs, cost and the cost expansion Cm, cv, cc of a samples file; returns the sizes."""
    sizes = check(path, data, spec("samples", "X", "U", "obs", "cost"), known)
    inner = {"M": (sizes["M"], "as in dataset 'X'"), "T": (sizes["T"], "as in dataset 'X'"),
             "D": (sizes["dX"] + sizes["dU"], "dX + dU of datasets 'X' and 'U'")}
    check(path, data, spec("samples", "Cm", "cv", "cc"), inner)
    check_symmetric(data["Cm"], path, "Cm")
    return sizes


def load_samples(path, known: Known | None = None) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """All datasets of a samples file, checked, and the sizes M, N, T, dX, dU, dO."""
    data = read_artifact(path, kind="samples")[0]
    return data, check_samples(data, str(path), known)


def load_step(path, known: Known | None = None) -> np.ndarray:
    """step_mult [M], finite and > 0."""
    data = read_artifact(path, kind="step")[0]
    check(str(path), data, spec("step", "step_mult"), known)
    positive(str(path), data["step_mult"], "step_mult")
    return data["step_mult"]


def load_step_mult(path, known: Known | None = None) -> np.ndarray:
    """The step multipliers a per-step optimizer reads: [M, T] from `gps res-percent`'s file, or [M, 1]
    from a step.h5 (the init's ones: every step's multiplier). Finite and > 0."""
    data, attrs = read_artifact(path, ["step_mult"])
    kind = "res_percent" if attrs.get("stage") == "res_percent" else "step"
    check(str(path), data, spec(kind, "step_mult"), known)  # the kind's rank and dtype, as read_artifact(kind=) would
    positive(str(path), data["step_mult"], "step_mult")
    return data["step_mult"] if kind == "res_percent" else data["step_mult"][:, None]


def load_eta(path, known: Known | None = None) -> np.ndarray:
    """The C-step dual variables `eta` [M] (> 0) of a controllers file."""
    data = read_artifact(path, kind="controllers")[0]
    check(str(path), data, spec("controllers", "eta"), known)
    positive(str(path), data["eta"], "eta")
    return data["eta"]


def check_controller_stats(path, known: Known | None = None) -> dict[str, np.ndarray]:
    """The C-step's summary of a controllers file: eta [M] > 0, kl [M] >= 0, kl_step [M] > 0."""
    data = read_artifact(path, kind="controllers")[0]
    check(str(path), data, spec("controllers", "eta", "kl", "kl_step"), known)
    positive(str(path), data["eta"], "eta")
    positive(str(path), data["kl"], "kl", strict=False)
    positive(str(path), data["kl_step"], "kl_step")
    return data
