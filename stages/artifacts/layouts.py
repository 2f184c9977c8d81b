"""The one table of artifact layouts: per kind of HDF5 file, each dataset's axes, dtype and meaning.

Axis symbols: M conditions, Mt held-out conditions, N samples per condition, T time
steps, dX state, dU action, dO observation dimensions, D = dX + dU, K GMM clusters,
E the width of a GMM's points (2 dX + dU for the dynamics prior over [x; u; x'],
dX + dU for the policy prior over [x; u]), Nb trajectories in the dynamics prior's
buffer, J rows of the state's position and relative blocks (`ee_jac`) or, in
BADMM's inner.h5, inner iterations; `iterations` the S-step's gradient steps,
`out`/`in` a layer's output and input sizes.

The readers' checks (stages/artifacts/checks.py) take axes and dtypes from here (`spec`), `gps inspect`
locates the condition, sample and time axes through `inspect_layouts`, and the
tables of docs/artifacts.md are written from here (stages/artifacts/doc_tables.py;
tests/test_inspect.py fails when they differ).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Dataset:
    """One dataset of an artifact: its axes ("M,T,dU,dX"; "" for as-the-parameter), dtype and meaning."""

    dims: str
    meaning: str
    dtype: str = "float64"  # float64, int64, int8 or bool; "int": any integer type


D = Dataset
GMM_PRIOR = {
    "prior/gmm_mu": D("M,K,E", "GMM means"),
    "prior/gmm_sigma": D("M,K,E,E", "GMM covariances (positive definite)"),
    "prior/gmm_logmass": D("M,K", "log mixture weights"),
    "prior/gmm_n_init": D("M", "points at the GMM's last re-initialisation", "int64"),
}
CONTROLLERS = {
    "K": D("M,T,dU,dX", "gains of u ~ N(K x + k, pol_covar)"),
    "k": D("M,T,dU", "offsets"),
    "pol_covar": D("M,T,dU,dU", "action covariance (positive definite)"),
}
C_STEP = {
    "eta": D("M", "dual variable of the KL bound (warm start for the next iteration; init: 1.0). Written by `gps pi2` "
                  "(PI2, PILQR and their MDGPS forms) as summaries of its per-step values: PILQR the geometric mean "
                  "of the LQR step's η_t, PI2 alone of its temperatures"),
    "kl_step": D("M", "the KL bound used, kl_step · step_mult · T (`gps pi2`: Σ_t ε_t of the LQR step; PI2 alone "
                      "T · `pi2.kl_threshold`, a bound on the weights)"),
    "kl": D("M", "the KL(p ‖ π̄) achieved (`gps pi2`: Σ_t KL_t of the LQR step; PI2 alone Σ_t of its weights' KL "
                 "to uniform)"),
    "converged": D("M", "whether the dual search met |KL − bound| < tolerance · bound", "bool"),
    "dual_iterations": D("M", "rounds of the dual search (of the relative search, where that ran)", "int64"),
    "safeguard": D("M", "what the C-step did where the reference's rule would have stopped the run "
                        "(`traj_opt.on_fault: recover`): 0 nothing, 1 solved relative to π̄ (`relative_coordinates`), "
                        "2 kept π̄ itself (`kl_reference`); the file attribute `safeguard_names` lists the names. "
                        "Where it is 1, `kl` is measured in the relative coordinates and `eta` may exceed "
                        "`traj_opt.max_eta`", "int8"),
}

LAYOUTS: dict[str, dict[str, Dataset]] = {
    "samples": {
        "X": D("M,N,T,dX", "states: the blocks of `task.state` in order (for the paper's tasks qpos, qvel, "
                           "site positions, site velocities as finite differences)"),
        "U": D("M,N,T,dU", "actions as commanded (before the simulator's clipping)"),
        "obs": D("M,N,T,dO", "observations of the global policy: the blocks of `task.observation` (for the peg "
                             "task the whole state, for the blind peg its first 14 entries)"),
        "noise": D("M,N,T,dU", "the smoothed standard-normal noise each episode used (of the draw kept)"),
        "draws": D("M,N", "draws the sample took: 1 = its first draw was fine; more = earlier draws diverged "
                          "and were drawn again", "int64"),
        "ee_jac": D("M,N,T,J,dU", "Jacobians of the state's position and relative blocks (J rows in all, in state "
                                  "order) w.r.t. the configuration joints (the state's first block; the paper's "
                                  "tasks: every joint)"),
        "cost": D("M,N,T", "true per-step cost"),
        "Cm": D("M,T,D,D", "cost model ℓ_t(z) ≈ cc + cvᵀz + ½zᵀCm z, re-centred per sample and averaged: Cm"),
        "cv": D("M,T,D", "cv"),
        "cc": D("M,T", "cc"),
    },
    "dynamics": {
        "Fm": D("M,T,dX,D", "x_{t+1} ~ N(Fm_t [x_t; u_t] + fv_t, dyn_covar_t); zeros at t = T−1"),
        "fv": D("M,T,dX", "fv_t"),
        "dyn_covar": D("M,T,dX,dX", "dyn_covar_t (symmetric)"),
        "x0mu": D("M,dX", "initial-state Gaussian: mean"),
        "x0sigma": D("M,dX,dX", "initial-state Gaussian: covariance"),
        "prior/X": D("M,Nb,T,dX", "the prior's trajectory buffer (last `max_samples − 1` trajectories): states"),
        "prior/U": D("M,Nb,T,dU", "the buffer's actions"),
        **{name: D(d.dims, d.meaning + " over transitions [x_t; u_t; x_{t+1}] (E = 2dX + dU)"
                   if name == "prior/gmm_mu" else d.meaning, d.dtype) for name, d in GMM_PRIOR.items()},
    },
    "policy_lin": {
        **{name: D(d.dims, f"linearisation π̄(u|x) = N(Kx + k, pol_covar) of the global policy: {name} "
                           + ("(includes the network's variance)" if name == "pol_covar" else ""), d.dtype)
           for name, d in CONTROLLERS.items()},
        "U_pol": D("M,N,T,dU", "the network's mean action at the samples"),
        **{name: D(d.dims, d.meaning + " over [x_t; ū_t] (E = dX + dU)" if name == "prior/gmm_mu" else d.meaning,
                   d.dtype) for name, d in GMM_PRIOR.items()},
    },
    "step": {
        "step_mult": D("M", "step multipliers for this iteration's C-step (init: 1.0; PILQR's first iteration: every "
                            "step's)"),
        "J_prev": D("M", "Laplace cost estimates of the step rule: previous"),
        "J_predicted": D("M", "predicted"),
        "J_actual": D("M", "actual"),
        "predicted_improvement": D("M", "J_prev − J_predicted"),
        "actual_improvement": D("M", "J_prev − J_actual"),
    },
    "controllers": {
        **{name: D(d.dims, "local controllers: " + d.meaning if name == "K" else d.meaning, d.dtype)
           for name, d in CONTROLLERS.items()},
        **C_STEP,
        "x0": D("M,dX", "init only: initial state of each condition (forward kinematics of the model)"),
    },
    "res_percent": {
        "step_mult": D("M,T", "PILQR's per-step multipliers of its KL bounds ε_t = kl_step_t · step_mult_t for this "
                              "iteration's LQR step (`gps res-percent`, iteration ≥ 1)"),
        "ratio": D("M,T", "the residual's share of the cost to go: mean Σ_{s≥t} |residual| / mean Σ_{s≥t} |cost| of "
                          "this iteration's samples, the residual under the controllers that drew them"),
        "direction": D("M,T", "the rule's decision before the clip to the schedules: −1 halved (ratio > "
                              "`step_rule_res_ratio_dec`), +1 doubled (ratio < `step_rule_res_ratio_inc`), 0 kept "
                              "(and always 0 with `pilqr.step_rule: const`)", "int8"),
        "predicted": D("M,N,T", "each sample's cost as the fitted model predicts it (the controller that drew the "
                                "samples, rolled through the mean dynamics from x0mu with that sample's noise)"),
    },
    "lqr_step": {
        **{name: D(d.dims, "PILQR's LQR step, before PI2: " + d.meaning if name == "K" else d.meaning, d.dtype)
           for name, d in CONTROLLERS.items()},
        "eta": D("M,T", "the per-step dual variables η_t (warm start of the next iteration; first: 1.0)"),
        "kl": D("M,T", "KL_t of the controller against the KL reference (the previous controller, or for MDGPS-PILQR "
                       "the policy linearisation)"),
        "kl_step": D("M,T", "the per-step bounds ε_t = kl_step_t · step_mult_t"),
        "converged": D("M", "whether |KL_t − ε_t| < tolerance · ε_t at every t", "bool"),
        "bisection_rounds": D("M", "rounds of the bracketing search", "int64"),
        "adam_rounds": D("M", "Adam steps after it", "int64"),
        "safeguard": D("M", "1 where the controller is the KL reference (`pilqr.on_fault: recover`): an action block "
                            "stayed indefinite up to η = 1e16, or the search ended unconverged with Σ_t KL_t above 10 "
                            "× Σ_t ε_t; else 0", "int8"),
    },
    "pi2": {
        "temperatures": D("M,T", "the η_t each step's sample weights were computed with"),
        "fitted_temperatures": D("M,T", "η_t from the REPS dual: the weights of the cost to go have KL "
                                        "`pi2.kl_threshold` to uniform (or less at `min_temperature`)"),
        "temperature_raised": D("M,T", "where η_t was raised because the new covariance was not positive definite",
                                "bool"),
        "weights": D("M,T,N", "the samples' weights at each step (softmax of −cost to go / η_t)"),
        "weights_kl": D("M,T", "their KL to uniform (PILQR: of the residual's weights, not bounded by kl_threshold)"),
        "ml_covar": D("M,T,dU,dU", "the weighted maximum-likelihood covariance before damping"),
        "predicted": D("M,N,T", "PILQR: each sample's cost as the fitted model predicts it"),
        "residual": D("M,N,T", "PILQR: sampled − predicted cost, the cost PI2 optimises"),
        "residual_ratio": D("M,T", "PILQR: the residual's share of the cost to go from each step"),
        "safeguard": D("M", "PILQR: 0 none, 1 the LQR step kept its KL reference (no PI2), 2 PI2 failed and the LQR "
                            "step's controller was kept (`pilqr.on_fault: recover`); the file attribute "
                            "`safeguard_names` lists the names", "int8"),
    },
    "policy": {
        "policy/W{i}": D("out,in", "layer weights (torch `Linear` layout), ReLU hidden layers, linear output"),
        "policy/b{i}": D("out", "layer biases"),
        "policy/obs_scale": D("dO", "normalised input ô = o · scale + bias (frozen at the first S-step): scale"),
        "policy/obs_bias": D("dO", "bias"),
        "policy/var": D("dU", "diagonal action variance"),
        "adam/exp_avg{i}": D("", "Adam first moments, as the parameters (W0, b0, W1, …), carried across S-steps"),
        "adam/exp_avg_sq{i}": D("", "Adam second moments"),
        "loss": D("iterations", "minibatch loss of each gradient step"),
    },
    "eval": {
        "X": D("M,T,dX", "one noise-free rollout of the global policy per condition: states"),
        "U": D("M,T,dU", "actions"),
        "final_distance": D("M", "distance of the scored point at t = T−1 to `evaluation.target`"),
        "diverged": D("M", "the rollout diverged (NaN, Inf, MuJoCo reset): the condition counts as failed at every "
                           "threshold", "bool"),
        "diverged_at": D("M", "the first step whose action or state was bad (−1: none); from there on `X` holds the "
                              "last good state and `U` is 0, so `final_distance` is that state's", "int64"),
        "survival_steps": D("M", "`evaluation.survival` only: steps from t = 0 with its block within [low, high], up to "
                                 "the first step outside (T: survived; a diverged rollout at most up to its first bad "
                                 "step)", "int64"),
        "cost": D("M", "`evaluation.cost` only: the task's cost of the rollout, summed over t"),
        "test/X": D("Mt,T,dX", "the same for the task's held-out conditions (`task.test_conditions`, Mt of them), "
                               "rolled out in a batch of their own; only when the task has any"),
        "test/U": D("Mt,T,dU", "held-out actions"),
        "test/final_distance": D("Mt", "held-out final distances"),
        "test/diverged": D("Mt", "held-out divergence", "bool"),
        "test/diverged_at": D("Mt", "held-out first bad steps", "int64"),
        "test/survival_steps": D("Mt", "held-out survival steps", "int64"),
        "test/cost": D("Mt", "held-out summed costs"),
    },
    "duals": {
        "lam_k": D("M,T,dU", "λ_k,t of the dual λ_t(x) = λ_K,t x + λ_k,t (0 at init)"),
        "lam_K": D("M,T,dU,dX", "λ_K,t (stays 0 while `badmm.policy_dual_rate_covar` = 0)"),
        "pol_wt": D("M,T", "ν_t, the weight of the policy terms and the S-step weights (`init_pol_wt` at init)"),
        "prev_kl": D("M,T", "KL(p̄ ‖ π_θ) recorded at the last ν update (absent until the first)"),
    },
    "inner": {
        "s_step": D("J", "which inner steps ran an S-step (J = `badmm.inner_iterations`)", "bool"),
        "dual_step": D("J", "which inner steps ran a dual update", "bool"),
        "s_step_loss": D("J,iterations", "losses of each inner S-step (zeros where none ran)"),
        "kl": D("J,M", "each inner C-step's KL (as in controllers.h5)"),
        "kl_step": D("J,M", "each inner C-step's bound"),
        "eta": D("J,M", "each inner C-step's dual variable"),
        "converged": D("J,M", "each inner C-step's convergence", "bool"),
        "dual_iterations": D("J,M", "each inner C-step's rounds of dual search", "int64"),
        "safeguard": D("J,M", "each inner C-step's safeguard (2: that C-step kept p̄; a BADMM `controllers.h5` has "
                              "the largest value over the inner C-steps)", "int8"),
        "policy_kl": D("J,M,T", "KL between the controllers and the network after each step"),
        "lam_k": D("J,M,T,dU", "λ_k after each step"),
        "pol_wt": D("J,M,T", "ν after each step"),
        "residual": D("J,M,T,dU", "mean over samples of (K x + k − ū): controller minus network"),
    },
}

# Which file of a run holds which kind (docs/artifacts.md shows each kind's table under its file).
FILES = {
    "samples": "samples.h5", "dynamics": "dynamics.h5", "policy_lin": "policy_lin.h5", "step": "step.h5",
    "res_percent": "res_percent.h5", "lqr_step": "lqr_step.h5", "pi2": "pi2.h5",
    "controllers": "controllers.h5", "policy": "policy.h5", "eval": "eval.h5", "duals": "duals.h5", "inner": "inner.h5",
}


def spec(kind: str, *names: str) -> dict[str, str | tuple[str, str]]:
    """The checked layout of some datasets of a kind, as checks.check takes it: name -> "dims" or ("dims", "int")."""
    out: dict[str, str | tuple[str, str]] = {}
    for name in names:
        d = LAYOUTS[kind][name]
        out[name] = d.dims if d.dtype == "float64" else (d.dims, "int")
    return out


def inspect_layouts() -> dict[str, tuple[str, ...]]:
    """Every dataset name of every kind (numbered names left out) -> its distinct axes, in table order.

    A name with two layouts (X and U of samples [M,N,T,.] and of eval [M,T,.]) is told apart by its rank.
    """
    out: dict[str, tuple[str, ...]] = {}
    for datasets in LAYOUTS.values():
        for name, d in datasets.items():
            if "{i}" not in name and d.dims not in out.get(name, ()):
                out[name] = out.get(name, ()) + (d.dims,)
    return out


def numbered_layouts() -> list[tuple[str, str]]:
    """(regular expression, axes) of the numbered datasets: policy/W0, policy/b0, adam/exp_avg0, adam/exp_avg_sq0, ..."""
    return [(name.replace("{i}", r"\d+"), d.dims) for datasets in LAYOUTS.values()
            for name, d in datasets.items() if "{i}" in name]
