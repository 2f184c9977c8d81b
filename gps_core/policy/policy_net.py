"""Global policy network pi_theta(u | o) in pure NumPy (ALGORITHM.md §2.3, §8.1, §8.2).

The policy is a state-independent-covariance Gaussian

    pi_theta(u | o) = N(mu_theta(o_hat), diag(var)),   o_hat = o * obs_scale + obs_bias,

where mu_theta is a fully connected network with ReLU hidden layers and a linear
output layer:

    h_0 = o_hat,   h_i = relu(W_{i-1} h_{i-1} + b_{i-1})  (hidden layers),
    mu_theta(o) = W_L h_L + b_L                           (output layer).

Weights use the torch ``Linear`` layout ``W_i: [out, in]``.  The observation
normalisation (§8.2) is computed once from the first S-step's observations,
per dimension ``obs_scale_j = 1 / max(std_j, 1e-3)`` (population std) and
``obs_bias_j = -mean_j(o_j * obs_scale_j)``, and frozen afterwards.

This module is NumPy-only on purpose (it must never import torch, directly or
indirectly) so that sampling and linearisation stages can evaluate the policy
cheaply; training lives in :mod:`gps_core.policy.s_step`.  Everything is float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NORM_STD_FLOOR = 1e-3
INIT_WEIGHT_STD = 0.01


@dataclass
class PolicyParams:
    """Network parameters, frozen observation normalisation and action variance.

    weights: list of ``W_i [out, in]``, hidden layers then the output layer.
    biases: list of ``b_i [out]``.
    obs_scale, obs_bias: ``[dO]``.
    var: ``[dU]`` diagonal action variance.
    normalised: True once the normalisation was frozen (first S-step done).
    """

    weights: list[np.ndarray]
    biases: list[np.ndarray]
    obs_scale: np.ndarray
    obs_bias: np.ndarray
    var: np.ndarray
    normalised: bool

    @property
    def dO(self) -> int:
        return int(self.weights[0].shape[1])

    @property
    def dU(self) -> int:
        return int(self.weights[-1].shape[0])

    def copy(self) -> "PolicyParams":
        """Deep copy (all arrays copied)."""
        return PolicyParams(
            weights=[np.array(w, dtype=np.float64, copy=True) for w in self.weights],
            biases=[np.array(b, dtype=np.float64, copy=True) for b in self.biases],
            obs_scale=np.array(self.obs_scale, dtype=np.float64, copy=True),
            obs_bias=np.array(self.obs_bias, dtype=np.float64, copy=True),
            var=np.array(self.var, dtype=np.float64, copy=True),
            normalised=bool(self.normalised),
        )


def init_policy(
    dO: int, dU: int, hidden: tuple[int, ...], init_var: float, seed: int
) -> PolicyParams:
    """Fresh network (§8.1): all weights N(0, 0.01^2), biases 0, identity normalisation.

    Weights are drawn layer by layer (hidden layers first, then the output
    layer), each ``[out, in]`` in C order, from ``np.random.default_rng(seed)``.
    Returns ``var = init_var`` in every action dimension and ``normalised=False``.
    """
    if dO <= 0 or dU <= 0 or any(h <= 0 for h in hidden):
        raise ValueError(f"bad layer sizes dO={dO}, dU={dU}, hidden={hidden}")
    if not init_var > 0:
        raise ValueError(f"init_var must be positive, got {init_var}")
    rng = np.random.default_rng(seed)
    sizes = [int(dO), *(int(h) for h in hidden), int(dU)]
    weights = []
    biases = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        weights.append(rng.normal(0.0, INIT_WEIGHT_STD, size=(n_out, n_in)).astype(np.float64))
        biases.append(np.zeros(n_out, dtype=np.float64))
    return PolicyParams(
        weights=weights,
        biases=biases,
        obs_scale=np.ones(dO, dtype=np.float64),
        obs_bias=np.zeros(dO, dtype=np.float64),
        var=np.full(dU, float(init_var), dtype=np.float64),
        normalised=False,
    )


def normalisation(obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Observation normalisation of §8.2 from all rows of ``obs: [..., dO]``.

    Returns ``(obs_scale [dO], obs_bias [dO])`` with
    ``obs_scale_j = 1 / max(std_j, 1e-3)`` (population std, ddof=0) and
    ``obs_bias_j = -mean_j(o_j * obs_scale_j)``, so that the normalised rows
    ``o * obs_scale + obs_bias`` have zero mean and (unless floored) unit std.
    """
    obs = np.asarray(obs, dtype=np.float64)
    if obs.ndim < 1 or obs.shape[-1] == 0:
        raise ValueError(f"obs must have shape [..., dO], got {obs.shape}")
    rows = obs.reshape(-1, obs.shape[-1])
    if rows.shape[0] == 0:
        raise ValueError("normalisation needs at least one observation row")
    std = rows.std(axis=0)  # population std
    scale = 1.0 / np.maximum(std, NORM_STD_FLOOR)
    bias = -np.mean(rows * scale, axis=0)
    return scale, bias


def normalise_obs(params: PolicyParams, obs: np.ndarray) -> np.ndarray:
    """``o_hat = obs * obs_scale + obs_bias``; ``obs: [..., dO] -> [..., dO]`` (new array)."""
    obs = np.asarray(obs, dtype=np.float64)
    return obs * params.obs_scale + params.obs_bias


def policy_mean(params: PolicyParams, obs: np.ndarray) -> np.ndarray:
    """Network mean ``mu_theta(o_hat)``: ``obs: [..., dO] -> [..., dU]``.

    ReLU hidden layers on the normalised observation, linear output layer.
    Never modifies ``obs`` (cf. pitfall §12.2-18).
    """
    obs = np.asarray(obs, dtype=np.float64)
    if obs.shape[-1:] != (params.dO,):
        raise ValueError(f"obs must have shape [..., {params.dO}], got {obs.shape}")
    lead = obs.shape[:-1]
    h = normalise_obs(params, obs.reshape(-1, params.dO))
    n_layers = len(params.weights)
    for i, (w, b) in enumerate(zip(params.weights, params.biases)):
        h = h @ w.T + b
        if i < n_layers - 1:
            h = np.maximum(h, 0.0)
    return h.reshape(*lead, params.dU)
