"""Local controllers alone, improved by LQR-only, PI2 or PILQR, on the paper's tasks (issue 27).

Drives gps_core directly, as the pipeline's stages do (stages/steps/init.py, sample.py,
fit_dynamics.py, adjust_step.py), with the task's own settings (conditions, T, cost, noise,
dynamics prior, initial controllers from configs/<task>.yaml), no global policy:

    iteration i = 0 .. K:  sample the local controllers (N per condition)
                           -> [fit dynamics: lqr, pilqr] -> [step rule, i >= 1] -> update
                           (at i = K only the samples and the noise-free rollouts: they measure
                           the controllers after K updates)

- lqr   (the reference's AlgorithmTrajOpt): KL-constrained LQR on the fitted dynamics against the
        controller that drew the samples, bound algorithm.kl_step * step_mult * T of the task;
        step_mult by the classic rule on Laplace estimates (previous controller under the previous
        fit, new controller under the previous and the current fit), clipped to the task's
        [min_step_mult, max_step_mult]; eta warm-started from the previous iteration (1 at first).
- pi2   (AlgorithmTrajOptPI2): pi2_update on the samples' costs, K carried over; no dynamics fit.
        PI2Config() defaults (the reference's TRAJ_OPT_PI2, and ours: the covariance floor
        min_covariance_ratio, gps_core.configs).
- pilqr (AlgorithmTrajOptPILQR): the res_percent rule from iteration 1 on the residual of the
        current samples under the controller that drew them and the current fit, then
        pilqr_update_batched with per-step bounds schedule(kl_step, T) * step_mult; PILQRConfig()
        and PI2Config() defaults (the reference's ALG_PILQR / TRAJ_OPT_PILQR / TRAJ_OPT_PI2; ours:
        on_fault recover, min_covariance_ratio).

The same seed gives every optimizer the same exploration noise at the same iteration (the
pipeline's generators, s.rng(iteration, "sample") with seed replaced), so iteration 0 is the same
batch of samples for all three. Recorded per iteration: the mean sampled cost per condition (sum
over t, mean over the N samples), the final distance of a noise-free rollout of each condition's
controller (as the evaluate stage scores the global policy: evaluation.point at T-1 against
evaluation.target), the optimizer's diagnostics and the wall time of each part.

    python benchmarks/local_optimizers.py --tasks obstacle,peg --optimizers lqr,pi2,pilqr \\
        --seeds 0-2 --iterations K --samples 20 --out DIR
    python benchmarks/local_optimizers.py --plot-only --out DIR      # figure and table from DIR/results.json

--cost binary (obstacle only; default --cost task: the task's own cost) is the reference's
discontinuous-cost example (mjc_disc_cost_pilqr_example: CostSum of a CostState and a
CostBinaryRegion, weights 1 and 10) on the obstacle task: the task's cost plus, with weight 10,

    {type: binary_region, block: joint_positions, target: [3.0, 0.0], max_distance: 0.05,
     inside_cost: -3.0, outside_cost: 0.0}

(BINARY_TERMS): -3 · 10 = -30 at every step where |x - 3| + |y| <= 0.05 (the particle's slide
joints, the block and target of the task's own state term), 0 elsewhere. The initial controllers
start 3.0 to 3.4 from the target (L1: 3.0 to 4.5), far outside. Its expansion is zero but for a
constant (gps_core.costs): LQR-only's C-step does not see the region (its classic step rule sees the
change of the term's mean between batches), PI2 and PILQR see it through the sampled costs.
On a task with a BINARY_TERMS entry, every run (--cost task too, the control) records the steps
inside that region per sample (steps_inside: a third row of the figure, a second table and a
column of curves.csv).

Writes DIR/results.json (after every run, so an interrupted benchmark keeps what it finished),
DIR/curves.csv and DIR/cost.png (cost and final distance against iteration, mean and band (min..max)
over the seeds still running, one column per task, a line per optimizer, x where a run stopped), and prints a markdown table and the per-part times.
Run it with OMP_NUM_THREADS=1 (one core). A run whose optimizer raises is recorded with its error
and the iterations it finished.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import json
import os
import platform
import subprocess
import sys
import time
import traceback
import zlib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

OPTIMIZERS = ("lqr", "pi2", "pilqr")
PARTS = ("simulate", "cost", "fit_dynamics", "step_rule", "update", "evaluate")
LABELS = {"lqr": "LQR-only (LQR-FLM)", "pi2": "PI2", "pilqr": "PILQR"}
COLORS = {"lqr": "tab:blue", "pi2": "tab:orange", "pilqr": "tab:green"}
COSTS = ("task", "binary")
# --cost binary: the term added to the task's cost (the module docstring), per task.
BINARY_TERMS = {
    "obstacle": {"type": "binary_region", "weight": 10.0, "block": "joint_positions", "target": [3.0, 0.0],
                 "max_distance": 0.05, "inside_cost": -3.0, "outside_cost": 0.0},
}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Clock:
    """Wall time of each part of one iteration."""

    def __init__(self):
        self.times = {p: 0.0 for p in PARTS}

    @contextlib.contextmanager
    def part(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.times[name] += time.perf_counter() - t0


def run_one(task: str, optimizer: str, seed: int, iterations: int, num_samples: int | None,
            cost: str = "task") -> dict:
    """One (task, optimizer, seed): iterations + 1 sample batches, `iterations` updates; cost in COSTS."""
    from gps_core.configs import PI2Config, PILQRConfig
    from gps_core.costs import build_cost, expand_cost
    from gps_core.fit.dynamics import fit_all_dynamics
    from gps_core.mdgps import new_step_mult, step_estimates
    from gps_core.noise import smoothed_noise
    from gps_core.scoring import final_distance
    from gps_core.sim.env import Simulator
    from gps_core.sim.sampling import controller_episodes, draw_samples
    from gps_core.traj_opt.c_step import c_step_batched
    from gps_core.traj_opt.init_lqr import init_lqr
    from gps_core.traj_opt.lingauss import LinearGaussianPolicy
    from gps_core.traj_opt.lqr import Dynamics, QuadraticCost
    from gps_core.traj_opt.pi2 import pi2_update
    from gps_core.traj_opt.pilqr import (
        per_step_kl_bounds, pilqr_update_batched, predicted_costs, res_percent_rule, residual_costs, schedule,
    )
    from stages.settings.load import load_settings

    s = load_settings(ROOT / "configs" / f"{task}.yaml")
    s = dataclasses.replace(s, seed=seed)
    sim = Simulator(s.task)
    M, T, dU = sim.M, s.task.T, sim.dU
    N = num_samples or s.agent.num_samples
    noise_settings = vars(s.agent.noise)
    cost_fn = build_cost(s.cost_terms + ([BINARY_TERMS[task]] if cost == "binary" else []), s.task)
    region = build_cost([BINARY_TERMS[task]], s.task).terms[0][1] if task in BINARY_TERMS else None  # measured
    alg, ev = s.algorithm, s.evaluation
    pi2_cfg, pilqr_cfg = PI2Config(), PILQRConfig()

    # Initial controllers as `gps init` makes them.
    x0 = sim.initial_states()
    pols = [init_lqr(x0[m], dU, T, s.init_lqr) for m in range(M)]

    # Optimizer state.
    priors = [None] * M
    eta_lqr = np.ones(M)  # init.py writes eta = 1
    step_mult = np.ones(M)  # init.py writes step_mult = 1
    eta_pilqr = None  # the reference's first iteration: 1.0 at every step
    step_mult_t = np.ones((M, T))
    prev = None  # LQR-only: (controllers, dynamics, cost models) of the previous iteration

    record = {"task": task, "optimizer": optimizer, "seed": seed, "M": M, "N": N, "T": T, "dX": sim.dX, "dU": dU,
              "cost": cost, "iterations": [], "error": None}
    for i in range(iterations + 1):
        clock = Clock()
        info: dict = {"iteration": i}
        # ---- sample (stages/steps/sample.py, off-policy)
        with clock.part("simulate"):
            noise = smoothed_noise(s.rng(i, "sample"), (M, N, T, dU), **noise_settings)

            def redraw_noise(m: int, n: int, a: int, i=i) -> np.ndarray:
                rng = np.random.default_rng([seed, i, zlib.crc32(b"sample"), m, n, a])
                return smoothed_noise(rng, (T, dU), **noise_settings)

            drawn = draw_samples(controller_episodes(sim, pols), noise, redraw_noise, s.agent.redraw_limit)
            r, noise = drawn.rollouts, drawn.noise
        with clock.part("cost"):
            X, U, J = r.X, r.U, r.ee_jac
            terms = cost_fn.evaluate(X.reshape(M * N, T, -1), U.reshape(M * N, T, -1),
                                     J.reshape(M * N, T, *J.shape[3:]))
            sampled = terms.l.reshape(M, N, T)
            expansion = expand_cost(terms.reshape(M, N), X, U) if optimizer != "pi2" else None
        info["cost"] = sampled.sum(-1).mean(-1).tolist()  # [M]
        info["redrawn"] = int((drawn.draws > 1).sum())
        if region is not None:  # steps inside the binary region per sample, mean over the N samples: [M]
            inside = region.evaluate(X.reshape(M * N, T, -1), U.reshape(M * N, T, -1), None).l == region.inside_cost
            info["steps_inside"] = inside.reshape(M, N, T).sum(-1).mean(-1).tolist()
        # ---- noise-free rollout of each controller (the evaluate stage's score, for the local controllers)
        with clock.part("evaluate"):
            e = controller_episodes(sim, pols)(np.arange(M), np.zeros((M, T, dU)), None)
            info["final_distance"] = final_distance(e.X, ev.point_start, ev.target).tolist()
            info["eval_diverged"] = (e.diverged_at >= 0).tolist()
        if i == iterations:
            info["times"] = clock.times
            record["iterations"].append(info)
            log(f"  {task} {optimizer} seed {seed} itr {i:2d}: cost {np.mean(info['cost']):10.3f}  "
                f"dist {np.mean(info['final_distance']):.3f}  (measured only)")
            break
        try:
            costs = dyns = None
            if optimizer in ("lqr", "pilqr"):
                # ---- fit dynamics (stages/steps/fit_dynamics.py)
                with clock.part("fit_dynamics"):
                    priors, d = fit_all_dynamics(priors, X, U, s.dynamics.prior, s.dynamics.regularization,
                                                 s.dynamics.regularization_shape, alg.initial_state_var,
                                                 s.rng(i, "fit_dynamics"))
                    dyns = [Dynamics(Fm=d["Fm"][m], fv=d["fv"][m], covar=d["dyn_covar"][m], x0mu=d["x0mu"][m],
                                     x0sigma=d["x0sigma"][m]) for m in range(M)]
                    costs = [QuadraticCost(Cm=expansion.Cm[m], cv=expansion.cv[m], cc=expansion.cc[m])
                             for m in range(M)]
            if optimizer == "lqr":
                with clock.part("step_rule"):
                    if prev is not None:  # the classic rule (AlgorithmTrajOpt._stepadjust)
                        p_pols, p_dyns, p_costs = prev
                        for m in range(M):
                            est = step_estimates("classic", p_pols[m], pols[m], pols[m], p_dyns[m], p_costs[m],
                                                 dyns[m], costs[m])
                            step_mult[m] = new_step_mult(est.predicted_improvement, est.actual_improvement,
                                                         float(step_mult[m]), alg.min_step_mult, alg.max_step_mult)
                info["step_mult"] = step_mult.tolist()
                with clock.part("update"):
                    bounds = alg.kl_step * step_mult * T
                    res = c_step_batched(costs, pols, dyns, bounds, eta_lqr, s.traj_opt)
                prev = (pols, dyns, costs)
                pols = [res[m].policy for m in range(M)]
                eta_lqr = res.eta.copy()
                info.update(kl=res.kl.tolist(), kl_bound=res.kl_bound.tolist(), eta=res.eta.tolist(),
                            converged=res.converged.tolist(), dual_iterations=res.dual_iterations.tolist(),
                            safeguard=res.safeguard.tolist())
            elif optimizer == "pi2":
                with clock.part("update"):
                    results = [pi2_update(pols[m].K, X[m], U[m], sampled[m], pols[m].covar, pi2_cfg) for m in range(M)]
                pols = [r_.policy for r_ in results]
                info.update(temperature_median=[float(np.median(r_.temperatures)) for r_ in results],
                            weights_kl_mean=[float(np.mean(r_.weights_kl)) for r_ in results],
                            temperature_raised=[int(np.sum(r_.temperature_raised)) for r_ in results],
                            covar_trace_mean=[float(np.mean(np.trace(r_.covar, axis1=-2, axis2=-1))) for r_ in results])
            else:  # pilqr
                with clock.part("step_rule"):
                    if i >= 1:  # res_percent (AlgorithmTrajOptPILQR._stepadjust), current controller, current fit
                        ratios = []
                        for m in range(M):
                            resid = residual_costs(sampled[m], predicted_costs(pols[m], dyns[m], costs[m], noise[m]))
                            rule = res_percent_rule(resid, sampled[m], step_mult_t[m], pilqr_cfg)
                            step_mult_t[m] = rule.step_mult
                            ratios.append(float(rule.ratio[0]))
                        info["res_ratio_0"] = ratios
                info["step_mult_mean"] = step_mult_t.mean(axis=1).tolist()
                with clock.part("update"):
                    bounds = per_step_kl_bounds(schedule(pilqr_cfg.kl_step, T), step_mult_t)
                    res = pilqr_update_batched(costs, pols, dyns, sampled, noise, bounds, eta_pilqr, pilqr_cfg, pi2_cfg)
                pols = [res.policy(m) for m in range(M)]
                eta_pilqr = res.eta.copy()
                info.update(lqr_converged=res.lqr.converged.tolist(),
                            lqr_rounds=(res.lqr.bisection_rounds + res.lqr.adam_rounds).tolist(),
                            kl_sum=res.lqr.kl.sum(axis=1).tolist(), kl_bound_sum=res.lqr.kl_bound.sum(axis=1).tolist(),
                            residual_ratio_0=res.residual_ratio[:, 0].tolist(),
                            weights_kl_mean=res.weights_kl.mean(axis=1).tolist(),
                            temperature_raised=res.temperature_raised.sum(axis=1).tolist())
        except (FloatingPointError, ValueError, np.linalg.LinAlgError) as err:
            info["times"] = clock.times
            record["iterations"].append(info)
            record["error"] = f"iteration {i}: {type(err).__name__}: {err}"
            log(f"  {task} {optimizer} seed {seed} itr {i:2d}: FAILED {record['error']}")
            log(traceback.format_exc(limit=3))
            break
        info["times"] = clock.times
        record["iterations"].append(info)
        t = clock.times
        log(f"  {task} {optimizer} seed {seed} itr {i:2d}: cost {np.mean(info['cost']):10.3f}  "
            f"dist {np.mean(info['final_distance']):.3f}  sim {t['simulate']:.1f}s fit {t['fit_dynamics']:.1f}s "
            f"rule {t['step_rule']:.2f}s update {t['update']:.2f}s")
    # Guard against accidental sharing of controllers between runs.
    assert all(isinstance(p, LinearGaussianPolicy) for p in pols)
    return record


# --------------------------------------------------------------------------- outputs


def metric_matrix(runs: list[dict], task: str, opt: str, K: int, key: str) -> np.ndarray:
    """[seeds, K+1] of an iteration record's `key` (cost, final_distance or steps_inside), mean over conditions;
    NaN where a run stopped. Runs that did not record `key` (steps_inside of a task not in BINARY_TERMS) are left out."""
    rows = []
    for r in runs:
        if r["task"] == task and r["optimizer"] == opt and all(key in it for it in r["iterations"]):
            row = np.full(K + 1, np.nan)
            for it in r["iterations"]:
                row[it["iteration"]] = float(np.mean(it[key]))
            rows.append(row)
    return np.array(rows) if rows else np.full((0, K + 1), np.nan)


def write_curves(runs: list[dict], path: Path) -> None:
    inside = any("steps_inside" in it for r in runs for it in r["iterations"])  # a task in BINARY_TERMS
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["task", "optimizer", "seed", "iteration", "mean_cost", "final_distance"]
                   + ["steps_inside"] * inside + [f"t_{p}" for p in PARTS])
        for r in runs:
            for it in r["iterations"]:
                w.writerow([r["task"], r["optimizer"], r["seed"], it["iteration"], f"{np.mean(it['cost']):.6g}",
                            f"{np.mean(it['final_distance']):.6g}"]
                           + ([f"{np.mean(it['steps_inside']):.6g}" if "steps_inside" in it else ""] if inside else [])
                           + [f"{it['times'][p]:.4f}" for p in PARTS])


def plot(runs: list[dict], tasks: list[str], opts: list[str], K: int, path: Path, cost: str = "task") -> None:
    """Row 1: mean sampled cost; row 2: final distance of the noise-free rollouts; row 3 (where recorded): steps
    inside the binary region per sample; mean line, min..max band over seeds."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [("cost", "mean sampled cost per condition (sum over t)"),
            ("final_distance", "final distance, noise-free rollout (mean over conditions)")]
    if any("steps_inside" in it for r in runs for it in r["iterations"]):
        rows.append(("steps_inside", "steps inside the binary region per sample (mean over conditions)"))
    fig, axes = plt.subplots(len(rows), len(tasks), figsize=(5.5 * len(tasks), 3.75 * len(rows)), squeeze=False,
                             sharex=True)
    it = np.arange(K + 1)
    for col, task in enumerate(tasks):
        for row, (key, ylabel) in enumerate(rows):
            ax = axes[row, col]
            if key == "steps_inside" and task not in BINARY_TERMS:
                ax.text(0.5, 0.5, f"no binary region for {task}", ha="center", va="center", transform=ax.transAxes)
                ax.set_xlabel("iteration (0: initial controllers; i: after i updates)")
                continue
            positive = True
            for opt in opts:
                C = metric_matrix(runs, task, opt, K, key)
                if not len(C):
                    continue
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    mean, lo, hi = np.nanmean(C, 0), np.nanmin(C, 0), np.nanmax(C, 0)
                positive &= bool(np.all(C[np.isfinite(C)] > 0))
                stopped = [int(np.flatnonzero(np.isfinite(r_))[-1]) for r_ in C if not np.all(np.isfinite(r_))]
                note = f", {len(stopped)} stopped after itr {', '.join(map(str, stopped))}: x" if stopped else ""
                ax.plot(it, mean, color=COLORS[opt], label=f"{LABELS[opt]} ({len(C)} seeds{note})", marker="o", ms=2.5, lw=1.3)
                ax.fill_between(it, lo, hi, color=COLORS[opt], alpha=0.2, lw=0)
                for r_ in C:
                    if not np.all(np.isfinite(r_)):
                        last = int(np.flatnonzero(np.isfinite(r_))[-1])
                        ax.plot([last], [r_[last]], marker="x", ms=9, mew=2, color=COLORS[opt], ls="none")
            if positive:
                ax.set_yscale("log")
            if row == 0:
                ax.set_title(f"{task}: local controllers alone" + (", cost + binary region" if cost == "binary" else ""))
            if row == len(rows) - 1:
                ax.set_xlabel("iteration (0: initial controllers; i: after i updates)")
            ax.set_ylabel(ylabel, fontsize=8)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def fmt(x: np.ndarray) -> str:
    """mean ± population std of the finite entries; "(n of m)" where some runs had stopped."""
    n_all = len(x)
    x = x[np.isfinite(x)]
    if not len(x):
        return "n/a"
    cell = f"{x.mean():.4g} ± {x.std():.2g}" if len(x) > 1 else f"{x.mean():.4g}"
    return cell if len(x) == n_all else f"{cell} ({len(x)} of {n_all})"


def table(runs: list[dict], tasks: list[str], opts: list[str], K: int, key: str = "cost") -> str:
    """Columns: `key` (cost or steps_inside) at iterations 0, 1, K/2, K, final distance, time."""
    cols = sorted({0, 1, K // 2, K})
    name = {"cost": "cost", "steps_inside": "steps inside"}[key]
    lines = ["| task | optimizer | seeds | " + " | ".join(f"{name}, itr {c}" for c in cols)
             + f" | final distance, itr {K} | s / update |",
             "|---|---|---|" + "---|" * (len(cols) + 2)]
    for task in tasks:
        for opt in opts:
            C, D = metric_matrix(runs, task, opt, K, key), metric_matrix(runs, task, opt, K, "final_distance")
            if not len(C):
                continue
            upd = [it["times"]["update"] + it["times"]["fit_dynamics"] + it["times"]["step_rule"]
                   for r in runs if r["task"] == task and r["optimizer"] == opt for it in r["iterations"]
                   if it["iteration"] < K and "times" in it]
            lines.append(f"| {task} | {LABELS[opt]} | {len(C)} | " + " | ".join(fmt(C[:, c]) for c in cols)
                         + f" | {fmt(D[:, K])} | {np.mean(upd):.2f} |")
    return "\n".join(lines)


def times_table(runs: list[dict], tasks: list[str], opts: list[str], K: int) -> str:
    lines = ["| task | optimizer | " + " | ".join(PARTS) + " | total / iteration |", "|---|---|" + "---|" * (len(PARTS) + 1)]
    for task in tasks:
        for opt in opts:
            its = [it for r in runs if r["task"] == task and r["optimizer"] == opt for it in r["iterations"]
                   if it["iteration"] < K]
            if not its:
                continue
            mean = {p: np.mean([it["times"][p] for it in its]) for p in PARTS}
            lines.append(f"| {task} | {LABELS[opt]} | " + " | ".join(f"{mean[p]:.2f}" for p in PARTS)
                         + f" | {sum(mean.values()):.2f} |")
    return "\n".join(lines)


def outputs(data: dict, out: Path) -> None:
    runs, tasks, opts, K = data["runs"], data["tasks"], data["optimizers"], data["iterations"]
    write_curves(runs, out / "curves.csv")
    cost = data.get("cost", "task")  # results.json written before --cost existed: the task's cost
    plot(runs, tasks, opts, K, out / "cost.png", cost)
    if cost == "binary":
        print(f"\ncost: the task's cost plus {', '.join(json.dumps(t) for t in data['cost_added'])}")
    print(f"\nmean sampled cost per condition (mean ± std over seeds), N = {data['num_samples']} samples per condition\n")
    print(table(runs, tasks, opts, K))
    if any("steps_inside" in it for r in runs for it in r["iterations"]):
        print(f"\nsteps inside the binary region {'of the cost' if cost == 'binary' else '(not in the cost)'} per "
              "sample (of T), mean over samples and conditions, mean ± std over seeds\n")
        print(table(runs, [t for t in tasks if t in BINARY_TERMS], opts, K, "steps_inside"))
    print("\nseconds per iteration, by part (mean over iterations and seeds; evaluate = noise-free rollouts)\n")
    print(times_table(runs, tasks, opts, K))
    failed = [f"{r['task']} {r['optimizer']} seed {r['seed']}: {r['error']}" for r in runs if r["error"]]
    if failed:
        print("\nruns that stopped:\n" + "\n".join(failed))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default="obstacle,peg")
    ap.add_argument("--optimizers", default="lqr,pi2,pilqr")
    ap.add_argument("--seeds", default="0-2", help="e.g. 0-2 or 0,3")
    ap.add_argument("--iterations", type=int, default=10, help="K updates; K + 1 sample batches")
    ap.add_argument("--samples", type=int, default=None, help="samples per condition for every optimizer "
                    "(default: the task's agent.num_samples)")
    ap.add_argument("--cost", default="task", choices=COSTS, help="task: the task's own cost; binary: plus the "
                    "binary region term of BINARY_TERMS (the reference's discontinuous-cost example; obstacle only)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--plot-only", action="store_true", help="figure, csv and tables from OUT/results.json")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    if a.plot_only:
        outputs(json.loads((a.out / "results.json").read_text()), a.out)
        return
    from stages.sweep.queue import parse_seeds

    tasks, opts, seeds = a.tasks.split(","), a.optimizers.split(","), parse_seeds(a.seeds)
    for o in opts:
        if o not in OPTIMIZERS:
            ap.error(f"unknown optimizer {o!r}; expected some of {OPTIMIZERS}")
    if a.cost == "binary" and any(t not in BINARY_TERMS for t in tasks):
        ap.error(f"--cost binary is defined for {', '.join(BINARY_TERMS)} only")
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    data = {"command": " ".join(sys.argv), "commit": commit, "tasks": tasks, "optimizers": opts, "seeds": seeds,
            "iterations": a.iterations, "num_samples": a.samples or "agent.num_samples of the task", "host": platform.node(),
            "threads": os.environ.get("OMP_NUM_THREADS"), "cost": a.cost,
            "cost_added": [BINARY_TERMS[t] for t in tasks] if a.cost == "binary" else [], "runs": []}
    t_start = time.perf_counter()
    # Seed-major: an interrupted benchmark has every (task, optimizer) for the seeds it finished.
    for seed in seeds:
        for task in tasks:
            for opt in opts:
                t0 = time.perf_counter()
                log(f"{task} {opt} seed {seed}: {a.iterations} iterations")
                rec = run_one(task, opt, seed, a.iterations, a.samples, a.cost)
                rec["wall"] = time.perf_counter() - t0
                data["runs"].append(rec)
                data["wall"] = time.perf_counter() - t_start
                (a.out / "results.json").write_text(json.dumps(data, indent=1))
                log(f"{task} {opt} seed {seed}: done in {rec['wall']:.0f}s (total {data['wall']:.0f}s)")
    outputs(data, a.out)
    print(f"\nwall time {data['wall']:.0f}s")


if __name__ == "__main__":
    main()
