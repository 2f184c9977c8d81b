"""The global policy's network (policy.h5: group `policy`, and the Adam state it carries) <-> gps_core.policy.policy_net."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from stages.artifacts.checks import Known, check, int_attr, positive
from stages.artifacts.io import read_artifact
from stages.artifacts.layouts import spec
from stages.errors import UserError


def policy_to_datasets(params: Any, adam: Any | None, losses: np.ndarray | None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """PolicyParams (+ Adam state and S-step losses) -> datasets, attributes."""
    data = {f"policy/W{i}": w for i, w in enumerate(params.weights)}
    data.update({f"policy/b{i}": b for i, b in enumerate(params.biases)})
    data.update({"policy/obs_scale": params.obs_scale, "policy/obs_bias": params.obs_bias, "policy/var": params.var})
    attrs: dict[str, Any] = {"normalised": bool(params.normalised), "n_layers": len(params.weights)}
    if adam is not None:
        for i, (m1, m2) in enumerate(zip(adam.exp_avg, adam.exp_avg_sq)):
            data[f"adam/exp_avg{i}"] = m1
            data[f"adam/exp_avg_sq{i}"] = m2
        attrs["adam_step"] = int(adam.step)
    if losses is not None:
        data["loss"] = losses
    return data, attrs


def check_policy(
    data: dict[str, Any], attrs: dict[str, Any], path: str = "", known: Known | None = None, hidden: Sequence[int] | None = None
) -> dict[str, int]:
    """Weights [out,in] chained dO -> h1 -> ... -> dU, biases, normalisation [dO], variance [dU] > 0, Adam state.

    `hidden`: the hidden layer sizes the params ask for (policy.hidden).
    """
    n = int_attr(path, attrs, "n_layers", 1)
    if hidden is not None and n != len(hidden) + 1:
        raise UserError(f"{path}: attribute 'n_layers' is {n}, expected {len(hidden) + 1} (policy.hidden in params has {len(hidden)} hidden layers)")
    if "normalised" not in attrs:
        raise UserError(f"{path}: attribute 'normalised' is missing")
    if f"policy/W{n}" in data:
        raise UserError(f"{path}: dataset 'policy/W{n}' is present but attribute 'n_layers' is {n}")
    # Without adam_step the Adam state would be taken as absent (a fresh optimiser), so its datasets without it are an error.
    adam = sorted(name for name in data if name.startswith("adam/"))
    if adam and "adam_step" not in attrs:
        raise UserError(f"{path}: dataset {adam[0]!r} is present but attribute 'adam_step' is missing")
    # The table's [out,in] and [out] of each layer, chained: dO -> h1 -> ... -> dU.
    symbols = ["dO", *(f"h{i}" for i in range(1, n)), "dU"]
    layout: dict[str, str | tuple[str, str]] = {}
    for i in range(n):
        layout[f"policy/W{i}"] = f"{symbols[i + 1]},{symbols[i]}"
        layout[f"policy/b{i}"] = symbols[i + 1]
    params_layout = dict(layout)
    layout.update(spec("policy", "policy/obs_scale", "policy/obs_bias", "policy/var"))
    known = dict(known or {})
    known.update({f"h{i}": (int(h), "policy.hidden in params") for i, h in enumerate(hidden or (), start=1)})
    sizes = check(path, data, layout, known)
    positive(path, np.asarray(data["policy/var"]), "policy/var")
    if "adam_step" in attrs:
        int_attr(path, attrs, "adam_step", 0)
        adam_layout = {}
        for j, dims in enumerate(params_layout.values()):  # order W0, b0, W1, b1, ...: as the parameters
            adam_layout[f"adam/exp_avg{j}"] = dims
            adam_layout[f"adam/exp_avg_sq{j}"] = dims
        check(path, data, adam_layout, {s: (v, "as in the policy weights") for s, v in sizes.items()})
        for j in range(len(params_layout)):
            positive(path, np.asarray(data[f"adam/exp_avg_sq{j}"]), f"adam/exp_avg_sq{j}", strict=False)
    return sizes


def policy_from_datasets(data: dict[str, np.ndarray], attrs: dict[str, Any], path: str = "", known: Known | None = None,
                         hidden: Sequence[int] | None = None):
    from gps_core.policy.policy_net import PolicyParams

    check_policy(data, attrs, path, known, hidden)
    n = int(attrs["n_layers"])
    return PolicyParams(
        weights=[data[f"policy/W{i}"] for i in range(n)],
        biases=[data[f"policy/b{i}"] for i in range(n)],
        obs_scale=data["policy/obs_scale"],
        obs_bias=data["policy/obs_bias"],
        var=data["policy/var"],
        normalised=bool(attrs["normalised"]),
    )


def load_policy(path, known: Known | None = None, hidden: Sequence[int] | None = None):
    """The network (PolicyParams), checked including its Adam state. Does not import torch."""
    data, attrs = read_artifact(path, kind="policy")
    return policy_from_datasets(data, attrs, str(path), known, hidden)
