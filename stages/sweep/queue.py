"""The paper's comparison (or any tasks x methods x seeds) as DVC experiments.

Each (task, method) needs its own pipeline files (the iteration count differs
per task, and BADMM has its own stages), which `-S` overrides cannot change. So
each experiment (`experiments`) carries its params.yaml (configs/<task>.yaml)
and the pipeline files of its params, and its `-S` settings (the method's keys,
the user's `gps sweep -S` settings, the seed) under a fixed name,
`<task>-<method>-s<seed>`, or `<task>-<method>-<k>=<v>-...-s<seed>` with `-S`
settings (`parse_settings`, `experiment_name`).

Engines:
- `queue` (this module): writes each (task, method, settings)'s files into the workspace,
  stages them (DVC leaves untracked files out of a queued experiment) and queues
  one experiment per seed with `dvc exp run --queue -S ...`; afterwards the
  workspace's params.yaml and pipeline files are restored from git. `dvc queue
  start -j N` runs them on this machine.
- `ray` and `inline` (`stages.sweep.remote`): each experiment runs in a fresh
  clone wherever the engine puts it and lands on the git and DVC remotes
  (`stages.sweep.job`).
Every run is an ordinary experiment (`dvc exp show`, `dvc exp apply`, `dvc plots diff`).
"""

from __future__ import annotations

import copy
import itertools
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import yaml

from stages.errors import UserError
from stages.sweep.job import Experiment, write_experiment_files

# The paper's five methods, and the reference's other optimizers (stages.settings.schema.ALGORITHMS), as
# params overrides (dotted key -> value). The local optimizers alone sample their controllers; the MDGPS
# forms of PILQR and PI2 sample the policy, as the reference's examples of them do.
METHODS: dict[str, dict[str, Any]] = {
    "badmm": {"algorithm.name": "badmm", "algorithm.sample_on_policy": False},
    "off_classic": {"algorithm.name": "mdgps", "algorithm.sample_on_policy": False, "algorithm.step_rule": "classic"},
    "off_global": {"algorithm.name": "mdgps", "algorithm.sample_on_policy": False, "algorithm.step_rule": "global"},
    "on_classic": {"algorithm.name": "mdgps", "algorithm.sample_on_policy": True, "algorithm.step_rule": "classic"},
    "on_global": {"algorithm.name": "mdgps", "algorithm.sample_on_policy": True, "algorithm.step_rule": "global"},
    "traj_opt": {"algorithm.name": "traj_opt", "algorithm.sample_on_policy": False},
    "pi2": {"algorithm.name": "pi2", "algorithm.sample_on_policy": False},
    "pilqr": {"algorithm.name": "pilqr", "algorithm.sample_on_policy": False},
    "mdgps_pilqr": {"algorithm.name": "mdgps_pilqr", "algorithm.sample_on_policy": True},
    "pigps": {"algorithm.name": "pigps", "algorithm.sample_on_policy": True},
}
PAPER_TASKS = ("obstacle", "peg", "peg_blind")


def known_tasks(root: Path) -> tuple[str, ...]:
    """The tasks with shipped settings: configs/<task>.yaml under the project root."""
    return tuple(sorted(p.stem for p in (root / "configs").glob("*.yaml")))


GENERATED = ["params.yaml", "dvc.yaml", "pipelines"]


def parse_list(text: str, allowed: tuple[str, ...], what: str) -> list[str]:
    items = [x.strip() for x in text.split(",") if x.strip()]
    for item in items:
        if item not in allowed:
            raise UserError(f"--{what} has {item!r}; allowed: {', '.join(allowed)}")
    if not items:
        raise UserError(f"--{what} is empty; allowed: {', '.join(allowed)}")
    return items


def parse_seeds(text: str) -> list[int]:
    """'0-9' or '0,3,5' (or a mix) -> sorted seeds."""
    seeds: set[int] = set()
    try:
        for part in text.split(","):
            lo, _, hi = part.strip().partition("-")
            seeds.update(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise UserError(f"--seeds is {text!r}, expected e.g. 0-9 or 0,2,4") from None
    if not seeds or min(seeds) < 0:
        raise UserError(f"--seeds is {text!r}, expected non-negative integers")
    return sorted(seeds)


def set_dotted(params: dict, dotted: str, value: Any) -> None:
    """params[a][b][c] = value for dotted "a.b.c" (the sections exist)."""
    node = params
    *parents, last = dotted.split(".")
    for part in parents:
        node = node[part]
    node[last] = value


def yaml_text(value: Any) -> str:
    """A value as one line of YAML flow text (2.5, true, [1, 2], global): how `-S` items and names give it."""
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


class _ValueLoader(yaml.SafeLoader):
    """YAML as PyYAML reads it, except that 1e-3 is a number (YAML 1.2, and DVC's -S), not the string '1e-3'."""


_ValueLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?([0-9][0-9_]*)(\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


@dataclass(frozen=True)
class Setting:
    """One `gps sweep -S KEY=VALUE`: the dotted key, its values (several for a grid) and the text as given."""

    key: str
    values: tuple[Any, ...]
    text: str


def split_top_level(text: str) -> list[str]:
    """text split at the commas outside [], {} and quotes (YAML's flow collections and quoted scalars)."""
    items, depth, quote, start, i = [], 0, "", 0, 0
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == "\\" and quote == '"':
                i += 1  # an escaped character of a double-quoted scalar
            elif ch == quote:
                quote = ""  # YAML's '' inside single quotes closes and reopens: the same outcome
        elif ch in "'\"":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
        i += 1
    return [*items, text[start:]]


def comparable_value(value: Any) -> Any:
    """A hashable stand-in of a params value, equal for values equal as settings: 2 and 2.0 alike, true and 1
    not (names tell them apart too), lists and mappings item by item."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return (type(value).__name__, value)
    if isinstance(value, (int, float)):
        return ("number", float(value))
    if isinstance(value, dict):
        return ("dict", tuple(sorted((str(k), comparable_value(v)) for k, v in value.items())))
    if isinstance(value, list):
        return ("list", tuple(comparable_value(v) for v in value))
    return ("other", repr(value))


def _same_value(a: Any, b: Any) -> bool:
    return comparable_value(a) == comparable_value(b)


def parse_settings(texts: Sequence[str]) -> list[Setting]:
    """`-S KEY=VALUE` items: VALUE is YAML, a comma outside [], {} and quotes separates a grid's values."""
    settings: list[Setting] = []
    for text in texts:
        key, eq, value_text = text.partition("=")
        key = key.strip()
        if not eq or not re.fullmatch(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*", key):
            raise UserError(f"-S {text!r}: expected KEY=VALUE with KEY a dotted params key, e.g. algorithm.kl_step=2")
        if key == "seed":
            raise UserError(f"-S {key}: set by --seeds")
        if any(key in m for m in METHODS.values()):
            raise UserError(f"-S {key}: set by --methods")
        if any(s.key == key for s in settings):
            raise UserError(f"-S {key} given twice; give one -S {key}=V1,V2,... for a grid")
        values: list[Any] = []
        for item in split_top_level(value_text):
            if not item.strip():
                raise UserError(f"-S {text}: an empty value; expected KEY=VALUE or KEY=V1,V2,...")
            try:
                value = yaml.load(item, Loader=_ValueLoader)
            except yaml.YAMLError as exc:
                raise UserError(f"-S {text}: {item.strip()!r} is not valid YAML ({str(exc).splitlines()[0]})") from None
            if any(_same_value(value, v) for v in values):
                raise UserError(f"-S {text}: {item.strip()} given twice")
            values.append(value)
        _check_dvc_reads(key, values, text)
        settings.append(Setting(key, tuple(values), text))
    return settings


def _check_dvc_reads(key: str, values: list[Any], text: str) -> None:
    """Each value must reach params.yaml as it is: DVC reads `-S` items with Hydra's override grammar,
    which differs from YAML (`.inf` is a string there, a plain `a,b` a sweep)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    for value in values:
        item = f"{key}={yaml_text(value)}"
        try:
            override = parser.parse_overrides([item])[0]
            read = "a sweep" if override.is_sweep_override() else repr(override.value())
            same = not override.is_sweep_override() and _same_value(override.value(), value) and type(override.value()) is type(value)
        except HydraException:
            read, same = "an error", False
        if not same:
            raise UserError(f"-S {text}: DVC reads -S values with Hydra's override grammar, which makes {read} of "
                            f"{yaml_text(value)} (YAML: {value!r}); write the value another way")


def _missing_key(params: dict, dotted: str) -> str | None:
    """Why `dotted` is no setting of params (None if it is one)."""
    node: Any = params
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return "no such key"
        node = node[part]
    if isinstance(node, dict):
        return "a section, not a setting; set its keys one by one"
    return None


def name_keys(keys: Sequence[str]) -> list[str]:
    """The keys as names show them: the last dotted part, or the whole key when another key ends the same way."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return [part if last.count(part) == 1 else key for key, part in zip(keys, last)]


def name_value(value: Any) -> str:
    """A value as names show it: its YAML flow text, with `_` for any character outside [A-Za-z0-9._+-] and
    for the dots of a `..` (git refuses it in a ref, and DVC's experiment names are refs)."""
    text = re.sub(r"[^A-Za-z0-9._+-]", "_", yaml_text(value))
    return re.sub(r"\.{2,}", lambda m: "_" * len(m.group()), text)


def experiment_name(task: str, method: str, seed: int, settings: Sequence[tuple[str, Any]] = ()) -> str:
    """`<task>-<method>-s<seed>`, or `<task>-<method>-<k>=<v>-...-s<seed>` with (dotted key, value) settings.

    `=` and `.` are accepted in DVC's experiment names (git refs); the sweep's slow test runs such names.
    """
    shown = [f"{k}={name_value(v)}" for k, (_, v) in zip(name_keys([key for key, _ in settings]), settings)]
    return "-".join([task, method, *shown, f"s{seed}"])


def experiments(tasks: list[str], methods: list[str], seeds: list[int], root: Path,
                settings: Sequence[str] = ()) -> list[Experiment]:
    """The sweep's experiments in a fixed order (task, method, settings' grid, seed), each with its files
    and `-S` settings.

    Every (task, method, grid point) gets params.yaml = configs/<task>.yaml and the pipeline of
    its params (the method's keys and the `-S` settings applied); the method's keys, the
    settings and the seed are `-S` settings of the experiment, so DVC records them in its
    params.yaml. The params are validated here, as the stages will see them.
    settings: `gps sweep -S` items (`parse_settings`); a grid's points are the cartesian
    product of the settings' values, the first setting varying slowest.
    """
    from stages.settings.params import load_params
    from stages.pipeline.generate import render_pipeline

    chosen = parse_settings(settings)
    grid = list(itertools.product(*(s.values for s in chosen)))
    out = []
    for task in tasks:
        preset = root / "configs" / f"{task}.yaml"
        if not preset.exists():
            raise UserError(f"{preset}: file not found (run the sweep from the project root)")
        preset_text = preset.read_text()
        base = yaml.safe_load(preset_text)
        for setting in chosen:
            why = _missing_key(base, setting.key)
            if why:
                raise UserError(f"-S {setting.key}: {why} in configs/{task}.yaml")
        for method in methods:
            for point in grid:
                pairs = [(s.key, v) for s, v in zip(chosen, point)]
                params = copy.deepcopy(base)
                for key, value in [*METHODS[method].items(), *pairs]:
                    set_dotted(params, key, copy.deepcopy(value))
                check = root / f".params.sweep-{task}-{method}-{os.getpid()}.yaml"  # array jobs may share the folder
                check.write_text(yaml.safe_dump(params, sort_keys=False))
                try:
                    load_params(check)
                except UserError as exc:
                    given = "".join(f" -S {k}={yaml_text(v)}" for k, v in pairs)
                    raise UserError(str(exc).replace(str(check), f"configs/{task}.yaml with --methods {method}{given}")) from None
                finally:
                    check.unlink(missing_ok=True)
                files = {"params.yaml": preset_text, **render_pipeline(params, "params.yaml")}
                sets = tuple(f"{k}={yaml_text(v)}" for k, v in [*METHODS[method].items(), *pairs])
                out += [Experiment(experiment_name(task, method, s, pairs), task, method, s, (*sets, f"seed={s}"), files)
                        for s in seeds]
    names: dict[str, Experiment] = {}
    for exp in out:
        if exp.name in names:
            raise UserError(f"-S: two experiments would be named {exp.name} ({' '.join(names[exp.name].sets)} and "
                            f"{' '.join(exp.sets)}): their values differ only in characters names replace by _")
        names[exp.name] = exp
    return out


def queue_command(experiment: Experiment) -> list[str]:
    return ["dvc", "exp", "run", "--queue", "-n", experiment.name, *(a for s in experiment.sets for a in ("-S", s))]


def _dirty(root: Path, run: Callable[..., subprocess.CompletedProcess]) -> str:
    return run(["git", "status", "--porcelain", "--", *GENERATED], cwd=root, capture_output=True, text=True, check=True).stdout


def queue_sweep(tasks: list[str], methods: list[str], seeds: list[int], root: Path, dry_run: bool = False,
                echo: Callable[[str], None] = print, run: Callable[..., subprocess.CompletedProcess] = subprocess.run,
                dvc: str = "dvc", settings: Sequence[str] = ()) -> int:
    """Queue the experiments; returns how many. The workspace's generated files are restored afterwards.

    settings: `gps sweep -S` items (see `experiments`)."""
    todo = experiments(tasks, methods, seeds, root, settings)
    # the experiments that share their files (all but the seed): written into the workspace once
    groups: dict[tuple[str, str, tuple[str, ...]], list[Experiment]] = {}
    for exp in todo:
        groups.setdefault((exp.task, exp.method, exp.sets[:-1]), []).append(exp)
    if dry_run:
        for (task, method, sets), group in groups.items():
            given = "".join(f" -S {s}" for s in sets[len(METHODS[method]):])
            echo(f"# {task} / {method}{given}: gps configure {task}, then the pipeline for {method}"
                 + (" with these settings" if given else ""))
            for exp in group:
                echo(" ".join(queue_command(exp)))
        return len(todo)
    if _dirty(root, run):
        raise UserError("params.yaml, dvc.yaml or pipelines/ have uncommitted changes; commit or stash them first "
                        "(the sweep rewrites them per task and restores them from git)")
    queued = 0
    try:
        for group in groups.values():
            write_experiment_files(root, group[0])
            for exp in group:
                cmd = queue_command(exp)
                proc = run([dvc, *cmd[1:]], cwd=root, capture_output=True, text=True)
                if proc.returncode != 0:
                    raise UserError(f"{' '.join(cmd)} failed: {(proc.stderr or proc.stdout).strip().splitlines()[-1]}")
                queued += 1
                echo(f"queued {exp.name}")
    finally:
        run(["git", "reset", "-q", "--", *GENERATED], cwd=root, check=True)
        run(["git", "checkout", "-q", "--", *GENERATED], cwd=root, check=True)
        run(["git", "clean", "-fdq", "--", "pipelines"], cwd=root, check=True)
    return queued
