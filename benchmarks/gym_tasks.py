"""Gymnasium's tasks (Reacher, Pusher) over seeds: learning curves on training and held-out
conditions, and the Gymnasium return of each run's final policy.

The runs are the comparison script's run folders (each its own params.yaml, pipeline and data/):

    python benchmarks/paper_comparison.py run --out /tmp/gym --tasks reacher --methods on_classic --seeds 0-4 -j 2
    python benchmarks/gym_tasks.py --runs /tmp/gym --task reacher --figure docs/img/reacher_curve.png

This prints the markdown of docs/results.md's section (per-iteration means ± std over seeds, the
return of each seed and their mean ± std beside Gymnasium's reward_threshold) and draws the figure.
With --gym-curve FILE it also scores every iteration's policy in the Gymnasium environment (the
episodes of gym_evaluation; cached per run in data/gym_curve.json) and draws Gymnasium's return
against the environment steps MDGPS had sampled by then (every draw of every sample counted).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's stages/ and gps_core/, before an installed copy


def load(run: Path) -> tuple[dict[str, np.ndarray], dict | None]:
    """(learning curve columns, gym_eval.json or None) of a finished run folder."""
    with open(run / "data" / "learning_curve.csv") as f:
        rows = list(csv.DictReader(f))
    curve = {k: np.array([float(r[k]) for r in rows]) for k in rows[0]}
    gym = run / "data" / "gym_eval.json"
    return curve, json.loads(gym.read_text()) if gym.exists() else None


def gym_curve(run: Path) -> tuple[np.ndarray, np.ndarray]:
    """(environment steps sampled by the end of each iteration [K], Gymnasium's mean return of its policy [K])."""
    import h5py

    cache = run / "data" / "gym_curve.json"
    if cache.exists():
        doc = json.loads(cache.read_text())
        return np.array(doc["env_steps"]), np.array(doc["return_mean"])
    from stages.settings.load import load_settings
    from stages.steps.evaluate_gym import score_in_gym

    s = load_settings(run / "params.yaml")  # a relative model path is relative to that file
    episodes = s.gym_evaluation.episodes
    steps, returns, total = [], [], 0
    for k in range(s.iterations):
        itr = run / "data" / f"itr_{k:02d}"
        with h5py.File(itr / "samples.h5") as f:
            total += int(f["draws"][()].sum()) * s.task.T  # every draw of every sample
        steps.append(total)
        returns.append(float(score_in_gym(s, itr / "policy.h5", episodes).returns.mean()))
    cache.write_text(json.dumps({"env_steps": steps, "return_mean": returns}) + "\n")
    return np.array(steps), np.array(returns)


def mean_std(values: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    a = np.array(values)
    return a.mean(axis=0), a.std(axis=0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", required=True, help="folder of run folders (<task>_<method>_s<seed>)")
    ap.add_argument("--task", required=True)
    ap.add_argument("--figure", help="PNG of the learning curves")
    ap.add_argument("--every", type=int, default=1, help="table rows: the first iteration and every k-th")
    ap.add_argument("--gym-curve", help="PNG of Gymnasium's return of every iteration's policy against environment steps")
    args = ap.parse_args()

    runs = sorted(p for p in Path(args.runs).glob(f"{args.task}_*_s*") if (p / "data" / "learning_curve.csv").exists())
    if not runs:
        raise SystemExit(f"no finished {args.task} runs in {args.runs}")
    loaded = [load(r) for r in runs]
    curves = [c for c, _ in loaded]
    n = min(len(c["iteration"]) for c in curves)
    curves = [{k: v[:n] for k, v in c.items()} for c in curves]
    thresholds = sorted({k.split("_", 1)[1] for k in curves[0] if k.startswith("success_")}, key=float)

    print(f"{len(runs)} runs: {', '.join(r.name for r in runs)}\n")
    head = ["itr", "final distance (train)", "final distance (held out)"] + \
           [f"success {t} (train / held out)" for t in thresholds] + ["sample cost"]
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for i in range(n):
        if i and (i + 1) % args.every and i != n - 1:
            continue
        cells = [str(int(curves[0]["iteration"][i]))]
        for key in ("final_distance", "test_final_distance"):
            m, s = mean_std([c[key][i] for c in curves])
            cells.append(f"{m:.3f} ± {s:.3f}")
        for t in thresholds:
            a, _ = mean_std([100 * c[f"success_{t}"][i] for c in curves])
            b, _ = mean_std([100 * c[f"test_success_{t}"][i] for c in curves])
            cells.append(f"{a:.0f} % / {b:.0f} %")
        m, s = mean_std([c["sample_cost"][i] for c in curves])
        cells.append(f"{m:.2f} ± {s:.2f}")
        print("| " + " | ".join(cells) + " |")

    gyms = [(r, g) for r, (_, g) in zip(runs, loaded) if g is not None]
    if gyms:
        g0 = gyms[0][1]
        print(f"\nGymnasium {g0['gymnasium_version']}, {g0['env']}, {g0['episodes']} episodes (seeds {g0['first_seed']}.."
              f"{g0['first_seed'] + g0['episodes'] - 1}), the network's mean action clipped to the action space:\n")
        print("| run | return mean | return std | min | max | training env steps |\n|---|---|---|---|---|---|")
        for r, g in gyms:
            print(f"| {r.name} | {g['return_mean']:.3f} | {g['return_std']:.3f} | {g['return_min']:.3f} | "
                  f"{g['return_max']:.3f} | {g['training_env_steps']:,} |")
        means = np.array([g["return_mean"] for _, g in gyms])
        print(f"\nMean over seeds: **{means.mean():.3f} ± {means.std():.3f}** (std over the {len(means)} seeds' means); "
              f"Gymnasium's reward_threshold {g0['reward_threshold']}; {sum(m >= g0['reward_threshold'] for m in means)} "
              f"of {len(means)} seeds reach it.")

    if args.gym_curve:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        pairs = [gym_curve(r) for r in runs]
        k = min(len(x) for x, _ in pairs)
        steps = pairs[0][0][:k]
        m, sd = mean_std([y[:k] for _, y in pairs])
        print(f"\nGymnasium's return of each iteration's policy ({len(pairs)} seeds, mean ± std), against the "
              "environment steps sampled by then:\n")
        print("| itr | env steps | return |\n|---|---|---|")
        for i in range(k):
            if i and (i + 1) % args.every and i != k - 1:
                continue
            print(f"| {i + 1} | {steps[i]:,} | {m[i]:.3f} ± {sd[i]:.3f} |")
        fig, ax = plt.subplots(figsize=(5, 3.4))
        ax.plot(steps, m, color="C0", label=f"MDGPS ({len(pairs)} seeds)")
        ax.fill_between(steps, m - sd, m + sd, color="C0", alpha=0.2)
        threshold = loaded[0][1]["reward_threshold"] if loaded[0][1] else None
        if threshold is not None:
            ax.axhline(threshold, color="k", ls="--", lw=1, label=f"reward_threshold {threshold:g}")
        ax.set(xscale="log", xlabel="environment steps sampled", ylabel="Gymnasium return (100 episodes)",
               title=f"{args.task}: the policy in Gymnasium")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.gym_curve, dpi=100)
        print(f"\nwrote {args.gym_curve}")

    if args.figure:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        it = curves[0]["iteration"]
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
        for key, label, color in (("final_distance", "training conditions", "C0"),
                                  ("test_final_distance", "held-out conditions", "C1")):
            m, s = mean_std([c[key] for c in curves])
            axes[0].plot(it, m, color=color, label=label)
            axes[0].fill_between(it, m - s, m + s, color=color, alpha=0.2)
        axes[0].set(xlabel="iteration", ylabel="final distance [m]", title=f"{args.task}: global policy, {len(curves)} seeds")
        axes[0].legend()
        t = thresholds[-1]
        for key, label, color in ((f"success_{t}", "training", "C0"), (f"test_success_{t}", "held out", "C1")):
            m, s = mean_std([100 * c[key] for c in curves])
            axes[1].plot(it, m, color=color, label=label)
            axes[1].fill_between(it, m - s, m + s, color=color, alpha=0.2)
        axes[1].set(xlabel="iteration", ylabel=f"success rate < {t} m [%]", ylim=(-5, 105), title="success (mean ± std)")
        axes[1].legend()
        fig.tight_layout()
        fig.savefig(args.figure, dpi=100)
        print(f"\nwrote {args.figure}")


if __name__ == "__main__":
    main()
