"""Smoothed exploration noise.

ε ∈ R^{T×dU} is drawn i.i.d. standard normal, each action dimension is
smoothed along time with a Gaussian kernel of standard deviation `sigma` steps
(reflecting boundary, truncated at 4 σ), then rescaled to unit empirical
(population) variance. The columns are not re-centred.

Smoothing and rescaling act along T within each episode and action dimension,
never across episodes, so one episode's noise drawn alone ([T, dU], as the
sample stage does to draw a diverged sample again) has the same distribution as
one episode of a batch ([M, N, T, dU]).
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter1d


def smoothed_noise(
    rng: np.random.Generator, shape: tuple[int, ...], smooth: bool = True, sigma: float = 2.0, renormalize: bool = True
) -> np.ndarray:
    """Noise of shape [..., T, dU], smoothed along the T axis."""
    return smooth_along_time(rng.standard_normal(shape), smooth, sigma, renormalize)


def smooth_along_time(eps: np.ndarray, smooth: bool = True, sigma: float = 2.0, renormalize: bool = True) -> np.ndarray:
    """eps: [..., T, dU] white noise -> the same shape, each [T] column smoothed and rescaled on its own."""
    if smooth:
        eps = gaussian_filter1d(eps, sigma, axis=-2, mode="reflect", truncate=4.0)
        if renormalize:
            eps = eps / np.std(eps, axis=-2, keepdims=True)
    return eps
