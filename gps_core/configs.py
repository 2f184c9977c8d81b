"""The typed values gps_core's components take: one frozen dataclass per configurable component, and
the choice lists of their settings.

stages/settings/ builds these once, from a params.yaml that its schema has checked (the schema
takes its choice lists from here), and gives each component its own; nothing in gps_core reads
the settings object or a raw dict. They live apart from the algorithm so that a stage whose
settings name a component does not depend on the component's code (stages/pipeline/code_deps.py):
the sampling stages read `traj_opt` settings nowhere, and editing the C-step does not make them stale.

Where each choice takes effect: ON_FAULT in gps_core.traj_opt.c_step (its safeguards), STEP_RULES in
gps_core.mdgps.step_estimates, RAMPS and PENALTIES in gps_core.costs, REGULARIZATION_SHAPES in
gps_core.fit.regression, WEIGHT_RULES and TARGET_SHIFTS in gps_core.badmm.algorithm.

The values are not checked here: the schema (stages/settings/schema.py) checks every setting,
with a one-line error naming its key, before any of these is built.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

# --------------------------------------------------------------------------- costs (gps_core.costs)

RAMPS = ("constant", "linear", "quadratic", "final_only")

PENALTIES = ("sqrt", "log")

# Cost terms with no derivatives (gps_core.costs: their expansion is zero): only the optimizers that
# use sampled costs (PI2, and PILQR's PI2 step on the residual) can act on them.
DERIVATIVE_FREE_TERMS = ("binary_region",)


# --------------------------------------------------------------------------- MDGPS (gps_core.mdgps)

STEP_RULES = ("classic", "global")


# --------------------------------------------------------------------------- the C-step (gps_core.traj_opt.c_step, gps_core.traj_opt.lqr)

ON_FAULT = ("recover", "abort")


@dataclass(frozen=True)
class TrajOptConfig:
    """Dual search settings (ALGORITHM §7.6); `on_fault` picks what a hopeless non-PD backward pass does.

    on_fault: "abort" raises, as the reference code does; "recover" (the default) solves that
    condition again relative to its KL reference and, if that fails too, keeps the reference
    (module docstring, "Safeguards").
    """

    min_eta: float = 1e-4
    max_eta: float = 1e16
    del0: float = 1e-4
    max_iterations: int = 50
    tolerance: float = 0.1
    on_fault: str = "recover"


@dataclass(frozen=True)
class PI2Config:
    """PI2's update of a controller's feedforward terms and covariance (gps_core.traj_opt.pi2);
    the reference's TRAJ_OPT_PI2 defaults.

    kl_threshold: the KL of each step's sample weights to uniform (REPS-like dual);
    covariance_damping: > 0 scales the old covariance by (tr(old^-1 Sigma_ML) / dU)^(1/d),
    <= 0 takes the weighted maximum-likelihood covariance itself;
    min_temperature: the lower bound of each step's temperature;
    min_covariance_ratio: a step's new covariance whose smallest eigenvalue relative to the old one
    is below this counts as failed, and its temperature is raised (ours: 0 is the reference, which
    checks only for a Cholesky factor; gps_core.traj_opt.pi2, "Positive definiteness").
    """

    kl_threshold: float = 1.0
    covariance_damping: float = 2.0
    min_temperature: float = 0.001
    min_covariance_ratio: float = 1e-6


PILQR_STEP_RULES = ("res_percent", "const")  # gps_core.traj_opt.pilqr


@dataclass(frozen=True)
class PILQRConfig:
    """PILQR's LQR step with per-step KL constraints and its step rule (gps_core.traj_opt.pilqr); the
    reference's ALG_PILQR, TRAJ_OPT_PILQR and TRAJ_OPT_LQR defaults (its PI2 step takes PI2Config).

    step_rule: "res_percent" halves a step's KL multiplier when the residual's share of the cost to
    go exceeds step_rule_res_ratio_dec and doubles it below step_rule_res_ratio_inc; "const" keeps it.
    kl_step, max_step_mult, min_step_mult: per-step schedules, linear from the first value at t = 0
    to the second at T-1 (the reference's np.linspace(a, b, 100), stretched to any T).
    cons_per_step: one KL constraint per step (eps_t = kl_step_t * step_mult_t), else one for the
    trajectory. min_eta, max_eta: each step's initial bracket; del0: the first raise of a step's eta
    when its action block is not positive definite; tolerance: |KL_t - eps_t| < tolerance * eps_t at
    every t; bisection_iterations bracket rounds, then adam_iterations Adam steps (adam_*) on eta.
    """

    step_rule: str = "res_percent"
    step_rule_res_ratio_dec: float = 0.2
    step_rule_res_ratio_inc: float = 0.05
    kl_step: tuple[float, float] = (0.4, 0.2)
    max_step_mult: tuple[float, float] = (10.0, 5.0)
    min_step_mult: tuple[float, float] = (0.01, 0.5)
    cons_per_step: bool = True
    min_eta: float = 1e-8
    max_eta: float = 1e16
    del0: float = 1e-4
    tolerance: float = 0.1
    bisection_iterations: int = 20
    adam_iterations: int = 200
    adam_lr: float = 0.005
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    # "abort" raises where the LQR step is hopeless or PI2 fails (the reference); "recover" keeps the
    # KL reference, or the LQR step's controller, for that condition (gps_core.traj_opt.pilqr, "Safeguards").
    on_fault: str = "recover"
    # Under "recover", an unconverged LQR step with Σ_t KL_t above this many times Σ_t ε_t keeps its KL
    # reference (pilqr.py, "Safeguards" (3)); inf: the reference's behaviour.
    max_kl_overshoot: float = 10.0


# --------------------------------------------------------------------------- priors of the fits (gps_core.fit.dynamics, gps_core.fit.policy_lin)

DYNAMICS_SOURCES = ("fit", "model")  # gps_core.fit.dynamics (regression with the GMM prior) | gps_core.sim.linearise.model_dynamics
REGULARIZATION_SHAPES = ("all_entries", "identity")  # of the dynamics fit's regulariser (gps_core.fit.regression)


@dataclass(frozen=True)
class PriorConfig:
    """GMM prior hyperparameters (§5.2 / §6)."""

    max_clusters: int
    min_samples_per_cluster: int
    max_samples: int
    strength: float = 1.0


# --------------------------------------------------------------------------- initial controllers (gps_core.traj_opt.init_lqr, gps_core.traj_opt.ilqr)


INIT_SOURCES = ("guess", "model")  # gps_core.traj_opt.init_lqr (guessed double integrator) | ilqr (iLQR on the model)


@dataclass(frozen=True)
class InitLQRConfig:
    """The initial controllers: `source` "guess", LQR holding the initial configuration on a guessed double
    integrator of the actuated joints (the other fields; gps_core.traj_opt.init_lqr); "model", iLQR with the
    task's cost on the simulator's linearisation (gps_core.traj_opt.ilqr, ILQRConfig), whose controllers
    explore with covariance init_var · I."""

    source: str = "guess"
    init_var: float = 1.0
    stiffness: float = 1.0
    stiffness_vel: float = 0.5
    final_weight: float = 1.0
    init_gains: tuple[float, ...] | None = None  # default ones
    dt: float = 0.05


@dataclass(frozen=True)
class ILQRConfig:
    """iLQR on the model (gps_core.traj_opt.ilqr, its module docstring), for init_lqr.source "model".

    iterations: backward passes per condition at most. tolerance: relative decrease of the true
    cost below which it has converged. line_search: step sizes tried, α = 1, ½, … (this many).
    mu_min, mu_max, mu_factor: Levenberg–Marquardt μ on Q_uu (0, mu_min, …; give up past mu_max;
    Δ0 = mu_factor). eps: the linearisation's difference step (linearise_trajectory). first_horizon:
    the shortest horizon solved; a longer T is reached by doubling it, each horizon starting from the
    shorter one's solution held at its last state (gps_core.traj_opt.ilqr.ilqr_growing).
    """

    iterations: int = 50
    tolerance: float = 1e-4
    line_search: int = 10
    mu_min: float = 1e-6
    mu_max: float = 1e10
    mu_factor: float = 2.0
    eps: float = 1e-6
    first_horizon: int = 25


# --------------------------------------------------------------------------- the S-step (gps_core.policy.s_step)


@dataclass(frozen=True)
class SStepConfig:
    """S-step hyperparameters (§8.4, §8.5, §12.1)."""

    iterations: int  # gradient steps per S-step (obstacle 3000, peg 4000)
    batch_size: int = 25
    lr: float = 1e-3
    weight_decay: float = 0.005
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    ent_reg: float = 0.0


# --------------------------------------------------------------------------- BADMM (gps_core.badmm.algorithm)

Schedule = Union[float, Sequence[float]]

WEIGHT_RULES = (0, 1, 2, 3)
TARGET_SHIFTS = ("coded", "derived", "sub")

@dataclass(frozen=True)
class BadmmConfig:
    """BADMM hyperparameters (§10.7). Defaults: the CR paper values shared by peg and blind peg.

    | field                   | peg (CR) | blind (CR) | obstacle (CR) | code default |
    |-------------------------|----------|------------|---------------|--------------|
    | init_pol_wt             | 0.01     | 0.01       | 0.005         | 0.01         |
    | fixed_lg_step           | 3        | 3          | 3             | 0            |
    | policy_dual_rate        | 0.1      | 0.1        | 0.1           | 0.1          |
    | policy_dual_rate_covar  | 0        | 0          | 0             | 0            |
    | ent_reg_schedule        | (1e-3, 1e-3, 1e-2, 1e-2) for all three  || 0            |
    | lg_step_schedule        | 10 (unused by rule 3)                   || 10           |
    | inner_iterations        | 4        | 4          | 4             | 4            |
    | exp_step_lower / upper  | 1.0 / 0.5 (defaults)                    || 1.0 / 0.5    |
    | exp_step_decrease / inc | 0.5 / 2.0 (defaults)                    || 0.5 / 2.0    |

    Not here because they are shared with MDGPS (params `algorithm.*`): the local step size
    kl_step [min_step_mult, max_step_mult] = peg 2.0 [0.01, 1], blind 1.0 [0.01, 3],
    obstacle 2.0 [0.4, 1] (code default 0.2 [0.01, 10]); policy_sample_mode = 'replace' in CR
    (code default 'add'; only 'replace' is implemented, gps_core.fit.policy_lin). BADMM samples the
    local controllers (no on-policy sampling).

    init_pol_wt: ν_t at the start of the run, every t (> 0: the S-step weights are ν).
    fixed_lg_step: weight rule 0 | 1 | 2 | 3 (module docstring; 3 = the paper).
    lg_step_schedule: step of rules 0/1 over iterations (scalar or ≥ 1 positive values).
    ent_reg_schedule: S-step entropy regulariser over iterations (scalar ≥ 0 or positive values).
    exp_step_lower, exp_step_upper: rule 3 band mean(kl) − lower·std, mean(kl) + upper·std.
    exp_step_decrease, exp_step_increase: rule 3 factors below / above the band.
    policy_dual_rate, policy_dual_rate_covar: α, α_K of the dual step.
    inner_iterations: C/S alternations per sample batch.
    target_shift: S-step target shift 'coded' (ν Σ λ, normative) | 'derived' (Σ λ / ν) | 'sub' (Σ λ).
    """

    init_pol_wt: float = 0.01
    fixed_lg_step: int = 3
    lg_step_schedule: Schedule = 10.0
    ent_reg_schedule: Schedule = (1e-3, 1e-3, 1e-2, 1e-2)
    exp_step_lower: float = 1.0
    exp_step_upper: float = 0.5
    exp_step_decrease: float = 0.5
    exp_step_increase: float = 2.0
    policy_dual_rate: float = 0.1
    policy_dual_rate_covar: float = 0.0
    inner_iterations: int = 4
    target_shift: str = "coded"
