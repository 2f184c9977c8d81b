"""params.yaml as read: loading it (checked against the schema, then against the task's model) and the
params each stage reads (STAGE_PARAMS), which its artifacts record and its dvc.yaml lists.

The stages and tools read typed settings (stages.settings.load); the dict stays for what is recorded,
and for `gps pipeline`, which lays the stages out from the checked dict."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from stages.errors import UserError
from stages.settings.model_check import check_model_consistency
from stages.settings.schema import validate_params

if TYPE_CHECKING:
    from gps_core.sim.task import Task

# The params each stage reads (top-level keys or dotted paths). dvc.yaml lists the
# same keys, so changing a param re-runs only the stages that read it.
STAGE_PARAMS: dict[str, list[str]] = {
    "init": ["task", "init_lqr", "policy.hidden", "policy.init_var", "policy.init_seed"],
    # init_lqr.source: model: iLQR on the model with the task's cost (init_stage)
    "init_model": ["task", "init_lqr", "cost", "policy.hidden", "policy.init_var", "policy.init_seed"],
    "sample": ["seed", "task", "agent", "algorithm.sample_on_policy", "cost"],
    "fit_dynamics": ["seed", "dynamics", "algorithm.initial_state_var"],
    # dynamics.source: model: the model linearised along the samples (no regression, no prior)
    "fit_dynamics_model": ["task", "dynamics.source", "algorithm.initial_state_var"],
    "fit_policy": ["seed", "policy_prior"],
    "adjust_step": ["algorithm.step_rule", "algorithm.min_step_mult", "algorithm.max_step_mult"],
    "c_step": ["algorithm.kl_step", "traj_opt"],
    "s_step": ["seed", "policy.iterations", "policy.batch_size", "policy.lr", "policy.weight_decay", "policy.ent_reg"],
    "evaluate": ["task", "agent.on_divergence", "evaluation"],
    # algorithm.name: so that switching algorithms reaches the summary's check that the pipeline was regenerated
    "summary": ["iterations", "algorithm.name"],
    "plot": [],
    "evaluate_gym": ["task", "agent.num_samples", "iterations", "policy.hidden", "gym_evaluation"],
    # BADMM (algorithm.name: badmm): init also writes the duals; its own step rule; the whole inner loop
    "init_badmm": ["task", "init_lqr", "policy.hidden", "policy.init_var", "policy.init_seed", "badmm.init_pol_wt"],
    "init_badmm_model": ["task", "init_lqr", "cost", "policy.hidden", "policy.init_var", "policy.init_seed",
                         "badmm.init_pol_wt"],
    "badmm_adjust_step": ["algorithm.min_step_mult", "algorithm.max_step_mult"],
    # The reference's other local optimizers (LOCAL_ONLY, USES_PI2, USES_PILQR of stages.settings.schema).
    "res_percent": ["pilqr.step_rule", "pilqr.step_rule_res_ratio_dec", "pilqr.step_rule_res_ratio_inc",
                    "pilqr.min_step_mult", "pilqr.max_step_mult"],
    "lqr_step": ["pilqr.kl_step", "pilqr.min_eta", "pilqr.max_eta", "pilqr.del0", "pilqr.tolerance",
                 "pilqr.bisection_iterations", "pilqr.adam_iterations", "pilqr.adam_lr", "pilqr.adam_beta1",
                 "pilqr.adam_beta2", "pilqr.adam_eps", "pilqr.on_fault"],
    "pi2": ["pi2"],
    "pi2_residual": ["pi2", "pilqr.on_fault"],
    "badmm_inner": [
        "seed", "iterations", "algorithm.kl_step", "traj_opt", "policy_prior",
        "policy.iterations", "policy.batch_size", "policy.lr", "policy.weight_decay", "badmm",
    ],
}


def init_stage(params: dict[str, Any]) -> str:
    """The init stage's key of STAGE_PARAMS for checked params: BADMM's writes the duals too, and initial
    controllers from the model (init_lqr.source: model) read the cost."""
    from stages.settings.schema import algorithm_name

    model = params["init_lqr"].get("source", "guess") == "model"
    return ("init_badmm" if algorithm_name(params) == "badmm" else "init") + ("_model" if model else "")


def load_params(path: str | Path) -> dict[str, Any]:
    """params.yaml, checked against the schema and then against the task's model (one-line UserError)."""
    return load_params_and_task(path)[0]


def load_params_and_task(path: str | Path) -> tuple[dict[str, Any], "Task"]:
    """params.yaml checked as load_params does, and its task compiled on its model (gps_core.sim.task.Task)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: params file not found")
    try:
        params = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    validate_params(params, str(path))
    # After the schema, so that the sizes compared are known to be integers and lists.
    return params, check_model_consistency(params, str(path))



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
