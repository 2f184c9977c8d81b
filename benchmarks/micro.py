"""Micro-benchmark of the numeric core: the one-condition reference code against the batched code.

The reference code is tests/reference_impl.py (nothing in gps_core keeps a one-condition copy), so
this script puts tests/ on sys.path, as it does the project root.

Times, for all M conditions of one iteration,

    C-step             c_step_reference per condition        vs  c_step_batched
    dynamics fit       update_dynamics_prior + fit_dynamics  vs  fit_all_dynamics
                       + fit_initial_state per condition
    policy lin. fit    fit_policy_linearisation per cond.    vs  fit_policy_linearisations

and reports the largest absolute difference between their results (controllers, η, KL;
dynamics, initial state, prior GMMs; policy linearisation and its GMMs).

Inputs are the artifacts of one iteration of a peg run (default: iteration 5 of /tmp/peg0/data;
the dynamics and policy priors and the η warm start come from the iteration before):

    samples.h5 dynamics.h5 policy_lin.h5 step.h5 in itr_NN, and dynamics.h5 policy_lin.h5
    controllers.h5 policy.h5 in itr_{NN-1}

If they are missing, a synthetic peg-shaped problem (M = 9, N = 5, T = 100, dX = 26, dU = 7) is
generated deterministically from --seed instead. Each version runs --repeats times (interleaved)
and the fastest run is reported. OPENBLAS_NUM_THREADS defaults to 1 (as in the tests), which
gives steadier numbers on a shared 2-core machine; set it to compare otherwise.

    python benchmarks/micro.py [--data /tmp/peg0/data] [--iteration 5] [--repeats 3] [--synthetic]
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import zlib  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # reference_impl: the one-condition reference code

from gps_core.traj_opt.c_step import c_step_batched  # noqa: E402
from gps_core.configs import PriorConfig, TrajOptConfig  # noqa: E402
from gps_core.fit.dynamics import DynamicsPrior, fit_all_dynamics, fit_initial_state  # noqa: E402
from gps_core.fit.gmm import GMM  # noqa: E402
from gps_core.traj_opt.lingauss import LinearGaussianPolicy  # noqa: E402
from gps_core.traj_opt.lqr import Dynamics, QuadraticCost  # noqa: E402
from gps_core.fit.policy_lin import fit_policy_linearisations  # noqa: E402
from reference_impl import c_step_reference, fit_dynamics, fit_policy_linearisation, update_dynamics_prior  # noqa: E402

# Peg settings (params of the peg run): priors, regulariser, C-step constants.
DYN_PRIOR = PriorConfig(max_clusters=20, min_samples_per_cluster=40, max_samples=5, strength=1.0)
POL_PRIOR = PriorConfig(max_clusters=20, min_samples_per_cluster=40, max_samples=20, strength=1.0)
REGULARIZATION, REG_SHAPE, INITIAL_STATE_VAR = 1e-6, "all_entries", 1e-6
KL_STEP = 2.0


@dataclass
class Problem:
    source: str
    X: np.ndarray  # [M, N, T, dX]
    U: np.ndarray  # [M, N, T, dU]
    U_pol: np.ndarray  # [M, N, T, dU] network mean actions
    pol_var: np.ndarray  # [dU]
    dyn_priors: list  # DynamicsPrior | None per condition
    pol_gmms: list  # GMM | None per condition
    costs: list  # QuadraticCost per condition
    dyns: list  # Dynamics per condition
    lins: list  # LinearGaussianPolicy per condition (KL reference)
    kl_bounds: np.ndarray  # [M]
    etas: np.ndarray  # [M]
    seed_dyn: list
    seed_pol: list


# --------------------------------------------------------------------------- inputs


def _read(path: Path) -> dict[str, np.ndarray]:
    import h5py

    out: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return out


def _gmms(data: dict[str, np.ndarray], M: int) -> list:
    if "prior/gmm_mu" not in data:
        return [None] * M
    return [
        GMM(mu=data["prior/gmm_mu"][m], sigma=data["prior/gmm_sigma"][m], logmass=data["prior/gmm_logmass"][m],
            n_init=int(data["prior/gmm_n_init"][m]))
        for m in range(M)
    ]


def _seed(seed: int, iteration: int, stage: str) -> list:
    return [seed, iteration, zlib.crc32(stage.encode())]


def load_artifacts(data_dir: Path, itr: int) -> Problem:
    cur, prev = data_dir / f"itr_{itr:02d}", data_dir / f"itr_{itr - 1:02d}"
    s, d, lin, step = (_read(cur / f"{n}.h5") for n in ("samples", "dynamics", "policy_lin", "step"))
    d_prev, lin_prev, c_prev, pol_prev = (_read(prev / f"{n}.h5") for n in ("dynamics", "policy_lin", "controllers", "policy"))
    X, U = s["X"], s["U"]
    M, _, T, _ = X.shape
    dyn_gmms = _gmms(d_prev, M)
    return Problem(
        source=f"peg artifacts {cur}",
        X=X, U=U, U_pol=lin["U_pol"], pol_var=pol_prev["policy/var"],
        dyn_priors=[DynamicsPrior(X=d_prev["prior/X"][m], U=d_prev["prior/U"][m], gmm=dyn_gmms[m]) for m in range(M)],
        pol_gmms=_gmms(lin_prev, M),
        costs=[QuadraticCost(Cm=s["Cm"][m], cv=s["cv"][m], cc=s["cc"][m]) for m in range(M)],
        dyns=[Dynamics(Fm=d["Fm"][m], fv=d["fv"][m], covar=d["dyn_covar"][m], x0mu=d["x0mu"][m], x0sigma=d["x0sigma"][m])
              for m in range(M)],
        lins=[LinearGaussianPolicy(K=lin["K"][m], k=lin["k"][m], covar=lin["pol_covar"][m]) for m in range(M)],
        kl_bounds=KL_STEP * step["step_mult"] * T,
        etas=c_prev["eta"],
        seed_dyn=_seed(0, itr, "fit_dynamics"),
        seed_pol=_seed(0, itr, "fit_policy"),
    )


def synthetic(seed: int, M: int = 9, N: int = 5, T: int = 100, dX: int = 26, dU: int = 7) -> Problem:
    """A peg-shaped problem: noisy rollouts of random stable linear systems under random linear
    controllers (two iterations' worth, so the priors are warm), a tanh 'network' for the policy,
    PD quadratic costs, and dynamics / reference controller fitted from the rollouts."""
    rng = np.random.default_rng(seed)

    def rollouts(A, B, K0, k0, x0):
        X = np.zeros((M, N, T, dX))
        U = np.zeros((M, N, T, dU))
        X[:, :, 0] = x0[:, None]
        for t in range(T):
            U[:, :, t] = np.einsum("mux,mnx->mnu", K0[:, t], X[:, :, t]) + k0[:, None, t] + 0.3 * rng.standard_normal((M, N, dU))
            if t < T - 1:
                X[:, :, t + 1] = (np.einsum("mxy,mny->mnx", A, X[:, :, t]) + np.einsum("mxu,mnu->mnx", B, U[:, :, t])
                                  + 0.01 * rng.standard_normal((M, N, dX)))
        return X, U

    Q, _ = np.linalg.qr(rng.standard_normal((M, dX, dX)))
    A = 0.97 * Q  # orthogonal times 0.97: stable, no blow-up over 100 steps
    B = 0.1 * rng.standard_normal((M, dX, dU))
    K0 = 0.05 * rng.standard_normal((M, T, dU, dX))
    k0 = 0.1 * rng.standard_normal((M, T, dU))
    x0 = rng.standard_normal((M, dX))
    X_old, U_old = rollouts(A, B, K0, k0, x0)
    X, U = rollouts(A, B, K0, k0, x0)
    W_net = rng.standard_normal((dX, dU)) / np.sqrt(dX)
    net = lambda Xs: np.tanh(Xs @ W_net)  # noqa: E731
    pol_var = np.full(dU, 0.1)

    old_rng = np.random.default_rng(seed + 1)
    dyn_priors_old, _ = fit_all_dynamics([None] * M, X_old, U_old, DYN_PRIOR, REGULARIZATION, REG_SHAPE, INITIAL_STATE_VAR, old_rng)
    *_, pol_gmms = fit_policy_linearisations(X_old, net(X_old), pol_var, [None] * M, POL_PRIOR, old_rng)
    # current-iteration dynamics and reference controller, as the C-step would receive them
    _, arr = fit_all_dynamics(dyn_priors_old, X, U, DYN_PRIOR, REGULARIZATION, REG_SHAPE, INITIAL_STATE_VAR, np.random.default_rng(seed + 2))
    K, k, S, _ = fit_policy_linearisations(X, net(X), pol_var, pol_gmms, POL_PRIOR, np.random.default_rng(seed + 3))
    D = dX + dU
    H = rng.standard_normal((M, T, D, D)) / np.sqrt(D)
    Cm = H @ np.swapaxes(H, -1, -2) + 1e-2 * np.eye(D)
    Cm[:, -1] *= 10.0
    cv = rng.standard_normal((M, T, D))
    return Problem(
        source=f"synthetic peg-shaped problem (seed {seed})",
        X=X, U=U, U_pol=net(X), pol_var=pol_var,
        dyn_priors=dyn_priors_old, pol_gmms=pol_gmms,
        costs=[QuadraticCost(Cm=Cm[m], cv=cv[m], cc=np.zeros(T)) for m in range(M)],
        dyns=[Dynamics(Fm=arr["Fm"][m], fv=arr["fv"][m], covar=arr["dyn_covar"][m], x0mu=arr["x0mu"][m], x0sigma=arr["x0sigma"][m])
              for m in range(M)],
        lins=[LinearGaussianPolicy(K=K[m], k=k[m], covar=S[m]) for m in range(M)],
        kl_bounds=np.full(M, KL_STEP * T),
        etas=np.ones(M),
        seed_dyn=[seed, 1, 1],
        seed_pol=[seed, 1, 2],
    )


# --------------------------------------------------------------------------- the six runs


def c_step_ref(p: Problem) -> dict[str, np.ndarray]:
    cfg = TrajOptConfig()
    res = [c_step_reference(p.costs[m], p.lins[m], p.dyns[m], float(p.kl_bounds[m]), float(p.etas[m]), cfg) for m in range(len(p.costs))]
    return {
        "K": np.stack([r.policy.K for r in res]), "k": np.stack([r.policy.k for r in res]),
        "pol_covar": np.stack([r.policy.covar for r in res]), "eta": np.array([r.eta for r in res]),
        "kl": np.array([r.kl for r in res]), "dual_iterations": np.array([r.dual_iterations for r in res]),
    }


def c_step_fast(p: Problem) -> dict[str, np.ndarray]:
    r = c_step_batched(p.costs, p.lins, p.dyns, p.kl_bounds, p.etas, TrajOptConfig())
    return {"K": r.K, "k": r.k, "pol_covar": r.covar, "eta": r.eta, "kl": r.kl, "dual_iterations": r.dual_iterations}


def _gmm_arrays(gmms) -> dict[str, np.ndarray]:
    return {"gmm_mu": np.stack([g.mu for g in gmms]), "gmm_sigma": np.stack([g.sigma for g in gmms]),
            "gmm_logmass": np.stack([g.logmass for g in gmms])}


def dynamics_ref(p: Problem) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(p.seed_dyn)
    out: dict[str, list] = {k: [] for k in ("Fm", "fv", "dyn_covar", "x0mu", "x0sigma")}
    gmms = []
    for m in range(p.X.shape[0]):
        prior = update_dynamics_prior(p.dyn_priors[m], p.X[m], p.U[m], DYN_PRIOR, rng)
        for key, value in zip(out, (*fit_dynamics(p.X[m], p.U[m], prior, DYN_PRIOR.strength, REGULARIZATION, REG_SHAPE),
                                    *fit_initial_state(p.X[m], prior, INITIAL_STATE_VAR, DYN_PRIOR.strength))):
            out[key].append(value)
        gmms.append(prior.gmm)
    return {**{k: np.stack(v) for k, v in out.items()}, **_gmm_arrays(gmms)}


def dynamics_fast(p: Problem) -> dict[str, np.ndarray]:
    priors, arrays = fit_all_dynamics(p.dyn_priors, p.X, p.U, DYN_PRIOR, REGULARIZATION, REG_SHAPE, INITIAL_STATE_VAR,
                                      np.random.default_rng(p.seed_dyn))
    return {**arrays, **_gmm_arrays([q.gmm for q in priors])}


def policy_ref(p: Problem) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(p.seed_pol)
    res = [fit_policy_linearisation(p.X[m], p.U_pol[m], p.pol_var, p.pol_gmms[m], POL_PRIOR, rng) for m in range(p.X.shape[0])]
    return {"K": np.stack([r[0] for r in res]), "k": np.stack([r[1] for r in res]), "pol_covar": np.stack([r[2] for r in res]),
            **_gmm_arrays([r[3] for r in res])}


def policy_fast(p: Problem) -> dict[str, np.ndarray]:
    K, k, S, gmms = fit_policy_linearisations(p.X, p.U_pol, p.pol_var, p.pol_gmms, POL_PRIOR, np.random.default_rng(p.seed_pol))
    return {"K": K, "k": k, "pol_covar": S, **_gmm_arrays(gmms)}


# --------------------------------------------------------------------------- timing


def best_of(fns: dict[str, Callable[[], dict]], repeats: int) -> tuple[dict[str, float], dict[str, float], dict[str, dict]]:
    """Run the functions interleaved `repeats` times; fastest CPU time, fastest wall time and last result of each.

    CPU time (of this process) is the headline figure: on a shared machine wall time also counts
    the time the process waits for a core.
    """
    cpu = {name: np.inf for name in fns}
    wall = {name: np.inf for name in fns}
    results: dict[str, dict] = {}
    for _ in range(repeats):
        for name, fn in fns.items():
            start_cpu, start_wall = time.process_time(), time.perf_counter()
            results[name] = fn()
            cpu[name] = min(cpu[name], time.process_time() - start_cpu)
            wall[name] = min(wall[name], time.perf_counter() - start_wall)
    return cpu, wall, results


def compare(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> tuple[float, str, bool]:
    """Largest absolute difference over the shared arrays, the array where it occurs, bit-identical?"""
    worst, where, identical = 0.0, "-", True
    for key in a:
        diff = float(np.max(np.abs(np.asarray(a[key], dtype=float) - np.asarray(b[key], dtype=float)), initial=0.0))
        identical &= bool(np.array_equal(a[key], b[key]))
        if diff > worst:
            worst, where = diff, key
    return worst, where, identical


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("/tmp/peg0/data"), help="data/ folder of a finished peg run")
    ap.add_argument("--iteration", type=int, default=5, help="iteration whose inputs to use (needs the one before)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--synthetic", action="store_true", help="use the synthetic problem even if the artifacts exist")
    ap.add_argument("--seed", type=int, default=0, help="seed of the synthetic problem")
    args = ap.parse_args()

    needed = [args.data / f"itr_{args.iteration:02d}" / f"{n}.h5" for n in ("samples", "dynamics", "policy_lin", "step")]
    needed += [args.data / f"itr_{args.iteration - 1:02d}" / f"{n}.h5" for n in ("dynamics", "policy_lin", "controllers", "policy")]
    if not args.synthetic and args.iteration >= 1 and all(p.exists() for p in needed):
        problem = load_artifacts(args.data, args.iteration)
    else:
        problem = synthetic(args.seed)
    M, N, T, dX = problem.X.shape
    print(f"inputs: {problem.source}: M={M} N={N} T={T} dX={dX} dU={problem.U.shape[-1]}")
    print(f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS')}, best of {args.repeats} interleaved runs")

    rows = []
    rounds = None
    for label, ref, fast in (("C-step", c_step_ref, c_step_fast), ("dynamics fit", dynamics_ref, dynamics_fast),
                             ("policy lin. fit", policy_ref, policy_fast)):
        cpu, wall, results = best_of({"ref": lambda f=ref: f(problem), "fast": lambda f=fast: f(problem)}, args.repeats)
        worst, where, identical = compare(results["ref"], results["fast"])
        rows.append((label, cpu, wall, worst, where, identical))
        if label == "C-step":
            rounds = results["fast"]["dual_iterations"].tolist()
    print()
    print(f"| {'step (all ' + str(M) + ' conditions)':<24} | reference CPU [s] | batched CPU [s] | speed-up "
          f"| wall ref / batched [s] | max abs diff | bit-identical |")
    print(f"|{'-' * 26}|{'-' * 19}|{'-' * 17}|{'-' * 10}|{'-' * 24}|{'-' * 14}|{'-' * 15}|")
    for label, cpu, wall, worst, where, identical in rows:
        diff = f"{worst:.1e} ({where})" if worst > 0 else "0"
        print(f"| {label:<24} | {cpu['ref']:>17.3f} | {cpu['fast']:>15.3f} | {cpu['ref'] / cpu['fast']:>7.1f}x "
              f"| {wall['ref']:>10.3f} / {wall['fast']:<9.3f} | {diff:>12} | {'yes' if identical else 'no':<13} |")
    print()
    print(f"C-step dual-search rounds per condition: {rounds}")


if __name__ == "__main__":
    main()
