"""Drawing samples: local controllers or the global policy acting in the simulator.

Each episode gets its own smoothed noise ε [T, dU]. A local controller acts as
u = K_t x + k_t + chol(Σ_t)ᵀ ε_t, the global policy as u = μ_θ(o) + √var ∘ ε_t (o: the task's observation).
Evaluation rollouts use ε = 0. All episodes of a stage run in one lockstep loop
with the actions computed for the whole batch at once.

A rollout that diverges (gps_core.sim.env.Simulator.rollout) is reported in
Rollouts.diverged_at. `rollout_controllers` and `rollout_policy` raise on the
first one unless told not to; `draw_samples` draws diverged samples again with
fresh noise.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, fields
from typing import Callable, Sequence

import numpy as np

from gps_core.sim.env import CAUSES, Rollouts, Simulator
from gps_core.traj_opt.lingauss import LinearGaussianPolicy
from gps_core.policy.policy_net import PolicyParams, policy_mean

Progress = Callable[[int, int], None]
# run(conditions [B], noise [B, T, dU], progress) -> Rollouts with leading [B]: episodes of one actor.
EpisodeRun = Callable[[np.ndarray, np.ndarray, Progress | None], Rollouts]


def controller_episodes(sim: Simulator, pols: Sequence[LinearGaussianPolicy]) -> EpisodeRun:
    """Episodes in which controller m acts in condition m (the conditions of the batch pick the controllers)."""
    K_all = np.stack([p.K for p in pols])  # [M, T, dU, dX]
    k_all = np.stack([p.k for p in pols])
    chol_all = np.stack([p.chol for p in pols])

    def run(cond: np.ndarray, eps: np.ndarray, progress: Progress | None = None) -> Rollouts:
        K, k, chol = K_all[cond], k_all[cond], chol_all[cond]

        def act(t, x, o):
            return np.einsum("bux,bx->bu", K[:, t], x) + k[:, t] + np.einsum("bv,bvu->bu", eps[:, t], chol[:, t])

        return sim.rollout(cond, act, eps.shape[1], progress)

    return run


def policy_episodes(sim: Simulator, params: PolicyParams) -> EpisodeRun:
    """Episodes in which the global policy acts on the task's observation, whatever the condition."""

    def run(cond: np.ndarray, eps: np.ndarray, progress: Progress | None = None) -> Rollouts:
        scaled = eps * np.sqrt(params.var)

        def act(t, x, o):
            return policy_mean(params, o) + scaled[:, t]

        return sim.rollout(cond, act, eps.shape[1], progress)

    return run


def _grid(r: Rollouts, M: int, N: int) -> Rollouts:
    """Leading [M·N] (condition-major) -> [M, N]."""
    return Rollouts(**{f.name: getattr(r, f.name).reshape(M, N, *getattr(r, f.name).shape[1:]) for f in fields(r)})


def _batch(run: EpisodeRun, noise: np.ndarray, progress: Progress | None) -> Rollouts:
    """Every sample of noise [M, N, T, dU] in one batch -> Rollouts [M·N, ...] (condition-major)."""
    M, N, T, dU = noise.shape
    return run(np.repeat(np.arange(M), N), noise.reshape(M * N, T, dU), progress)


def divergence_message(r: Rollouts) -> str | None:
    """The first divergence of r [M, N, ...] (earliest step, then lowest condition and sample), as one line; None if none."""
    bad = np.argwhere(r.diverged_at >= 0)
    if not len(bad):
        return None
    m, n = min(map(tuple, bad), key=lambda mn: (r.diverged_at[mn], mn))
    what = CAUSES[r.cause[m, n]]
    return f"simulation diverged (NaN, Inf or unstable {what}) in condition {m}, sample {n}, at or before t={r.diverged_at[m, n]}"


def _checked(r: Rollouts, stop: bool) -> Rollouts:
    message = divergence_message(r) if stop else None
    if message:
        raise FloatingPointError(message)
    return r


def rollout_controllers(
    sim: Simulator, pols: Sequence[LinearGaussianPolicy], noise: np.ndarray, progress: Progress | None = None,
    stop: bool = True,
) -> Rollouts:
    """Controller m acts in condition m. noise: [M, N, T, dU] -> arrays [M, N, T, ...], diverged_at [M, N].

    progress: optional progress(time steps done, T) after each step of the lockstep batch.
    stop: raise FloatingPointError (one line, naming condition, sample and step) if any sample diverged.
    """
    M, N = noise.shape[:2]
    return _checked(_grid(_batch(controller_episodes(sim, pols), noise, progress), M, N), stop)


def rollout_policy(
    sim: Simulator, params: PolicyParams, noise: np.ndarray, progress: Progress | None = None,
    stop: bool = True,
) -> Rollouts:
    """The global policy acts in every condition. noise: [M, N, T, dU] -> arrays [M, N, T, ...], diverged_at [M, N].

    progress: optional progress(time steps done, T) after each step of the lockstep batch.
    stop: raise FloatingPointError (one line, naming condition, sample and step) if any sample diverged.
    """
    M, N = noise.shape[:2]
    return _checked(_grid(_batch(policy_episodes(sim, params), noise, progress), M, N), stop)


@dataclass
class Drawn:
    """Samples after redraws. rollouts: arrays [M, N, T, ...] of the draws kept; noise: [M, N, T, dU]
    of those draws; draws: [M, N] int, how many draws each sample took (1: the first was fine)."""

    rollouts: Rollouts
    noise: np.ndarray
    draws: np.ndarray


def draw_samples(
    run: EpisodeRun,
    noise: np.ndarray,
    redraw_noise: Callable[[int, int, int], np.ndarray],
    max_draws: int | None,
    progress: Progress | None = None,
) -> Drawn:
    """Draw every sample (m, n) with noise[m, n]; draw each that diverged again, up to max_draws draws in all.

    noise: [M, N, T, dU], the first draws, run in one batch. redraw_noise(m, n, a) -> [T, dU], the
    noise of draw a ≥ 1 of sample (m, n). The samples that diverged in a round are drawn again
    together, in one batch; a sample that never diverges keeps exactly its first draw.
    Raises FloatingPointError (one line) naming the first sample that diverged in all max_draws
    draws; with max_draws None, at the first divergence, as rollout_controllers does.
    """
    M, N, T, dU = noise.shape
    cond = np.repeat(np.arange(M), N)
    eps = noise.reshape(M * N, T, dU).copy()
    r = _batch(run, noise, progress)
    if max_draws is None:
        _checked(_grid(r, M, N), stop=True)
    draws = np.ones(M * N, dtype=np.int64)
    bad = np.flatnonzero(r.diverged_at >= 0)
    while bad.size:
        if draws[bad[0]] >= max_draws:  # the samples of a round have had the same number of draws
            raise FloatingPointError(_exhausted(r, int(bad[0]), N, max_draws))
        for b in bad:
            eps[b] = redraw_noise(*map(int, divmod(b, N)), int(draws[b]))
        again = run(cond[bad], eps[bad], None)
        for f in fields(r):
            getattr(r, f.name)[bad] = getattr(again, f.name)
        draws[bad] += 1
        bad = bad[again.diverged_at >= 0]
    return Drawn(_grid(r, M, N), eps.reshape(noise.shape), draws.reshape(M, N))


def _exhausted(r: Rollouts, b: int, N: int, max_draws: int) -> str:
    m, n = divmod(b, N)
    return (
        f"simulation diverged in condition {m}, sample {n}, on each of its {max_draws} draws "
        f"(the last at or before t={r.diverged_at[b]}: NaN, Inf or unstable {CAUSES[r.cause[b]]})"
    )


def redraw_summary(draws: np.ndarray) -> str | None:
    """draws [M, N] -> e.g. "3 samples diverged and were drawn again: 2 took 2 draws, 1 took 3 draws"; None if none was."""
    counts = Counter(int(d) for d in np.ravel(draws) if d > 1)
    if not counts:
        return None
    parts = ", ".join(f"{c} took {d} draws" for d, c in sorted(counts.items()))
    total = sum(counts.values())
    return f"{total} sample{'s' if total > 1 else ''} diverged and {'were' if total > 1 else 'was'} drawn again: {parts}"
