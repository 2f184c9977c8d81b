"""params.yaml: loading, per-stage subsets, and conversion to gps_core configs."""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from stages.h5io import UserError
from stages.model_check import check_model_consistency
from stages.schema import validate_params

# The params each stage reads (top-level keys or dotted paths). dvc.yaml lists the
# same keys, so changing a param re-runs only the stages that read it.
STAGE_PARAMS: dict[str, list[str]] = {
    "init": ["agent", "init_lqr", "policy.hidden", "policy.init_var", "policy.init_seed"],
    "sample": ["seed", "agent", "algorithm.sample_on_policy", "cost"],
    "fit_dynamics": ["seed", "dynamics", "algorithm.initial_state_var"],
    "fit_policy": ["seed", "policy_prior"],
    "adjust_step": ["algorithm.step_rule", "algorithm.min_step_mult", "algorithm.max_step_mult"],
    "c_step": ["algorithm.kl_step", "traj_opt"],
    "s_step": ["seed", "policy.iterations", "policy.batch_size", "policy.lr", "policy.weight_decay", "policy.ent_reg"],
    "evaluate": ["agent", "evaluation"],
    # algorithm.name: so that switching algorithms reaches the summary's check that the pipeline was regenerated
    "summary": ["iterations", "algorithm.name"],
    "plot": [],
    # BADMM (algorithm.name: badmm): init also writes the duals; its own step rule; the whole inner loop
    "init_badmm": ["agent", "init_lqr", "policy.hidden", "policy.init_var", "policy.init_seed", "badmm.init_pol_wt"],
    "badmm_adjust_step": ["algorithm.min_step_mult", "algorithm.max_step_mult"],
    "badmm_inner": [
        "seed", "iterations", "algorithm.kl_step", "traj_opt", "policy_prior",
        "policy.iterations", "policy.batch_size", "policy.lr", "policy.weight_decay", "badmm",
    ],
}


def load_params(path: str | Path) -> dict[str, Any]:
    """params.yaml, checked against the schema and then against the model of agent.task (one-line UserError)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: params file not found")
    try:
        params = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    validate_params(params, str(path))
    # After the schema, so that the sizes compared are known to be integers and lists.
    check_model_consistency(params, str(path))
    return params


def algorithm_name(params: dict[str, Any]) -> str:
    """mdgps or badmm (params written before algorithm.name existed are MDGPS runs)."""
    return str(params["algorithm"].get("name", "mdgps"))


def get(params: dict[str, Any], dotted: str) -> Any:
    node: Any = params
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise UserError(f"params: missing key {dotted!r}")
        node = node[part]
    return node


def stage_params(params: dict[str, Any], stage: str) -> dict[str, Any]:
    """The params a stage reads, recorded in its artifacts."""
    return {key: get(params, key) for key in STAGE_PARAMS[stage]}


def stage_rng(params: dict[str, Any], iteration: int, stage: str) -> np.random.Generator:
    """Independent, reproducible generator per (seed, iteration, stage)."""
    return np.random.default_rng([int(get(params, "seed")), iteration, zlib.crc32(stage.encode())])


def make_simulator(params: dict[str, Any]):
    from gps_core.env import Simulator, model_path

    agent = get(params, "agent")
    offsets = agent.get("body_offsets")
    return Simulator(
        model_path(agent["task"]),
        np.asarray(agent["qpos0"], dtype=float),
        dt=float(agent["dt"]),
        substeps=int(agent["substeps"]),
        body_offsets=None if offsets is None else np.asarray(offsets, dtype=float),
    )


def prior_config(section: dict[str, Any]):
    from gps_core.dynamics import PriorConfig

    return PriorConfig(
        max_clusters=int(section["max_clusters"]),
        min_samples_per_cluster=int(section["min_samples_per_cluster"]),
        max_samples=int(section["max_samples"]),
        strength=float(section.get("strength", 1.0)),
    )


def traj_opt_config(params: dict[str, Any]):
    from gps_core.lqr import TrajOptConfig

    section = get(params, "traj_opt")
    return TrajOptConfig(
        min_eta=float(section["min_eta"]),
        max_eta=float(section["max_eta"]),
        del0=float(section["del0"]),
        max_iterations=int(section["max_iterations"]),
        tolerance=float(section["tolerance"]),
        on_fault=str(section["on_fault"]),
    )


def init_lqr_config(params: dict[str, Any]):
    from gps_core.init_lqr import InitLQRConfig

    section = get(params, "init_lqr")
    gains = section.get("init_gains")
    return InitLQRConfig(
        init_var=float(section["init_var"]),
        stiffness=float(section["stiffness"]),
        stiffness_vel=float(section["stiffness_vel"]),
        final_weight=float(section["final_weight"]),
        init_gains=None if gains is None else tuple(float(g) for g in gains),
        dt=float(get(params, "agent.dt")),
    )


def badmm_config(params: dict[str, Any]):
    """The `badmm` section as a gps_core.badmm.BadmmConfig (schedules as tuples)."""
    from gps_core.badmm import BadmmConfig

    section = get(params, "badmm")
    return BadmmConfig(**{k: tuple(float(x) for x in v) if isinstance(v, list) else v for k, v in section.items()})
