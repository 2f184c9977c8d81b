"""The schema of params.yaml: every setting's type, bounds and choices, checked once where the file loads.

Each leaf is a `Field`: a kind (int, float, bool, str, choice, floats, matrix, ...),
optional bounds and whether it may be omitted. Errors are one line naming the
key, the value and what is allowed. The choice lists are gps_core's own, from where
their meaning is implemented (gps_core.configs, gps_core.sim.task). `typed` gives a
checked section's values as the Python types its fields name, from which
stages.settings.load builds the typed settings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from gps_core.configs import (
    DERIVATIVE_FREE_TERMS, DYNAMICS_SOURCES, INIT_SOURCES, ON_FAULT, PENALTIES, PILQR_STEP_RULES, RAMPS, REGULARIZATION_SHAPES, STEP_RULES,
    TARGET_SHIFTS, WEIGHT_RULES,
)
from gps_core.sim.task import STEPPING
from stages.errors import UserError


@dataclass(frozen=True)
class Field:
    kind: str  # int | float | bool | str | choice | floats | ints | matrix | names | any
    lo: float | None = None  # inclusive lower bound
    gt: float | None = None  # exclusive lower bound
    hi: float | None = None  # inclusive upper bound
    choices: tuple[str, ...] = ()
    optional: bool = False
    length: int | None = None

    def describe(self) -> str:
        if self.kind == "choice":
            return "one of " + ", ".join(self.choices)
        if self.kind == "schedule":
            scalar = "a number" + (f" >= {self.lo:g}" if self.lo is not None else "")
            return f"{scalar} or a non-empty list of numbers > 0 (interpolated in log space)"
        what = {
            "int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
            "floats": "a list of numbers", "ints": "a list of integers", "matrix": "a list of lists of numbers",
            "names": "a non-empty list of names", "any": "a value",
        }[self.kind]
        bounds = []
        if self.gt is not None:
            bounds.append(f"> {self.gt:g}")
        if self.lo is not None:
            bounds.append(f">= {self.lo:g}")
        if self.hi is not None:
            bounds.append(f"<= {self.hi:g}")
        if self.length is not None:
            what += f" of length {self.length}"
        return what + (" " + " and ".join(bounds) if bounds else "")

    def typed(self, v: Any) -> Any:
        """A valid value as the Python type of its kind: a float setting written as 2 is 2.0, a list a tuple."""
        if self.kind == "float" or (self.kind == "schedule" and _num(v)):
            return float(v)
        if self.kind in ("floats", "schedule"):
            return tuple(float(x) for x in v)
        if self.kind in ("ints", "names"):
            return tuple(v)
        return v


def _num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _in_bounds(f: Field, x: float) -> bool:
    return (f.lo is None or x >= f.lo) and (f.gt is None or x > f.gt) and (f.hi is None or x <= f.hi)


def _valid(f: Field, v: Any) -> bool:
    if f.kind == "int":
        return isinstance(v, int) and not isinstance(v, bool) and _in_bounds(f, v)
    if f.kind == "float":
        return _num(v) and _in_bounds(f, v)
    if f.kind == "bool":
        return isinstance(v, bool)
    if f.kind == "str":
        return isinstance(v, str) and bool(v)
    if f.kind == "choice":
        return v in f.choices
    if f.kind in ("floats", "ints"):
        ok = _num if f.kind == "floats" else (lambda x: isinstance(x, int) and not isinstance(x, bool))
        return (
            isinstance(v, list) and len(v) > 0 and all(ok(x) and _in_bounds(f, x) for x in v)
            and (f.length is None or len(v) == f.length)
        )
    if f.kind == "schedule":  # a constant, or values over the run (gps_core.badmm.algorithm.schedule_value)
        if _num(v):
            return _in_bounds(f, v)
        return isinstance(v, list) and len(v) > 0 and all(_num(x) and x > 0 for x in v)
    if f.kind == "names":
        return isinstance(v, list) and len(v) > 0 and all(isinstance(x, str) and x for x in v)
    if f.kind == "any":  # checked against the model by gps_core.sim.task.compile_task
        return v is not None
    if f.kind == "matrix":
        return (
            isinstance(v, list) and len(v) > 0 and all(isinstance(r, list) and r and all(_num(x) for x in r) for r in v)
            and len({len(r) for r in v}) == 1
        )
    raise AssertionError(f.kind)


PRIOR = {
    "max_clusters": Field("int", lo=1),
    "min_samples_per_cluster": Field("int", lo=1),
    "max_samples": Field("int", lo=2),
    "strength": Field("float", gt=0),
}

# The layouts of an iteration (stages.pipeline.generate): MDGPS and the paper's BADMM; the reference's local
# optimizers alone (LQR-FLM, PI2, PILQR: no global policy); MDGPS whose C-step is PILQR or PI2.
ALGORITHMS = ("mdgps", "badmm", "traj_opt", "pi2", "pilqr", "mdgps_pilqr", "pigps")
LOCAL_ONLY = ("traj_opt", "pi2", "pilqr")  # no global policy: the local controllers are the result
USES_PI2 = ("pi2", "pilqr", "mdgps_pilqr", "pigps")  # read the `pi2` section
USES_PILQR = ("pilqr", "mdgps_pilqr")  # read the `pilqr` section
NEEDS_DERIVATIVES = ("mdgps", "badmm", "traj_opt")  # every C-step is LQR on the cost's expansion


def algorithm_name(params: dict[str, Any]) -> str:
    """algorithm.name of checked params; absent (files written before BADMM) is mdgps."""
    return params["algorithm"].get("name", ALGORITHMS[0])


# BADMM hyperparameters (gps_core.configs.BadmmConfig, ALGORITHM §10.7); read only when algorithm.name is badmm.
BADMM = {
    "init_pol_wt": Field("float", gt=0),
    "fixed_lg_step": Field("int", lo=min(WEIGHT_RULES), hi=max(WEIGHT_RULES)),
    "lg_step_schedule": Field("schedule"),
    "ent_reg_schedule": Field("schedule", lo=0),
    "exp_step_lower": Field("float", lo=0),
    "exp_step_upper": Field("float", lo=0),
    "exp_step_decrease": Field("float", gt=0),
    "exp_step_increase": Field("float", gt=0),
    "policy_dual_rate": Field("float", lo=0),
    "policy_dual_rate_covar": Field("float", lo=0),
    "inner_iterations": Field("int", lo=1),
    "target_shift": Field("choice", choices=TARGET_SHIFTS),
}


@dataclass(frozen=True)
class Items:
    """A list of mappings, each checked against `schema` (an empty list is allowed)."""

    schema: dict[str, Field]


# PI2 (gps_core.configs.PI2Config; the reference's TRAJ_OPT_PI2); read when algorithm.name is in USES_PI2.
PI2 = {
    "kl_threshold": Field("float", gt=0),
    "covariance_damping": Field("float"),  # <= 0: the weighted maximum-likelihood covariance itself
    "min_temperature": Field("float", gt=0),
    "min_covariance_ratio": Field("float", lo=0, hi=1),
}

# PILQR's LQR step and step rule (gps_core.configs.PILQRConfig; the reference's ALG_PILQR, TRAJ_OPT_PILQR);
# read when algorithm.name is in USES_PILQR. The schedules are [value at t = 0, value at t = T-1].
PILQR = {
    "step_rule": Field("choice", choices=PILQR_STEP_RULES),
    "step_rule_res_ratio_dec": Field("float", gt=0),
    "step_rule_res_ratio_inc": Field("float", gt=0),
    "kl_step": Field("floats", gt=0, length=2),
    "max_step_mult": Field("floats", gt=0, length=2),
    "min_step_mult": Field("floats", gt=0, length=2),
    "min_eta": Field("float", gt=0),
    "max_eta": Field("float", gt=0),
    "del0": Field("float", gt=0),
    "tolerance": Field("float", gt=0, hi=1),
    "bisection_iterations": Field("int", lo=1),
    "adam_iterations": Field("int", lo=0),
    "adam_lr": Field("float", gt=0),
    "adam_beta1": Field("float", lo=0, hi=0.999999),
    "adam_beta2": Field("float", lo=0, hi=0.999999),
    "adam_eps": Field("float", gt=0),
    "on_fault": Field("choice", choices=ON_FAULT),
}

# `gps render`'s picture (stages/tools/render.py); no stage reads it. A marker is drawn at the
# evaluation target or at the scored point (evaluation.point), a sphere or, with `pole`, a capsule
# from there to there + pole.
RENDER = {
    "camera": {  # MuJoCo's free camera; absent: looking at the model's centre from twice its extent
        "lookat": Field("floats", length=3),
        "distance": Field("float", gt=0),
        "azimuth": Field("float"),
        "elevation": Field("float"),
    },
    "markers": Items({
        "at": Field("choice", choices=("target", "point")),
        "radius": Field("float", gt=0),
        "rgba": Field("floats", lo=0, hi=1, length=4),
        "pole": Field("floats", length=3, optional=True),
    }),
}

# Sections that may be left out (params files written before they existed); see validate_params.
OPTIONAL_SECTIONS = ("evaluation.survival", "badmm", "pi2", "pilqr", "gym_evaluation", "render", "render.camera", "render.markers")

SCHEMA: dict[str, Any] = {
    "seed": Field("int", lo=0),
    "iterations": Field("int", lo=1),
    "algorithm": {
        "name": Field("choice", choices=ALGORITHMS, optional=True),  # absent: mdgps
        "sample_on_policy": Field("bool"),
        "step_rule": Field("choice", choices=STEP_RULES),
        "kl_step": Field("float", gt=0),
        "min_step_mult": Field("float", gt=0),
        "max_step_mult": Field("float", gt=0),
        "initial_state_var": Field("float", gt=0),
    },
    # The task (gps_core.sim.task): the names in it are checked against its model by stages.settings.model_check.
    "task": {
        "name": Field("str"),
        "model": Field("str"),
        "T": Field("int", lo=2),
        "dt": Field("float", gt=0),
        "substeps": Field("int", lo=1),
        "stepping": Field("choice", choices=STEPPING),
        "blocks": Field("any"),
        "state": Field("names"),
        "observation": Field("names"),
        "offset_body": Field("str", optional=True),
        "conditions": Field("any"),
        "test_conditions": Field("any", optional=True),
    },
    "agent": {
        "num_samples": Field("int", lo=2),
        "smooth_noise": Field("bool"),
        "smooth_noise_var": Field("float", gt=0),
        "smooth_noise_renormalize": Field("bool"),
        "on_divergence": Field("choice", choices=("redraw", "stop")),
        "max_draws": Field("int", lo=1),
    },
    "init_lqr": {
        "source": Field("choice", choices=INIT_SOURCES, optional=True),  # absent: guess
        "init_var": Field("float", gt=0),
        "stiffness": Field("float", gt=0),
        "stiffness_vel": Field("float", gt=0),
        "final_weight": Field("float", gt=0),
        "init_gains": Field("floats", gt=0, optional=True),
    },
    "cost": "cost",  # a list of terms, checked by _check_cost
    "dynamics": {
        "source": Field("choice", choices=DYNAMICS_SOURCES, optional=True),  # absent: fit
        "regularization": Field("float", lo=0),
        "regularization_shape": Field("choice", choices=REGULARIZATION_SHAPES),
        "prior": PRIOR,
    },
    "policy_prior": PRIOR,
    "traj_opt": {
        "min_eta": Field("float", gt=0),
        "max_eta": Field("float", gt=0),
        "del0": Field("float", gt=0),
        "max_iterations": Field("int", lo=1),
        "tolerance": Field("float", gt=0, hi=1),
        "on_fault": Field("choice", choices=ON_FAULT),
    },
    "policy": {
        "hidden": Field("ints", lo=1),
        "init_var": Field("float", gt=0),
        "init_seed": Field("int", lo=0),
        "iterations": Field("int", lo=1),
        "batch_size": Field("int", lo=1),
        "lr": Field("float", gt=0),
        "weight_decay": Field("float", lo=0),
        "ent_reg": Field("float", lo=0),
    },
    "evaluation": {
        "point": Field("str"),
        "target": Field("floats"),
        "success_thresholds": Field("floats", gt=0),
        # Optional scores (gps_core.scoring): a block of the state that must stay within [low, high] at every
        # step (balancing tasks), and the task's summed cost of the evaluation rollouts.
        "survival": {"block": Field("str"), "low": Field("floats"), "high": Field("floats")},
        "cost": Field("bool", optional=True),
    },
    "badmm": BADMM,
    "pi2": PI2,
    "pilqr": PILQR,
    # The trained policy scored in a Gymnasium environment (stages/steps/evaluate_gym.py); optional.
    "gym_evaluation": {
        "env": Field("str"),
        "episodes": Field("int", lo=1),
        "seed": Field("int", lo=0, optional=True),  # episodes reset with seeds seed, seed + 1, ... (default 0)
    },
    "render": RENDER,
}

COST_TERMS: dict[str, dict[str, Field]] = {
    "action": {"wu": Field("floats", lo=0)},
    "state": {
        "block": Field("str"), "target": Field("floats"), "wp": Field("floats", lo=0),
        "penalty": Field("choice", choices=PENALTIES, optional=True),
        "l1": Field("float", lo=0, optional=True), "l2": Field("float", lo=0, optional=True),
        "alpha": Field("float", gt=0, optional=True), "ramp": Field("choice", choices=RAMPS, optional=True),
        "wp_final_multiplier": Field("float", lo=0, optional=True),
    },
    "fk": {
        "block": Field("str"), "target": Field("floats"), "wp": Field("floats", lo=0),
        "penalty": Field("choice", choices=PENALTIES, optional=True),
        "l1": Field("float", lo=0, optional=True), "l2": Field("float", lo=0, optional=True),
        "alpha": Field("float", gt=0, optional=True), "ramp": Field("choice", choices=RAMPS, optional=True),
        "wp_final_multiplier": Field("float", lo=0, optional=True),
    },
    # The reference's CostBinaryRegion: inside_cost where sum_i |x_i - target_i| <= max_distance, else
    # outside_cost; no derivatives (gps_core.configs.DERIVATIVE_FREE_TERMS).
    "binary_region": {
        "block": Field("str"), "target": Field("floats"), "max_distance": Field("float", gt=0),
        "inside_cost": Field("float"), "outside_cost": Field("float"),
    },
}


def _fail(source: str, key: str, value: Any, expected: str) -> None:
    raise UserError(f"{source}: {key} is {value!r}, expected {expected}")


def _check_mapping(source: str, schema: dict[str, Any], node: Any, prefix: str) -> None:
    if not isinstance(node, dict):
        _fail(source, prefix.rstrip(".") or "the file", node, "a mapping of settings")
    for key in node:
        if key not in schema:
            raise UserError(f"{source}: unknown key {prefix + str(key)!r}; allowed: {', '.join(schema)}")
    for key, spec in schema.items():
        dotted = f"{prefix}{key}"
        if key not in node:
            if (isinstance(spec, Field) and spec.optional) or dotted in OPTIONAL_SECTIONS:
                continue
            raise UserError(f"{source}: missing key {dotted!r}")
        value = node[key]
        if spec == "cost":
            _check_cost(source, value)
        elif isinstance(spec, Items):
            if not isinstance(value, list):
                _fail(source, dotted, value, "a list of mappings")
            for i, item in enumerate(value):
                _check_mapping(source, spec.schema, item, f"{dotted}[{i}].")
        elif isinstance(spec, dict):
            _check_mapping(source, spec, value, dotted + ".")
        elif not _valid(spec, value):
            _fail(source, dotted, value, spec.describe())


def _check_cost(source: str, terms: Any) -> None:
    if not isinstance(terms, list) or not terms:
        _fail(source, "cost", terms, "a non-empty list of cost terms")
    for i, term in enumerate(terms):
        if not isinstance(term, dict) or term.get("type") not in COST_TERMS:
            _fail(source, f"cost[{i}].type", term.get("type") if isinstance(term, dict) else term,
                  "one of " + ", ".join(COST_TERMS))
        schema = {"type": Field("str"), "weight": Field("float", lo=0, optional=True), **COST_TERMS[term["type"]]}
        _check_mapping(source, schema, term, f"cost[{i}].")
        if "wp" in term and len(term["wp"]) != len(term["target"]):
            _fail(source, f"cost[{i}].wp", term["wp"], f"{len(term['target'])} weights, one per target entry")


def validate_params(params: Any, source: str = "params.yaml") -> None:
    """Raise a one-line UserError for the first problem found."""
    _check_mapping(source, SCHEMA, params, "")
    alg = params["algorithm"]
    name = algorithm_name(params)
    needed = {"badmm": name == "badmm", "pi2": name in USES_PI2, "pilqr": name in USES_PILQR}
    for section, needs in needed.items():
        if needs and section not in params:
            raise UserError(f"{source}: missing key {section!r} (its settings; algorithm.name is {name})")
    if alg["sample_on_policy"] and (name == "badmm" or name in LOCAL_ONLY):
        why = "BADMM samples the local controllers" if name == "badmm" else "it trains no global policy"
        raise UserError(f"{source}: algorithm.sample_on_policy is true, but {why} (algorithm.name {name}): "
                        "set algorithm.sample_on_policy to false")
    for i, term in enumerate(params["cost"]):
        if term["type"] in DERIVATIVE_FREE_TERMS and name in NEEDS_DERIVATIVES:
            raise UserError(f"{source}: cost[{i}] is a {term['type']} term, which has no derivatives, and "
                            f"algorithm.name {name} optimises the cost's expansion only; use one of "
                            f"{', '.join(a for a in ALGORITHMS if a not in NEEDS_DERIVATIVES)}")
    if name in USES_PILQR:
        _check_pilqr(source, params["pilqr"])
    if alg["min_step_mult"] > alg["max_step_mult"]:
        raise UserError(
            f"{source}: algorithm.min_step_mult ({alg['min_step_mult']}) is greater than "
            f"algorithm.max_step_mult ({alg['max_step_mult']})"
        )
    traj = params["traj_opt"]
    if traj["min_eta"] >= traj["max_eta"]:
        raise UserError(f"{source}: traj_opt.min_eta ({traj['min_eta']}) must be below traj_opt.max_eta ({traj['max_eta']})")
    task = params["task"]
    conditions = task["conditions"] if isinstance(task["conditions"], list) else []
    if params["policy"]["batch_size"] > task["T"] * params["agent"]["num_samples"] * max(len(conditions), 1):
        _fail(source, "policy.batch_size", params["policy"]["batch_size"], "at most the number of S-step rows (conditions x samples x T)")


def _check_pilqr(source: str, pilqr: dict[str, Any]) -> None:
    if pilqr["step_rule_res_ratio_inc"] >= pilqr["step_rule_res_ratio_dec"]:
        raise UserError(f"{source}: pilqr.step_rule_res_ratio_inc ({pilqr['step_rule_res_ratio_inc']}) must be below "
                        f"pilqr.step_rule_res_ratio_dec ({pilqr['step_rule_res_ratio_dec']})")
    for t, (lo, hi) in enumerate(zip(pilqr["min_step_mult"], pilqr["max_step_mult"])):
        if lo > hi:
            at = "t = 0" if t == 0 else "t = T-1"
            raise UserError(f"{source}: pilqr.min_step_mult ({lo}) is greater than pilqr.max_step_mult ({hi}) at {at}")
    if pilqr["min_eta"] >= pilqr["max_eta"]:
        raise UserError(f"{source}: pilqr.min_eta ({pilqr['min_eta']}) must be below pilqr.max_eta ({pilqr['max_eta']})")


def typed(schema: dict[str, Any], section: dict[str, Any]) -> dict[str, Any]:
    """The fields of a checked section that it sets, as their Python types (Field.typed); nested sections
    (dynamics.prior, say) are left out: the caller builds them on their own."""
    return {key: spec.typed(section[key]) for key, spec in schema.items() if isinstance(spec, Field) and key in section}
