"""`gps status`: one row per iteration of a run, from its artifacts and metrics files.

Everything comes from the files under data/ (not from logs), so it works on a
run that is still going or was interrupted: an iteration shows what its
existing files say and marks the rest as pending. Columns:

    itr        0-based iteration (the data/itr_NN folder)
    state      done, pending, or the next stage whose output is missing
    drawn by   who drew the samples: the local controllers or the global policy (samples.h5 attribute)
    cost       mean total cost of the iteration's samples
    dist       final distance of the global policy's noise-free rollout, mean over conditions
    succ<τ>    conditions whose final distance is below τ
    survived   tasks with evaluation.survival only: conditions whose block stayed within bounds at every step,
               and the mean share of steps before the first exit
    eval cost  tasks with evaluation.cost only: the mean summed cost of the noise-free rollouts
    held-out   tasks with held-out conditions only: the policy's final distance there, mean, and how many
               are below the largest τ (eval.h5's group test, else metrics.json)
    KL/bound   KL achieved by the C-step vs its bound, means over conditions (* = a dual search did not converge)
    eta        geometric mean of the C-step dual variables
    nu         BADMM runs only: mean of the policy-KL weights ν the iteration ended with (duals.h5)
    step_mult  step multipliers of the C-step, per condition (PILQR's per-step ones: their mean over t)
    time       wall time from the previous iteration's last file to this one's (file modification times;
               "+" while the iteration is unfinished). Files restored by DVC carry the time of the restore.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gps_core.scoring import success
from stages.artifacts.io import read_artifact
from stages.artifacts.layouts import FILES
from stages.errors import UserError

if TYPE_CHECKING:
    from stages.settings.load import Settings

PENDING = "-"  # a cell whose file is not written yet
LEFT_OVER = "left over"  # an itr_NN folder beyond params' iterations (an earlier, longer run wrote it)
KIND_OF_FILE = {name: kind for kind, name in FILES.items()}  # samples.h5 -> samples, ...


def run_layout(iterations: int, algorithm: str) -> dict[str, Any]:
    """Every stage of the run as `gps pipeline` lays them out (stages.pipeline.generate), in execution order;
    built once per table (each stage lists its code, which costs an import walk)."""
    from stages.pipeline.generate import build_pipeline

    return build_pipeline(max(iterations, 1), algorithm=algorithm)["stages"]


def _iteration_stages(layout: dict[str, Any], k: int) -> dict[str, Any]:
    """Iteration k's stages of a run_layout, in execution order."""
    tag = f"_{k:02d}"
    return {name: st for name, st in layout.items() if name.endswith(tag) or (k == 0 and name == "catch_up")}


def iteration_files(k: int, algorithm: str = "mdgps", layout: dict[str, Any] | None = None) -> list[tuple[str, str]]:
    """(stage, file) of iteration k in pipeline order: every file its stages write, and the metrics."""
    files = []
    for name, st in _iteration_stages(layout or run_layout(k + 1, algorithm), k).items():
        step = name if name == "catch_up" else name.rsplit("_", 1)[0]
        files += [(step, Path(out).name) for out in [*st.get("outs", []), *st.get("metrics", [])]]
    return files


def step_file(data: Path, k: int, layout: dict[str, Any]) -> Path:
    """The step multipliers iteration k's evaluation reads (its C-step's): init/step.h5, step.h5 or res_percent.h5."""
    cmd = layout[f"evaluate_{k:02d}"]["cmd"].split()
    return data / Path(cmd[cmd.index("--step") + 1]).relative_to("data")


def init_files(layout: dict[str, Any]) -> tuple[str, ...]:
    return tuple(Path(out).name for out in layout["init"]["outs"])


def run_algorithm(data: Path, settings: "Settings | None") -> str:
    """The run's algorithm.name from the settings if given, else mdgps or badmm from the files (BADMM's init
    writes duals.h5)."""
    if settings is not None:
        return settings.algorithm.name
    return "badmm" if (data / "init" / "duals.h5").exists() or any(data.glob("itr_*/duals.h5")) else "mdgps"


@dataclass
class Row:
    iteration: int
    state: str
    cells: dict[str, str]
    problems: list[str] = field(default_factory=list)


def _read_h5(path: Path, datasets: tuple[str, ...], attrs: tuple[str, ...] = (),
             optional: tuple[str, ...] = ()) -> dict[str, Any]:
    """Some datasets and root attributes of an artifact (a UserError naming the file if it cannot be read).

    `optional` datasets (those that runs from before issue 15 lack) are read where present; each has the
    rank and dtype the layout table gives for the file's kind."""
    data, found = read_artifact(path, datasets, optional, kind=KIND_OF_FILE.get(Path(path).name))
    return {**data, **{name: found[name] for name in attrs if name in found}}


def _g(x: float) -> str:
    """Compact number: 3 significant digits, no exponent where avoidable."""
    if not np.isfinite(x):
        return str(x)
    if x != 0 and (abs(x) >= 1e5 or abs(x) < 1e-3):
        return f"{x:.2e}"
    return f"{x:.4g}" if abs(x) >= 100 else f"{x:.3g}"


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _load_settings(params_path: Path | None) -> "Settings | None":
    if params_path is None:
        default = Path("params.yaml")
        return _load_settings(default) if default.exists() else None
    from stages.settings.load import load_settings

    return load_settings(params_path)


def _iterations(data: Path, settings: "Settings | None") -> int:
    found = [int(p.name[4:]) for p in data.glob("itr_*") if p.is_dir() and p.name[4:].isdigit()]
    planned = settings.iterations if settings is not None else 0
    return max([planned, *(k + 1 for k in found)])


def _thresholds(settings: "Settings | None", metrics: list[dict[str, Any] | None]) -> list[float]:
    if settings is not None:
        return list(settings.evaluation.success_thresholds)
    found = {float(k.split("_", 1)[1]) for m in metrics if m for k in m if k.startswith("success_")}
    return sorted(found, reverse=True)


def collect(data: Path, params_path: Path | None = None) -> tuple[list[Row], list[str], "Settings | None"]:
    """The rows of the table, its column names, and the settings (None if there is no params file)."""
    data = Path(data)
    if not data.is_dir():
        raise UserError(f"{data}: no such directory (run from the project root, or pass --data)")
    settings = _load_settings(params_path)
    n_itr = _iterations(data, settings)
    metrics_all: list[dict[str, Any] | None] = []
    for k in range(n_itr):
        path = data / f"itr_{k:02d}" / "metrics.json"
        try:
            metrics_all.append(json.loads(path.read_text()) if path.exists() else None)
        except (OSError, ValueError):
            metrics_all.append(None)
    thresholds = _thresholds(settings, metrics_all)
    algorithm = run_algorithm(data, settings)
    held_out = any("test_final_distance" in m for m in metrics_all if m) or bool(settings is not None and len(settings.task.test))
    ev = settings.evaluation if settings is not None else None
    selected = {"survived": ev is not None and ev.survival is not None, "eval cost": ev is not None and ev.cost}
    scores = [c for c, key in SCORE_COLUMNS.items() if selected[c] or any(key in m for m in metrics_all if m)]
    columns = ["itr", "state", "drawn by", "cost", "dist", *(f"succ<{t:g}" for t in thresholds), *scores,
               *(["held-out"] if held_out else []), "KL/bound", "eta", *(["nu"] if algorithm == "badmm" else []), "step_mult", "safeguards", "time"]
    layout = run_layout(n_itr, algorithm)
    first = init_files(layout)
    init_times = [(data / "init" / f).stat().st_mtime for f in first if (data / "init" / f).exists()]
    prev_end = max(init_times) if len(init_times) == len(first) else None
    rows = []
    for k in range(n_itr):
        row, end = _row(data, k, thresholds, metrics_all[k], prev_end, algorithm, held_out, scores, layout)
        if settings is not None and k >= settings.iterations:  # files of an earlier, longer run: not this run's
            row.state = LEFT_OVER
        rows.append(row)
        prev_end = end if row.state == "done" else None
    return rows, columns, settings


# The scores a task may add (evaluation.survival, evaluation.cost): column -> their key in metrics.json.
SCORE_COLUMNS = {"survived": "survival", "eval cost": "eval_cost"}


def _score_cell(column: str, metrics: dict[str, Any]) -> str:
    """survived: conditions whose block stayed within bounds at every step / all (mean share of steps);
    eval cost: the mean summed cost of the evaluation rollouts."""
    if column == "survived":
        shares = list(metrics["per_condition"]["survival_steps"].values())
        return f"{sum(v == 1.0 for v in shares)}/{len(shares)} ({np.mean(shares):.2f})"
    return _g(float(metrics["eval_cost"]))


def _row(data: Path, k: int, thresholds: list[float], metrics: dict[str, Any] | None,
         prev_end: float | None, algorithm: str, held_out: bool, scores: list[str],
         layout: dict[str, Any]) -> tuple[Row, float | None]:
    d = data / f"itr_{k:02d}"
    files = iteration_files(k, algorithm, layout)
    present = {name: (d / name).exists() for _, name in files}
    missing = [stage for stage, name in files if not present[name]]
    state = "done" if not missing else ("pending" if not any(present.values()) else f"next: {missing[0]}")
    cells = {c: PENDING for c in ("drawn by", "cost", "dist", "KL/bound", "eta", "step_mult", "safeguards", "time")}
    acted: list[str] = []  # what the numerical safeguards did in this iteration (README item 13)
    cells.update({f"succ<{t:g}": PENDING for t in thresholds})
    for column in scores:
        cells[column] = _score_cell(column, metrics) if metrics is not None and SCORE_COLUMNS[column] in metrics else PENDING
    if algorithm == "badmm":
        cells["nu"] = PENDING
    if held_out:
        cells["held-out"] = PENDING
    row = Row(k, state, cells)

    def read(name: str, datasets: tuple[str, ...], attrs: tuple[str, ...] = (),
             optional: tuple[str, ...] = ()) -> dict[str, Any] | None:
        if not present.get(name, (d / name).exists()):
            return None
        try:
            return _read_h5(d / name, datasets, attrs, optional)
        except UserError as exc:
            row.problems.append(str(exc))
            return None

    samples = read("samples.h5", ("cost",), ("on_policy",), ("draws",))
    if samples is not None and "draws" in samples and np.any(samples["draws"] > 1):
        acted.append(f"{int(np.count_nonzero(samples['draws'] > 1))} redrawn")
    if samples is not None:
        cells["drawn by"] = "policy" if samples.get("on_policy") else "controllers"
        cells["cost"] = _g(float(samples["cost"].sum(-1).mean()))
    elif metrics is not None:
        cells["cost"] = _g(float(metrics["sample_cost"]))
    ev = read("eval.h5", ("final_distance",), optional=("diverged",))
    dist = ev["final_distance"] if ev is not None else None
    failed = ev.get("diverged") if ev is not None else None
    if dist is None and metrics is not None:  # eval.h5 removed but metrics kept
        per = metrics.get("per_condition", {}).get("final_distance")
        dist = np.array(list(per.values())) if per else None
    if dist is not None:
        cells["dist"] = _g(float(np.mean(dist)))
        for t in thresholds:  # a diverged evaluation is a failed condition, whatever its distance
            cells[f"succ<{t:g}"] = f"{int(success(dist, t, failed).sum())}/{len(dist)}"
    if held_out:
        test = read("eval.h5", (), optional=("test/final_distance", "test/diverged"))
        held = test.get("test/final_distance") if test is not None else None
        if held is None and metrics is not None and "test_final_distance" in metrics.get("per_condition", {}):
            held = np.array(list(metrics["per_condition"]["test_final_distance"].values()))
        if held is not None and len(held):
            tau = max(thresholds) if thresholds else None
            hits = "" if tau is None else \
                f" ({int(success(held, tau, test.get('test/diverged') if test else None).sum())}/{len(held)})"
            cells["held-out"] = _g(float(np.mean(held))) + hits
    ctrl = read("controllers.h5", ("kl", "kl_step", "eta", "converged"), ("safeguard_names",), optional=("safeguard",))
    if ctrl is not None and "safeguard" in ctrl:
        names = json.loads(ctrl.get("safeguard_names", '["none", "relative_coordinates", "kl_reference"]'))
        short = {"relative_coordinates": "rel", "kl_reference": "kept", "lqr_step": "lqr-step"}
        acted[:0] = [f"c{m}:{short.get(names[ctrl['safeguard'][m]], names[ctrl['safeguard'][m]])}"
                     for m in np.flatnonzero(ctrl["safeguard"])]
    if failed is not None and np.any(failed):
        acted.append(",".join(f"c{m}" for m in np.flatnonzero(failed)) + " diverged")
    if ctrl is not None:
        star = "" if np.all(ctrl["converged"]) else "*"
        cells["KL/bound"] = f"{_g(float(ctrl['kl'].mean()))}/{_g(float(ctrl['kl_step'].mean()))}{star}"
        eta = ctrl["eta"]
        cells["eta"] = _g(float(np.exp(np.log(eta).mean()))) if np.all(eta > 0) else _g(float(eta.mean()))
    duals = read("duals.h5", ("pol_wt",)) if algorithm == "badmm" else None
    if duals is not None:
        cells["nu"] = _g(float(duals["pol_wt"].mean()))
    steps = step_file(data, k, layout)
    if steps.exists():
        try:
            mult = _read_h5(steps, ("step_mult",))["step_mult"]
            cells["step_mult"] = " ".join(f"{v:.2g}" for v in mult.reshape(len(mult), -1).mean(axis=1))
        except UserError as exc:
            row.problems.append(str(exc))
    if samples is not None or ctrl is not None or ev is not None:
        cells["safeguards"] = " ".join(acted) or "none"
    times = [(d / name).stat().st_mtime for _, name in files if present[name]]
    end = max(times) if times else None
    if end is not None and prev_end is not None and end >= prev_end:
        cells["time"] = _duration(end - prev_end) + ("" if state == "done" else "+")
    elif end is not None:
        cells["time"] = "?"
    return row, end


def format_table(rows: list[Row], columns: list[str]) -> str:
    body = [[f"{r.iteration:02d}", r.state, *(r.cells[c] for c in columns[2:])] for r in rows]
    widths = [max(len(x) for x in [c, *(b[i] for b in body)]) for i, c in enumerate(columns)]
    left = {"state", "drawn by", "step_mult"}
    fmt = lambda cells: "  ".join(  # noqa: E731
        x.ljust(w) if c in left else x.rjust(w) for c, x, w in zip(columns, cells, widths)).rstrip()
    return "\n".join([fmt(columns), *(fmt(b) for b in body)]) + "\n"


def status_text(data: Path, params_path: Path | None = None) -> str:
    """What `gps status` prints: a summary line, the table, then notes on unreadable files."""
    rows, columns, settings = collect(data, params_path)
    done = sum(r.state == "done" for r in rows)
    planned = [r for r in rows if r.state != LEFT_OVER]
    head = f"{data}: {done} of {len(planned)} iterations done"
    if settings is not None:
        from stages.tools.report import method_name

        task, alg, held = settings.task, settings.algorithm, len(settings.task.test)
        head += (f" (task {task.name}, {method_name(alg.name, alg.sample_on_policy, alg.step_rule)}, {len(task.train)} conditions"
                 + (f" + {held} held out" if held else "") + ")")
    summary = Path(data) / "learning_curve.csv"
    head += "; summary written" if summary.exists() else ""
    lines = [head, "", format_table(rows, columns).rstrip("\n")]
    if any(r.state not in ("done", LEFT_OVER) for r in rows):
        lines.append(f"{PENDING} pending: the file it comes from is not written yet")
    if len(planned) < len(rows):
        lines.append(f"{LEFT_OVER}: beyond params' iterations ({len(planned)}); an earlier, longer run's files, "
                     "not this run's (DVC does not remove outputs of stages that no longer exist)")
    if any("*" in r.cells["KL/bound"] for r in rows):
        lines.append("* the dual search of at least one condition did not converge")
    if any(r.cells["safeguards"] not in (PENDING, "none") for r in rows):
        lines.append("safeguards (README, item 13): cM:rel = condition M's C-step solved relative to the policy "
                     "linearisation, cM:kept = it kept the KL reference; n redrawn = samples drawn again; "
                     "cM,... diverged = those conditions' evaluation rollouts diverged (failed conditions)")
    for r in rows:
        lines += [f"itr_{r.iteration:02d}: unreadable: {p}" for p in r.problems]
    if not rows:
        lines.append("(no iterations: params has none and there is no itr_NN folder)")
    return "\n".join(lines) + "\n"
