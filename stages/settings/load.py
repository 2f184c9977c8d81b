"""params.yaml as one typed settings object, built and validated once where it is loaded (`load_settings`).

The stages and tools read their settings as attributes (`s.task.T`, `s.traj_opt`) instead of
looking up dotted strings. The file is validated first (stages.settings.schema: each field;
stages.settings.model_check: the fields against the task's MuJoCo model), so building these
objects cannot fail and casts nothing the schema has not checked. Each gps_core component gets
its own config dataclass from gps_core.configs (traj_opt, dynamics.prior, policy_prior,
init_lqr, s_step, badmm), never this object or a raw dict.

This module imports gps_core.configs and gps_core.sim.task only, never an algorithm module
or the simulator: every stage imports it, so every stage would depend on them
(stages/pipeline/code_deps.py). The steps that simulate build gps_core.sim.env.Simulator themselves.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gps_core.configs import BadmmConfig, InitLQRConfig, PI2Config, PILQRConfig, PriorConfig, SStepConfig, TrajOptConfig
from gps_core.sim.task import Task
from stages.settings import schema
from stages.settings.schema import typed


@dataclass(frozen=True)
class AlgorithmSettings:
    name: str  # stages.settings.schema.ALGORITHMS
    sample_on_policy: bool
    step_rule: str  # gps_core.configs.STEP_RULES
    kl_step: float
    min_step_mult: float
    max_step_mult: float
    initial_state_var: float


@dataclass(frozen=True)
class NoiseSettings:
    """gps_core.noise.smoothed_noise's keyword arguments."""

    smooth: bool
    sigma: float
    renormalize: bool


@dataclass(frozen=True)
class AgentSettings:
    """How the samples are drawn (the task itself is Settings.task, a gps_core.sim.task.Task)."""

    num_samples: int
    noise: NoiseSettings
    on_divergence: str  # redraw | stop
    max_draws: int

    @property
    def redraw_limit(self) -> int | None:
        """Draws per training sample before the stage stops (gps_core.sim.sampling.draw_samples); None: stop at once."""
        return self.max_draws if self.on_divergence == "redraw" else None


@dataclass(frozen=True)
class DynamicsSettings:
    """The C-step's dynamics: fitted to the samples (source "fit": the regression with its GMM prior, the other
    fields), or the model linearised along them (source "model": gps_core.sim.linearise.model_dynamics)."""

    regularization: float
    regularization_shape: str  # gps_core.configs.REGULARIZATION_SHAPES
    prior: PriorConfig
    source: str = "fit"  # gps_core.configs.DYNAMICS_SOURCES


@dataclass(frozen=True)
class PolicySettings:
    """The network (its S-step's settings are Settings.s_step)."""

    hidden: tuple[int, ...]
    init_var: float
    init_seed: int


@dataclass(frozen=True)
class SurvivalSettings:
    """A block of the state that must stay within [low, high] (gps_core.scoring.survival_steps): x[:, start:start+len(low)]."""

    block: str
    start: int
    low: np.ndarray
    high: np.ndarray


@dataclass(frozen=True)
class EvaluationSettings:
    """The scored point (a point or point-like block of the state, x[T-1, point_start:point_start+len(target)]),
    its target and the success thresholds."""

    point: str
    point_start: int
    target: np.ndarray
    success_thresholds: tuple[float, ...]
    survival: SurvivalSettings | None = None  # evaluation.survival, if the task scores it
    cost: bool = False  # evaluation.cost: also the summed cost of the evaluation rollouts


@dataclass(frozen=True)
class GymEvaluationSettings:
    """The trained policy scored in gymnasium.make(env) over `episodes` episodes reset with seeds seed, seed + 1, ..."""

    env: str
    episodes: int
    seed: int = 0


@dataclass(frozen=True)
class CameraSettings:
    """MuJoCo's free camera (mjvCamera's fields)."""

    lookat: tuple[float, float, float]
    distance: float
    azimuth: float
    elevation: float


@dataclass(frozen=True)
class MarkerSettings:
    """A sphere of `radius` at the evaluation target or the scored point (`at`), or with `pole` a capsule
    from there to there + pole, drawn on every frame."""

    at: str  # target | point
    radius: float
    rgba: tuple[float, float, float, float]
    pole: tuple[float, float, float] | None = None


@dataclass(frozen=True)
class RenderSettings:
    """`gps render`'s camera (None: the model's own extent decides) and markers."""

    camera: CameraSettings | None = None
    markers: tuple[MarkerSettings, ...] = ()


def _prior(section: dict[str, Any]) -> PriorConfig:
    return PriorConfig(**typed(schema.PRIOR, section))


def _render(section: dict[str, Any] | None) -> RenderSettings:
    if section is None:
        return RenderSettings()
    camera = section.get("camera")
    return RenderSettings(
        camera=None if camera is None else CameraSettings(**typed(schema.RENDER["camera"], camera)),
        markers=tuple(MarkerSettings(**typed(schema.RENDER["markers"].schema, m)) for m in section.get("markers", [])),
    )


@dataclass(frozen=True)
class Settings:
    """A validated params.yaml. `params` is the file as read: only what the artifacts record (`recorded`)."""

    params: dict[str, Any]
    seed: int
    iterations: int
    task: Task
    algorithm: AlgorithmSettings
    agent: AgentSettings
    dynamics: DynamicsSettings
    policy: PolicySettings
    evaluation: EvaluationSettings
    cost_terms: list[dict[str, Any]]  # the `cost` list, as gps_core.costs.build_cost takes it
    traj_opt: TrajOptConfig
    policy_prior: PriorConfig  # the policy linearisation's GMM
    init_lqr: InitLQRConfig
    s_step: SStepConfig
    badmm: BadmmConfig | None  # None: the file has no badmm section (an MDGPS run)
    pi2: PI2Config | None  # None: the file has no pi2 section (read by schema.USES_PI2)
    pilqr: PILQRConfig | None  # None: the file has no pilqr section (read by schema.USES_PILQR)
    gym_evaluation: GymEvaluationSettings | None
    render: RenderSettings

    @classmethod
    def from_params(cls, params: dict[str, Any], task: Task) -> "Settings":
        """Settings of a params dict that has passed stages.settings.params.load_params, with its compiled task."""
        section = lambda key: typed(schema.SCHEMA[key], params[key])  # noqa: E731
        agent, policy = section("agent"), section("policy")
        network = {k: policy.pop(k) for k in ("hidden", "init_var", "init_seed")}  # the rest is the S-step's
        ev, evaluation = params["evaluation"], section("evaluation")
        gym = params.get("gym_evaluation")
        return cls(
            params=params,
            seed=params["seed"],
            iterations=params["iterations"],
            task=task,
            algorithm=AlgorithmSettings(**{**section("algorithm"), "name": schema.algorithm_name(params)}),
            agent=AgentSettings(
                num_samples=agent["num_samples"],
                noise=NoiseSettings(smooth=agent["smooth_noise"], sigma=agent["smooth_noise_var"],
                                    renormalize=agent["smooth_noise_renormalize"]),
                on_divergence=agent["on_divergence"], max_draws=agent["max_draws"],
            ),
            dynamics=DynamicsSettings(**section("dynamics"), prior=_prior(params["dynamics"]["prior"])),
            policy=PolicySettings(**network),
            evaluation=EvaluationSettings(
                point=ev["point"], point_start=task.point_slice(ev["point"])[0].start,
                target=np.asarray(ev["target"], dtype=float), success_thresholds=evaluation["success_thresholds"],
                survival=None if "survival" not in ev else SurvivalSettings(
                    block=ev["survival"]["block"], start=task.x_slices[ev["survival"]["block"]].start,
                    low=np.asarray(ev["survival"]["low"], dtype=float), high=np.asarray(ev["survival"]["high"], dtype=float)),
                cost=bool(ev.get("cost", False)),
            ),
            cost_terms=params["cost"],
            traj_opt=TrajOptConfig(**section("traj_opt")),
            policy_prior=_prior(params["policy_prior"]),
            init_lqr=InitLQRConfig(**section("init_lqr"), dt=task.dt),
            s_step=SStepConfig(**policy),
            badmm=BadmmConfig(**typed(schema.BADMM, params["badmm"])) if "badmm" in params else None,
            pi2=PI2Config(**typed(schema.PI2, params["pi2"])) if "pi2" in params else None,
            pilqr=PILQRConfig(**typed(schema.PILQR, params["pilqr"])) if "pilqr" in params else None,
            gym_evaluation=None if gym is None else GymEvaluationSettings(**typed(schema.SCHEMA["gym_evaluation"], gym)),
            render=_render(params.get("render")),
        )

    def rng(self, iteration: int, stage: str) -> np.random.Generator:
        """Independent, reproducible generator per (seed, iteration, stage)."""
        return np.random.default_rng([self.seed, iteration, zlib.crc32(stage.encode())])

    def recorded(self, stage: str) -> dict[str, Any]:
        """The params a stage reads (stages.settings.params.STAGE_PARAMS), as its artifacts record them."""
        from stages.settings.params import stage_params

        return stage_params(self.params, stage)


def load_settings(path: str | Path) -> Settings:
    """params.yaml, validated (one-line UserError) and typed."""
    from stages.settings.params import load_params_and_task

    return Settings.from_params(*load_params_and_task(path))
