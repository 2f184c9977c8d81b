"""The run's DVC lock files, and why DVC would refuse one that a kill left torn (`gps resume` sets those aside)."""

from __future__ import annotations

from pathlib import Path

import yaml


def lock_files(root: Path) -> list[Path]:
    """Every dvc.lock of the run: the root's and one per stage file."""
    return [root / "dvc.lock", *sorted(root.glob("pipelines/**/dvc.lock"))]


def rwlock_problem(rwlock: Path) -> str | None:
    """Why DVC would refuse its stage-lock file .dvc/tmp/rwlock, or None if it is fine or absent.

    DVC rewrites the file in place around every stage; a kill during that write leaves it
    empty or cut, and every later DVC command stops on it.
    """
    import json

    if not rwlock.exists():
        return None
    try:
        doc = json.loads(rwlock.read_text() or "null")
    except ValueError as exc:
        return f"not valid JSON: {exc}"
    return None if isinstance(doc, dict) else "empty" if doc is None else f"holds {type(doc).__name__}, expected an object"


def lock_file_problem(lock: Path) -> str | None:
    """Why DVC would refuse to read this dvc.lock, or None if it is fine or absent."""
    if not lock.exists():
        return None
    from dvc.schema import COMPILED_LOCKFILE_SCHEMA  # DVC's own check, as `dvc repro` applies it
    from voluptuous import Invalid

    try:
        doc = yaml.safe_load(lock.read_text())
    except yaml.YAMLError as exc:
        return f"not valid YAML: {str(exc).splitlines()[0]}"
    if doc is None:
        return "empty"
    try:
        COMPILED_LOCKFILE_SCHEMA(doc)
    except Invalid as exc:
        return f"does not match DVC's lock file schema: {exc}"
    return None
