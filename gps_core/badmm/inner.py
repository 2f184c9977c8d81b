"""The `badmm-inner` stage's work: every inner C/S alternation of one BADMM iteration (ALGORITHM §10.2).

gps_core.badmm.algorithm.run_inner_loop decides the order (inner_plan); `InnerLoop` holds the state
it threads through (network and Adam state, policy linearisation and its GMM prior, dual
variables, this iteration's latest controllers and η) and implements the four operations:

    S-step        train_policy on badmm.s_step_dataset (targets shifted by the duals, weights ν),
                  the entropy regulariser of this iteration's schedule
    refit_policy  the network's means at this iteration's samples, then the linearisation π̄
                  refitted with the GMM warm-started on the previous one ('replace' mode: no new samples)
    dual_step     badmm.dual_and_weight_step (ν only at the last inner iteration)
    c_step        badmm.badmm_c_step against p̄ (the controllers that drew the samples), η warm-started

Every random draw of inner step j comes from its own stream (seed, iteration, name + j), so an
inner step's result does not depend on how many draws the earlier ones made. Arrays are as in
gps_core (conditions first); no files are read or written here. The step (stages/steps/badmm.py)
gives the typed configs (gps_core.configs), the random streams and the progress bars; nothing here
imports from stages/.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, ContextManager, Sequence

import numpy as np

from gps_core.badmm import algorithm as badmm
from gps_core.badmm.duals import DualState
from gps_core.configs import BadmmConfig, PriorConfig, SStepConfig, TrajOptConfig
from gps_core.traj_opt.c_step import BatchCStepResult
from gps_core.traj_opt.lingauss import LinearGaussianPolicy
from gps_core.traj_opt.lqr import Dynamics, QuadraticCost


def s_step_stream(inner: int) -> str:
    return f"badmm_s_step_{inner}"


def refit_stream(inner: int) -> str:
    return f"badmm_fit_policy_{inner}"


@dataclass
class InnerLoop:
    """State and operations of one iteration's inner loop (a gps_core.badmm.algorithm.InnerOps)."""

    iteration: int
    iterations: int  # of the run: the schedules of bcfg run over them
    bcfg: BadmmConfig
    s_step_cfg: SStepConfig  # its ent_reg is replaced by this iteration's of bcfg.ent_reg_schedule
    prior_cfg: PriorConfig  # the policy linearisation's GMM prior
    topt: TrajOptConfig
    rng: Callable[[str], np.random.Generator]  # this iteration's generator of a stream name
    # progress_bar(description, total): a context manager yielding progress(done, total) (stages.progress)
    progress_bar: Callable[[str, int], ContextManager[Callable[[int, int], None]]]
    X: np.ndarray  # [M, N, T, dX]
    O: np.ndarray  # [M, N, T, dO]
    costs: Sequence[QuadraticCost]
    dyns: Sequence[Dynamics]
    prevs: Sequence[LinearGaussianPolicy]  # p̄
    eta: np.ndarray  # [M] warm start
    kl_bounds: np.ndarray  # [M] kl_step · step_mult · T
    duals: DualState
    net: Any  # PolicyParams
    adam: Any  # AdamState or None
    gmms: list  # the policy prior's GMMs (warm start of the refits)
    log: Callable[[str], None] = lambda msg: None
    # filled in as the loop runs
    new: list[LinearGaussianPolicy] | None = None
    lin: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # K, k, pol_covar of π̄
    U_pol: np.ndarray | None = None
    losses: np.ndarray | None = None  # the last S-step's
    result: BatchCStepResult | None = None  # the last C-step's

    def __post_init__(self) -> None:
        self.ent_reg = badmm.ent_reg_at(self.bcfg, self.iteration, self.iterations)
        self.lg_step = badmm.lg_step_at(self.bcfg, self.iteration, self.iterations)
        M, N, T, _ = self.X.shape
        J, dU = self.bcfg.inner_iterations, self.duals.lam_k.shape[-1]
        n_grad = self.s_step_cfg.iterations
        self.diag = {  # inner.h5, one row per inner iteration
            "s_step": np.zeros(J, dtype=bool), "s_step_loss": np.zeros((J, n_grad)),
            "dual_step": np.zeros(J, dtype=bool), "policy_kl": np.zeros((J, M, T)),
            "lam_k": np.zeros((J, M, T, dU)), "pol_wt": np.zeros((J, M, T)),
            "kl": np.zeros((J, M)), "kl_step": np.zeros((J, M)), "eta": np.zeros((J, M)),
            "converged": np.zeros((J, M), dtype=bool), "dual_iterations": np.zeros((J, M), dtype=np.int64),
            "safeguard": np.zeros((J, M), dtype=np.int8),
            "residual": np.zeros((J, M, T, dU)),
        }

    # ------------------------------------------------------------------ InnerOps

    def s_step(self, step: badmm.InnerStep) -> None:
        from gps_core.policy.s_step import train_policy

        pols = badmm.controller_for(step.inner, self.prevs, self.new)
        obs, target, precision, weight = badmm.s_step_dataset(pols, self.X, self.O, self.duals, self.bcfg.target_shift)
        scfg = replace(self.s_step_cfg, ent_reg=self.ent_reg)
        rng = self.rng(s_step_stream(step.inner))
        with self.progress_bar(f"badmm s-step {self.iteration}.{step.inner}: gradient step", scfg.iterations) as progress:
            self.net, self.adam, self.losses = train_policy(self.net, self.adam, obs, target, precision, weight, scfg, rng, progress)
        self.diag["s_step"][step.inner] = True
        self.diag["s_step_loss"][step.inner] = self.losses
        self.log(f"iteration {self.iteration}.{step.inner}: S-step ({step.controller} controllers) loss "
                 f"{self.losses[:50].mean():.4f} -> {self.losses[-50:].mean():.4f}")

    def refit_policy(self, step: badmm.InnerStep) -> None:
        from gps_core.fit.policy_lin import fit_policy_linearisations
        from gps_core.policy.policy_net import policy_mean

        self.U_pol = policy_mean(self.net, self.O)
        rng = self.rng(refit_stream(step.inner))
        K, k, covar, self.gmms = fit_policy_linearisations(self.X, self.U_pol, self.net.var, self.gmms, self.prior_cfg, rng)
        self.lin = (K, k, covar)

    def lins(self) -> list[LinearGaussianPolicy]:
        K, k, covar = self.lin
        return [LinearGaussianPolicy(K=K[m], k=k[m], covar=covar[m]) for m in range(K.shape[0])]

    def dual_step(self, step: badmm.InnerStep) -> None:
        pols = badmm.controller_for(step.inner, self.prevs, self.new)
        self.duals, kl = badmm.dual_and_weight_step(
            self.duals, pols, self.prevs, self.X, self.U_pol, self.net.var, self.lin[0], self.bcfg, self.lg_step,
            step.update_pol_wt,
        )
        self.diag["dual_step"][step.inner] = True
        self.diag["policy_kl"][step.inner] = kl

    def c_step(self, step: badmm.InnerStep) -> None:
        res = badmm.badmm_c_step(self.costs, self.prevs, self.lins(), self.dyns, self.duals, self.kl_bounds, self.eta, self.topt)
        kept = np.flatnonzero(res.safeguard)  # BADMM has one safeguard: keep p̄ (gps_core.traj_opt.c_step, "Safeguards")
        if kept.size:
            self.log(f"iteration {self.iteration}.{step.inner}: safeguard: Q_uu stayed non-positive-definite up to eta 1e16; "
                     f"condition(s) {', '.join(map(str, kept))} kept the previous controllers (the eta -> infinity limit, KL 0)")
        for m in np.flatnonzero(~res.converged & (res.safeguard == 0)):
            self.log(
                f"iteration {self.iteration}.{step.inner}: condition {m}: dual search did not converge in "
                f"{res.dual_iterations[m]} rounds (KL {res.kl[m]:.3f}, bound {res.kl_bound[m]:.3f})"
            )
        self.result, self.eta = res, res.eta
        self.new = [res[m].policy for m in range(len(res))]
        j, d = step.inner, self.diag
        d["lam_k"][j], d["pol_wt"][j] = self.duals.lam_k, self.duals.pol_wt
        d["kl"][j], d["kl_step"][j], d["eta"][j] = res.kl, res.kl_bound, res.eta
        d["converged"][j], d["dual_iterations"][j], d["safeguard"][j] = res.converged, res.dual_iterations, res.safeguard
        d["residual"][j] = badmm.constraint_residual(self.new, self.X, self.U_pol)
        rms = np.sqrt(np.mean(d["residual"][j] ** 2, axis=(1, 2)))
        self.log(f"iteration {self.iteration}.{j}: KL(p||p_prev) {np.array2string(res.kl, precision=2)} / bound "
                 f"{np.array2string(res.kl_bound, precision=2)}; rms E_p[u] - E_pi[u] {np.array2string(rms, precision=3)}")

    # ------------------------------------------------------------------ run

    def run(self) -> "InnerLoop":
        self.plan = badmm.run_inner_loop(self.iteration, self.bcfg, self)
        return self

    @property
    def pol_wt_updated(self) -> bool:
        """Whether this iteration updated ν (all but iteration 0 with a single inner iteration)."""
        return any(step.update_pol_wt for step in self.plan)
