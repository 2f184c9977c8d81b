"""params.yaml as typed settings, built once where it is loaded (`load_settings`).

The stages read their settings as attributes (`s.task.T`, `s.traj_opt`) instead of looking
up dotted strings. The file is validated first (stages.settings.schema: each field; stages.settings.model_check:
the fields against the task's MuJoCo model), so building these objects cannot fail. The
gps_core configuration objects (TrajOptConfig, PriorConfig, ...) are built on first use, so
that a stage imports only the gps_core modules it needs (the S-step's torch above all).
"""

from __future__ import annotations

import functools
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from gps_core.sim.task import Task


@dataclass(frozen=True)
class AlgorithmSettings:
    name: str  # mdgps | badmm
    sample_on_policy: bool
    step_rule: str  # classic | global
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
    regularization: float
    regularization_shape: str  # all_entries | identity
    prior: dict[str, Any]


@dataclass(frozen=True)
class PolicySettings:
    """The network and its S-step."""

    hidden: tuple[int, ...]
    init_var: float
    init_seed: int
    iterations: int
    batch_size: int
    lr: float
    weight_decay: float
    ent_reg: float


@dataclass(frozen=True)
class EvaluationSettings:
    """The scored point (a point or point-like block of the state, x[T-1, point_start:point_start+len(target)]),
    its target and the success thresholds."""

    point: str
    point_start: int
    target: np.ndarray
    success_thresholds: tuple[float, ...]


def _prior(section: dict[str, Any]):
    from gps_core.configs import PriorConfig

    return PriorConfig(
        max_clusters=int(section["max_clusters"]),
        min_samples_per_cluster=int(section["min_samples_per_cluster"]),
        max_samples=int(section["max_samples"]),
        strength=float(section.get("strength", 1.0)),
    )


@dataclass(frozen=True)
class Settings:
    """A validated params.yaml. `params` is the file as read: what the artifacts record (`recorded`)."""

    params: dict[str, Any]
    seed: int
    iterations: int
    task: "Task"
    algorithm: AlgorithmSettings
    agent: AgentSettings
    dynamics: DynamicsSettings
    policy: PolicySettings
    evaluation: EvaluationSettings

    @classmethod
    def from_params(cls, params: dict[str, Any], task: "Task") -> "Settings":
        """Settings of a params dict that has passed stages.settings.params.load_params, with its compiled task."""
        alg, agent, dyn, pol, ev = (params[k] for k in ("algorithm", "agent", "dynamics", "policy", "evaluation"))
        return cls(
            params=params,
            seed=int(params["seed"]),
            iterations=int(params["iterations"]),
            task=task,
            algorithm=AlgorithmSettings(
                name=str(alg.get("name", "mdgps")), sample_on_policy=bool(alg["sample_on_policy"]),
                step_rule=str(alg["step_rule"]), kl_step=float(alg["kl_step"]),
                min_step_mult=float(alg["min_step_mult"]), max_step_mult=float(alg["max_step_mult"]),
                initial_state_var=float(alg["initial_state_var"]),
            ),
            agent=AgentSettings(
                num_samples=int(agent["num_samples"]),
                noise=NoiseSettings(smooth=bool(agent["smooth_noise"]), sigma=float(agent["smooth_noise_var"]),
                                    renormalize=bool(agent["smooth_noise_renormalize"])),
                on_divergence=str(agent["on_divergence"]), max_draws=int(agent["max_draws"]),
            ),
            dynamics=DynamicsSettings(regularization=float(dyn["regularization"]),
                                      regularization_shape=str(dyn["regularization_shape"]), prior=dyn["prior"]),
            policy=PolicySettings(
                hidden=tuple(int(h) for h in pol["hidden"]), init_var=float(pol["init_var"]),
                init_seed=int(pol["init_seed"]), iterations=int(pol["iterations"]), batch_size=int(pol["batch_size"]),
                lr=float(pol["lr"]), weight_decay=float(pol["weight_decay"]), ent_reg=float(pol["ent_reg"]),
            ),
            evaluation=EvaluationSettings(
                point=str(ev["point"]), point_start=task.point_slice(str(ev["point"]))[0].start,
                target=np.asarray(ev["target"], dtype=float),
                success_thresholds=tuple(float(t) for t in ev.get("success_thresholds", [])),
            ),
        )

    # gps_core configuration objects, built on first use (each imports only its own module)

    @functools.cached_property
    def traj_opt(self):
        """gps_core.configs.TrajOptConfig of the `traj_opt` section."""
        from gps_core.configs import TrajOptConfig

        s = self.params["traj_opt"]
        return TrajOptConfig(min_eta=float(s["min_eta"]), max_eta=float(s["max_eta"]), del0=float(s["del0"]),
                             max_iterations=int(s["max_iterations"]), tolerance=float(s["tolerance"]),
                             on_fault=str(s["on_fault"]))

    @functools.cached_property
    def dynamics_prior(self):
        """gps_core.configs.PriorConfig of `dynamics.prior`."""
        return _prior(self.dynamics.prior)

    @functools.cached_property
    def policy_prior(self):
        """gps_core.configs.PriorConfig of `policy_prior` (the policy linearisation's GMM)."""
        return _prior(self.params["policy_prior"])

    @functools.cached_property
    def init_lqr(self):
        """gps_core.configs.InitLQRConfig of `init_lqr` (with task.dt)."""
        from gps_core.configs import InitLQRConfig

        s = self.params["init_lqr"]
        gains = s.get("init_gains")
        return InitLQRConfig(
            init_var=float(s["init_var"]), stiffness=float(s["stiffness"]), stiffness_vel=float(s["stiffness_vel"]),
            final_weight=float(s["final_weight"]), init_gains=None if gains is None else tuple(float(g) for g in gains),
            dt=self.task.dt,
        )

    @functools.cached_property
    def badmm(self):
        """gps_core.configs.BadmmConfig of the `badmm` section (schedules as tuples)."""
        from gps_core.configs import BadmmConfig

        return BadmmConfig(**{k: tuple(float(x) for x in v) if isinstance(v, list) else v
                              for k, v in self.params["badmm"].items()})

    @property
    def cost_terms(self) -> list[dict[str, Any]]:
        """The `cost` list, as gps_core.costs.build_cost takes it."""
        return self.params["cost"]

    def rng(self, iteration: int, stage: str) -> np.random.Generator:
        """Independent, reproducible generator per (seed, iteration, stage)."""
        return np.random.default_rng([self.seed, iteration, zlib.crc32(stage.encode())])

    def recorded(self, stage: str) -> dict[str, Any]:
        """The params a stage reads (stages.settings.params.STAGE_PARAMS), as its artifacts record them."""
        from stages.settings.params import stage_params

        return stage_params(self.params, stage)

    def simulator(self, held_out: bool = False):
        """The MuJoCo simulator of the task, one model per training condition (held_out: per test condition)."""
        from gps_core.sim.env import Simulator

        return Simulator(self.task, self.task.test if held_out else self.task.train)


def load_settings(path: str | Path) -> Settings:
    """params.yaml, validated (one-line UserError) and typed."""
    from stages.settings.params import load_params_and_task

    return Settings.from_params(*load_params_and_task(path))
