"""Candidate safeguards for a C-step that the reference's rule aborts, measured on real ones.

For every C-step of the given run folders where a safeguard acted (controllers.h5 `safeguard` > 0,
so the reference code would have stopped there), this re-solves the faulting conditions from the
stage's own inputs with each candidate and prints, per candidate: whether it gave a controller,
its KL against the policy linearisation π̄ measured exactly (relative_kl_batched; the reference's
traj_kl loses these KLs to cancellation), the bound, η, and the Laplace estimate of the expected
cost under the fitted model relative to π̄'s own (log10 of the ratio; below 0 = predicted better).

Candidates:
- relative: the project's default (gps_core/traj_opt/c_step.py, "Safeguards"): the dual search relative to π̄.
- kl_reference: keep π̄ (the η → ∞ limit; KL 0).
- lm_quu: the reference's arithmetic with Levenberg-Marquardt regularisation: where Q_uu is not
  PD, add μI (μ from 1e-6 · mean |diag Q_uu|, ×10 until Cholesky succeeds), as iLQG does; the
  dual search as the reference's (η in [min_eta, max_eta]).
- lm_vxx: the same, but μI is added to V_{t+1} before it is propagated (crocoddyl's choice).

    python benchmarks/cstep_candidates.py RUN_DIR [RUN_DIR ...]
"""

from __future__ import annotations

import sys
from pathlib import Path

import h5py
import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gps_core.traj_opt import c_step, lqr  # noqa: E402
from gps_core.traj_opt.lingauss import LinearGaussianPolicy  # noqa: E402


def load_c_step(run: Path, itr: int):
    from stages.artifacts.checks import known_from, load_eta, load_samples, load_step
    from stages.artifacts.controllers import load_controllers
    from stages.artifacts.models import costs_from_datasets, load_dynamics
    from stages.settings.load import Settings

    d = run / "data" / f"itr_{itr:02d}"
    prev = run / "data" / (f"itr_{itr - 1:02d}" if itr else "init")
    params = yaml.safe_load((run / "params.yaml").read_text())
    sdata, sizes = load_samples(d / "samples.h5")
    known = known_from(sizes, "samples")
    step_file = d / "step.h5" if itr else run / "data" / "init" / "step.h5"
    costs, dyns, lins = costs_from_datasets(sdata, "samples"), load_dynamics(d / "dynamics.h5", known), load_controllers(d / "policy_lin.h5", known)
    bounds = float(params["algorithm"]["kl_step"]) * np.asarray(load_step(step_file, known), dtype=float) * lins[0].T
    return costs, dyns, lins, bounds, np.asarray(load_eta(prev / "controllers.h5", known), dtype=float), Settings.from_params(params).traj_opt


def log10_growth(A: np.ndarray) -> float:
    """Σ_t log10 of the spectral radius of A_t [T, dX, dX]: how much the model can grow over the horizon."""
    return float(np.sum(np.log10(np.abs(np.linalg.eigvals(A)).max(axis=-1))))


def exact_kl(pol: LinearGaussianPolicy, ref: LinearGaussianPolicy, dyn: lqr.Dynamics) -> float:
    dX = ref.dX
    mu, S = lqr.forward_pass_batched(pol.K[None], pol.k[None], pol.covar[None], dyn.Fm[None], dyn.fv[None],
                                     dyn.covar[None], dyn.x0mu[None], dyn.x0sigma[None])
    q = lqr.quadratic_form_batched(ref.K[None], ref.k[None], ref.covar[None])
    return float(c_step.relative_kl_batched(mu[..., :dX], S[..., :dX, :dX], pol.K[None] - ref.K[None], pol.k[None] - ref.k[None],
                                            pol.covar[None], q[0][..., dX:, dX:], q[3]).sum())


def lm_backward(Cs, cs, dyn: lqr.Dynamics, dX: int, where: str) -> tuple[LinearGaussianPolicy, float]:
    """The one-condition backward pass (tests/reference_impl.py's backward_pass) with Levenberg-Marquardt regularisation (on Q_uu or on V) where Q_uu is not PD."""
    T, D, _ = Cs.shape
    dU = D - dX
    K, k, covar = np.zeros((T, dU, dX)), np.zeros((T, dU)), np.zeros((T, dU, dU))
    V, v, mu_max = np.zeros((dX, dX)), np.zeros(dX), 0.0
    for t in range(T - 1, -1, -1):
        mu = 0.0
        while True:
            Qzz, qz = Cs[t].copy(), cs[t].copy()
            if t < T - 1:
                F = dyn.Fm[t]
                Vr = V + mu * np.eye(dX) if where == "vxx" else V
                Qzz += F.T @ Vr @ F
                qz += F.T @ v + F.T @ Vr @ dyn.fv[t]
            Qzz = 0.5 * (Qzz + Qzz.T)
            Quu = Qzz[dX:, dX:] + (mu * np.eye(dU) if where == "quu" else 0.0)
            try:
                L = np.linalg.cholesky(Quu)
                break
            except np.linalg.LinAlgError:
                base = 1e-6 * max(np.mean(np.abs(np.diag(Qzz[dX:, dX:]))), 1e-12)
                mu = base if mu == 0.0 else mu * 10.0
                if not np.isfinite(mu) or mu > 1e300:
                    raise FloatingPointError("mu overflowed")
        mu_max = max(mu_max, mu)
        Li = np.linalg.inv(L)
        Quu_inv = Li.T @ Li
        K[t], k[t], covar[t] = -Quu_inv @ Qzz[dX:, :dX], -Quu_inv @ qz[dX:], Quu_inv
        V = 0.5 * (Qzz[:dX, :dX] + Qzz[:dX, dX:] @ K[t] + (Qzz[:dX, :dX] + Qzz[:dX, dX:] @ K[t]).T)
        v = qz[:dX] + Qzz[:dX, dX:] @ k[t]
    return LinearGaussianPolicy(K=K, k=k, covar=covar), mu_max


def lm_c_step(cost, ref, dyn, bound, eta, cfg, where):
    """The reference's dual search (§7.6) with lm_backward in place of the η raising."""
    Mq, vq, _ = lqr.quadratic_form_batched(ref.K, ref.k, ref.covar)[:3]
    lo, hi, pol, kl, mu_max = cfg.min_eta, cfg.max_eta, None, np.inf, 0.0
    for _ in range(cfg.max_iterations):
        pol, mu = lm_backward(cost.Cm / eta + Mq, cost.cv / eta + vq, dyn, ref.dX, where)
        mu_max = max(mu_max, mu)
        kl = exact_kl(pol, ref, dyn)
        if abs(kl - bound) < cfg.tolerance * bound:
            break
        if kl < bound:
            hi = eta
            eta = max(np.sqrt(lo * hi), 0.1 * hi)
        else:
            lo = eta
            eta = min(np.sqrt(lo * hi), 10.0 * lo)
    return pol, eta, kl, mu_max


def main() -> None:
    rows, growth = [], []
    for run in map(Path, sys.argv[1:]):
        for path in sorted((run / "data").glob("itr_*/controllers.h5")):
            with h5py.File(path, "r") as f:
                if "safeguard" not in f or not f["safeguard"][()].any() or f.attrs.get("stage") == "badmm_inner":
                    continue
                faulting = np.flatnonzero(f["safeguard"][()])
            itr = int(path.parent.name[4:])
            costs, dyns, lins, bounds, etas, cfg = load_c_step(run, itr)
            for m in faulting:
                cost, dyn, ref = costs[m], dyns[m], lins[m]
                J_ref = lqr.estimate_cost(ref, dyn, cost)
                A, B = dyn.Fm[:-1, :, :ref.dX], dyn.Fm[:-1, :, ref.dX:]
                growth.append(f"{run.name} itr {itr} c{m}: fitted model grows by 10^{log10_growth(A):.1f} over the horizon, "
                              f"10^{log10_growth(A + B @ ref.K[:-1]):.1f} in closed loop under pibar")
                out = {}
                r = c_step.c_step_batched([cost], [ref], [dyn], bounds[m:m + 1], etas[m:m + 1], cfg)
                out["relative"] = (c_step.SAFEGUARDS[r.safeguard[0]], exact_kl(r[0].policy, ref, dyn), r.eta[0], r[0].policy)
                out["kl_reference"] = ("kept", 0.0, np.inf, ref)
                for where in ("quu", "vxx"):
                    try:
                        pol, eta, kl, mu = lm_c_step(cost, ref, dyn, bounds[m], etas[m], cfg, where)
                        out[f"lm_{where}"] = (f"mu<={mu:.1e}", kl, eta, pol)
                    except (FloatingPointError, np.linalg.LinAlgError) as exc:
                        out[f"lm_{where}"] = (f"failed ({exc})", np.nan, np.nan, None)
                for name, (status, kl, eta, pol) in out.items():
                    with np.errstate(all="ignore"):
                        J = lqr.estimate_cost(pol, dyn, cost) if pol is not None else np.nan
                        gain = np.log10(abs(J) / abs(J_ref)) if np.isfinite(J) and J_ref != 0 else np.nan
                    rows.append((f"{run.name} itr {itr} c{m}", name, status, kl, bounds[m], eta, gain))
    print("| C-step | candidate | outcome | KL (exact) | bound | eta | log10 cost / cost of pibar |")
    print("|---|---|---|---|---|---|---|")
    for where, name, status, kl, bound, eta, gain in rows:
        print(f"| {where} | {name} | {status} | {kl:.3g} | {bound:.3g} | {eta:.3g} | {gain:+.2f} |")
    print()
    print("\n".join(growth))


if __name__ == "__main__":
    main()
