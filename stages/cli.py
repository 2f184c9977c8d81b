"""`gps`: one command per MDGPS step, each reading and writing HDF5 artifacts.

Each command takes its input and output files as options, so any stage can be
rerun by hand on any artifacts; dvc.yaml (written by `gps pipeline`) chains
them per iteration. Heavy imports (mujoco, torch) happen inside the commands
that need them, so the other stages start fast.
"""

from __future__ import annotations

import functools
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import typer

from stages import config as cfg
from stages.h5io import UserError, write_artifact, write_json, write_text_atomic
from stages.progress import progress_bar

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False)
_debug = {"on": False}

ParamsOpt = typer.Option(Path("params.yaml"), "--params", help="params.yaml to read")
ItrOpt = typer.Option(..., "--iteration", "-i", min=0, help="0-based iteration number")


@app.callback()
def main(debug: bool = typer.Option(False, "--debug", help="show tracebacks for errors")) -> None:
    """MDGPS pipeline stages."""
    _debug["on"] = debug


def stage_command(name: str):
    """Register a command: user errors print one line and exit 2."""

    def wrap(fn):
        @functools.wraps(fn)
        def run(*args, **kwargs):
            start = time.perf_counter()
            try:
                fn(*args, **kwargs)
            except (UserError, FloatingPointError) as exc:
                if _debug["on"]:
                    raise
                typer.echo(f"gps {name}: error: {exc}", err=True)
                raise typer.Exit(2) from None
            typer.echo(f"gps {name}: done in {time.perf_counter() - start:.2f} s (process {_process_age():.2f} s)", err=True)

        return app.command(name)(run)

    return wrap


# When the `gps` process started (CLOCK_BOOTTIME seconds); the worker's child sets it to its client's.
PROCESS_START: float | None = None


def _process_age() -> float:
    """Seconds since the `gps` process started, interpreter start-up and imports included."""
    global PROCESS_START
    if PROCESS_START is None:
        from stages.launch import process_start_time

        PROCESS_START = process_start_time()
    return time.clock_gettime(time.CLOCK_BOOTTIME) - PROCESS_START


def dvc_executable() -> str:
    """The dvc installed next to this Python (the project's venv), else the one on PATH."""
    here = Path(sys.executable).parent / "dvc"
    return str(here) if here.exists() else "dvc"


def _log(msg: str) -> None:
    typer.echo(msg, err=True)


# --------------------------------------------------------------------------- init


@stage_command("init")
def init(
    params_path: Path = ParamsOpt,
    controllers_out: Path = typer.Option(..., "--controllers-out"),
    policy_out: Path = typer.Option(..., "--policy-out"),
    step_out: Path = typer.Option(..., "--step-out"),
    duals_out: Optional[Path] = typer.Option(None, "--duals-out", help="BADMM: also write the dual variables (λ = 0, ν = badmm.init_pol_wt)"),
) -> None:
    """Initial local controllers (init_lqr), untrained network, step multipliers of 1 (and BADMM's duals)."""
    from gps_core.init_lqr import init_lqr
    from gps_core.policy_net import init_policy
    from stages.artifacts import controllers_to_datasets, policy_to_datasets

    params = cfg.load_params(params_path)
    sp = cfg.stage_params(params, "init" if duals_out is None else "init_badmm")
    sim = cfg.make_simulator(params)
    T = int(cfg.get(params, "agent.T"))
    x0 = sim.initial_states()
    lqr_cfg = cfg.init_lqr_config(params)
    pols = [init_lqr(x0[m], sim.dU, T, lqr_cfg) for m in range(sim.M)]
    data = controllers_to_datasets(pols)
    data["eta"] = np.ones(sim.M)
    data["x0"] = x0
    write_artifact(controllers_out, "init", 0, sp, data)
    pol = init_policy(
        int(cfg.get(params, "agent.obs_dim")),
        sim.dU,
        tuple(int(h) for h in cfg.get(params, "policy.hidden")),
        float(cfg.get(params, "policy.init_var")),
        int(cfg.get(params, "policy.init_seed")),
    )
    pdata, pattrs = policy_to_datasets(pol, None, None)
    write_artifact(policy_out, "init", 0, sp, pdata, pattrs)
    write_artifact(step_out, "init", 0, sp, {"step_mult": np.ones(sim.M)})
    if duals_out is not None:
        from gps_core.badmm import init_duals
        from stages.artifacts import duals_to_datasets

        duals = init_duals(sim.M, T, sim.dU, sim.dX, cfg.badmm_config(params).init_pol_wt)
        write_artifact(duals_out, "init", 0, sp, duals_to_datasets(duals))


# --------------------------------------------------------------------------- sample


@stage_command("sample")
def sample(
    iteration: int = ItrOpt,
    params_path: Path = ParamsOpt,
    controllers: Path = typer.Option(..., "--controllers", help="local controllers to sample (off-policy, or iteration 0)"),
    policy: Path = typer.Option(..., "--policy", help="global policy to sample (on-policy, iteration > 0)"),
    out: Path = typer.Option(..., "--out"),
) -> None:
    """Draw N samples per condition and evaluate their costs and cost expansions."""
    import zlib

    from gps_core.costs import build_cost, expand_cost
    from gps_core.noise import smoothed_noise
    from gps_core.sampling import controller_episodes, draw_samples, policy_episodes, redraw_summary
    from stages.artifacts import load_controllers, load_policy

    params = cfg.load_params(params_path)
    agent = cfg.get(params, "agent")
    sim = cfg.make_simulator(params)
    M, N, T = sim.M, int(agent["num_samples"]), int(agent["T"])
    noise_settings = dict(smooth=bool(agent["smooth_noise"]), sigma=float(agent["smooth_noise_var"]),
                          renormalize=bool(agent["smooth_noise_renormalize"]))
    noise = smoothed_noise(cfg.stage_rng(params, iteration, "sample"), (M, N, T, sim.dU), **noise_settings)
    seed = int(cfg.get(params, "seed"))

    def redraw_noise(m: int, n: int, a: int) -> np.ndarray:
        """Noise [T, dU] of draw a >= 1 of sample (m, n), from its own generator: the same whatever else diverged."""
        rng = np.random.default_rng([seed, iteration, zlib.crc32(b"sample"), m, n, a])
        return smoothed_noise(rng, (T, sim.dU), **noise_settings)

    on_policy = bool(cfg.get(params, "algorithm.sample_on_policy")) and iteration > 0
    if on_policy:
        known = {"dO": (int(agent["obs_dim"]), "agent.obs_dim in params"), "dU": (sim.dU, "actions of the model")}
        run = policy_episodes(sim, load_policy(policy, known, hidden=cfg.get(params, "policy.hidden")), int(agent["obs_dim"]))
    else:
        known = {"M": (M, "conditions in params"), "T": (T, "agent.T in params"),
                 "dX": (sim.dX, "states of the model"), "dU": (sim.dU, "actions of the model")}
        run = controller_episodes(sim, load_controllers(controllers, known))
    max_draws = int(agent["max_draws"]) if agent["on_divergence"] == "redraw" else None
    with progress_bar(f"sample {iteration}: {M}x{N} {'policy' if on_policy else 'controller'} rollouts, time step") as progress:
        drawn = draw_samples(run, noise, redraw_noise, max_draws, progress)
    rollouts, noise = drawn.rollouts, drawn.noise
    X, U, J = rollouts.X, rollouts.U, rollouts.ee_jac
    cost = build_cost(cfg.get(params, "cost"))
    terms = cost.evaluate(X.reshape(M * N, T, -1), U.reshape(M * N, T, -1), J.reshape(M * N, T, *J.shape[3:]))
    expansion = expand_cost(terms.reshape(M, N), X, U)
    data = {
        "X": X,
        "U": U,
        "obs": X[..., : int(agent["obs_dim"])],
        "noise": noise,
        "draws": drawn.draws,
        "ee_jac": J,
        "cost": terms.l.reshape(M, N, T),
        "Cm": expansion.Cm,
        "cv": expansion.cv,
        "cc": expansion.cc,
    }
    write_artifact(out, "sample", iteration, cfg.stage_params(params, "sample"), data, {"on_policy": on_policy})
    redrawn = redraw_summary(drawn.draws)
    if redrawn:
        _log(f"iteration {iteration}: {redrawn}")
    _log(f"iteration {iteration}: mean sample cost {data['cost'].sum(-1).mean():.3f} ({'policy' if on_policy else 'controllers'})")


# --------------------------------------------------------------------------- fit-dynamics


@stage_command("fit-dynamics")
def fit_dynamics_cmd(
    iteration: int = ItrOpt,
    params_path: Path = ParamsOpt,
    samples: Path = typer.Option(..., "--samples"),
    prev: Optional[Path] = typer.Option(None, "--prev", help="previous iteration's dynamics.h5 (prior buffer and GMM)"),
    out: Path = typer.Option(..., "--out"),
) -> None:
    """Per-time-step linear-Gaussian dynamics with the GMM prior, and the initial-state Gaussian."""
    from gps_core.dynamics import DynamicsPrior, fit_all_dynamics
    from stages.artifacts import gmms_from_datasets, gmms_to_datasets, known_from, load_dynamics_prior, load_samples

    params = cfg.load_params(params_path)
    dyn_params = cfg.get(params, "dynamics")
    prior_cfg = cfg.prior_config(dyn_params["prior"])
    sdata, sizes = load_samples(samples)
    X, U = sdata["X"], sdata["U"]
    M = X.shape[0]
    priors: list[DynamicsPrior | None] = [None] * M
    if prev is not None:
        pdata = load_dynamics_prior(prev, known_from(sizes, samples))
        gmms = gmms_from_datasets("prior", pdata, M)
        priors = [DynamicsPrior(X=pdata["prior/X"][m], U=pdata["prior/U"][m], gmm=gmms[m]) for m in range(M)]
    rng = cfg.stage_rng(params, iteration, "fit_dynamics")
    with progress_bar(f"fit-dynamics {iteration}: GMM prior, condition", M) as progress:
        new_priors, data = fit_all_dynamics(  # all conditions at once; same results as a loop over conditions
            priors, X, U, prior_cfg, float(dyn_params["regularization"]), dyn_params["regularization_shape"],
            float(cfg.get(params, "algorithm.initial_state_var")), rng, progress,
        )
    data.update({"prior/X": np.stack([p.X for p in new_priors]), "prior/U": np.stack([p.U for p in new_priors])})
    data.update(gmms_to_datasets("prior", [p.gmm for p in new_priors]))
    write_artifact(out, "fit_dynamics", iteration, cfg.stage_params(params, "fit_dynamics"), data)


# --------------------------------------------------------------------------- fit-policy


@stage_command("fit-policy")
def fit_policy_cmd(
    iteration: int = ItrOpt,
    params_path: Path = ParamsOpt,
    samples: Path = typer.Option(..., "--samples"),
    policy: Path = typer.Option(..., "--policy", help="the current global policy"),
    prev: Optional[Path] = typer.Option(None, "--prev", help="previous policy_lin.h5 (GMM warm start)"),
    out: Path = typer.Option(..., "--out"),
) -> None:
    """Linearise the global policy at the current samples (regression with a GMM prior)."""
    from gps_core.policy_lin import fit_policy_linearisations
    from gps_core.policy_net import policy_mean
    from stages.artifacts import gmms_from_datasets, gmms_to_datasets, known_from, load_policy, load_policy_lin_prior, load_samples

    params = cfg.load_params(params_path)
    prior_cfg = cfg.prior_config(cfg.get(params, "policy_prior"))
    sdata, sizes = load_samples(samples)
    pol = load_policy(policy, known_from(sizes, samples, ("dO", "dU")), hidden=cfg.get(params, "policy.hidden"))
    X, O = sdata["X"], sdata["obs"]
    M = X.shape[0]
    gmms_prev = gmms_from_datasets("prior", load_policy_lin_prior(prev, known_from(sizes, samples)), M) if prev is not None else [None] * M
    rng = cfg.stage_rng(params, iteration, "fit_policy")
    U_pol = policy_mean(pol, O)
    with progress_bar(f"fit-policy {iteration}: GMM prior, condition", M) as progress:
        K, k, pol_covar, gmms = fit_policy_linearisations(X, U_pol, pol.var, gmms_prev, prior_cfg, rng, progress)  # all conditions at once
    data = {"K": K, "k": k, "pol_covar": pol_covar, "U_pol": U_pol}
    data.update(gmms_to_datasets("prior", gmms))
    write_artifact(out, "fit_policy", iteration, cfg.stage_params(params, "fit_policy"), data)


# --------------------------------------------------------------------------- adjust-step


@stage_command("adjust-step")
def adjust_step(
    iteration: int = ItrOpt,
    params_path: Path = ParamsOpt,
    prev_samples: Path = typer.Option(..., "--prev-samples"),
    prev_dynamics: Path = typer.Option(..., "--prev-dynamics"),
    prev_policy_lin: Path = typer.Option(..., "--prev-policy-lin"),
    prev_controllers: Path = typer.Option(..., "--prev-controllers", help="previous C-step output"),
    prev_step: Path = typer.Option(..., "--prev-step"),
    samples: Path = typer.Option(..., "--samples"),
    dynamics: Path = typer.Option(..., "--dynamics"),
    policy_lin: Path = typer.Option(..., "--policy-lin"),
    out: Path = typer.Option(..., "--out"),
) -> None:
    """New step multipliers from predicted vs actual improvement (classic or global rule)."""
    from gps_core.mdgps import step_estimates
    from stages.artifacts import costs_from_datasets, known_from, load_controllers, load_cost_models, load_dynamics, load_samples, load_step

    params = cfg.load_params(params_path)
    alg = cfg.get(params, "algorithm")
    sdata_prev, sizes = load_samples(prev_samples)
    known = known_from(sizes, prev_samples)  # every other file must describe the same problem
    cost_prev, cost_cur = costs_from_datasets(sdata_prev, str(prev_samples)), load_cost_models(samples, known)
    dyn_prev, dyn_cur = load_dynamics(prev_dynamics, known), load_dynamics(dynamics, known)
    lin_prev, lin_cur = load_controllers(prev_policy_lin, known), load_controllers(policy_lin, known)
    new_prev = load_controllers(prev_controllers, known)
    step_prev = load_step(prev_step, known)
    rows = _step_rows([
        step_estimates(alg["step_rule"], lin_prev[m], new_prev[m], lin_cur[m], dyn_prev[m], cost_prev[m], dyn_cur[m], cost_cur[m])
        for m in range(len(new_prev))
    ], step_prev, alg)
    write_artifact(out, "adjust_step", iteration, cfg.stage_params(params, "adjust_step"), rows)
    _log(f"iteration {iteration}: step_mult {np.array2string(rows['step_mult'], precision=3)}")


def _step_rows(estimates: list, step_prev: np.ndarray, alg: dict) -> dict[str, np.ndarray]:
    """The step file's datasets [M] from each condition's cost estimates (MDGPS or BADMM rule) and the last step_mult."""
    from gps_core.mdgps import new_step_mult

    rows = {
        "J_prev": np.array([e.prev for e in estimates]),
        "J_predicted": np.array([e.predicted for e in estimates]),
        "J_actual": np.array([e.actual for e in estimates]),
        "predicted_improvement": np.array([e.predicted_improvement for e in estimates]),
        "actual_improvement": np.array([e.actual_improvement for e in estimates]),
    }
    rows["step_mult"] = np.array([
        new_step_mult(e.predicted_improvement, e.actual_improvement, float(step_prev[m]),
                      float(alg["min_step_mult"]), float(alg["max_step_mult"]))
        for m, e in enumerate(estimates)
    ])
    return rows


# --------------------------------------------------------------------------- BADMM (algorithm.name: badmm)


@stage_command("badmm-adjust-step")
def badmm_adjust_step(
    iteration: int = ItrOpt,
    params_path: Path = ParamsOpt,
    prev_samples: Path = typer.Option(..., "--prev-samples"),
    prev_dynamics: Path = typer.Option(..., "--prev-dynamics"),
    prev_policy_lin: Path = typer.Option(..., "--prev-policy-lin", help="the previous iteration's last linearisation (policy_lin_final.h5)"),
    prev_prev_controllers: Path = typer.Option(..., "--prev-prev-controllers", help="the controllers that drew the previous iteration's samples"),
    prev_controllers: Path = typer.Option(..., "--prev-controllers", help="the previous iteration's final controllers (they drew this iteration's samples)"),
    prev_step: Path = typer.Option(..., "--prev-step"),
    prev_duals: Path = typer.Option(..., "--prev-duals", help="the dual variables the previous iteration ended with (its ν weights the KL terms)"),
    samples: Path = typer.Option(..., "--samples"),
    dynamics: Path = typer.Option(..., "--dynamics"),
    policy_lin: Path = typer.Option(..., "--policy-lin"),
    out: Path = typer.Option(..., "--out"),
) -> None:
    """BADMM step multipliers: Laplace cost plus ν-weighted KL to the policy linearisation, predicted vs actual."""
    from gps_core.badmm import badmm_step_estimates
    from stages.artifacts import (
        costs_from_datasets, known_from, load_controllers, load_cost_models, load_duals, load_dynamics, load_samples, load_step,
    )

    params = cfg.load_params(params_path)
    alg = cfg.get(params, "algorithm")
    sdata_prev, sizes = load_samples(prev_samples)
    known = known_from(sizes, prev_samples)  # every other file must describe the same problem
    cost_prev, cost_cur = costs_from_datasets(sdata_prev, str(prev_samples)), load_cost_models(samples, known)
    dyn_prev, dyn_cur = load_dynamics(prev_dynamics, known), load_dynamics(dynamics, known)
    lin_prev, lin_cur = load_controllers(prev_policy_lin, known), load_controllers(policy_lin, known)
    pbar_prev, pbar = load_controllers(prev_prev_controllers, known), load_controllers(prev_controllers, known)
    step_prev = load_step(prev_step, known)
    pol_wt = load_duals(prev_duals, known).pol_wt
    rows = _step_rows([
        badmm_step_estimates(pbar_prev[m], pbar[m], lin_prev[m], lin_cur[m], dyn_prev[m], cost_prev[m], dyn_cur[m], cost_cur[m], pol_wt[m])
        for m in range(len(pbar))
    ], step_prev, alg)
    write_artifact(out, "badmm_adjust_step", iteration, cfg.stage_params(params, "badmm_adjust_step"), rows)
    _log(f"iteration {iteration}: step_mult {np.array2string(rows['step_mult'], precision=3)}")


@stage_command("badmm-inner")
def badmm_inner_cmd(
    iteration: int = ItrOpt,
    params_path: Path = ParamsOpt,
    samples: Path = typer.Option(..., "--samples", help="this iteration's samples and cost expansion"),
    dynamics: Path = typer.Option(..., "--dynamics"),
    policy_lin: Path = typer.Option(..., "--policy-lin", help="this iteration's policy linearisation (its GMMs warm-start the refits)"),
    policy: Path = typer.Option(..., "--policy", help="global policy (and Adam state) to continue from"),
    prev_controllers: Path = typer.Option(..., "--prev-controllers", help="the controllers that drew the samples: KL reference, η warm start"),
    step: Path = typer.Option(..., "--step", help="step multipliers"),
    duals: Path = typer.Option(..., "--duals", help="dual variables at the start of the iteration"),
    controllers_out: Path = typer.Option(..., "--controllers-out", help="the last C-step's controllers"),
    policy_out: Path = typer.Option(..., "--policy-out", help="the network after the last S-step, with its Adam state"),
    duals_out: Path = typer.Option(..., "--duals-out"),
    policy_lin_out: Path = typer.Option(..., "--policy-lin-out", help="the last linearisation and its GMMs"),
    inner_out: Path = typer.Option(..., "--inner-out", help="per inner iteration: KL, eta, duals, residuals, S-step losses"),
) -> None:
    """All inner C/S alternations of one BADMM iteration: S-step, refit, dual step, C-step (ALGORITHM §10.2)."""
    from stages.artifacts import (
        controllers_to_datasets, costs_from_datasets, duals_to_datasets, gmms_from_datasets, gmms_to_datasets, known_from,
        load_controllers, load_duals, load_dynamics, load_eta, load_policy_and_adam, load_policy_lin_prior, load_samples,
        load_step, policy_to_datasets,
    )
    import json

    from gps_core.lqr import SAFEGUARDS
    from stages.badmm_inner import InnerLoop

    params = cfg.load_params(params_path)
    sdata, sizes = load_samples(samples)
    known = known_from(sizes, samples)  # every other file must describe the same problem
    prevs = load_controllers(prev_controllers, known)
    net, adam = load_policy_and_adam(policy, known_from(sizes, samples, ("dO", "dU")), hidden=cfg.get(params, "policy.hidden"))
    step_mult = load_step(step, known)
    loop = InnerLoop(
        iteration=iteration, params=params, X=sdata["X"], O=sdata["obs"], costs=costs_from_datasets(sdata, str(samples)),
        dyns=load_dynamics(dynamics, known), prevs=prevs, eta=np.asarray(load_eta(prev_controllers, known), dtype=float),
        kl_bounds=float(cfg.get(params, "algorithm.kl_step")) * np.asarray(step_mult, dtype=float) * sizes["T"],
        duals=load_duals(duals, known), net=net, adam=adam,
        gmms=gmms_from_datasets("prior", load_policy_lin_prior(policy_lin, known), sizes["M"]), log=_log,
    ).run()
    sp = cfg.stage_params(params, "badmm_inner")
    res = loop.result
    cdata = controllers_to_datasets(loop.new)
    cdata.update(eta=res.eta, kl_step=res.kl_bound, kl=res.kl, converged=res.converged, dual_iterations=res.dual_iterations,
                 safeguard=np.max(loop.diag["safeguard"], axis=0))  # what acted in any inner C-step (inner.h5 has each)
    write_artifact(controllers_out, "badmm_inner", iteration, sp, cdata, {"safeguard_names": json.dumps(SAFEGUARDS)})
    pdata, pattrs = policy_to_datasets(loop.net, loop.adam, loop.losses)
    write_artifact(policy_out, "badmm_inner", iteration, sp, pdata, pattrs)
    write_artifact(duals_out, "badmm_inner", iteration, sp, duals_to_datasets(loop.duals),
                   {"pol_wt_updated": loop.pol_wt_updated, "ent_reg": loop.ent_reg, "lg_step": loop.lg_step})
    K, k, covar = loop.lin
    ldata = {"K": K, "k": k, "pol_covar": covar, "U_pol": loop.U_pol}
    ldata.update(gmms_to_datasets("prior", loop.gmms))
    write_artifact(policy_lin_out, "badmm_inner", iteration, sp, ldata)
    write_artifact(inner_out, "badmm_inner", iteration, sp, loop.diag, {"ent_reg": loop.ent_reg, "lg_step": loop.lg_step})
    nu = loop.duals.pol_wt
    _log(f"iteration {iteration}: nu mean per condition {np.array2string(nu.mean(-1), precision=4)} "
         f"(range {nu.min():.3g} .. {nu.max():.3g}){'' if loop.pol_wt_updated else ', not updated in this iteration'}")


# --------------------------------------------------------------------------- c-step


@stage_command("c-step")
def c_step_cmd(
    iteration: int = ItrOpt,
    params_path: Path = ParamsOpt,
    samples: Path = typer.Option(..., "--samples", help="cost expansion Cm, cv, cc"),
    dynamics: Path = typer.Option(..., "--dynamics"),
    policy_lin: Path = typer.Option(..., "--policy-lin", help="the KL reference: the global-policy linearisation"),
    step: Path = typer.Option(..., "--step", help="step multipliers"),
    prev_controllers: Path = typer.Option(..., "--prev-controllers", help="previous controllers (η warm start)"),
    out: Path = typer.Option(..., "--out"),
) -> None:
    """KL-constrained LQR against the policy linearisation, one controller per condition."""
    import json

    from gps_core.lqr import KL_REFERENCE, SAFEGUARDS, c_step_batched
    from stages.artifacts import (
        costs_from_datasets, known_from, load_controllers, load_dynamics, load_eta, load_samples, load_step,
    )

    params = cfg.load_params(params_path)
    sdata, sizes = load_samples(samples)
    known = known_from(sizes, samples)  # every other file must describe the same problem
    costs, dyns, lins = costs_from_datasets(sdata, str(samples)), load_dynamics(dynamics, known), load_controllers(policy_lin, known)
    step_mult = load_step(step, known)
    eta_prev = load_eta(prev_controllers, known)
    topt = cfg.traj_opt_config(params)
    T = lins[0].T
    kl_step = float(cfg.get(params, "algorithm.kl_step"))
    # All conditions at once; errors (a FloatingPointError) name the condition.
    with progress_bar(f"c-step {iteration}: dual search, conditions converged", len(costs)) as progress:
        res = c_step_batched(costs, lins, dyns, kl_step * np.asarray(step_mult, dtype=float) * T,
                             np.asarray(eta_prev, dtype=float), topt, progress=progress)
    for m in np.flatnonzero(~res.converged & (res.safeguard != KL_REFERENCE)):
        _log(
            f"iteration {iteration}: condition {m}: dual search did not converge in {res.dual_iterations[m]} rounds "
            f"(KL {res.kl[m]:.3f}, bound {res.kl_bound[m]:.3f})"
        )
    _log_safeguards(iteration, res)
    data = {"K": res.K, "k": res.k, "pol_covar": res.covar}
    data.update(eta=res.eta, kl_step=res.kl_bound, kl=res.kl, converged=res.converged, dual_iterations=res.dual_iterations,
                safeguard=res.safeguard)
    write_artifact(out, "c_step", iteration, cfg.stage_params(params, "c_step"), data,
                   {"safeguard_names": json.dumps(SAFEGUARDS)})
    _log(f"iteration {iteration}: KL {np.array2string(data['kl'], precision=2)} / bound {np.array2string(data['kl_step'], precision=2)}")


def _log_safeguards(iteration: int, res) -> None:
    """One line naming every condition where a C-step safeguard acted (gps_core.lqr, "Safeguards")."""
    from gps_core.lqr import KL_REFERENCE, RELATIVE_COORDINATES

    what = {
        RELATIVE_COORDINATES: lambda m: f"condition {m}: solved relative to the KL reference "
                                        f"(eta {res.eta[m]:.3g}, KL {res.kl[m]:.3g} / {res.kl_bound[m]:.3g})",
        KL_REFERENCE: lambda m: f"condition {m}: kept the KL reference (the eta -> infinity limit, KL 0)",
    }
    acted = [what[int(res.safeguard[m])](m) for m in np.flatnonzero(res.safeguard)]
    if acted:
        _log(f"iteration {iteration}: safeguard: Q_uu stayed non-positive-definite up to eta 1e16 in the reference's "
             f"coordinates; " + "; ".join(acted))


# --------------------------------------------------------------------------- s-step


@stage_command("s-step")
def s_step_cmd(
    iteration: int = ItrOpt,
    params_path: Path = ParamsOpt,
    samples: Path = typer.Option(..., "--samples"),
    controllers: Path = typer.Option(..., "--controllers", help="local controllers whose actions are the targets"),
    policy: Path = typer.Option(..., "--policy", help="global policy (and Adam state) to continue from"),
    out: Path = typer.Option(..., "--out"),
    stream: str = typer.Option("s_step", "--stream", help="name of the random stream (catch_up for the iteration-0 catch-up)"),
) -> None:
    """Train the network on the local controllers' actions at the sampled states."""
    from gps_core.mdgps import s_step_dataset
    from gps_core.s_step import SStepConfig, train_policy
    from stages.artifacts import known_from, load_controllers, load_policy_and_adam, load_samples, policy_to_datasets

    params = cfg.load_params(params_path)
    pcfg = cfg.get(params, "policy")
    sdata, sizes = load_samples(samples)
    pols = load_controllers(controllers, known_from(sizes, samples))
    net, adam = load_policy_and_adam(policy, known_from(sizes, samples, ("dO", "dU")), hidden=pcfg["hidden"])
    obs, target, precision, weight = s_step_dataset(pols, sdata["X"], sdata["obs"])
    scfg = SStepConfig(
        iterations=int(pcfg["iterations"]),
        batch_size=int(pcfg["batch_size"]),
        lr=float(pcfg["lr"]),
        weight_decay=float(pcfg["weight_decay"]),
        ent_reg=float(pcfg["ent_reg"]),
    )
    rng = cfg.stage_rng(params, iteration, stream)
    with progress_bar(f"{stream.replace('_', '-')} {iteration}: gradient step", scfg.iterations) as progress:
        net, adam, losses = train_policy(net, adam, obs, target, precision, weight, scfg, rng, progress)
    data, attrs = policy_to_datasets(net, adam, losses)
    write_artifact(out, stream, iteration, cfg.stage_params(params, "s_step"), data, attrs)
    _log(f"iteration {iteration}: S-step loss {losses[:50].mean():.4f} -> {losses[-50:].mean():.4f}")


# --------------------------------------------------------------------------- evaluate


@stage_command("evaluate")
def evaluate(
    iteration: int = ItrOpt,
    params_path: Path = ParamsOpt,
    policy: Path = typer.Option(..., "--policy"),
    samples: Path = typer.Option(..., "--samples"),
    controllers: Path = typer.Option(..., "--controllers", help="this iteration's C-step output"),
    step: Path = typer.Option(..., "--step", help="this iteration's step multipliers"),
    out: Path = typer.Option(..., "--out"),
    metrics: Path = typer.Option(..., "--metrics"),
) -> None:
    """One noise-free rollout of the global policy per condition; distance to the target."""
    from gps_core.sampling import rollout_policy
    from gps_core.scoring import final_distance, success
    from stages.artifacts import check_controller_stats, load_policy, load_samples, load_step

    params = cfg.load_params(params_path)
    agent, ev = cfg.get(params, "agent"), cfg.get(params, "evaluation")
    sim = cfg.make_simulator(params)
    T = int(agent["T"])
    # Every input is read and checked before anything is simulated or written.
    known = {"M": (sim.M, "conditions in params"), "T": (T, "agent.T in params"),
             "dX": (sim.dX, "state of the model"), "dU": (sim.dU, "actions of the model")}
    sdata, _ = load_samples(samples, known)
    cdata = check_controller_stats(controllers, {"M": known["M"]})
    step_mult = load_step(step, {"M": known["M"]})
    net = load_policy(policy, {"dO": (int(agent["obs_dim"]), "agent.obs_dim in params"), "dU": known["dU"]},
                      hidden=cfg.get(params, "policy.hidden"))
    stop = agent["on_divergence"] == "stop"
    r = rollout_policy(sim, net, np.zeros((sim.M, 1, T, sim.dU)), int(agent["obs_dim"]), stop=stop)
    X, U, diverged_at = r.X[:, 0], r.U[:, 0], r.diverged_at[:, 0]
    diverged = diverged_at >= 0
    # A diverged rollout holds its last good state, so its distance is that state's; it fails regardless.
    dist = final_distance(X, int(ev["point_start"]), np.asarray(ev["target"], dtype=float))
    sample_cost = sdata["cost"].sum(-1).mean(-1)
    write_artifact(out, "evaluate", iteration, cfg.stage_params(params, "evaluate"),
                   {"X": X, "U": U, "final_distance": dist, "diverged": diverged, "diverged_at": diverged_at})
    per_cond = lambda a: {f"c{m}": float(v) for m, v in enumerate(a)}  # noqa: E731
    result = {
        "iteration": iteration + 1,
        "final_distance": float(dist.mean()),
        "sample_cost": float(sample_cost.mean()),
        "kl": float(cdata["kl"].mean()),
        "kl_bound": float(cdata["kl_step"].mean()),
        "eta": float(np.exp(np.log(cdata["eta"]).mean())),
        "step_mult": float(step_mult.mean()),
        "per_condition": {
            "final_distance": per_cond(dist),
            "sample_cost": per_cond(sample_cost),
            "kl": per_cond(cdata["kl"]),
            "eta": per_cond(cdata["eta"]),
            "step_mult": per_cond(step_mult),
            "diverged": {f"c{m}": bool(v) for m, v in enumerate(diverged)},
        },
    }
    for tau in ev.get("success_thresholds", []):
        hits = success(dist, float(tau), failed=diverged)
        result[f"success_{tau:g}"] = float(hits.mean())
        result["per_condition"][f"success_{tau:g}"] = per_cond(hits)
    write_json(metrics, result)
    if diverged.any():
        _log(f"iteration {iteration}: the policy's rollout diverged (counted as failed) in "
             + ", ".join(f"condition {m} at t={diverged_at[m]}" for m in np.flatnonzero(diverged)))
    _log(f"iteration {iteration}: final distance {np.array2string(dist, precision=3)} (mean {dist.mean():.3f})")


# --------------------------------------------------------------------------- summary


@stage_command("summary")
def summary(
    params_path: Path = ParamsOpt,
    metrics: list[Path] = typer.Argument(..., help="per-iteration metrics.json files, in order"),
    out: Path = typer.Option(..., "--out", help="summary metrics JSON (last iteration)"),
    curve: Path = typer.Option(..., "--curve", help="learning curve CSV, one row per iteration"),
    root: Path = typer.Option(Path("."), "--root", help="project root whose dvc.yaml files are checked against params.yaml"),
) -> None:
    """Learning curve over iterations; fails if the pipeline files are out of sync with params.yaml."""
    import json

    from stages.pipeline import check_in_sync

    params = cfg.load_params(params_path)
    check_in_sync(params, params_path, root)
    rows = []
    for path in metrics:
        if not path.exists():
            raise UserError(f"{path}: file not found")
        rows.append(json.loads(path.read_text()))
    columns = ["iteration"] + [k for k in rows[0] if k not in ("iteration", "per_condition")]
    lines = [",".join(columns)] + [",".join(f"{row[c]:.6g}" if c != "iteration" else str(row[c]) for c in columns) for row in rows]
    write_text_atomic(curve, "\n".join(lines) + "\n")
    final = {k: v for k, v in rows[-1].items()}
    write_json(out, final)


@app.command("report")
def report(
    runs: Optional[list[Path]] = typer.Argument(
        None, help="run directories (params.yaml and data/learning_curve.csv); runs that stopped early are named and left out"),
    experiments: bool = typer.Option(False, "--experiments", help="use the DVC experiments of this repository (dvc exp show --json)"),
    exp_json: Optional[Path] = typer.Option(None, "--exp-json", help="use this saved `dvc exp show --json` output"),
    iterations: str = typer.Option("3,6,9,12", "--iterations", help="comma-separated iterations (1-based) to tabulate"),
    out: Path | None = typer.Option(None, "--out", help="also write the Markdown tables to this file"),
    figure: Path | None = typer.Option(None, "--figure", help="write the Figure 1 style PNG (distance per iteration)"),
) -> None:
    """Table 1 (success mean ± std over seeds, per task and method) and Figure 1 from finished runs."""
    from stages.clitools import user_errors
    from stages.report import distance_figure, experiment_runs, group_runs, load_run, parse_iterations, report_markdown, stopped_run

    with user_errors("report", _debug["on"]):
        itrs = parse_iterations(iterations)
        stopped = [path for path in runs or [] if stopped_run(path)]
        found = [load_run(path) for path in runs or [] if path not in stopped]
        if stopped:
            typer.echo(f"gps report: {len(stopped)} run(s) stopped before the end, left out: {', '.join(map(str, stopped))}", err=True)
        if experiments or exp_json is not None:
            exp_runs, failed = experiment_runs(exp_json, dvc_executable())
            if failed:
                typer.echo(f"gps report: {len(failed)} experiment(s) failed or unfinished, left out: {', '.join(sorted(failed))}", err=True)
            found += exp_runs
        if not found:
            raise UserError("no finished runs given: pass run directories, --experiments or --exp-json")
        groups = group_runs(found)
        text = report_markdown(groups, itrs)
        typer.echo(text, nl=False)
        if out is not None:
            write_text_atomic(out, text)
        if figure is not None:
            distance_figure(groups, figure)


@app.command("resume", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def resume(ctx: typer.Context) -> None:
    """Finish an interrupted run: set aside torn dvc.lock files, then `dvc repro` (extra arguments go to it).

    DVC does not write dvc.lock atomically, so a run killed at the wrong moment can
    leave a lock file (the root's or an iteration's) that DVC refuses to read. Finished stages are then restored
    from DVC's run-cache instead of being rerun. The same holds for DVC's stage-lock file
    .dvc/tmp/rwlock, which only describes DVC processes that are running.
    """
    import subprocess

    from stages.pipeline import lock_file_problem, lock_files, rwlock_problem

    torn = [(lock, lock_file_problem(lock), "dvc.lock.broken") for lock in lock_files(Path("."))]
    rwlock = Path(".dvc") / "tmp" / "rwlock"
    torn.append((rwlock, rwlock_problem(rwlock), "rwlock.broken"))
    for lock, problem, aside_name in torn:
        if problem:
            aside = lock.with_name(aside_name)
            lock.replace(aside)
            typer.echo(f"gps resume: {lock} was unreadable ({problem}); moved it to {aside}", err=True)
    for tmp in Path("data").rglob(".*.tmp") if Path("data").is_dir() else []:
        tmp.unlink(missing_ok=True)  # temporary files of stages that were killed mid-write
    raise typer.Exit(subprocess.call([dvc_executable(), "repro", *ctx.args]))


@app.command("inspect")
def inspect_cmd(
    file: Path = typer.Argument(..., help="an HDF5 artifact (any stage's output)"),
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="print this dataset (e.g. K, prior/X, policy/W0)"),
    condition: Optional[int] = typer.Option(None, "--condition", "-m", help="index of the condition axis M"),
    sample: Optional[int] = typer.Option(None, "--sample", "-n", help="index of the sample axis N (Nb in prior/X, prior/U)"),
    time: Optional[int] = typer.Option(None, "--time", "-t", help="index of the time axis T (negative counts from the end)"),
    full: bool = typer.Option(False, "--full", help="print every value, not numpy's summary of a large array"),
) -> None:
    """Show an artifact: stage, iteration, params, and each dataset with shape, dtype and statistics."""
    from stages.clitools import user_errors
    from stages.inspect_h5 import inspect_text

    with user_errors("inspect", _debug["on"]):
        typer.echo(inspect_text(file, dataset, condition, sample, time, full), nl=False)


@app.command("status")
def status_cmd(
    data: Path = typer.Option(Path("data"), "--data", help="the run's data folder"),
    params_path: Optional[Path] = typer.Option(None, "--params", help="params.yaml of the run (default: ./params.yaml if present)"),
) -> None:
    """One row per iteration: cost, distance, success, KL vs bound, eta, step multipliers, time; works mid-run."""
    from stages.clitools import user_errors
    from stages.status import status_text

    with user_errors("status", _debug["on"]):
        typer.echo(status_text(data, params_path), nl=False)


@app.command("plot")
def plot_cmd(
    data: Path = typer.Option(Path("data"), "--data", help="the run's data folder (itr_NN/metrics.json, eval.h5, samples.h5)"),
    curve: Path = typer.Option(Path("data/learning_curve.csv"), "--curve", help="learning curve, used when there is no metrics.json"),
    out_dir: Path = typer.Option(Path("data/plots"), "--out-dir", help="where to write the PNGs"),
) -> None:
    """PNG figures per iteration: success, final distance, sample vs policy cost, KL vs bound, step multiplier."""
    from stages.clitools import user_errors
    from stages.plots import write_plots

    with user_errors("plot", _debug["on"]):
        for path in write_plots(data, curve, out_dir):
            typer.echo(f"wrote {path}")


@app.command("render")
def render_cmd(
    policy: Path = typer.Argument(..., help="policy.h5 (global policy) or controllers.h5 (local controllers) of an iteration"),
    params_path: Path = ParamsOpt,
    condition: int = typer.Option(0, "--condition", "-m", help="condition to roll out"),
    out: Path = typer.Option(Path("rollout.gif"), "--out", "-o", help=".gif, .mp4 (needs imageio-ffmpeg) or .png (one frame)"),
    width: int = typer.Option(320, "--width", min=16),
    height: int = typer.Option(240, "--height", min=16),
    every: int = typer.Option(1, "--every", min=1, help="draw every n-th time step"),
    time: Optional[int] = typer.Option(None, "--time", "-t", help="the time step drawn into a .png (default: the last)"),
    fps: Optional[float] = typer.Option(None, "--fps", help="frames per second (default: real time)"),
    shadows: bool = typer.Option(False, "--shadows", help="draw shadows (slow with software OpenGL)"),
) -> None:
    """Draw a noise-free rollout offscreen (MUJOCO_GL=egl or osmesa) with the target marked."""
    from stages.clitools import user_errors
    from stages.render import render_rollout

    with user_errors("render", _debug["on"]):
        typer.echo(render_rollout(params_path, policy, condition, out, width, height, every, time, fps, shadows))


@app.command("sweep")
def sweep_cmd(
    tasks: str = typer.Option("peg,peg_blind,obstacle", "--tasks", help="comma-separated: obstacle, peg, peg_blind"),
    methods: str = typer.Option("badmm,off_classic,off_global,on_classic,on_global", "--methods",
                                help="comma-separated: badmm, off_classic, off_global, on_classic, on_global"),
    seeds: str = typer.Option("0-9", "--seeds", help="e.g. 0-9 or 0,2,4"),
    jobs: int = typer.Option(0, "--jobs", "-j", min=0, help="also start this many queue workers (0: only queue)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the dvc commands instead of queuing"),
) -> None:
    """Queue the paper's comparison as DVC experiments (one per task x method x seed); -j N starts the workers."""
    import subprocess

    from stages.clitools import user_errors
    from stages.sweep import METHODS, TASKS, parse_list, parse_seeds, queue_sweep

    with user_errors("sweep", _debug["on"]):
        n = queue_sweep(parse_list(tasks, TASKS, "tasks"), parse_list(methods, tuple(METHODS), "methods"),
                        parse_seeds(seeds), Path("."), dry_run, echo=typer.echo, dvc=dvc_executable())
    if dry_run:
        return
    typer.echo(f"queued {n} experiments; `dvc queue status` follows them, `gps report --experiments` tabulates the finished ones")
    if jobs:
        raise typer.Exit(subprocess.call([dvc_executable(), "queue", "start", "-j", str(jobs)]))


RootOpt = typer.Option(Path("."), "--root", help="project root: dvc.yaml goes here, iteration k's stages to pipelines/itr_kk/<step>/dvc.yaml")


@app.command("configure")
def configure(
    task: str = typer.Argument(..., help="obstacle | peg | peg_blind: the shipped settings in configs/<task>.yaml"),
    params_path: Path = ParamsOpt,
    root: Path = RootOpt,
) -> None:
    """Switch the run to a task: copy configs/<task>.yaml to params.yaml and regenerate the pipeline."""
    import shutil

    from stages.clitools import user_errors
    from stages.pipeline import write_pipeline

    preset = Path("configs") / f"{task}.yaml"
    with user_errors("configure", _debug["on"]):
        if not preset.exists():
            known = ", ".join(sorted(p.stem for p in Path("configs").glob("*.yaml"))) or "none (run from the project root)"
            raise UserError(f"{preset}: no such task settings; available: {known}")
        params = cfg.load_params(preset)
        tmp = params_path.with_name(f".{params_path.name}.tmp")
        shutil.copyfile(preset, tmp)
        tmp.replace(params_path)
        files = write_pipeline(params, params_path, root)
    typer.echo(f"wrote {params_path} (task {task}) and {len(files)} dvc.yaml files")


@app.command("pipeline")
def pipeline_cmd(params_path: Path = ParamsOpt, root: Path = RootOpt) -> None:
    """Write the pipeline (dvc.yaml and one pipelines/itr_kk/<step>/dvc.yaml per stage) for params.yaml."""
    from stages.clitools import user_errors
    from stages.pipeline import write_pipeline

    with user_errors("pipeline", _debug["on"]):
        files = write_pipeline(cfg.load_params(params_path), params_path, root)
    typer.echo(f"wrote {len(files)} dvc.yaml files ({files[0]} and {files[1].parent.parent.parent}/itr_*/*/dvc.yaml)")


@app.command("worker")
def worker_cmd(stop: bool = typer.Option(False, "--stop", help="ask every running worker of this user to exit")) -> None:
    """List the warm workers that run the pipeline commands (see stages/launch.py), or stop them.

    A worker exits by itself after GPS_WORKER_IDLE seconds (default 300) without work;
    GPS_WORKER=0 runs every command in its own process instead.
    """
    from stages import launch

    folder = launch.worker_dir()
    socks = sorted(folder.glob("*.sock")) if folder else []
    if stop:
        typer.echo(f"asked {launch.stop_workers(folder)} worker(s) to stop")
        return
    current = launch.socket_path()
    for sock in socks:
        typer.echo(f"{sock}{'  (this code)' if sock == current else ''}")
    if not socks:
        typer.echo(f"no workers (sockets live in {folder})")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
