"""GPS methods (MDGPS, MDGPS-PILQR, PIGPS, ...) against Stable-Baselines3's SAC and PPO, in Gymnasium's own
environment, on the same episodes.

Every method is scored the same way: its deterministic policy (the mean action for MDGPS, `predict(...,
deterministic=True)` for SB3, both clipped to the action space) runs the task's gym_evaluation episodes in
`gymnasium.make(env)` (reset seeds seed .. seed + episodes - 1) and Gymnasium's own reward is summed.
SB3 is scored every `eval_every` environment steps of its training; MDGPS after every iteration, at the
environment steps it has used by then: every draw of every sample (redrawn samples included) and the
pipeline's own evaluation rollouts (one per training and held-out condition per iteration). The scoring
episodes themselves are counted for no method.

    python benchmarks/compare_rl.py run --settings benchmarks/compare_rl.yaml --out /tmp/compare_rl -j 2
    python benchmarks/compare_rl.py report --settings benchmarks/compare_rl.yaml --out /tmp/compare_rl --figures docs/img

`run` starts what is not finished, longest first, one process per run; the same command resumes an
interrupted comparison. An SB3 run saves a checkpoint (model, replay buffer, normaliser statistics and
the curve so far) every `checkpoint_every` steps and continues from the last one: a resumed run is
reproducible (the generators are seeded again from the seed and the step) but not the same run as an
uninterrupted one. Raising `steps` in the settings continues finished runs from their last checkpoint.
A GPS run is short and starts over, unless its folder holds
a finished run of the same params.yaml (run.json), which is then scored again without training.
`report` prints the markdown table and draws one figure per task.

A task names its GPS methods in `gps_methods` (or one in `gps_method`): each item is a method of `gps sweep`
(stages/sweep/queue.py METHODS: on_classic, mdgps_pilqr, pigps, ...), run with the task's settings file and
that method's overrides, or a mapping {method, name, label, set} for a variant: `set` is more settings
(dotted keys, e.g. agent.num_samples: 20), `name` its runs' folder prefix, `label` its name in the table
and figure. on_classic's runs are named mdgps (labelled MDGPS), every other method's runs by the method.

Output: OUT/<task>/<name>_s<seed>/curve.json (env_steps, return_mean, return_std, train_seconds per
evaluation), plus checkpoint/ (SB3) or the GPS run folder (params.yaml, run.log, run.json, data/).
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's stages/ and gps_core/, before an installed copy

SB3_ALGORITHMS = ("sac", "ppo")
STOPPED = 3  # exit status of a run stopped by SIGTERM or Ctrl-C after saving its checkpoint
SB3_MISSING = "training SAC and PPO needs Stable-Baselines3, an optional extra: pip install '.[sb3]'"


class SettingsError(Exception):
    """A settings file that does not describe a comparison: one line naming the file and the field."""


# ----------------------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class SB3Settings:
    """One model-free method on one task: steps, evaluation and checkpoint periods, hyperparameters."""

    algorithm: str
    steps: int
    eval_every: int
    checkpoint_every: int
    source: str
    normalize: bool
    hyperparameters: dict[str, Any]


# GPS runs: the default run name and label of a method of `gps sweep` (any other method: its own name)
GPS_NAMES = {"on_classic": "mdgps"}
GPS_LABELS = {"on_classic": "MDGPS", "mdgps_pilqr": "MDGPS-PILQR", "pigps": "PIGPS"}


@dataclass(frozen=True)
class GPSSettings:
    """One GPS method on one task: the sweep method, more settings (dotted keys), its runs' name and label."""

    name: str
    method: str
    label: str
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def source(self) -> str:
        return ", ".join([self.method, *(f"{k}={v}" for k, v in self.overrides.items())])


@dataclass(frozen=True)
class TaskSettings:
    """A task: the GPS settings file it runs with each GPS method, and the Gymnasium episodes every method is
    scored on."""

    name: str
    gps_config: Path
    gps: dict[str, GPSSettings]
    env_id: str
    episodes: int
    first_seed: int
    sb3: dict[str, SB3Settings]

    @property
    def eval_seeds(self) -> list[int]:
        return [self.first_seed + i for i in range(self.episodes)]


@dataclass(frozen=True)
class Comparison:
    seeds: list[int]
    tasks: dict[str, TaskSettings] = field(default_factory=dict)


def _positive_int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise SettingsError(f"{where}: expected a positive integer, got {value!r}")
    return value


def _sb3_settings(name: str, doc: Any, where: str) -> SB3Settings:
    if name not in SB3_ALGORITHMS:
        raise SettingsError(f"{where}: expected one of {', '.join(SB3_ALGORITHMS)}, got {name!r}")
    if not isinstance(doc, dict):
        raise SettingsError(f"{where}: expected a mapping")
    known = {"steps", "eval_every", "checkpoint_every", "source", "normalize", "hyperparameters"}
    unknown = sorted(set(doc) - known)
    if unknown:
        raise SettingsError(f"{where}.{unknown[0]}: not a setting (expected {', '.join(sorted(known))})")
    steps = _positive_int(doc.get("steps"), f"{where}.steps")
    every = _positive_int(doc.get("eval_every"), f"{where}.eval_every")
    ckpt = _positive_int(doc.get("checkpoint_every"), f"{where}.checkpoint_every")
    if ckpt % every:
        raise SettingsError(f"{where}.checkpoint_every: expected a multiple of eval_every ({every}), got {ckpt}: "
                            "a run resumes at a checkpoint with its curve up to there")
    hyper = doc.get("hyperparameters") or {}
    if not isinstance(hyper, dict):
        raise SettingsError(f"{where}.hyperparameters: expected a mapping of constructor arguments")
    allowed = _constructor_arguments(name)
    for key in hyper:
        if key not in allowed:
            raise SettingsError(f"{where}.hyperparameters.{key}: not an argument of stable_baselines3.{name.upper()} "
                                f"(expected one of {', '.join(sorted(allowed))})")
    if not isinstance(doc.get("source"), str):
        raise SettingsError(f"{where}.source: expected a string saying where the hyperparameters come from")
    if not isinstance(doc.get("normalize", False), bool):
        raise SettingsError(f"{where}.normalize: expected true or false")
    return SB3Settings(name, steps, every, ckpt, doc["source"], bool(doc.get("normalize", False)), dict(hyper))


# The constructor arguments a settings file may set: SB3's own keyword arguments, less those this script owns.
_OWNED = {"self", "policy", "env", "seed", "device", "verbose", "tensorboard_log", "_init_setup_model"}


def _constructor_arguments(name: str) -> set[str]:
    algorithm = import_sb3_algorithm(name)
    return set(inspect.signature(algorithm.__init__).parameters) - _OWNED


def _gps_settings(item: Any, where: str) -> GPSSettings:
    from stages.sweep.queue import METHODS

    allowed = ", ".join(m for m in METHODS if m != "badmm")
    doc = item if isinstance(item, dict) else {"method": item}
    known = {"method", "name", "label", "set"}
    unknown = sorted(set(doc) - known)
    if unknown:
        raise SettingsError(f"{where}.{unknown[0]}: not a setting (expected {', '.join(sorted(known))})")
    method = doc.get("method")
    if method not in METHODS or method == "badmm":
        raise SettingsError(f"{where}: expected one of {allowed}, got {method!r}")
    overrides = doc.get("set") or {}
    if not isinstance(overrides, dict) or any(not isinstance(k, str) for k in overrides):
        raise SettingsError(f"{where}.set: expected a mapping of dotted settings to values")
    for key in overrides:
        if key in METHODS[method]:
            raise SettingsError(f"{where}.set.{key}: set by the method {method}")
    name = doc.get("name", GPS_NAMES.get(method, method))
    if not isinstance(name, str) or not name.replace("_", "").isalnum():
        raise SettingsError(f"{where}.name: expected a name of letters, digits and _, got {name!r}")
    if name in SB3_ALGORITHMS:
        raise SettingsError(f"{where}.name: {name!r} names an SB3 algorithm's runs")
    label = doc.get("label", GPS_LABELS.get(method, method))
    if not isinstance(label, str):
        raise SettingsError(f"{where}.label: expected a string")
    return GPSSettings(name, method, label, dict(overrides))


def load_comparison(path: Path) -> Comparison:
    """The settings file as typed settings; SettingsError names the file and the field at fault."""
    import yaml

    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise SettingsError(f"{path}: cannot be read as YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(doc, dict):
        raise SettingsError(f"{path}: expected a mapping with seeds and tasks")
    seeds = doc.get("seeds")
    if not isinstance(seeds, list) or not seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
        raise SettingsError(f"{path}: seeds: expected a list of non-negative integers, got {seeds!r}")
    tasks = doc.get("tasks")
    if not isinstance(tasks, dict) or not tasks:
        raise SettingsError(f"{path}: tasks: expected a mapping of task names to their settings")
    out = {}
    for name, t in tasks.items():
        where = f"{path}: tasks.{name}"
        if not isinstance(t, dict):
            raise SettingsError(f"{where}: expected a mapping")
        cfg = Path(str(t.get("gps_config", "")))
        cfg = cfg if cfg.is_absolute() else (path.parent / cfg if (path.parent / cfg).exists() else ROOT / cfg)
        if not cfg.is_file():
            raise SettingsError(f"{where}.gps_config: no such file {t.get('gps_config')!r}")
        gym = (yaml.safe_load(cfg.read_text()) or {}).get("gym_evaluation")
        if not isinstance(gym, dict):
            raise SettingsError(f"{where}.gps_config: {cfg} has no gym_evaluation section naming the environment")
        if ("gps_method" in t) == ("gps_methods" in t):
            raise SettingsError(f"{where}: expected gps_methods (a list of GPS methods) or gps_method (one)")
        if "gps_method" in t:
            items = [(t["gps_method"], f"{where}.gps_method")]
        else:
            if not isinstance(t["gps_methods"], list) or not t["gps_methods"]:
                raise SettingsError(f"{where}.gps_methods: expected a list of GPS methods")
            items = [(item, f"{where}.gps_methods[{i}]") for i, item in enumerate(t["gps_methods"])]
        gps = {}
        for item, at in items:
            g = _gps_settings(item, at)
            if g.name in gps:
                raise SettingsError(f"{at}: a second GPS method named {g.name!r} (give it a name)")
            gps[g.name] = g
        sb3 = t.get("sb3") or {}
        if not isinstance(sb3, dict):
            raise SettingsError(f"{where}.sb3: expected a mapping of sac and ppo settings")
        algos = {a: _sb3_settings(a, d, f"{where}.sb3.{a}") for a, d in sb3.items()}
        out[name] = TaskSettings(name, cfg.resolve(), gps, str(gym["env"]), int(gym["episodes"]),
                                 int(gym.get("seed", 0)), algos)
    return Comparison(list(seeds), out)


# ------------------------------------------------------------------------------------------ shared parts
def import_sb3_algorithm(name: str):
    """stable_baselines3.SAC or .PPO; SettingsError (one line) when the optional extra is not installed."""
    try:
        import stable_baselines3
    except ImportError:
        raise SettingsError(SB3_MISSING) from None
    return getattr(stable_baselines3, name.upper())


def gym_returns(env, act: Callable[[np.ndarray], np.ndarray], seeds: list[int]) -> np.ndarray:
    """Gymnasium's return of `act` in one episode of env per reset seed: [E] (a policy that is not a task's:
    no observation to compare)."""
    from stages.steps.evaluate_gym import episode_returns

    return episode_returns(env, act, None, seeds)[0]


class Curve:
    """curve.json of one run: the return after each evaluation, written whole after every change.

    resume: keep what the file holds (a run continuing from its checkpoint); otherwise start empty."""

    SERIES = ("env_steps", "return_mean", "return_std", "train_seconds")

    def __init__(self, path: Path, header: dict, resume: bool = False):
        self.path = path
        old = json.loads(path.read_text()) if resume and path.exists() else {}
        self.doc = {**header, **{key: old.get(key, []) for key in (*self.SERIES, "resumed_at")}, "finished": False}

    def keep_until(self, steps: int) -> None:
        """Forget evaluations after `steps` (made after the checkpoint a run resumes from)."""
        n = sum(1 for s in self.doc["env_steps"] if s <= steps)
        for key in self.SERIES:
            self.doc[key] = self.doc[key][:n]

    def add(self, steps: int, returns: np.ndarray, train_seconds: float) -> None:
        self.doc["env_steps"].append(int(steps))
        self.doc["return_mean"].append(float(returns.mean()))
        self.doc["return_std"].append(float(returns.std()))
        self.doc["train_seconds"].append(round(float(train_seconds), 2))

    def write(self, finished: bool = False) -> None:
        self.doc["finished"] = finished
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.doc, indent=1) + "\n")
        tmp.replace(self.path)


def versions() -> dict[str, str]:
    import gymnasium
    import mujoco
    import torch

    out = {"gymnasium": gymnasium.__version__, "mujoco": mujoco.__version__, "torch": torch.__version__}
    try:
        import stable_baselines3
        out["stable_baselines3"] = stable_baselines3.__version__
    except ImportError:
        pass
    return out


# ---------------------------------------------------------------------------------------------- SB3 runs
def train_sb3(task: TaskSettings, algo: SB3Settings, seed: int, run_dir: Path) -> None:
    """Train one SB3 run to algo.steps, scoring it every algo.eval_every steps; resumes from run_dir/checkpoint."""
    import torch

    algorithm = import_sb3_algorithm(algo.algorithm)
    import gymnasium
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    torch.set_num_threads(1)  # one run per core
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt = run_dir / "checkpoint"
    header = {"method": algo.algorithm, "task": task.name, "env": task.env_id, "seed": seed,
              "episodes": task.episodes, "first_seed": task.first_seed, "steps_target": algo.steps,
              "source": algo.source, "normalize": algo.normalize, "hyperparameters": algo.hyperparameters,
              "versions": versions()}
    venv = DummyVecEnv([lambda: gymnasium.make(task.env_id)])
    scoring_env = gymnasium.make(task.env_id)  # every evaluation resets it with the episodes' seeds
    state = restore_checkpoint(ckpt)
    curve = Curve(run_dir / "curve.json", header, resume=state is not None)
    if state is not None:
        if algo.normalize:
            venv = VecNormalize.load(str(ckpt / "vecnormalize.pkl"), venv)
        model = algorithm.load(ckpt / "model.zip", env=venv, device="cpu")
        if hasattr(model, "replay_buffer"):
            model.load_replay_buffer(ckpt / "replay_buffer.pkl")
        done = int(model.num_timesteps)
        base_seconds = float(state["train_seconds"])
        curve.keep_until(done)
        curve.doc["resumed_at"].append(done)
        model.set_random_seed(seed + done)  # torch, numpy, the action space and the environment's next reset
        model._last_obs = None  # the saved observation belongs to an environment that is gone: reset
    else:
        if algo.normalize:  # the Zoo's VecNormalize, discounting rewards with the algorithm's gamma
            gamma = algo.hyperparameters.get("gamma", inspect.signature(algorithm.__init__).parameters["gamma"].default)
            venv = VecNormalize(venv, gamma=gamma)
        model = algorithm("MlpPolicy", venv, seed=seed, device="cpu", verbose=0, **algo.hyperparameters)
        done, base_seconds = 0, 0.0

    def act(obs: np.ndarray) -> np.ndarray:
        if algo.normalize:
            obs = venv.normalize_obs(obs)  # the training statistics, frozen
        action, _ = model.predict(obs, deterministic=True)
        return action

    # SIGTERM or Ctrl-C: checkpoint where the run is and stop; the same command resumes it.
    stop_asked = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop_asked.append(True))

    class Evaluate(BaseCallback):
        def _on_training_start(self) -> None:
            self.clock, self.eval_seconds = time.perf_counter(), 0.0

        def train_seconds(self) -> float:
            return base_seconds + (time.perf_counter() - self.clock) - self.eval_seconds

        def _on_step(self) -> bool:
            n = self.num_timesteps
            if n % algo.eval_every == 0 or n == algo.steps:
                t0 = time.perf_counter()
                train_seconds = self.train_seconds()
                returns = gym_returns(scoring_env, act, task.eval_seeds)
                curve.add(n, returns, train_seconds)
                if n % algo.checkpoint_every == 0 or n == algo.steps:
                    save_checkpoint(model, venv if algo.normalize else None, ckpt, train_seconds)
                curve.write(finished=n >= algo.steps)
                self.eval_seconds += time.perf_counter() - t0
                print(f"{task.name} {algo.algorithm} s{seed}: {n} steps, return {returns.mean():.3f} "
                      f"({train_seconds:.0f} s training)", flush=True)
            if stop_asked and n < algo.steps:
                save_checkpoint(model, venv if algo.normalize else None, ckpt, self.train_seconds())
                print(f"{task.name} {algo.algorithm} s{seed}: stopped at {n} steps, checkpointed", flush=True)
                return False
            return True

    if done < algo.steps:
        model.learn(algo.steps - done, callback=Evaluate(), reset_num_timesteps=False)
    if model.num_timesteps < algo.steps:
        raise SystemExit(STOPPED)
    curve.doc["steps_target"] = algo.steps
    curve.write(finished=True)


def save_checkpoint(model, normalizer, ckpt: Path, train_seconds: float) -> None:
    """Model, replay buffer, normaliser and training seconds into ckpt, replaced as a whole: a kill leaves
    ckpt old or new, or (between the two renames) only ckpt.old, which `restore_checkpoint` takes back."""
    import shutil

    tmp = ckpt.with_name(ckpt.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    (tmp / "state.json").write_text(json.dumps({"env_steps": int(model.num_timesteps),
                                                "train_seconds": round(train_seconds, 2)}) + "\n")
    model.save(tmp / "model.zip")
    if hasattr(model, "replay_buffer"):
        model.save_replay_buffer(tmp / "replay_buffer.pkl")
    if normalizer is not None:
        normalizer.save(str(tmp / "vecnormalize.pkl"))
    old = ckpt.with_name(ckpt.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if ckpt.exists():
        ckpt.rename(old)
    tmp.rename(ckpt)
    shutil.rmtree(old, ignore_errors=True)


def restore_checkpoint(ckpt: Path) -> dict | None:
    """state.json of the checkpoint to resume from, or None; a checkpoint cut between its renames is taken back."""
    old = ckpt.with_name(ckpt.name + ".old")
    if not ckpt.exists() and (old / "state.json").exists():
        old.rename(ckpt)
    state = ckpt / "state.json"
    return json.loads(state.read_text()) if state.exists() else None


# --------------------------------------------------------------------------------------------- GPS runs
def gps_params(task: TaskSettings, gps: GPSSettings, seed: int) -> dict:
    """The task's settings file with the method's settings, the variant's and the seed."""
    from benchmarks.paper_comparison import make_params
    from stages.sweep.queue import set_dotted

    params = make_params(task.name, gps.method, seed, [], config=task.gps_config)  # task.model made absolute there
    for dotted, value in gps.overrides.items():
        set_dotted(params, dotted, value)
    return params


def train_gps(task: TaskSettings, gps: GPSSettings, seed: int, run_dir: Path) -> None:
    """Run the GPS method's stages in this process (benchmarks/paper_comparison.py's run_one), then score every
    iteration. A folder holding a finished run of the same params.yaml is scored without training again."""
    import h5py
    import yaml

    from benchmarks.paper_comparison import run_one
    from stages.settings.load import load_settings
    from stages.steps.evaluate_gym import score_in_gym

    run_dir.mkdir(parents=True, exist_ok=True)
    params = yaml.safe_dump(gps_params(task, gps, seed), sort_keys=False)
    done = run_dir / "run.json"
    if ((run_dir / "params.yaml").exists() and (run_dir / "params.yaml").read_text() == params and done.exists()
            and json.loads(done.read_text())["status"] == "finished"):
        result = json.loads(done.read_text())
        os.chdir(run_dir)
        print(f"{task.name} {gps.name} s{seed}: a finished run of these settings, scored again", flush=True)
    else:
        done.unlink(missing_ok=True)
        (run_dir / "params.yaml").write_text(params)
        result = run_one(run_dir)  # runs in run_dir
    if result["status"] != "finished":
        raise RuntimeError(f"{gps.label} stage {result['stage']} failed: {result['error']}")
    s = load_settings(Path("params.yaml"))
    header = {"method": gps.name, "task": task.name, "env": task.env_id, "seed": seed, "episodes": task.episodes,
              "first_seed": task.first_seed, "steps_target": None, "source": f"{task.gps_config.name}, {gps.source}",
              "normalize": False, "hyperparameters": {}, "versions": versions()}
    curve = Curve(Path("curve.json"), header)
    rollouts_per_iteration = (len(s.task.train) + len(s.task.test)) * s.task.T  # gps evaluate: one per condition
    total = 0
    for k in range(s.iterations):
        itr = Path("data") / f"itr_{k:02d}"
        with h5py.File(itr / "samples.h5") as f:
            total += int(f["draws"][()].sum()) * s.task.T + rollouts_per_iteration
        score = score_in_gym(s, itr / "policy.h5", task.episodes)
        if score.seeds != task.eval_seeds:
            raise RuntimeError(f"{task.gps_config}: gym_evaluation scored seeds {score.seeds[:3]}..., not the comparison's")
        curve.add(total, score.returns, result["stage_ended"][f"evaluate_{k:02d}"])  # its last stage
        print(f"{task.name} {gps.name} s{seed}: iteration {k + 1}, {total} steps, return {score.returns.mean():.3f}",
              flush=True)
    curve.doc["steps_target"] = total
    curve.write(finished=True)


# ------------------------------------------------------------------------------------------------ driving
@dataclass(frozen=True)
class Job:
    task: str
    method: str  # a GPS method's name (mdgps, mdgps_pilqr, ...), sac or ppo
    seed: int

    def folder(self, out: Path) -> Path:
        return out / self.task / f"{self.method}_s{self.seed}"


def jobs(cmp: Comparison) -> list[Job]:
    """Every run of the comparison, task by task in the file's order; within a task the GPS methods first
    (short; MDGPS is the level the table measures the others against) in the file's order, then SAC and PPO."""
    out = []
    for t in cmp.tasks.values():
        order = [*t.gps, *(a for a in SB3_ALGORITHMS if a in t.sb3)]
        out += sorted((Job(t.name, m, s) for m in order for s in cmp.seeds), key=lambda j: (order.index(j.method), j.seed))
    return out


def finished(job: Job, cmp: Comparison, out: Path) -> bool:
    path = job.folder(out) / "curve.json"
    if not path.exists():
        return False
    doc = json.loads(path.read_text())
    if job.method in cmp.tasks[job.task].gps:
        return doc["finished"]
    return doc["finished"] and doc["env_steps"] and doc["env_steps"][-1] >= cmp.tasks[job.task].sb3[job.method].steps


def run_job(cmp: Comparison, job: Job, out: Path) -> None:
    task = cmp.tasks[job.task]
    if job.method in task.gps:
        train_gps(task, task.gps[job.method], job.seed, job.folder(out))
    elif job.method in task.sb3:
        train_sb3(task, task.sb3[job.method], job.seed, job.folder(out))
    else:
        raise SettingsError(f"task {job.task} has no method {job.method!r} "
                            f"(expected one of {', '.join([*task.gps, *task.sb3])})")


def cmd_run(args) -> None:
    cmp = load_comparison(Path(args.settings))  # without SB3 its one line comes from here, before anything starts
    out = Path(args.out).resolve()
    todo = [j for j in jobs(cmp) if not finished(j, cmp, out)]
    print(f"{len(todo)} runs to do in {out}, {args.jobs} at a time", flush=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1", GPS_PROGRESS="0")
    pending, running, started, failed = list(todo), {}, time.perf_counter(), 0
    stop_asked = []  # SIGTERM or Ctrl-C: every running run checkpoints and stops; nothing new starts
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop_asked.append(True))
    while pending or running:
        if stop_asked and pending:
            pending.clear()
            for _, proc in running.values():
                proc.send_signal(signal.SIGTERM)
        while pending and len(running) < args.jobs:
            job = pending.pop(0)
            job.folder(out).mkdir(parents=True, exist_ok=True)
            log = open(job.folder(out) / "train.log", "a")
            running[job] = (time.perf_counter(), subprocess.Popen(
                [sys.executable, __file__, "one", "--settings", str(Path(args.settings).resolve()), "--out", str(out),
                 "--task", job.task, "--method", job.method, "--seed", str(job.seed)],
                env=env, stdout=log, stderr=subprocess.STDOUT))
        time.sleep(0.5)
        for job, (t0, proc) in list(running.items()):
            if proc.poll() is None:
                continue
            del running[job]
            ok = proc.returncode == 0 and finished(job, cmp, out)
            failed += not ok
            outcome = ("finished" if ok else "stopped, checkpointed" if proc.returncode == STOPPED
                       else f"failed (exit {proc.returncode}), see train.log")
            print(f"[{time.perf_counter() - started:7.0f} s] {job.task} {job.method} s{job.seed}: {outcome} in "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)
    if stop_asked:
        print("stopped: the same command resumes", flush=True)
        raise SystemExit(STOPPED)
    if failed:
        raise SystemExit(1)


def cmd_one(args) -> None:
    cmp = load_comparison(Path(args.settings))
    if args.task not in cmp.tasks:
        raise SettingsError(f"{args.settings}: no task {args.task!r} (expected one of {', '.join(cmp.tasks)})")
    run_job(cmp, Job(args.task, args.method, args.seed), Path(args.out).resolve())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train every run of the settings file that is not finished")
    run.add_argument("--settings", required=True)
    run.add_argument("--out", required=True, help="folder of the runs")
    run.add_argument("-j", "--jobs", type=int, default=2)
    one = sub.add_parser("one", help="train one run (what `run` starts per run)")
    one.add_argument("--settings", required=True)
    one.add_argument("--out", required=True)
    one.add_argument("--task", required=True)
    one.add_argument("--method", required=True, help="a GPS method's run name (mdgps, mdgps_pilqr, ...), sac or ppo")
    one.add_argument("--seed", type=int, required=True)
    rep = sub.add_parser("report", help="the table (markdown, printed) and one figure per task")
    rep.add_argument("--settings", required=True)
    rep.add_argument("--out", required=True)
    rep.add_argument("--figures", help="folder for compare_rl_<task>.png")
    rep.add_argument("--levels", help="comma-separated return levels: a table of the steps each method needs to reach each")
    rep.add_argument("--tasks", help="comma-separated tasks to report (default: every task of the settings)")
    rep.add_argument("--ymin", type=float, help="cut the figures' return axis there (a method going lower says so)")
    args = ap.parse_args(argv)
    try:
        {"run": cmd_run, "one": cmd_one, "report": cmd_report}[args.command](args)
    except SettingsError as exc:
        print(f"compare_rl: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


# ------------------------------------------------------------------------------------------------ report
METHOD_LABELS = {"mdgps": "MDGPS", "sac": "SAC", "ppo": "PPO"}
METHOD_COLOURS = {"mdgps": "tab:blue", "sac": "tab:orange", "ppo": "tab:green"}
OTHER_COLOURS = ("tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:gray")


@dataclass
class MethodCurve:
    """One method's runs on one task, cut to the evaluations every seed has: x [K], returns [S, K], seconds [S, K]."""

    method: str
    seeds: list[int]
    env_steps: np.ndarray
    returns: np.ndarray
    train_seconds: np.ndarray
    finished: bool
    source: str
    label: str = ""  # the method's name in tables and figures (default METHOD_LABELS)
    gps: bool = False  # a GPS method: a point per iteration
    variant: bool = False  # a GPS method with settings of its own (`set`): drawn dashed

    @property
    def name(self) -> str:
        return self.label or METHOD_LABELS.get(self.method, self.method)

    @property
    def mean(self) -> np.ndarray:
        return self.returns.mean(axis=0)

    @property
    def std(self) -> np.ndarray:
        return self.returns.std(axis=0)

    def first_reaching(self, level: float) -> int | None:
        """Index of the first evaluation whose mean over seeds is >= level, or None."""
        hits = np.flatnonzero(self.mean >= level)
        return int(hits[0]) if hits.size else None

    def seeds_reaching(self, level: float) -> int:
        return int((self.returns.max(axis=1) >= level).sum())


def load_curves(task: TaskSettings, cmp: Comparison, out: Path) -> dict[str, MethodCurve]:
    """Each method's curves over the seeds that have any; MDGPS's steps (which vary a little with redraws) averaged."""
    curves = {}
    for method in [*task.gps, *task.sb3]:
        docs = [json.loads(p.read_text()) for s in cmp.seeds
                if (p := Job(task.name, method, s).folder(out) / "curve.json").exists()]
        docs = [d for d in docs if d["env_steps"]]
        if not docs:
            continue
        k = min(len(d["env_steps"]) for d in docs)
        curves[method] = MethodCurve(
            method, [d["seed"] for d in docs], np.mean([d["env_steps"][:k] for d in docs], axis=0),
            np.array([d["return_mean"][:k] for d in docs]), np.array([d["train_seconds"][:k] for d in docs]),
            all(d["finished"] for d in docs), docs[0]["source"],
            task.gps[method].label if method in task.gps else "", method in task.gps,
            method in task.gps and bool(task.gps[method].overrides))
    return curves


def _steps(x: float) -> str:
    return f"{x:,.0f}"


def reaching(c: MethodCurve, level: float) -> tuple[str, str]:
    """(env steps, training wall-clock) at which the mean over seeds first reaches level, as table cells."""
    i = c.first_reaching(level)
    n = f" ({c.seeds_reaching(level)}/{len(c.seeds)} seeds)"
    if i is None:
        return f"not reached{n}", "—"
    return f"{_steps(c.env_steps[i])}{n}", f"{c.train_seconds[:, i].mean():,.0f} s"


def task_table(task: TaskSettings, curves: dict[str, MethodCurve], threshold: float | None) -> list[str]:
    """Markdown lines: per method, steps and wall-clock to the threshold and to MDGPS's best, best and final return."""
    mdgps_best = float(curves["mdgps"].mean.max()) if "mdgps" in curves else None
    head = ["method (hyperparameters)", "seeds", "env steps run"]
    if threshold is not None:
        head += [f"steps to threshold {threshold:g}", "wall-clock to it"]
    if mdgps_best is not None:
        head += [f"steps to MDGPS's best ({mdgps_best:.2f})", "wall-clock to it"]
    head += ["best return (at steps)", "final return", "training wall-clock"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, c in curves.items():
        row = [f"{c.name} ({c.source})", str(len(c.seeds)),
               _steps(c.env_steps[-1]) + ("" if c.finished else " (unfinished)")]
        if threshold is not None:
            row += reaching(c, threshold)
        if mdgps_best is not None:
            row += reaching(c, mdgps_best - 1e-12)
        b = int(np.argmax(c.mean))
        row += [f"{c.mean[b]:.3f} ± {c.std[b]:.3f} ({_steps(c.env_steps[b])})", f"{c.mean[-1]:.3f} ± {c.std[-1]:.3f}",
                f"{c.train_seconds[:, -1].mean():,.0f} s"]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def levels_table(curves: dict[str, MethodCurve], levels: list[float]) -> list[str]:
    """Markdown lines: environment steps at which each method's mean over seeds first reaches each return level,
    and each model-free method's steps over MDGPS's (above 1: MDGPS needed fewer)."""
    others = [m for m in curves if m != "mdgps"]
    head = ["return level", *(c.name for c in curves.values()),
            *(f"{curves[m].name} / MDGPS" for m in others if "mdgps" in curves)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for level in levels:
        at = {m: (None if (i := c.first_reaching(level)) is None else c.env_steps[i]) for m, c in curves.items()}
        row = [f"{level:g}", *(f"{_steps(at[m])}" if at[m] is not None else f"> {_steps(curves[m].env_steps[-1])}"
                                for m in curves)]
        if "mdgps" in curves:
            for m in others:
                if at["mdgps"] is None:
                    row.append("—")
                elif at[m] is None:
                    row.append(f"> {curves[m].env_steps[-1] / at['mdgps']:.1f}")
                else:
                    row.append(f"{at[m] / at['mdgps']:.2f}")
        lines.append("| " + " | ".join(row) + " |")
    return lines


def draw(task: TaskSettings, curves: dict[str, MethodCurve], threshold: float | None, path: Path,
         ymin: float | None = None) -> None:
    """Return against environment steps (left) and training wall-clock (right), both log x: mean and a band of
    one std over seeds, the threshold dashed, variants dashed; ymin: the axes cut there (the methods whose
    mean goes lower say so in the legend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110, sharey=True)
    others = iter(OTHER_COLOURS)
    colours = {m: METHOD_COLOURS.get(m) or next(others, "black") for m in curves}
    for ax, xlabel in zip(axes, ("environment steps", "training wall-clock on this machine (s)")):
        for method, c in curves.items():
            x = c.env_steps if ax is axes[0] else c.train_seconds.mean(axis=0)
            colour = colours[method]
            cut = f", mean down to {c.mean.min():.0f}" if ymin is not None and c.mean.min() < ymin else ""
            ax.plot(x, c.mean, color=colour, marker="o" if c.gps or method == "mdgps" else None, markersize=3,
                    linestyle="--" if c.variant else "-", label=f"{c.name} ({len(c.seeds)} seeds{cut})")
            ax.fill_between(x, c.mean - c.std, c.mean + c.std, color=colour, alpha=0.2, linewidth=0)
        if threshold is not None:
            ax.axhline(threshold, color="black", linestyle="--", linewidth=1, label=f"reward_threshold {threshold:g}")
        if ymin is not None:
            ax.set_ylim(bottom=ymin)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel(xlabel)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel(f"return ({task.episodes} episodes)")
    if len(curves) > 4:  # beside the axes, not over the curves
        fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=2, fontsize="small", frameon=False)
    else:
        axes[0].legend(loc="best")
    fig.suptitle(f"{task.env_id}: each method's deterministic policy in Gymnasium's environment, mean ± std over seeds")
    if len(curves) > 4:
        rows = (len(curves) + (threshold is not None) + 1) // 2
        fig.set_size_inches(11, 4.2 + 0.22 * rows)
        fig.tight_layout(rect=(0, 0.22 * rows / (4.2 + 0.22 * rows) + 0.01, 1, 1))
    else:
        fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def cmd_report(args) -> None:
    import gymnasium

    cmp = load_comparison(Path(args.settings))
    out = Path(args.out).resolve()
    names = args.tasks.split(",") if args.tasks else list(cmp.tasks)
    for name in names:
        if name not in cmp.tasks:
            raise SettingsError(f"{args.settings}: no task {name!r} (expected one of {', '.join(cmp.tasks)})")
    for task in (cmp.tasks[n] for n in names):
        curves = load_curves(task, cmp, out)
        if not curves:
            print(f"{task.name}: no runs in {out}\n")
            continue
        threshold = gymnasium.spec(task.env_id).reward_threshold
        print(f"### {task.env_id}\n")
        print("\n".join(task_table(task, curves, threshold)) + "\n")
        if args.levels:
            print("\n".join(levels_table(curves, [float(x) for x in args.levels.split(",")])) + "\n")
        if args.figures:
            path = Path(args.figures) / f"compare_rl_{task.name}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            draw(task, curves, threshold, path, args.ymin)
            print(f"figure: {path}\n")


if __name__ == "__main__":
    main()
