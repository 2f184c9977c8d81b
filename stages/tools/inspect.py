"""`gps inspect`: what is inside an artifact, in plain text.

The header gives the root attributes (stage, iteration, schema version, the
params that made the file, and any other attribute); then every dataset,
recursively through groups, with its documented layout (stages/artifacts/layouts.py),
shape, dtype and summary statistics. One dataset can be printed, and sliced on
its condition (M), sample (N, or Nb for the dynamics prior's buffer) and time
(T) axes, located through the documented layout: `K [M,T,dU,dX]` with
`--condition 3 --time 50` is the dU x dX gain matrix of condition 3 at step 50.

Files with another schema version are shown too (with a warning), since this
is the tool to look at files the stages refuse.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stages.artifacts.io import SCHEMA_VERSION, read_artifact
from stages.artifacts.layouts import inspect_layouts, numbered_layouts
from stages.errors import UserError

# The documented layouts (stages/artifacts/layouts.py), by dataset name; a name with two layouts
# (X and U of samples [M,N,T,.] and of eval [M,T,.]) is told apart by its rank.
_LAYOUTS = inspect_layouts()
_NUMBERED = [(re.compile(pattern), dims) for pattern, dims in numbered_layouts()]  # policy/W0, adam/exp_avg0, ...

# The axes that can be sliced: option name -> the layout symbols it indexes.
AXES = {"condition": ("M",), "sample": ("N", "Nb"), "time": ("T",)}
_AXIS_WORDS = {"M": "conditions", "N": "samples", "Nb": "buffered trajectories", "T": "time steps"}


def layout(name: str, ndim: int) -> list[str] | None:
    """The documented axis symbols of a dataset, or None if it has no documented layout of that rank."""
    for dims in _LAYOUTS.get(name, ()):
        symbols = dims.split(",")
        if len(symbols) == ndim:
            return symbols
    for pattern, dims in _NUMBERED:
        if pattern.fullmatch(name):
            # "" (the Adam moments): as the parameter, [out,in] or [out]
            symbols = dims.split(",") if dims else (["out", "in"] if ndim == 2 else ["out"])
            return symbols if len(symbols) == ndim else None
    return None


@dataclass
class Artifact:
    path: Path
    attrs: dict[str, Any]
    datasets: dict[str, np.ndarray]  # flattened names, in file order


def _plain(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, bytes):
        return v.decode(errors="replace")
    if isinstance(v, np.ndarray):
        return v.tolist()
    return v


def read_any(path: str | Path) -> Artifact:
    """Every dataset and root attribute of an HDF5 file, whatever its schema version."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a directory, expected an HDF5 file")
    datasets, attrs = read_artifact(path, any_version=True)
    return Artifact(path, {k: _plain(v) for k, v in attrs.items()}, datasets)


# ------------------------------------------------------------------ formatting


def _num(x: float) -> str:
    if not np.isfinite(x):
        return str(x)
    if x == 0:
        return "0"
    if 1e-3 <= abs(x) < 1e5:
        return f"{x:.4g}"
    return f"{x:.3e}"


def stats(a: np.ndarray) -> dict[str, str]:
    """min, max, mean (over finite entries) and the count of NaN/Inf, formatted; '-' where they do not apply."""
    a = np.asarray(a)
    if a.dtype.kind not in "biuf" or a.size == 0:
        return {"min": "-", "max": "-", "mean": "-", "nonfinite": "-"}
    a = a.astype(np.float64) if a.dtype.kind == "b" else a
    if a.dtype.kind == "f":
        finite = np.isfinite(a)
        n_nan, n_inf = int(np.isnan(a).sum()), int(np.isinf(a).sum())
        bad = ", ".join(p for p in (f"{n_nan} NaN" if n_nan else "", f"{n_inf} Inf" if n_inf else "") if p) or "0"
        vals = a[finite]
    else:
        bad, vals = "0", a
    if vals.size == 0:
        return {"min": "-", "max": "-", "mean": "-", "nonfinite": bad}
    return {"min": _num(float(vals.min())), "max": _num(float(vals.max())), "mean": _num(float(vals.mean())), "nonfinite": bad}


def _dtype(a: np.ndarray) -> str:
    return "string" if a.dtype.kind in "SUO" else a.dtype.name


def _table(header: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    fmt = lambda r: "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()  # noqa: E731
    return [fmt(header), *map(fmt, rows)]


def header_lines(art: Artifact) -> list[str]:
    attrs = dict(art.attrs)
    version = attrs.pop("schema_version", None)
    stage, itr = attrs.pop("stage", None), attrs.pop("iteration", None)
    note = "" if version == SCHEMA_VERSION else f"  (the stages read only schema_version {SCHEMA_VERSION})"
    lines = [str(art.path), f"  stage {stage!s}, iteration {itr!s}, schema_version {version!s}{note}"]
    raw = attrs.pop("params", None)
    for key, value in sorted(attrs.items()):
        lines.append(f"  {key}: {value}")
    if raw is None:
        lines.append("  params: (none recorded)")
    else:
        try:
            params = json.loads(raw)
        except (TypeError, ValueError):
            lines.append(f"  params (not JSON): {raw!s}")
        else:
            lines.append("  params:")
            for key, value in params.items():
                lines.append(f"    {key}: {json.dumps(value, separators=(', ', ': '))}")
    return lines


def listing(art: Artifact) -> str:
    """Header and one line per dataset."""
    rows = []
    for name, a in art.datasets.items():
        dims = layout(name, a.ndim)
        s = stats(a)
        rows.append([name, f"[{','.join(dims)}]" if dims else "", str(tuple(a.shape)), _dtype(a),
                     s["min"], s["max"], s["mean"], s["nonfinite"]])
    lines = header_lines(art)
    if rows:
        lines += ["", f"datasets ({len(rows)}):"]
        lines += ["  " + line for line in _table(["name", "layout", "shape", "dtype", "min", "max", "mean", "NaN/Inf"],
                                                rows, {4, 5, 6})]
    else:
        lines += ["", "no datasets"]
    return "\n".join(lines) + "\n"


def _index(path: Path, name: str, dims: list[str] | None, shape: tuple[int, ...], picks: dict[str, int | None]):
    """The numpy index for the requested condition/sample/time, and the axes left."""
    chosen = {opt: i for opt, i in picks.items() if i is not None}
    if not chosen:
        return (), dims
    if dims is None:
        raise UserError(f"{path}: dataset {name!r} has no documented layout, so it has no condition, sample or time axis "
                        f"to slice (shape {tuple(shape)})")
    index: list[Any] = [slice(None)] * len(dims)
    for opt, i in chosen.items():
        axis = next((a for a, s in enumerate(dims) if s in AXES[opt]), None)
        if axis is None:
            raise UserError(f"{path}: dataset {name!r} [{','.join(dims)}] has no {opt} axis (--{opt})")
        n = shape[axis]
        if not -n <= i < n:
            raise UserError(f"{path}: --{opt} {i} is out of range for dataset {name!r} [{','.join(dims)}] "
                            f"with {n} {_AXIS_WORDS[dims[axis]]} (0..{n - 1})")
        index[axis] = i
    left = [s for s, ix in zip(dims, index) if isinstance(ix, slice)]
    return tuple(index), left


def show_dataset(art: Artifact, name: str, condition: int | None = None, sample: int | None = None,
                 time: int | None = None, full: bool = False) -> str:
    """One dataset (or a slice of it): its layout, statistics and values."""
    name = name.strip("/")
    if name not in art.datasets:
        known = ", ".join(art.datasets) or "none"
        raise UserError(f"{art.path}: no dataset {name!r}; it has: {known}")
    a = art.datasets[name]
    dims = layout(name, a.ndim)
    index, left = _index(art.path, name, dims, a.shape, {"condition": condition, "sample": sample, "time": time})
    part = a[index] if index else a
    label = name
    if index:
        label += "[" + ", ".join(str(ix) if not isinstance(ix, slice) else ":" for ix in index) + "]"
    s = stats(np.asarray(part))
    lines = [
        label,
        f"  layout [{','.join(left)}]" if left is not None and left else ("  scalar" if np.ndim(part) == 0 else "  layout undocumented"),
        f"  shape {tuple(np.shape(part))}, dtype {_dtype(a)}",
        f"  min {s['min']}, max {s['max']}, mean {s['mean']}, NaN/Inf {s['nonfinite']}",
    ]
    part = np.asarray(part)
    if part.dtype.kind in "SUO":
        values = str(_plain(part))
    else:
        # A matrix keeps one row per line; numpy summarises large arrays unless --full.
        width = 10**6 if part.ndim <= 2 else 200
        # 4 significant digits in columns of equal width, so small entries keep their precision.
        fmt = {"float_kind": lambda x: f"{x:10.4g}"}
        values = np.array2string(part, max_line_width=width, threshold=sys.maxsize if full else 1000, formatter=fmt)
    return "\n".join(lines) + "\n" + values + "\n"


def inspect_text(path: str | Path, dataset: str | None = None, condition: int | None = None, sample: int | None = None,
                 time: int | None = None, full: bool = False) -> str:
    """What `gps inspect` prints."""
    art = read_any(path)
    if dataset is None:
        given = [f"--{o}" for o, v in (("condition", condition), ("sample", sample), ("time", time)) if v is not None]
        if given:
            raise UserError(f"{' '.join(given)} needs --dataset NAME (the dataset to slice)")
        return listing(art)
    return "\n".join(header_lines(art)[:2]) + "\n\n" + show_dataset(art, dataset, condition, sample, time, full)
