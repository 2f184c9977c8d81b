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
from typing import Any, Mapping

import h5py
import numpy as np

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


def open_artifact(path: str | Path) -> h5py.File:
    """The artifact opened for reading, after checking it exists, is HDF5 and has our schema version."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: file not found")
    try:
        f = h5py.File(path, "r")
    except OSError:
        raise UserError(f"{path}: not an HDF5 file") from None
    version = f.attrs.get("schema_version")
    version = version.item() if isinstance(version, np.generic) else version
    if version != SCHEMA_VERSION:
        f.close()
        raise UserError(f"{path}: schema_version is {version!r}, expected {SCHEMA_VERSION}")
    return f


def read_artifact(path: str | Path, required: tuple[str, ...] = ()) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """All datasets (flattened names) and root attributes of an artifact."""
    with open_artifact(path) as f:
        data: dict[str, np.ndarray] = {}

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                data[name] = obj[()]

        f.visititems(visit)
        attrs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()}
    for name in required:
        if name not in data:
            raise UserError(f"{path}: dataset {name!r} is missing")
        if np.issubdtype(data[name].dtype, np.floating) and not np.all(np.isfinite(data[name])):
            raise UserError(f"{path}: dataset {name!r} contains NaN or Inf")
    return data, attrs


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
