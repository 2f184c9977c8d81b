"""Make tests/data/cstep_*.npz: the inputs of real C-steps and what the code before the safeguards
(commit 916207e) computed from them.

    python tests/data/make_cstep_fixtures.py OLD_CHECKOUT RUN_DIR ITERATION OUT.npz [CONDITIONS]

OLD_CHECKOUT is a checkout of 916207e (its gps_core computes the expected outputs), RUN_DIR a run
folder of benchmarks/paper_comparison.py stopped by the C-step abort at ITERATION (0-based). The
expected outputs cover the conditions that did not fault (the old code aborts the whole C-step,
so it is run on those alone); `faulting` lists the others, which the old code refuses. CONDITIONS
(e.g. 0,1) keeps only those conditions, to keep the file small.
"""

import sys
from pathlib import Path

import numpy as np
import yaml

old, run, itr, out = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
sys.path.insert(0, str(old))
from gps_core import configs
from gps_core.traj_opt import lqr  # noqa: E402  (the old code)
from stages.artifacts.checks import known_from, load_eta, load_samples, load_step
from stages.artifacts.controllers import load_controllers
from stages.artifacts.models import costs_from_datasets, load_dynamics  # noqa: E402

d = run / "data" / f"itr_{itr:02d}"
prev = run / "data" / (f"itr_{itr - 1:02d}" if itr else "init")
params = yaml.safe_load((run / "params.yaml").read_text())
sdata, sizes = load_samples(d / "samples.h5")
known = known_from(sizes, "samples")
costs, dyns, lins = costs_from_datasets(sdata, "samples"), load_dynamics(d / "dynamics.h5", known), load_controllers(d / "policy_lin.h5", known)
step_mult = load_step(d / "step.h5" if itr else run / "data" / "init" / "step.h5", known)
eta = np.asarray(load_eta(prev / "controllers.h5", known), dtype=float)
bounds = float(params["algorithm"]["kl_step"]) * np.asarray(step_mult, dtype=float) * lins[0].T
if len(sys.argv) > 5:
    sel = [int(m) for m in sys.argv[5].split(",")]
    costs, dyns, lins, eta, bounds = [costs[m] for m in sel], [dyns[m] for m in sel], [lins[m] for m in sel], eta[sel], bounds[sel]
cfg = configs.TrajOptConfig(**{k: v for k, v in params["traj_opt"].items() if k != "on_fault"})
M = len(costs)
faulting = []
while True:
    keep = [m for m in range(M) if m not in faulting]
    try:
        res = lqr.c_step_batched([costs[m] for m in keep], [lins[m] for m in keep], [dyns[m] for m in keep],
                                 bounds[keep], eta[keep], cfg)
        break
    except lqr.ConditionError as exc:
        faulting.append(keep[exc.condition])
arrays = {
    "Cm": np.stack([c.Cm for c in costs]), "cv": np.stack([c.cv for c in costs]), "cc": np.stack([c.cc for c in costs]),
    "Fm": np.stack([x.Fm for x in dyns]), "fv": np.stack([x.fv for x in dyns]), "dyn_covar": np.stack([x.covar for x in dyns]),
    "x0mu": np.stack([x.x0mu for x in dyns]), "x0sigma": np.stack([x.x0sigma for x in dyns]),
    "lin_K": np.stack([p.K for p in lins]), "lin_k": np.stack([p.k for p in lins]), "lin_covar": np.stack([p.covar for p in lins]),
    "kl_bound": bounds, "eta_prev": eta, "faulting": np.array(sorted(faulting), dtype=np.int64), "ok": np.array(keep),
    "expected_K": res.K, "expected_k": res.k, "expected_covar": res.covar, "expected_eta": res.eta, "expected_kl": res.kl,
    "expected_dual_iterations": res.dual_iterations,
    "traj_opt": np.array([cfg.min_eta, cfg.max_eta, cfg.del0, cfg.max_iterations, cfg.tolerance]),
}
np.savez_compressed(out, **arrays)
print(f"{out}: {out.stat().st_size / 1e6:.2f} MB, faulting conditions {sorted(faulting)}, ok {keep}")
