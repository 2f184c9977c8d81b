"""Scoring of the paper: final distance of one point to its target, success below thresholds; and the
scores a task may add (evaluation.survival, evaluation.cost): how long a block stays within bounds, the
summed cost of a rollout.

For the peg tasks the point is the peg bottom (leg_bottom) at the last step and
the target the hole's floor; a policy succeeds when the distance is below τ
(the paper's caption uses τ = 0.06, its scoring script τ = 0.1, the hole's
depth). For the obstacle task it is the particle and the target (3, 0).
"""

from __future__ import annotations

import numpy as np


def final_distance(X: np.ndarray, point_start: int, target: np.ndarray) -> np.ndarray:
    """X: [M, T, dX] one rollout per condition -> [M] distance of x[T-1, start:start+len(target)] to target."""
    target = np.asarray(target, dtype=float)
    return np.linalg.norm(X[:, -1, point_start : point_start + len(target)] - target, axis=-1)


def success(distance: np.ndarray, threshold: float, failed: np.ndarray | None = None) -> np.ndarray:
    """[M] 1.0 where the distance is strictly below the threshold, else 0.0.

    failed: optional [M] bool, rollouts that count as failures whatever their distance (a
    diverged rollout's distance is that of its last good state, not of where it ended).
    """
    hits = np.asarray(distance) < threshold
    if failed is not None:
        hits &= ~np.asarray(failed, dtype=bool)
    return hits.astype(float)


def success_table(rates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """rates: [runs, ...] success rate of each run -> (mean, population std) over runs, in percent."""
    rates = 100.0 * np.asarray(rates, dtype=float)
    return rates.mean(axis=0), rates.std(axis=0)


def survival_steps(X: np.ndarray, start: int, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """X [M, T, dX] -> [M] int: steps from t = 0 during which x[t, start:start+len(low)] lies within [low, high]
    (every entry, bounds included), up to the first step outside; T where it never leaves (survived)."""
    low, high = np.asarray(low, dtype=float), np.asarray(high, dtype=float)
    block = X[:, :, start:start + len(low)]
    inside = np.all((block >= low) & (block <= high), axis=-1)  # [M, T]; NaN compares False: outside
    return np.where(inside.all(axis=1), X.shape[1], np.argmin(inside, axis=1))
