"""BADMM's dual variables (ALGORITHM §10): their state and initial values.

Apart from gps_core.badmm.algorithm, which holds the BADMM updates and its C-step, so that the stages that only
create or store the duals (`gps init`, the duals.h5 reader) do not depend on the C-step's code
(stages/pipeline/code_deps.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DualState:
    """BADMM dual variables of M conditions, carried across inner and outer iterations.

    lam_k: [M, T, dU], lam_K: [M, T, dU, dX] (λ_t(x) = lam_K[m, t] x + lam_k[m, t]);
    pol_wt: [M, T] the weights ν_t; prev_kl: [M, T] the policy KL of the last weight update
    (None before the first one; rules 2 and 3 need it).
    """

    lam_k: np.ndarray
    lam_K: np.ndarray
    pol_wt: np.ndarray
    prev_kl: np.ndarray | None = None

    @property
    def M(self) -> int:
        return int(self.pol_wt.shape[0])

    def __post_init__(self) -> None:
        M, T = np.shape(self.pol_wt)
        dU, dX = np.shape(self.lam_K)[2:]
        if np.shape(self.lam_k) != (M, T, dU) or np.shape(self.lam_K) != (M, T, dU, dX):
            raise ValueError(
                f"lam_k {np.shape(self.lam_k)} / lam_K {np.shape(self.lam_K)} do not match pol_wt {(M, T)}"
            )
        if self.prev_kl is not None and np.shape(self.prev_kl) != (M, T):
            raise ValueError(f"prev_kl must be {(M, T)}, got {np.shape(self.prev_kl)}")


def init_duals(M: int, T: int, dU: int, dX: int, init_pol_wt: float) -> DualState:
    """λ = 0, ν_t = init_pol_wt for every condition and step, no previous KL."""
    return DualState(
        lam_k=np.zeros((M, T, dU)), lam_K=np.zeros((M, T, dU, dX)), pol_wt=np.full((M, T), float(init_pol_wt))
    )
