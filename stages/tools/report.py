"""The paper's Table 1 and Figure 1 from finished runs.

A run is a directory holding the `params.yaml` it ran with and the
`data/learning_curve.csv` its summary stage wrote (a checkout after `dvc repro`,
or an experiment's files). Runs are grouped by task, method and the settings
that differ between runs of the same task and method (`gps sweep -S`'s grids),
seed aside; within a group every run counts as one seed. Success rates are
averaged over conditions within a run (the evaluate stage does that), then mean
and population standard deviation are taken over runs, in percent, as the
paper's analysis script did.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from gps_core.scoring import success_table
from stages.errors import UserError
from stages.settings.schema import algorithm_name
from stages.sweep.queue import comparable_value, name_keys, yaml_text

TASK_TITLES = {"obstacle": "Obstacle", "peg": "Peg", "peg_blind": "Blind Peg", "reacher": "Reacher", "pusher": "Pusher"}
# The reference's other optimizers by their names in the literature (algorithm.name -> label).
OTHER_METHODS = {"traj_opt": "LQR-FLM", "pi2": "PI2", "pilqr": "PILQR", "mdgps_pilqr": "MDGPS-PILQR", "pigps": "PIGPS"}
WITH_POLICY = ("mdgps_pilqr", "pigps")  # their label says how they sample, as MDGPS's does
METHOD_ORDER = ["BADMM", "Off/Classic", "Off/Global", "On/Classic", "On/Global",
                *(f"{way}/{OTHER_METHODS[a]}" for a in WITH_POLICY for way in ("Off", "On")),
                *(label for a, label in OTHER_METHODS.items() if a not in WITH_POLICY)]

# Table 1 of the paper: success rate (%), mean and std over 10 seeds, by task, method and iteration.
PAPER_TABLE1: dict[str, dict[str, dict[int, tuple[float, float]]]] = {
    "peg": {
        "BADMM": {3: (1.1, 3.3), 6: (51.1, 10.2), 9: (72.2, 14.3), 12: (74.4, 19.3)},
        "Off/Classic": {3: (11.1, 9.9), 6: (62.2, 17.4), 9: (82.2, 11.3), 12: (83.3, 11.4)},
        "Off/Global": {3: (6.7, 7.4), 6: (64.4, 19.1), 9: (71.1, 24.0), 12: (84.4, 15.1)},
        "On/Classic": {3: (6.7, 7.4), 6: (68.9, 18.5), 9: (90.0, 10.5), 12: (90.0, 11.6)},
        "On/Global": {3: (6.7, 7.4), 6: (63.3, 20.0), 9: (85.6, 8.7), 12: (87.8, 13.6)},
    },
    "peg_blind": {
        "BADMM": {3: (20.0, 31.2), 6: (65.0, 22.9), 9: (82.5, 25.1), 12: (82.5, 16.1)},
        "Off/Classic": {3: (2.5, 7.5), 6: (62.5, 32.1), 9: (80.0, 24.5), 12: (95.0, 10.0)},
        "Off/Global": {3: (7.5, 16.0), 6: (70.0, 21.8), 9: (60.0, 32.0), 12: (85.0, 22.9)},
        "On/Classic": {3: (2.5, 7.5), 6: (72.5, 28.4), 9: (80.0, 35.0), 12: (85.0, 20.0)},
        "On/Global": {3: (15.0, 30.0), 6: (70.0, 35.0), 9: (82.5, 19.5), 12: (85.0, 12.2)},
    },
}


@dataclass
class Run:
    """One finished run: where it is, what it ran, and its learning curve (column -> [iterations]).

    params: its params flattened to dotted keys (lists are values), as `flat_params` makes them.
    """

    path: Path
    task: str
    method: str
    seed: int
    curve: dict[str, np.ndarray]
    params: dict[str, Any] = field(default_factory=dict)


def flat_params(params: dict, prefix: str = "") -> dict[str, Any]:
    """{"algorithm.kl_step": 2.0, ...}: every non-section value of nested params under its dotted key."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        if isinstance(value, dict) and value:
            out.update(flat_params(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def method_name(algorithm: str, sample_on_policy: bool, step_rule: str) -> str:
    """The paper's label of a run's method, from its algorithm settings (algorithm.name, .sample_on_policy, .step_rule)."""
    if algorithm == "badmm":
        return "BADMM"
    if algorithm in WITH_POLICY:  # the reference's other optimizers: their own names, no MDGPS step rule
        return f"{'On' if sample_on_policy else 'Off'}/{OTHER_METHODS[algorithm]}"
    if algorithm in OTHER_METHODS:
        return OTHER_METHODS[algorithm]
    return f"{'On' if sample_on_policy else 'Off'}/{step_rule.capitalize()}"


def stopped_run(path: Path) -> bool:
    """A run folder whose pipeline began (params.yaml, data/) but never wrote its learning curve."""
    return (path / "params.yaml").is_file() and (path / "data").is_dir() and not (path / "data" / "learning_curve.csv").exists()


def load_run(path: Path) -> Run:
    params_file, curve_file = path / "params.yaml", path / "data" / "learning_curve.csv"
    for f in (params_file, curve_file):
        if not f.exists():
            raise UserError(f"{f}: file not found (expected a finished run: params.yaml and data/learning_curve.csv)")
    from stages.settings.load import load_settings

    s = load_settings(params_file)
    params = yaml.safe_load(params_file.read_text())
    with curve_file.open() as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise UserError(f"{curve_file}: no iterations recorded")
    try:
        curve = {key: np.array([float(r[key]) for r in rows]) for key in rows[0]}
    except ValueError as exc:
        raise UserError(f"{curve_file}: not a learning curve ({exc})") from None
    if not np.array_equal(curve["iteration"], np.arange(1, len(rows) + 1)):
        raise UserError(f"{curve_file}: iterations are not 1, 2, ..., {len(rows)}")
    alg = s.algorithm
    return Run(path, s.task.name, method_name(alg.name, alg.sample_on_policy, alg.step_rule), s.seed, curve,
               flat_params(params))


def runs_from_experiments(exp_show: list[dict]) -> tuple[list[Run], list[str]]:
    """Finished runs from `dvc exp show --json`, and the names of experiments that failed or have no metrics.

    Each experiment's params come from its params.yaml, its learning curve from
    its per-iteration metrics files (data/itr_NN/metrics.json).
    """
    runs, failed = [], []
    for baseline in exp_show:
        for exp in baseline.get("experiments") or []:
            for rev in exp.get("revs") or []:
                name = rev.get("name") or exp.get("name") or rev.get("rev", "?")[:7]
                data = rev.get("data") or {}
                params = ((data.get("params") or {}).get("params.yaml") or {}).get("data")
                metrics = data.get("metrics") or {}
                per_itr = sorted(
                    (m["data"] for path, m in metrics.items()
                     if path.startswith("data/itr_") and path.endswith("/metrics.json") and (m or {}).get("data")),
                    key=lambda d: d["iteration"],
                )
                if rev.get("error") or not params or not per_itr:
                    failed.append(name)
                    continue
                columns = [k for k in per_itr[0] if k != "per_condition"]
                curve = {c: np.array([float(d.get(c, np.nan)) for d in per_itr]) for c in columns}
                if not np.array_equal(curve["iteration"], np.arange(1, len(per_itr) + 1)):
                    failed.append(name)  # an unfinished run: iterations missing
                    continue
                # the params DVC recorded for the experiment (a run of any version of this code): read as recorded
                alg = params["algorithm"]
                method = method_name(algorithm_name(params), alg["sample_on_policy"], alg["step_rule"])
                runs.append(Run(Path(name), params["task"]["name"], method, int(params["seed"]), curve, flat_params(params)))
    return runs, failed


def experiment_runs(exp_json: Path | None, dvc: str = "dvc") -> tuple[list[Run], list[str]]:
    """runs_from_experiments of a saved `dvc exp show --json` file, or of the command's output when None."""
    import json
    import subprocess

    if exp_json is not None:
        if not exp_json.exists():
            raise UserError(f"{exp_json}: file not found")
        text = exp_json.read_text()
    else:
        proc = subprocess.run([dvc, "exp", "show", "--json"], capture_output=True, text=True)
        if proc.returncode != 0:
            raise UserError(f"dvc exp show failed: {(proc.stderr or proc.stdout).strip()[-300:]}")
        text = proc.stdout
    return runs_from_experiments(json.loads(text))


def parse_iterations(text: str) -> list[int]:
    try:
        iterations = [int(k) for k in text.split(",")]
    except ValueError:
        raise UserError(f"--iterations is {text!r}, expected comma-separated integers like 3,6,9,12") from None
    if min(iterations) < 1:
        raise UserError(f"--iterations is {text!r}, expected iterations from 1 on (they are 1-based)")
    return iterations


# The scores a task may add (evaluation.survival, evaluation.cost): learning-curve column -> table title.
SCORES = {"survival": "Survival (%): conditions whose block stayed within bounds at every step",
          "eval_cost": "Summed cost of the evaluation rollouts"}


def report_markdown(groups: Groups, iterations: list[int]) -> str:
    """One table per success threshold (largest first; the paper's values beside τ = 0.1), then the distances."""
    columns = sorted({c for m in groups.values() for rs in m.values() for r in rs for c in r.curve if c.startswith("success_")},
                     key=lambda c: -float(c.split("_")[1]))
    parts = []
    scores = [c for c in SCORES if any(c in r.curve for m in groups.values() for rs in m.values() for r in rs)]
    for column in [*columns, "final_distance", *scores]:
        if column in SCORES:
            title = SCORES[column]
        elif column == "final_distance":
            title = "Final distance to the target"
        else:
            title = f"Success rate (%) with threshold {column.split('_')[1]}"
            title += " (paper's Table 1 in brackets)" if column == "success_0.1" else ""
        parts.append(f"### {title}\n\n{markdown_table(groups, column, iterations)}")
    return "\n".join(parts)


class Groups(dict):
    """task -> column label -> runs, tasks in the paper's order; `columns`: every label, in the tables' order."""

    columns: list[str]


_UNSET = object()


def varying_keys(runs: list[Run]) -> list[str]:
    """The params keys whose values differ between the runs (seed aside), in the order the params have them."""
    keys = list(dict.fromkeys(k for r in runs for k in r.params if k != "seed"))
    return [k for k in keys if len({comparable_value(r.params[k]) if k in r.params else "unset" for r in runs}) > 1]


def _value_order(value: Any) -> tuple[int, float, str]:
    """Columns of one method: numbers by size, then anything else by its text; a missing key first."""
    if value is _UNSET:
        return (0, 0.0, "")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (1, float(value), "")
    return (2, 0.0, yaml_text(value))


def group_runs(runs: list[Run]) -> Groups:
    """task -> label -> runs: tasks in the paper's order, columns in its method order, then by the settings' values.

    A label is the method's (`On/Classic`), followed by the settings that differ between
    the task's runs of that method, short keys as `gps sweep` names them (`On/Classic kl_step=2`).
    """
    by_method: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        by_method.setdefault((run.task, run.method), []).append(run)
    groups = Groups()
    order: dict[str, tuple] = {}
    for (task, method), members in by_method.items():
        keys = varying_keys(members)
        shown = name_keys(keys)
        labels: dict[tuple, str] = {}  # by the values as compared (2 and 2.0 alike), the first run's text
        for run in members:
            values = [run.params.get(k, _UNSET) for k in keys]
            same = tuple(comparable_value(v) if v is not _UNSET else "unset" for v in values)
            if same not in labels:
                labels[same] = " ".join([method, *(f"{k}={'(unset)' if v is _UNSET else yaml_text(v)}" for k, v in zip(shown, values))])
                order[labels[same]] = (METHOD_ORDER.index(method), tuple((k, *_value_order(v)) for k, v in zip(keys, values)))
            groups.setdefault(task, {}).setdefault(labels[same], []).append(run)
    for task, labels in groups.items():
        for label, members in labels.items():
            seeds = [r.seed for r in members]
            if len(set(seeds)) != len(seeds):
                raise UserError(f"{TASK_TITLES.get(task, task)} {label}: seed given twice ({sorted(seeds)}): one run per seed")
        groups[task] = dict(sorted(labels.items(), key=lambda kv: order[kv[0]]))
    paper = list(TASK_TITLES)  # the paper's panel order: obstacle, peg, blind peg
    tasks = sorted(groups, key=lambda t: (paper.index(t) if t in paper else len(paper), t))
    ordered = Groups((t, groups[t]) for t in tasks)
    ordered.columns = sorted(order, key=order.__getitem__)
    return ordered


def table_rows(runs: list[Run], column: str, iterations: list[int]) -> list[int]:
    """The asked iterations that some of a task's runs reached; if none, the longest run's last iteration."""
    longest = max(len(r.curve[column]) for r in runs)
    return [k for k in iterations if k <= longest] or [longest]


def markdown_table(groups: Groups, column: str, iterations: list[int]) -> str:
    """Table 1 layout for one learning-curve column: rows task x iteration, one column per label.

    Rows: the asked iterations some run of the task reached (`table_rows`). Success
    columns (`success_<τ>`) are shown in percent with the paper's Table 1 value in
    brackets where it has one (plain method labels only); other columns as they are.
    A cell is 'mean ± population std (runs)' over the runs that reached that iteration.
    """
    percent = column.startswith("success_") or column == "survival"
    tasks = [t for t in groups if any(column in r.curve for runs in groups[t].values() for r in runs)]
    labels = [c for c in groups.columns if any(c in groups[t] for t in tasks)]
    lines = ["| task | itr | " + " | ".join(labels) + " |", "|---|---|" + "---|" * len(labels)]
    for task in tasks:
        for k in table_rows([r for runs in groups[task].values() for r in runs if column in r.curve], column, iterations):
            cells = []
            for label in labels:
                runs = [r for r in groups[task].get(label, []) if column in r.curve and len(r.curve[column]) >= k]
                if not runs:
                    cells.append("")
                    continue
                values = [r.curve[column][k - 1] for r in runs]
                if percent:
                    mean, std = success_table(values)
                    cell = f"{mean:.1f} ± {std:.1f} ({len(runs)})"
                    paper = PAPER_TABLE1.get(task, {}).get(label, {}).get(k) if column == "success_0.1" else None
                    cell += f" [{paper[0]:.1f} ± {paper[1]:.1f}]" if paper else ""
                else:
                    cell = f"{np.mean(values):.3f} ± {np.std(values):.3f} ({len(runs)})"
                cells.append(cell)
            lines.append(f"| {TASK_TITLES.get(task, task)} | {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def distance_figure(groups: Groups, out: Path, band_threshold: float | None = 0.1) -> None:
    """Figure 1 layout: one panel per task, final distance per iteration, mean line and ±std band per column label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    tasks = list(groups)
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for method, runs in groups[task].items():
            n = min(len(r.curve["final_distance"]) for r in runs)
            d = np.array([r.curve["final_distance"][:n] for r in runs])
            itr = np.arange(1, n + 1)
            (line,) = ax.plot(itr, d.mean(0), label=f"{method} ({len(runs)})")
            ax.fill_between(itr, d.mean(0) - d.std(0), d.mean(0) + d.std(0), color=line.get_color(), alpha=0.2)
        if task.startswith("peg") and band_threshold is not None:
            ax.axhline(band_threshold, color="k", linestyle=":", linewidth=1)
        ax.set_title(TASK_TITLES.get(task, task))
        ax.set_xlabel("iteration")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_ylabel("final distance to target")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp{out.suffix}")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(out)
