"""Time-varying linear-Gaussian controllers.

A controller acts by

    u_t ~ N(K_t x_t + k_t, Σ_t),    sampled as  u_t = K_t x_t + k_t + chol(Σ_t)ᵀ ε_t

where chol(Σ) is the *upper* Cholesky factor (chol(Σ)ᵀ chol(Σ) = Σ) and ε_t is
standard normal, so that chol(Σ)ᵀ ε ~ N(0, Σ).

With P = Σ⁻¹ and z = [x; u], its negative log-density is the quadratic

    −log p(u|x) = ½ zᵀ M z + zᵀ v + c + ½ log|Σ| + (dU/2) log 2π
    M = [[Kᵀ P K, −Kᵀ P], [−P K, P]],   v = [Kᵀ P k; −P k],   c = ½ kᵀ P k

which is the form in which controllers enter the C-step surrogate cost and the
trajectory KL divergence (gps_core.traj_opt.lqr.quadratic_form_batched computes it, for any batch of controllers).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np


@dataclass(frozen=True)
class LinearGaussianPolicy:
    """One condition's controller.

    K: [T, dU, dX], k: [T, dU], covar: [T, dU, dU] (symmetric positive definite).
    """

    K: np.ndarray
    k: np.ndarray
    covar: np.ndarray

    @property
    def T(self) -> int:
        return self.K.shape[0]

    @property
    def dU(self) -> int:
        return self.K.shape[1]

    @property
    def dX(self) -> int:
        return self.K.shape[2]

    @cached_property
    def chol(self) -> np.ndarray:
        """Upper Cholesky factor of covar, [T, dU, dU]."""
        return np.swapaxes(np.linalg.cholesky(self.covar), -1, -2)

    @cached_property
    def inv_covar(self) -> np.ndarray:
        """Σ⁻¹ via the Cholesky factor, [T, dU, dU]."""
        eye = np.broadcast_to(np.eye(self.dU), self.covar.shape)
        L_inv = np.linalg.solve(np.linalg.cholesky(self.covar), eye)
        return np.swapaxes(L_inv, -1, -2) @ L_inv

    @cached_property
    def logdet_covar(self) -> np.ndarray:
        """log|Σ_t|, [T]."""
        return 2.0 * np.sum(np.log(np.diagonal(self.chol, axis1=-2, axis2=-1)), axis=-1)

    def mean_action(self, X: np.ndarray) -> np.ndarray:
        """Mean action at states X: [..., T, dX] -> [..., T, dU]."""
        return np.einsum("tux,...tx->...tu", self.K, X) + self.k

    def act(self, t: int, x: np.ndarray, eps: np.ndarray) -> np.ndarray:
        """Action at step t for a batch: x [B, dX], eps [B, dU] -> u [B, dU]."""
        return x @ self.K[t].T + self.k[t] + eps @ self.chol[t]
