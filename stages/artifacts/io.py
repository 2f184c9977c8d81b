"""HDF5 artifacts: atomic writes, checked reads.

Every artifact has root attributes `schema_version`, `stage`, `iteration` and
`params` (JSON of the params the stage read). Files are written to a temporary
name in the same folder and renamed, so a killed stage never leaves a file that
looks complete. Timestamps are not stored, so equal data gives equal bytes.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import h5py
import numpy as np

from stages.artifacts.layouts import LAYOUTS
from stages.errors import UserError

SCHEMA_VERSION = 1


def write_artifact(
    path: str | Path,
    stage: str,
    iteration: int,
    params: Mapping[str, Any],
    datasets: Mapping[str, Any],
    attrs: Mapping[str, Any] | None = None,
) -> None:
    """Write datasets (name -> array; names may contain '/' for groups) atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with h5py.File(tmp, "w", track_order=False) as f:
            f.attrs["schema_version"] = SCHEMA_VERSION
            f.attrs["stage"] = stage
            f.attrs["iteration"] = iteration
            f.attrs["params"] = json.dumps(params, sort_keys=True)
            for key, value in (attrs or {}).items():
                f.attrs[key] = value
            for name, value in datasets.items():
                f.create_dataset(name, data=np.asarray(value), track_times=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def open_artifact(path: str | Path, any_version: bool = False) -> h5py.File:
    """The artifact opened for reading, after checking it exists, is HDF5 and has our schema version.

    any_version: open files of another schema version too (`gps inspect` shows the files the stages refuse).
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: file not found")
    try:
        f = h5py.File(path, "r")
    except OSError:
        raise UserError(f"{path}: not an HDF5 file") from None
    version = f.attrs.get("schema_version")
    version = version.item() if isinstance(version, np.generic) else version
    if version != SCHEMA_VERSION and not any_version:
        f.close()
        raise UserError(f"{path}: schema_version is {version!r}, expected {SCHEMA_VERSION}")
    return f


def read_artifact(path: str | Path, names: Sequence[str] | None = None, optional: Sequence[str] = (),
                  any_version: bool = False, kind: str | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Datasets (flattened names, in file order) and root attributes of an artifact, through open_artifact's checks.

    names None: every dataset. Otherwise only those, each required (a one-line UserError naming the file and the
    dataset when it is missing), and the `optional` ones where present: `gps status` reads a few small datasets of
    a run that may still be going. kind: a kind of the layout table (stages/artifacts/layouts.py); every dataset
    read that the table lists for it must have the table's rank and dtype. Sizes across datasets and files,
    finiteness and the rest are checked by the loaders (stages/artifacts/checks.py).
    """
    with open_artifact(path, any_version) as f:
        data: dict[str, np.ndarray] = {}
        if names is None:

            def visit(name, obj):
                if isinstance(obj, h5py.Dataset):
                    data[name] = obj[()]

            f.visititems(visit)
        else:
            for name in names:
                if not isinstance(f.get(name), h5py.Dataset):
                    raise UserError(f"{path}: dataset {name!r} is missing")
                data[name] = np.asarray(f[name][()])
            for name in optional:
                if isinstance(f.get(name), h5py.Dataset):
                    data[name] = np.asarray(f[name][()])
        attrs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()}
    if kind is not None:
        _check_layout(path, kind, data)
    return data, attrs


_DTYPES = {  # the table's dtype -> (what the message says is expected, whether a numpy dtype is one)
    "float64": ("float64", lambda dt: dt == np.float64),
    "int64": ("an integer type", lambda dt: dt.kind in "iu"),
    "int8": ("an integer type", lambda dt: dt.kind in "iu"),
    "bool": ("bool", lambda dt: dt.kind == "b"),
}


def _check_layout(path: str | Path, kind: str, data: Mapping[str, np.ndarray]) -> None:
    """Every dataset of `data` that the layout table lists for `kind` has the table's rank and dtype."""
    table = LAYOUTS[kind]
    for name, a in data.items():
        d = table.get(name)
        if d is None or not d.dims:
            continue
        a = np.asarray(a)  # a scalar dataset reads as a numpy or Python scalar
        expected, ok = _DTYPES[d.dtype]
        if not ok(a.dtype):
            dtype = "string" if a.dtype.kind in "SUO" else a.dtype.name
            raise UserError(f"{path}: dataset {name!r} has dtype {dtype}, expected {expected}")
        if a.ndim != len(d.dims.split(",")):
            raise UserError(f"{path}: dataset {name!r} has shape {a.shape}, expected [{d.dims}]")


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write a text file through a temporary file and a rename: never half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: str | Path, obj: Any) -> None:
    """Atomic JSON write (metrics files)."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")
