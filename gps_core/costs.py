"""Costs and their quadratic expansions.

Each cost term gives, for every sample n and step t, a second-order expansion
around that sample's own point ẑ = [x̂; û]:  l, l_x, l_u, l_xx, l_uu, l_ux.

Penalties on a residual d ∈ R^D with per-step weights w (after the time ramp),
s = Σ_i (w_i d_i)², g_i = w_i² d_i:

    sqrt ("l1-l2", CostState):  ℓ = ½ l2 Σ w d² + l1 √(α + s)
        ∂ℓ/∂d = l2 w d + l1 g / √(α+s)
        H     = l2 diag(w) + l1 [diag(w²)/√(α+s) − g gᵀ/(α+s)^{3/2}]
    log ("log-l2", CostFK):     ℓ = ½ l2 Σ w d² + ½ l1 log(α + s)
        ∂ℓ/∂d = l2 w d + l1 g / (α+s)
        H     = l2 diag(w) + l1 [diag(w²)/(α+s) − g gᵀ/(α+s)²]

The log Hessian is the one the reference code used: the exact Hessian has a
factor 2 on the g gᵀ term. It is kept because it shapes the LQR curvature.

The LQR needs the model around z = 0, so each sample's expansion is re-centred,
then averaged over samples (re-centring after averaging would be wrong):

    cc = mean_n (l − gᵀ ẑ + ½ ẑᵀ C ẑ),  cv = mean_n (g − C ẑ),  Cm = mean_n C

A term without derivatives (BinaryRegionCost, the reference's CostBinaryRegion; the types of
gps_core.configs.DERIVATIVE_FREE_TERMS) has g = 0 and C = 0 at every sample, so its expansion is
zero but for the constant cc = mean_n l per step. An LQR solve on the expansion (the C-step of
MDGPS and LQR-FLM, PILQR's LQR step, iLQR's backward pass) returns the same controller with or
without it: LQR-based optimizers do not see it. The sampled costs l do: PI2 weights samples by
them, and PILQR sees the term through its residual (sampled cost − the expansion's prediction,
which keeps each sample's deviation from the mean). Rules that compare cost values between
batches (the classic step rule's estimates, iLQR's line search) see the change of its mean only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from gps_core.configs import RAMPS
from gps_core.traj_opt.lqr import QuadraticCost

if TYPE_CHECKING:
    from gps_core.sim.task import Task

@dataclass(frozen=True)
class CostTerms:
    """Per-sample expansions.

    l: [N, T], lx: [N, T, dX], lu: [N, T, dU], lxx: [N, T, dX, dX],
    luu: [N, T, dU, dU], lux: [N, T, dU, dX].
    """

    l: np.ndarray
    lx: np.ndarray
    lu: np.ndarray
    lxx: np.ndarray
    luu: np.ndarray
    lux: np.ndarray

    @staticmethod
    def zeros(N: int, T: int, dX: int, dU: int) -> "CostTerms":
        return CostTerms(
            l=np.zeros((N, T)),
            lx=np.zeros((N, T, dX)),
            lu=np.zeros((N, T, dU)),
            lxx=np.zeros((N, T, dX, dX)),
            luu=np.zeros((N, T, dU, dU)),
            lux=np.zeros((N, T, dU, dX)),
        )

    def reshape(self, *lead: int) -> "CostTerms":
        """Split the sample axis, e.g. [M·N, T, ...] -> [M, N, T, ...]."""
        return CostTerms(*(a.reshape(*lead, *a.shape[1:]) for a in (self.l, self.lx, self.lu, self.lxx, self.luu, self.lux)))

    def scaled_add(self, other: "CostTerms", weight: float) -> "CostTerms":
        return CostTerms(
            *(a + weight * b for a, b in zip(
                (self.l, self.lx, self.lu, self.lxx, self.luu, self.lux),
                (other.l, other.lx, other.lu, other.lxx, other.luu, other.lux),
            ))
        )


def ramp(option: str, T: int, wp_final_multiplier: float) -> np.ndarray:
    """Time multiplier ρ_t: [T], final step scaled by wp_final_multiplier."""
    t = np.arange(1, T + 1) / T
    if option == "constant":
        rho = np.ones(T)
    elif option == "linear":
        rho = t
    elif option == "quadratic":
        rho = t**2
    elif option == "final_only":
        rho = np.zeros(T)
        rho[-1] = 1.0
    else:
        raise ValueError(f"unknown ramp {option!r}; expected one of {RAMPS}")
    rho[-1] *= wp_final_multiplier
    return rho


def penalty(d: np.ndarray, w: np.ndarray, l1: float, l2: float, alpha: float, shape: str):
    """Penalty value, gradient and Hessian w.r.t. the residual.

    d: [N, T, D], w: [T, D] -> l [N, T], grad [N, T, D], hess [N, T, D, D].
    """
    s = np.sum((w * d) ** 2, axis=-1)
    g = w**2 * d
    diag_w = np.eye(d.shape[-1]) * w[..., None, :]
    diag_w2 = np.eye(d.shape[-1]) * (w**2)[..., None, :]
    ggT = g[..., :, None] * g[..., None, :]
    l2_part = 0.5 * l2 * np.sum(w * d**2, axis=-1)
    if shape == "sqrt":
        root = np.sqrt(alpha + s)
        l = l2_part + l1 * root
        grad = l2 * w * d + l1 * g / root[..., None]
        hess = l2 * diag_w + l1 * (diag_w2 / root[..., None, None] - ggT / (root**3)[..., None, None])
    elif shape == "log":
        a_s = alpha + s
        l = l2_part + 0.5 * l1 * np.log(a_s)
        grad = l2 * w * d + l1 * g / a_s[..., None]
        hess = l2 * diag_w + l1 * (diag_w2 / a_s[..., None, None] - ggT / (a_s**2)[..., None, None])
    else:
        raise ValueError(f"unknown penalty shape {shape!r}")
    return l, grad, hess


@dataclass(frozen=True)
class ActionCost:
    """ℓ = ½ Σ_j wu_j u_j²."""

    wu: np.ndarray  # [dU]

    def evaluate(self, X: np.ndarray, U: np.ndarray, J: np.ndarray | None) -> CostTerms:
        N, T, dX = X.shape
        terms = CostTerms.zeros(N, T, dX, U.shape[-1])
        return CostTerms(
            l=0.5 * np.sum(self.wu * U**2, axis=-1),
            lx=terms.lx,
            lu=self.wu * U,
            lxx=terms.lxx,
            luu=np.broadcast_to(np.diag(self.wu), terms.luu.shape).copy(),
            lux=terms.lux,
        )


@dataclass(frozen=True)
class StateCost:
    """Penalty (sqrt unless told) on x[start:stop] − target."""

    start: int
    target: np.ndarray  # [D]
    wp: np.ndarray  # [D]
    l1: float = 0.0
    l2: float = 1.0
    alpha: float = 1e-2
    ramp: str = "constant"
    wp_final_multiplier: float = 1.0
    penalty: str = "sqrt"

    def evaluate(self, X: np.ndarray, U: np.ndarray, J: np.ndarray | None) -> CostTerms:
        N, T, dX = X.shape
        sl = slice(self.start, self.start + len(self.target))
        w = ramp(self.ramp, T, self.wp_final_multiplier)[:, None] * self.wp
        l, grad, hess = penalty(X[..., sl] - self.target, w, self.l1, self.l2, self.alpha, self.penalty)
        terms = CostTerms.zeros(N, T, dX, U.shape[-1])
        terms.lx[..., sl] = grad
        terms.lxx[..., sl, sl] = hess
        return CostTerms(l, terms.lx, terms.lu, terms.lxx, terms.luu, terms.lux)


@dataclass(frozen=True)
class FKCost:
    """Penalty (log unless told) on a point-like block x[ee_start:ee_start+D] − target.

    Derivatives go to the configuration slots x[0:dU] (the joints the actuators
    drive, gps_core.sim.task) through rows jac_start:jac_start+D of the recorded
    Jacobian J: [N, T, n_jac, dU]; the block's own slots get none.
    """

    ee_start: int
    target: np.ndarray  # [D]
    wp: np.ndarray  # [D]
    l1: float = 0.0
    l2: float = 1.0
    alpha: float = 1e-5
    ramp: str = "constant"
    wp_final_multiplier: float = 1.0
    penalty: str = "log"
    jac_start: int = 0

    def evaluate(self, X: np.ndarray, U: np.ndarray, J: np.ndarray | None) -> CostTerms:
        if J is None:
            raise ValueError("FKCost needs the end-effector Jacobians")
        N, T, dX = X.shape
        nq = J.shape[-1]
        D = len(self.target)
        sl = slice(self.ee_start, self.ee_start + D)
        J = J[..., self.jac_start : self.jac_start + D, :]
        w = ramp(self.ramp, T, self.wp_final_multiplier)[:, None] * self.wp
        l, grad, hess = penalty(X[..., sl] - self.target, w, self.l1, self.l2, self.alpha, self.penalty)
        terms = CostTerms.zeros(N, T, dX, U.shape[-1])
        terms.lx[..., :nq] = np.einsum("ntdq,ntd->ntq", J, grad)
        terms.lxx[..., :nq, :nq] = np.einsum("ntdq,ntde,nter->ntqr", J, hess, J)
        return CostTerms(l, terms.lx, terms.lu, terms.lxx, terms.luu, terms.lux)


@dataclass(frozen=True)
class BinaryRegionCost:
    """ℓ = inside_cost where Σ_i |x[start + i] − target_i| ≤ max_distance, else outside_cost (the reference's
    CostBinaryRegion: outside where the L1 distance is > max_distance, so the boundary counts inside).

    Every derivative is zero (module docstring: LQR-based optimizers do not see this term).
    """

    start: int
    target: np.ndarray  # [D]
    max_distance: float
    inside_cost: float
    outside_cost: float

    def evaluate(self, X: np.ndarray, U: np.ndarray, J: np.ndarray | None) -> CostTerms:
        """X: [N, T, dX], U: [N, T, dU] -> l [N, T] of the two values, every derivative zero."""
        N, T, dX = X.shape
        distance = np.sum(np.abs(X[..., self.start : self.start + len(self.target)] - self.target), axis=-1)
        terms = CostTerms.zeros(N, T, dX, U.shape[-1])
        l = np.where(distance > self.max_distance, float(self.outside_cost), float(self.inside_cost))
        return CostTerms(l, terms.lx, terms.lu, terms.lxx, terms.luu, terms.lux)


@dataclass(frozen=True)
class SumCost:
    terms: tuple  # of (weight, cost)

    def evaluate(self, X: np.ndarray, U: np.ndarray, J: np.ndarray | None) -> CostTerms:
        total = CostTerms.zeros(X.shape[0], X.shape[1], X.shape[2], U.shape[-1])
        for weight, cost in self.terms:
            total = total.scaled_add(cost.evaluate(X, U, J), weight)
        return total


def build_cost(specs: Sequence[dict[str, Any]], task: "Task") -> SumCost:
    """Cost from the `cost` list of params.yaml: each entry has `type` and `weight`; state, fk and
    binary_region terms name a block of the task's state (`block`), checked before
    (stages.settings.model_check)."""
    terms = []
    for spec in specs:
        spec = dict(spec)
        kind = spec.pop("type")
        weight = float(spec.pop("weight", 1.0))
        if kind in ("state", "binary_region"):
            spec["start"] = task.x_slices[spec.pop("block")].start
        elif kind == "fk":
            block = spec.pop("block")
            spec["ee_start"], spec["jac_start"] = task.x_slices[block].start, task.jac_rows[block].start
        arrays = {k: np.asarray(v, dtype=float) for k, v in spec.items() if k in ("wu", "target", "wp")}
        rest = {k: v for k, v in spec.items() if k not in arrays}
        cls = {"action": ActionCost, "state": StateCost, "fk": FKCost, "binary_region": BinaryRegionCost}[kind]
        terms.append((weight, cls(**arrays, **rest)))
    return SumCost(tuple(terms))


def expand_cost(terms: CostTerms, X: np.ndarray, U: np.ndarray) -> QuadraticCost:
    """Re-centre each sample's expansion at z = 0 and average over samples.

    X: [..., N, T, dX], U: [..., N, T, dU] (terms shaped alike) -> QuadraticCost with
    Cm [..., T, D, D], cv [..., T, D], cc [..., T] (leading dims, e.g. conditions, kept).
    """
    z = np.concatenate([X, U], axis=-1)
    g = np.concatenate([terms.lx, terms.lu], axis=-1)
    C = np.concatenate(
        [
            np.concatenate([terms.lxx, np.swapaxes(terms.lux, -1, -2)], axis=-1),
            np.concatenate([terms.lux, terms.luu], axis=-1),
        ],
        axis=-2,
    )
    Cz = np.einsum("...ij,...j->...i", C, z)
    cc = terms.l - np.einsum("...i,...i->...", g, z) + 0.5 * np.einsum("...i,...i->...", z, Cz)
    cv = g - Cz
    return QuadraticCost(Cm=C.mean(axis=-4), cv=cv.mean(axis=-3), cc=cc.mean(axis=-2))
