"""`gps plot`: PNG figures of a run, one value per iteration.

Sources, in this order:
  * data/itr_NN/metrics.json (written by each evaluate stage): success rates,
    final distance, sample cost, KL and its bound, step multipliers, per condition;
  * data/itr_NN/eval.h5 and samples.h5: the cost of the global policy's
    noise-free evaluation rollout, under the cost model recorded in samples.h5
    (metrics.json has no policy cost), and who drew the samples;
  * the learning curve CSV, only when no metrics.json exists (means only).

The x axis is the 1-based iteration of metrics.json and the learning curve
(iteration 1 = data/itr_00). What "sample cost" measures changes with the run:
iteration 1's samples always come from the initial local controllers; with
on-policy sampling the later ones come from the global policy of the previous
iteration (with its exploration noise); with off-policy sampling, from the local
controllers. The figure says which, per point.

matplotlib (Agg backend) is imported only when the figures are drawn.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import typer

from stages.app import app, debugging, user_errors
from stages.artifacts.checks import check
from stages.artifacts.io import read_artifact, write_text_atomic
from stages.artifacts.layouts import spec
from stages.errors import UserError

FIGURES = ("success.png", "final_distance.png", "cost.png", "kl.png", "step_mult.png")
TABLE = "per_iteration.csv"


@dataclass
class Series:
    """Per-iteration values: iteration -> means; per-condition arrays where known (NaN where missing)."""

    iteration: list[int] = field(default_factory=list)
    mean: dict[str, list[float]] = field(default_factory=dict)
    per_condition: dict[str, list[np.ndarray | None]] = field(default_factory=dict)
    drawn_by: list[str | None] = field(default_factory=list)  # "controllers" | "policy" | None (unknown)

    def add(self, key: str, value: float | None, per: np.ndarray | None = None) -> None:
        n = len(self.iteration)
        self.mean.setdefault(key, [np.nan] * (n - 1)).append(np.nan if value is None else float(value))
        self.per_condition.setdefault(key, [None] * (n - 1)).append(per)

    def pad(self) -> None:
        n = len(self.iteration)
        for key in self.mean:
            self.mean[key] += [np.nan] * (n - len(self.mean[key]))
            self.per_condition[key] += [None] * (n - len(self.per_condition[key]))
        self.drawn_by += [None] * (n - len(self.drawn_by))


def _per(metrics: dict[str, Any], key: str) -> np.ndarray | None:
    per = metrics.get("per_condition", {}).get(key)
    if not per:
        return None
    return np.array([per[c] for c in sorted(per, key=lambda c: int(c[1:]))], dtype=float)


def policy_cost(eval_path: Path, samples_path: Path) -> np.ndarray | None:
    """Total cost [M] of the evaluation rollouts, under the cost model recorded in the samples file.

    None when either file is missing. Both are read through the checked reader: eval.h5's X, U against
    the layout table and the samples' M and T. The cost value needs no site Jacobians (they only enter
    its derivatives), so zeros of the recorded shape stand in.
    """
    from gps_core.costs import build_cost
    from gps_core.sim.task import TaskError, compile_task
    from stages.settings.model_check import model_base

    if not (eval_path.exists() and samples_path.exists()):
        return None
    sdata, sattrs = read_artifact(samples_path, ("ee_jac",), kind="samples")
    jac = sdata["ee_jac"]
    ev, _ = read_artifact(eval_path, ("X", "U"), kind="eval")
    sizes = check(str(eval_path), ev, spec("eval", "X", "U"),
                  {"M": (jac.shape[0], f"as in {samples_path}"), "T": (jac.shape[2], f"as in {samples_path}")})
    try:
        recorded = json.loads(sattrs["params"])
        # a relative model path from the run's project root, as the run's stages read it (not the working folder)
        cost_spec, task = recorded["cost"], compile_task(recorded["task"], model_base(samples_path))
    except (KeyError, TypeError, ValueError, TaskError) as exc:
        raise UserError(f"{eval_path}: cannot compute the policy's cost ({exc})") from None
    J = np.zeros((sizes["M"], sizes["T"], *jac.shape[-2:]))
    return build_cost(cost_spec, task).evaluate(ev["X"], ev["U"], J).l.sum(-1)


def _on_policy(samples_path: Path) -> str | None:
    """Who drew the samples (the samples.h5 attribute), None when there is no samples file."""
    if not samples_path.exists():
        return None
    return "policy" if bool(read_artifact(samples_path, (), kind="samples")[1].get("on_policy", False)) else "controllers"


def collect(data: Path, curve: Path | None) -> Series:
    """Series from the per-iteration files under `data`, or from the learning curve when there are none."""
    data = Path(data)
    metrics_files = sorted(data.glob("itr_*/metrics.json"))
    s = Series()
    if metrics_files:
        for path in metrics_files:
            try:
                m = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise UserError(f"{path}: not a metrics file ({exc})") from None
            d = path.parent
            s.iteration.append(int(m.get("iteration", int(d.name[4:]) + 1)))
            for key, value in m.items():
                if key in ("iteration", "per_condition") or not isinstance(value, (int, float)):
                    continue
                s.add(key, value, _per(m, key))
            pc = policy_cost(d / "eval.h5", d / "samples.h5")
            s.add("policy_cost", None if pc is None else float(pc.mean()), pc)
            s.drawn_by.append(_on_policy(d / "samples.h5"))
            s.pad()
    elif curve is not None and Path(curve).exists():
        with Path(curve).open() as f:
            rows = list(csv.DictReader(f))
        if not rows:
            raise UserError(f"{curve}: no iterations recorded")
        for row in rows:
            try:
                s.iteration.append(int(row["iteration"]))
                for key, value in row.items():
                    if key != "iteration":
                        s.add(key, float(value))
            except (KeyError, ValueError) as exc:
                raise UserError(f"{curve}: not a learning curve ({exc})") from None
            s.drawn_by.append(None)
            s.pad()
    else:
        raise UserError(f"nothing to plot: no {data}/itr_*/metrics.json" + (f" and no {curve}" if curve else ""))
    order = np.argsort(s.iteration)
    s.iteration = [s.iteration[i] for i in order]
    s.mean = {k: [v[i] for i in order] for k, v in s.mean.items()}
    s.per_condition = {k: [v[i] for i in order] for k, v in s.per_condition.items()}
    s.drawn_by = [s.drawn_by[i] for i in order]
    return s


def write_table(s: Series, out: Path) -> None:
    """The plotted means as CSV (one row per iteration), for `dvc plots`."""
    keys = [k for k in ("final_distance", *sorted(k for k in s.mean if k.startswith("success_")), "sample_cost",
                        "policy_cost", "kl", "kl_bound", "eta", "step_mult") if k in s.mean]
    lines = [",".join(["iteration", *keys])]
    for i, itr in enumerate(s.iteration):
        lines.append(",".join([str(itr), *("" if np.isnan(s.mean[k][i]) else f"{s.mean[k][i]:.6g}" for k in keys)]))
    write_text_atomic(out, "\n".join(lines) + "\n")


def _per_condition_lines(ax, s: Series, key: str, color: str) -> None:
    per = s.per_condition.get(key, [])
    M = max((len(p) for p in per if p is not None), default=0)
    for m in range(M):
        y = [p[m] if p is not None and m < len(p) else np.nan for p in per]
        ax.plot(s.iteration, y, color=color, alpha=0.35, linewidth=0.8, marker=".", markersize=3,
                label="per condition" if m == 0 else None)


def _save(fig, out: Path) -> None:
    import matplotlib.pyplot as plt

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp{out.suffix}")
    fig.tight_layout()
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(out)


def write_plots(data: Path, curve: Path | None, out_dir: Path) -> list[Path]:
    """Write the figures (and the table they show) into out_dir; returns the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = collect(data, curve)
    out_dir = Path(out_dir)
    x = s.iteration
    xlabel = "iteration (1 = data/itr_00)"
    written = []

    def new(title: str, ylabel: str):
        fig, ax = plt.subplots(figsize=(6, 3.6))
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_xticks(x)
        ax.grid(alpha=0.3)
        return fig, ax

    # success rate per threshold
    fig, ax = new("Success rate of the global policy (noise-free rollout per condition)", "success rate (%)")
    keys = sorted((k for k in s.mean if k.startswith("success_")), key=lambda k: -float(k.split("_", 1)[1]))
    for key in keys:
        ax.plot(x, 100 * np.asarray(s.mean[key]), marker="o", label=f"final distance < {key.split('_', 1)[1]}")
    if not keys:
        ax.text(0.5, 0.5, "no success thresholds in the metrics", transform=ax.transAxes, ha="center")
    ax.set_ylim(-5, 105)
    if keys:
        ax.legend(fontsize=8)
    _save(fig, out_dir / "success.png")
    written.append(out_dir / "success.png")

    # final distance
    fig, ax = new("Final distance of the global policy to the target", "final distance")
    _per_condition_lines(ax, s, "final_distance", "tab:blue")
    ax.plot(x, s.mean.get("final_distance", [np.nan] * len(x)), color="tab:blue", marker="o", label="mean over conditions")
    for key in keys:
        ax.axhline(float(key.split("_", 1)[1]), color="k", linestyle=":", linewidth=1)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    _save(fig, out_dir / "final_distance.png")
    written.append(out_dir / "final_distance.png")

    # cost: the iteration's samples vs the global policy after the iteration's S-step
    fig, ax = new("Cost per episode, mean over conditions", "total cost")
    cost = np.asarray(s.mean.get("sample_cost", [np.nan] * len(x)))
    ax.plot(x, cost, color="tab:orange", linewidth=1, label="_line")
    for who, marker, label in (("controllers", "s", "samples of the local controllers (noisy; the initial ones at iteration 1)"),
                               ("policy", "o", "samples of the previous iteration's global policy (noisy)"),
                               (None, "D", "samples (who drew them: unknown)")):
        idx = [i for i, w in enumerate(s.drawn_by) if w == who]
        if idx:
            ax.plot([x[i] for i in idx], cost[idx], linestyle="none", marker=marker, color="tab:orange", label=label)
    if "policy_cost" in s.mean and not np.all(np.isnan(s.mean["policy_cost"])):
        ax.plot(x, s.mean["policy_cost"], color="tab:green", marker="^",
                label="global policy after this iteration's S-step (noise-free evaluation rollout)")
    ax.legend(fontsize=7)
    _save(fig, out_dir / "cost.png")
    written.append(out_dir / "cost.png")

    # KL achieved vs bound
    fig, ax = new("C-step: KL(new controllers || policy linearisation) vs its bound", "KL")
    _per_condition_lines(ax, s, "kl", "tab:purple")
    ax.plot(x, s.mean.get("kl", [np.nan] * len(x)), color="tab:purple", marker="o", label="KL achieved (mean)")
    ax.plot(x, s.mean.get("kl_bound", [np.nan] * len(x)), color="k", linestyle="--", marker="_", label="bound (mean)")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    _save(fig, out_dir / "kl.png")
    written.append(out_dir / "kl.png")

    # step multiplier
    fig, ax = new("Step multiplier of the C-step (bound = kl_step x step_mult x T)", "step multiplier")
    _per_condition_lines(ax, s, "step_mult", "tab:red")
    ax.plot(x, s.mean.get("step_mult", [np.nan] * len(x)), color="tab:red", marker="o", label="mean over conditions")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    _save(fig, out_dir / "step_mult.png")
    written.append(out_dir / "step_mult.png")

    write_table(s, out_dir / TABLE)
    written.append(out_dir / TABLE)
    return written


@app.command("plot")
def plot_cmd(
    data: Path = typer.Option(Path("data"), "--data", help="the run's data folder (itr_NN/metrics.json, eval.h5, samples.h5)"),
    curve: Path = typer.Option(Path("data/learning_curve.csv"), "--curve", help="learning curve, used when there is no metrics.json"),
    out_dir: Path = typer.Option(Path("data/plots"), "--out-dir", help="where to write the PNGs"),
) -> None:
    """PNG figures per iteration: success, final distance, sample vs policy cost, KL vs bound, step multiplier."""
    with user_errors("plot", debugging()):
        for path in write_plots(data, curve, out_dir):
            typer.echo(f"wrote {path}")
