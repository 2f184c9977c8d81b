"""Each stage's code dependencies: the project's source files its command imports, followed transitively.

A stage depends on the module that defines its `gps` command (stages/steps/) and on every
module of the project (`stages`, `gps_core`) that module imports, directly or through
another, at module level or inside a function, with the `__init__.py` of every package on
the way that holds code (Python runs those too; one that holds only a docstring runs nothing,
and leaving it out keeps DVC's bookkeeping per stage smaller). So editing a user tool, a sweep engine, the docs or a module
no step imports leaves a finished run up to date, and editing the C-step's code makes the
C-step stages and what follows them stale, and nothing before them.

Not followed: the entry point (stages/main.py) and the warm worker (stages/worker/), which
hand the command over and run it unchanged: tests/test_worker.py and
tests/test_determinism.py check that a stage's files are the same byte for byte with and
without the worker. tests/test_code_deps.py checks that every project module a stage has
imported after it ran is among the files this module lists for it.

Imports are read from the source as written (`import a.b`, `from a import b`, `from . import
b`); a module imported by a computed name (importlib) would not be seen, and the project has
none below the steps.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

PACKAGES = ("stages", "gps_core")
STEPS = "stages.steps"


def module_file(name: str, root: Path) -> Path | None:
    """The source file of a project module (a package's __init__.py), or None if it is not one."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = root.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


@functools.lru_cache(maxsize=None)
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _imported_names(path: Path, module: str) -> set[str]:
    """Every module name an import statement of the file names, with `from X import Y`'s X.Y too
    (Y may be a module), relative imports resolved."""
    tree = _tree(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module or ""
            names.add(source)
            names.update(f"{source}.{alias.name}" for alias in node.names)
    return names


def _with_parents(name: str) -> list[str]:
    """`a.b.c` -> [a, a.b, a.b.c]: importing a module runs its packages' __init__ first."""
    parts = name.split(".")
    return [".".join(parts[:n]) for n in range(1, len(parts) + 1)]


@functools.lru_cache(maxsize=None)
def _direct(name: str, root: Path) -> frozenset[str]:
    path = module_file(name, root)
    if path is None:
        return frozenset()
    found = set()
    for imported in _imported_names(path, name):
        found.update(m for m in _with_parents(imported) if module_file(m, root) is not None)
    return frozenset(found)


def imported_modules(name: str, root: Path) -> set[str]:
    """The project modules `name` imports, transitively, itself and its packages included."""
    seen: set[str] = set()
    todo = [m for m in _with_parents(name) if module_file(m, root) is not None]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        todo.extend(_direct(current, root) - seen)
    return seen


def runs_code(path: Path) -> bool:
    """Whether a source file holds more than a docstring."""
    body = _tree(path).body
    return len(body) > (1 if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) else 0)


def code_files(name: str, root: Path) -> list[str]:
    """The source files of `imported_modules(name)` that hold code, relative to root, sorted."""
    files = (module_file(m, root) for m in imported_modules(name, root))
    return sorted(f.relative_to(root).as_posix() for f in files if f.name != "__init__.py" or runs_code(f))


@functools.lru_cache(maxsize=None)
def command_modules(root: Path) -> dict[str, str]:
    """{`gps` command name: the module of stages/steps/ that registers it}, read from the
    `@stage_command("name")` and `@app.command("name")` decorators."""
    commands: dict[str, str] = {}
    for path in sorted((root / "stages" / "steps").glob("*.py")):
        module = f"{STEPS}.{path.stem}"
        for node in ast.walk(_tree(path)):
            if not isinstance(node, ast.FunctionDef):
                continue
            for deco in node.decorator_list:
                if (isinstance(deco, ast.Call) and deco.args and isinstance(deco.args[0], ast.Constant)
                        and isinstance(deco.args[0].value, str)
                        and (getattr(deco.func, "id", None) == "stage_command" or getattr(deco.func, "attr", None) == "command")):
                    commands[deco.args[0].value] = module
    return commands


def stage_code(command: str, root: Path) -> list[str]:
    """The source files the stage running `gps COMMAND` depends on."""
    module = command_modules(root).get(command)
    if module is None:
        raise KeyError(f"no module of {STEPS} registers the command {command!r}")
    return code_files(module, root)
