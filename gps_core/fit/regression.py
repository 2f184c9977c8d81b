"""Joint-Gaussian linear regression with a Normal-inverse-Wishart prior (ALGORITHM §5.1).

Each batch entry b holds N points y_n = [a_n; c_n] with an "input" block a ∈ R^{d_in}
(first d_in dims) and an "output" block c ∈ R^{d_out}. With prior (μ0, Φ, m, n0):

    ȳ = (1/N) Σ_n y_n
    S = sym((1/N) Σ_n (y_n − ȳ)(y_n − ȳ)ᵀ)                         (biased, 1/N)
    Σ̂ = sym([N S + Φ + (N m / (N + m)) (ȳ − μ0)(ȳ − μ0)ᵀ] / (N + n0))
    Σ̂_aa ← Σ̂_aa + reg · 11ᵀ   (reg on EVERY entry, CR)   or   Σ̂_aa + reg · I   ("identity")
    F = (Σ̂_aa⁻¹ Σ̂_ac)ᵀ,    f = ȳ_c − F ȳ_a,    cov = sym(Σ̂_cc − F Σ̂_aa Fᵀ)

so that c | a ~ N(F a + f, cov). The conditioning mean is the empirical mean ȳ; the
prior only shapes the covariance.
"""

from __future__ import annotations

import numpy as np


def _sym(a: np.ndarray) -> np.ndarray:
    return 0.5 * (a + np.swapaxes(a, -1, -2))


def gauss_fit_joint_prior(
    points: np.ndarray,
    mu0: np.ndarray,
    Phi: np.ndarray,
    m: float,
    n0: float,
    reg: np.ndarray,
    d_in: int,
    reg_shape: str = "all_entries",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Batched MAP joint fit and conditioning (§5.1).

    points: [B, N, D]; mu0: [B, D]; Phi: [B, D, D]; m, n0: floats;
    reg: [B] scalar per batch entry added to every entry of the [d_in, d_in] input block;
    d_in: number of leading input dims; reg_shape: "all_entries" (CR: reg·11ᵀ, which leaves
    collinear input directions unregularised) or "identity" (reg·I).
    Returns F [B, D−d_in, d_in], f [B, D−d_in], cov [B, D−d_in, D−d_in] (symmetrised).
    """
    points = np.asarray(points, dtype=np.float64)
    mu0 = np.asarray(mu0, dtype=np.float64)
    Phi = np.asarray(Phi, dtype=np.float64)
    n_batch, n_points, dim = points.shape
    reg = np.broadcast_to(np.asarray(reg, dtype=np.float64), (n_batch,))
    m = float(m)
    n0 = float(n0)

    mean = points.mean(axis=1)  # [B, D]
    centred = points - mean[:, None, :]
    emp_cov = _sym(np.swapaxes(centred, 1, 2) @ centred / n_points)  # [B, D, D]
    prior_shift = mean - mu0  # [B, D]
    shift_weight = n_points * m / (n_points + m) if (n_points + m) != 0.0 else 0.0
    joint_cov = (
        n_points * emp_cov + Phi + shift_weight * prior_shift[:, :, None] * prior_shift[:, None, :]
    ) / (n_points + n0)
    joint_cov = _sym(joint_cov)
    if reg_shape == "all_entries":
        joint_cov[:, :d_in, :d_in] += reg[:, None, None]
    elif reg_shape == "identity":
        joint_cov[:, :d_in, :d_in] += reg[:, None, None] * np.eye(d_in)
    else:
        raise ValueError(f"unknown regulariser shape {reg_shape!r}; expected all_entries or identity")

    cov_in_in = joint_cov[:, :d_in, :d_in]  # [B, d_in, d_in]
    cov_in_out = joint_cov[:, :d_in, d_in:]  # [B, d_in, d_out]
    cov_out_out = joint_cov[:, d_in:, d_in:]  # [B, d_out, d_out]
    gain = np.swapaxes(np.linalg.solve(cov_in_in, cov_in_out), -1, -2)  # [B, d_out, d_in]
    offset = mean[:, d_in:] - np.einsum("boi,bi->bo", gain, mean[:, :d_in])  # [B, d_out]
    cond_cov = _sym(cov_out_out - gain @ cov_in_in @ np.swapaxes(gain, -1, -2))
    return gain, offset, cond_cov
