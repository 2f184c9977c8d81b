"""`gps summary`: the learning curve over iterations, and the check that the pipeline matches params.yaml."""

from __future__ import annotations

from pathlib import Path

import typer

from stages.settings import params as cfg
from stages.app import ParamsOpt, stage_command
from stages.artifacts.io import write_json, write_text_atomic
from stages.errors import UserError


@stage_command("summary")
def summary(
    params_path: Path = ParamsOpt,
    metrics: list[Path] = typer.Argument(..., help="per-iteration metrics.json files, in order"),
    out: Path = typer.Option(..., "--out", help="summary metrics JSON (last iteration)"),
    curve: Path = typer.Option(..., "--curve", help="learning curve CSV, one row per iteration"),
    root: Path = typer.Option(Path("."), "--root", help="project root whose dvc.yaml files are checked against params.yaml"),
) -> None:
    """Learning curve over iterations; fails if the pipeline files are out of sync with params.yaml."""
    import json

    from stages.pipeline.generate import check_in_sync

    params = cfg.load_params(params_path)
    check_in_sync(params, params_path, root)
    rows = []
    for path in metrics:
        if not path.exists():
            raise UserError(f"{path}: file not found")
        rows.append(json.loads(path.read_text()))
    columns = ["iteration"] + [k for k in rows[0] if k not in ("iteration", "per_condition")]
    lines = [",".join(columns)] + [",".join(f"{row[c]:.6g}" if c != "iteration" else str(row[c]) for c in columns) for row in rows]
    write_text_atomic(curve, "\n".join(lines) + "\n")
    final = {k: v for k, v in rows[-1].items()}
    write_json(out, final)
