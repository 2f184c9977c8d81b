"""The GMM priors stored with dynamics.h5 and policy_lin.h5 (group `prior`) <-> gps_core.fit.gmm.GMM."""

from __future__ import annotations

from typing import Any

import numpy as np

from stages.artifacts.checks import Known, check, check_covariance, positive
from stages.artifacts.io import read_artifact
from stages.artifacts.layouts import spec
from stages.errors import UserError


def gmms_to_datasets(prefix: str, gmms: list) -> dict[str, np.ndarray]:
    if any(g is None for g in gmms):
        return {}
    return {
        f"{prefix}/gmm_mu": np.stack([g.mu for g in gmms]),
        f"{prefix}/gmm_sigma": np.stack([g.sigma for g in gmms]),
        f"{prefix}/gmm_logmass": np.stack([g.logmass for g in gmms]),
        f"{prefix}/gmm_n_init": np.array([g.n_init for g in gmms], dtype=np.int64),
    }


def gmm_names(prefix: str) -> tuple[str, str, str, str]:
    """The datasets of the per-condition GMMs stored under `prefix`: mu, sigma, logmass, n_init."""
    return f"{prefix}/gmm_mu", f"{prefix}/gmm_sigma", f"{prefix}/gmm_logmass", f"{prefix}/gmm_n_init"


def check_gmms(path: str, data: dict[str, Any], prefix: str, known: Known) -> None:
    """The stored GMMs: [M,K,E], [M,K,E,E] positive definite, [M,K], [M] integers >= 0.

    All four datasets are required: every stage that writes a prior writes its GMMs, and a file
    given as a prior without them must not pass for "no prior yet" (that is what leaving out
    --prev means).
    """
    names = gmm_names(prefix)
    layout = spec("dynamics", *gmm_names("prior"))  # the same layout under any prefix
    check(path, data, {name: dims for name, dims in zip(names, layout.values())}, known)
    check_covariance(np.asarray(data[names[1]]), path, names[1])
    positive(path, np.asarray(data[names[3]]), names[3], strict=False)


def gmms_from_datasets(prefix: str, data: dict[str, np.ndarray], M: int, path: str = "") -> list:
    """Per-condition GMMs of datasets that check_gmms has checked. Imports scipy via gps_core.fit.gmm.

    A missing dataset is an error, never "no GMM": the loaders (load_dynamics_prior,
    load_policy_lin_prior) report it with the file's name first.
    """
    from gps_core.fit.gmm import GMM

    names = gmm_names(prefix)
    for name in names:
        if name not in data:
            raise UserError(f"{path + ': ' if path else ''}dataset {name!r} is missing")
    mu, sigma, logmass, n_init = (data[name] for name in names)
    return [GMM(mu=mu[m], sigma=sigma[m], logmass=logmass[m], n_init=int(n_init[m])) for m in range(M)]


def load_dynamics_prior(path, known: Known | None = None) -> dict[str, np.ndarray]:
    """The prior part of a dynamics file: buffer prior/X [M,Nb,T,dX], prior/U [M,Nb,T,dU] and the GMM over [x; u; x'].

    Every one of them is required (a file given as --prev is never "no prior").
    """
    data = read_artifact(path, kind="dynamics")[0]
    sizes = check(str(path), data, spec("dynamics", "prior/X", "prior/U"), known)
    width = 2 * sizes["dX"] + sizes["dU"]
    check_gmms(str(path), data, "prior", {"M": (sizes["M"], "as in dataset 'prior/X'"),
                                          "E": (width, "2 dX + dU of datasets 'prior/X' and 'prior/U'")})
    return data


def load_policy_lin_prior(path, known: Known) -> dict[str, np.ndarray]:
    """The GMM over [x; u] of a policy_lin file, required (known must give M, dX and dU)."""
    data = read_artifact(path, kind="policy_lin")[0]
    check_gmms(str(path), data, "prior", {"M": known["M"], "E": (known["dX"][0] + known["dU"][0], "dX + dU, " + known["dX"][1])})
    return data
