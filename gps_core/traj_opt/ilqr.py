"""Initial controllers from the model: iLQR with the task's own cost on the simulator's linearisation.

Per condition m, from its initial state, with z_t = [x_t; u_t] (D = dX + dU):

1. The nominal trajectory (X̄ [T, dX], Ū [T, dU]) is the noise-free rollout of the current
   controller in the simulator itself (the first: u = 0, or the controllers given as `initial`).
2. Along it: the model's dynamics x_{t+1} ≈ Fm_t z_t + fv_t (gps_core.sim.linearise.linearise_trajectory)
   and the cost's second-order expansion (cost.evaluate + gps_core.costs.expand_cost, exactly as
   the sample stage expands it for the C-step: Cm [T, D, D], cv [T, D], cc [T]).
3. Backward pass: lqr.backward_pass_batched (a batch of one) on the expansion plus a proximal term
   ½ μ ‖u_t − ū_t‖² at every t. That adds μ I to Q_uu (Levenberg–Marquardt) and −μ ū_t to q_u, so the
   step δu = −(Q_uu + μI)⁻¹ (q_u + Q_ux δx) is Tassa et al.'s (2012) regularised one; the value
   recursion is the exact one of the regularised problem (V = Q_xx + Q_xu K with the same Q_uu + μI),
   where Tassa's uses the unregularised Q_uu: the two agree at μ = 0, and μ is 0 whenever the pass
   succeeds without it. lqr.py's pass works in absolute coordinates (z around 0, the expansion
   re-centred), so the proximal term needs its linear part; nothing else of lqr.py had to change.
   μ follows Tassa's schedule: 0 while passes succeed; on a failure (some Q_uu + μI not positive
   definite, or a line search without a decrease) μ ← max(mu_min, μ·Δ), Δ ← max(Δ0, Δ·Δ0); on an
   accepted step Δ ← min(1/Δ0, Δ/Δ0), μ ← μ·Δ (0 below mu_min). A task whose last control has no
   cost (obstacle: no action term) has Q_uu = 0 at t = T−1, so there μ ≥ mu_min is needed.
4. Forward pass in the SIMULATOR with a line search on the feedforward step: with the backward
   pass's controller u = K_t x + k_t and d_t = K_t x̄_t + k_t − ū_t (its change at the nominal),
   u_t = clamp(ū_t + α d_t + K_t (x_t − x̄_t)) for α = 1, ½, ¼, … (line_search steps), the first α
   whose true cost (cost.evaluate of the rollout, summed over t) is below the nominal's is accepted.
5. Stop when the accepted step lowered the cost by less than `tolerance` of it, when the model
   predicts less than that (the LQR solution's cost under the linear model and the quadratic cost,
   lqr.forward_pass_batched / predicted_cost, against the nominal's), when μ exceeds mu_max, or after
   `iterations` backward passes.

6. Long horizons (ilqr_growing, what model_initial_controllers runs): from u = 0, the first nominal of a
   system that falls without feedback falls, and over a long horizon iLQR then converges to a fallen local
   optimum (InvertedDoublePendulum, T = 100: all 8 conditions, costs 1 500-3 300 against 64-69 balanced).
   So iLQR solves the horizon h = cfg.first_horizon first (short enough for the fall to be caught), then
   2h, 4h, ... up to T, each from the shorter solution extended: its steps 0..h-2 unchanged, then a
   time-invariant LQR holding the system where that solution ended (the model linearised once at its last
   (x̄, ū) and the cost expanded there, for the remaining steps; at the end of a balancing solution the
   system is near rest, where one linearisation describes it). An extension whose rollout diverges gives way
   to u = 0 at that horizon. The double pendulum: all 8 balanced at T = 100, 6-20 s per condition.
   T ≤ first_horizon is the single solve above.

Control limits: the simulator clamps the command to the actuators' range; the forward pass clamps it
itself (clamp above), so the recorded ū stays in range and the linearisation there is taken at ū
(at a limit: MuJoCo's one-sided, inward derivative; gps_core.sim.linearise). The backward pass does not
know the limits (no box-constrained QP): where it asks for more than the range, the clamp cuts the
step and the true-cost line search decides. The returned controller is

    u = K_t (x − x̄_t) + ū_t,   i.e. K = K_t, k = ū_t − K_t x̄_t

of the last accepted pass (X̄, Ū its trajectory), so its noise-free rollout is that pass's trajectory
with commands inside the range, and its cost is the last recorded one, up to rounding (which contact
can amplify: 2e-5 of the cost was seen on the peg, 1e-12 elsewhere). Off that
trajectory (exploration noise) the command can leave the range and MuJoCo clamps it, as for any
controller. Its covariance is init_var · I at every step: init_lqr's covariance is Q_uu⁻¹ of its
guessed problem, whose control cost is I / init_var, so init_var · I is that exploration's bound, reached
where the guessed value curvature is negligible (gps_core/traj_opt/init_lqr.py).

Everything is deterministic (noise-free rollouts, no random numbers). A task whose state does not
hold the simulation's state raises the linearisation's LinearisationError, unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from gps_core.configs import ILQRConfig
from gps_core.costs import expand_cost
from gps_core.sim.env import Simulator
from gps_core.sim.linearise import linearise_trajectory
from gps_core.traj_opt.lingauss import LinearGaussianPolicy
from gps_core.traj_opt.lqr import backward_pass_batched, forward_pass_batched, predicted_cost


@dataclass(frozen=True)
class ILQRResult:
    """One condition's iLQR. K [T, dU, dX], k [T, dU]: u = K_t x + k_t of the last accepted pass;
    X [T, dX], U [T, dU]: its noise-free trajectory; costs [n+1]: the true cost of the initial
    rollout, then of each accepted pass (strictly decreasing); passes: backward passes run;
    stopped: why it stopped ("converged", "predicted", "mu_max", "iterations"); ee_jac: the
    trajectory's point Jacobians (Simulator.rollout's ee_jac of the one condition, [T, ...])."""

    K: np.ndarray
    k: np.ndarray
    X: np.ndarray
    U: np.ndarray
    ee_jac: np.ndarray
    costs: np.ndarray
    passes: int
    stopped: str


class _Rollout:
    """Noise-free rollouts of condition m in the simulator, with the task's cost."""

    def __init__(self, sim: Simulator, m: int, cost: Any, T: int):
        self.sim, self.m, self.cost, self.T = sim, m, cost, T
        self.lo, self.hi = sim.task.action_low, sim.task.action_high

    def __call__(self, K: np.ndarray, k: np.ndarray):
        """u_t = clamp(K_t x_t + k_t): (X [T, dX], U [T, dU] clamped, ee_jac, total cost) or None if it diverged."""
        lo, hi = self.lo, self.hi

        def act(t, x, o):
            return np.clip(x @ K[t].T + k[t], lo, hi)

        r = self.sim.rollout(np.array([self.m]), act, self.T)
        if r.diverged_at[0] >= 0:
            return None
        X, U, J = r.X[0], r.U[0], r.ee_jac[0]
        total = float(self.cost.evaluate(X[None], U[None], J[None]).l.sum())
        if not np.isfinite(total):
            return None
        return X, U, J, total


def ilqr(sim: Simulator, m: int, cost: Any, T: int, cfg: ILQRConfig = ILQRConfig(),
         initial: LinearGaussianPolicy | None = None) -> ILQRResult:
    """iLQR of condition m of `sim` with `cost` (gps_core.costs.build_cost's: evaluate(X, U, J) -> CostTerms)
    over T steps, from the controller `initial` (its mean; None: u = 0). See the module docstring."""
    dX, dU = sim.dX, sim.dU
    run = _Rollout(sim, m, cost, T)
    K = np.zeros((T, dU, dX)) if initial is None else np.asarray(initial.K, dtype=float)
    k = np.zeros((T, dU)) if initial is None else np.asarray(initial.k, dtype=float)
    first = run(K, k)
    if first is None:
        raise FloatingPointError(f"condition {m}: the initial controller's noise-free rollout diverged")
    X, U, J, J_cost = first
    costs = [J_cost]
    mu, delta = 0.0, 1.0
    eye_u = np.eye(dU)
    passes, stopped = 0, "iterations"
    relinearise = True
    while passes < cfg.iterations:
        if relinearise:
            Fm, fv = linearise_trajectory(sim, m, X, U, eps=cfg.eps)
            q = expand_cost(cost.evaluate(X[None], U[None], J[None]), X[None], U[None])
            Cm, cv, cc = q.Cm, q.cv, q.cc
            relinearise = False
        Cs, cs = Cm.copy(), cv.copy()
        if mu > 0:
            Cs[:, dX:, dX:] += mu * eye_u
            cs[:, dX:] -= mu * U
        passes += 1
        Kn, kn, _, failed = backward_pass_batched(Cs[None], cs[None], Fm[None], fv[None], dX)
        if failed[0]:
            mu, delta = _increase(mu, delta, cfg)
            if mu > cfg.mu_max:
                stopped = "mu_max"
                break
            continue
        Kn, kn = Kn[0], kn[0]
        # The model's prediction of the full step's cost (linear dynamics, quadratic cost, no noise).
        mu_z, S = forward_pass_batched(Kn[None], kn[None], np.zeros((1, T, dU, dU)), Fm[None], fv[None],
                                       np.zeros((1, T, dX, dX)), X[None, 0], np.zeros((1, dX, dX)))
        predicted = float(predicted_cost(mu_z, S, Cm[None], cv[None], cc[None]).sum())
        tol = cfg.tolerance * max(abs(J_cost), 1e-12)
        if J_cost - predicted < tol and mu == 0.0:
            # Converged: keep the nominal (noise-free, x = x̄ gives u = ū) with this pass's gains, the
            # feedback of the linearisation along the final trajectory itself.
            K = Kn
            stopped = "predicted"
            break
        d = np.einsum("tux,tx->tu", Kn, X) + kn - U  # the feedforward change at the nominal
        base = U - np.einsum("tux,tx->tu", Kn, X)    # u = K (x − x̄) + ū as u = K x + base
        accepted = None
        for i in range(cfg.line_search):
            alpha = 0.5 ** i
            trial = run(Kn, base + alpha * d)
            if trial is not None and trial[3] < J_cost:
                accepted = trial
                break
        if accepted is None:
            mu, delta = _increase(mu, delta, cfg)
            if mu > cfg.mu_max:
                stopped = "mu_max"
                break
            continue
        X, U, J, new_cost = accepted
        K = Kn
        improvement = J_cost - new_cost
        J_cost = new_cost
        costs.append(new_cost)
        relinearise = True
        delta = min(1.0 / cfg.mu_factor, delta / cfg.mu_factor)
        mu = mu * delta
        if mu < cfg.mu_min:
            mu = 0.0
        if improvement < cfg.tolerance * max(abs(new_cost), 1e-12):
            stopped = "converged"
            break
    k = U - np.einsum("tux,tx->tu", K, X)
    return ILQRResult(K=K, k=k, X=X, U=U, ee_jac=J, costs=np.asarray(costs), passes=passes, stopped=stopped)


def holding_lqr(sim: Simulator, m: int, cost: Any, x: np.ndarray, u: np.ndarray, ee_jac: np.ndarray, n: int,
                eps: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """Time-invariant LQR about one point of condition m: the model linearised once at (x [dX], u [dU]) and the
    cost expanded there (ee_jac: the point Jacobians at x, one step of Simulator.rollout's ee_jac), both held
    for n steps. Returns K [n, dU, dX], k [n, dU] (u = K_t x + k_t, absolute coordinates)."""
    X, U = np.tile(x, (n, 1)), np.tile(u, (n, 1))
    Fm1, fv1 = linearise_trajectory(sim, m, X[:2], U[:2], eps=eps)
    Fm, fv = np.repeat(Fm1[:1], n, 0), np.repeat(fv1[:1], n, 0)
    Fm[-1], fv[-1] = 0.0, 0.0  # the last step leads nowhere, as in linearise_trajectory
    J = np.repeat(ee_jac[None], n, 0)
    q = expand_cost(cost.evaluate(X[None], U[None], J[None]), X[None], U[None])
    K, k, _, failed = backward_pass_batched(q.Cm[None], q.cv[None], Fm[None], fv[None], sim.dX)
    if failed[0]:
        raise FloatingPointError(f"condition {m}: the holding LQR's Q_uu is not positive definite")
    return K[0], k[0]


def ilqr_growing(sim: Simulator, m: int, cost: Any, T: int, cfg: ILQRConfig = ILQRConfig()) -> ILQRResult:
    """iLQR of condition m over T steps from u = 0 through the horizons first_horizon, 2 first_horizon, ..., T
    (module docstring, 6). Returns the last horizon's result."""
    h = min(T, cfg.first_horizon)
    res = ilqr(sim, m, cost, h, cfg)
    while h < T:
        longer = min(2 * h, T)
        try:
            Kh, kh = holding_lqr(sim, m, cost, res.X[-1], res.U[-1], res.ee_jac[-1], longer - h + 1, cfg.eps)
            extended = LinearGaussianPolicy(K=np.concatenate([res.K[:h - 1], Kh]), k=np.concatenate([res.k[:h - 1], kh]),
                                            covar=np.zeros((longer, sim.dU, sim.dU)))
            res = ilqr(sim, m, cost, longer, cfg, extended)
        except FloatingPointError:
            res = ilqr(sim, m, cost, longer, cfg)
        h = longer
    return res


def _increase(mu: float, delta: float, cfg: ILQRConfig) -> tuple[float, float]:
    """Tassa's increase of the Levenberg–Marquardt μ after a failure."""
    delta = max(cfg.mu_factor, delta * cfg.mu_factor)
    return max(cfg.mu_min, mu * delta), delta


def model_initial_controllers(
    sim: Simulator, cost: Any, T: int, init_var: float, cfg: ILQRConfig = ILQRConfig(),
    initial: Sequence[LinearGaussianPolicy] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list[LinearGaussianPolicy], list[np.ndarray]]:
    """Initial controllers of every condition of `sim` by iLQR on the model (module docstring).

    cost: the task's cost (gps_core.costs.build_cost(s.cost_terms, s.task)); T: steps; init_var: the
    exploration variance (covariance init_var · I [T, dU, dU], as init_lqr.init_var); initial: controllers
    to start from, one per condition (None: u = 0, through growing horizons, ilqr_growing). Returns the
    controllers (K [T, dU, dX], k [T, dU]) and, per condition, the true cost over T steps of the initial
    rollout (u = 0, or a shorter horizon's solution extended) and of each accepted iteration ([n+1],
    strictly decreasing; the last is the returned controller's noise-free cost). progress(done, M), if given, after
    each condition.
    Raises gps_core.sim.linearise.LinearisationError where the task's state does not hold the simulation's.
    """
    if not init_var > 0:
        raise ValueError(f"init_var must be positive, got {init_var}")
    covar = np.broadcast_to(init_var * np.eye(sim.dU), (T, sim.dU, sim.dU)).copy()
    pols, costs = [], []
    for m in range(sim.M):
        res = ilqr_growing(sim, m, cost, T, cfg) if initial is None else ilqr(sim, m, cost, T, cfg, initial[m])
        pols.append(LinearGaussianPolicy(K=res.K, k=res.k, covar=covar.copy()))
        costs.append(res.costs)
        if progress is not None:
            progress(m + 1, sim.M)
    return pols, costs
