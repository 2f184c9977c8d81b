"""The `ray` engine of `gps sweep`: one Ray task per experiment, retried when its worker or node dies.

Each task reserves `RUN_CPUS` CPUs (a run is one single-threaded process at a
time: the stages pin BLAS and torch to one thread) and calls
`stages.sweep.job.run_experiment`, which clones, runs and lands the
experiment on the worker's machine. A task whose worker process or node dies is
run again elsewhere, up to `RETRIES` times; a failing run is not retried (it
would fail the same way: runs are deterministic). Ray is an optional extra
(`pip install '.[ray]'`); the workers need the project installed, as the driver has it.
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from typing import Callable, Iterator

from stages.errors import UserError
from stages.sweep.job import Experiment, Origin, Outcome, clean_here, run_experiment

RUN_CPUS = 1
RETRIES = 3


def import_ray():
    try:
        import ray
    except ImportError:
        raise UserError("--engine ray needs Ray, an optional extra: pip install '.[ray]'") from None
    return ray


def attempt(experiment: Experiment, origin: Origin, workdir: Path | None) -> Outcome:
    """One attempt of an experiment, on the node Ray chose."""
    import ray

    return run_experiment(experiment, origin, workdir, where=f"node {ray.get_runtime_context().get_node_id()[:8]}")


def _cluster_line(ray, context) -> str:
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    cpus = int(ray.cluster_resources().get("CPU", 0))
    line = f"Ray cluster at {context.address_info.get('address', '?')}: {len(nodes)} nodes, {cpus} CPUs"
    if getattr(context, "dashboard_url", None):
        line += f"; dashboard http://{context.dashboard_url}"
    return line


def connect(address: str | None, echo: Callable[[str], None]):
    """ray.init on `address` (see ray_results), saying which cluster; the ray module."""
    ray = import_ray()
    try:
        context = ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise UserError(f"--address {address}: no Ray cluster there ({str(exc).splitlines()[0]})") from None
    echo(_cluster_line(ray, context))
    return ray


def clean_machine(workdir: Path | None) -> list[str]:
    """On one machine: remove what killed attempts left in its work folder; what it did, for the driver."""
    lines: list[str] = []
    clean_here(workdir, lines.append)
    return [f"{socket.gethostname()}: {line}" for line in lines]


def clean_nodes(ray, workdir: Path | None, echo: Callable[[str], None]) -> None:
    """Remove the leftovers of killed attempts on every machine of the cluster (one task per machine,
    pinned to it; no CPU reserved), before any attempt of this sweep starts there."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    machines = {}
    for node in ray.nodes():
        if node.get("Alive"):
            machines.setdefault(node["NodeManagerAddress"], node["NodeID"])
    task = ray.remote(clean_machine)
    refs = [task.options(num_cpus=0, max_retries=0, name="clean leftovers",
                         scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False)).remote(workdir)
            for node_id in machines.values()]
    for lines in ray.get(refs):
        for line in lines:
            echo(line)


def ray_results(todo: list[Experiment], origin: Origin, workdir: Path | None, address: str | None,
                echo: Callable[[str], None]) -> Iterator[tuple[Experiment, Outcome | Exception]]:
    """Submit every experiment as a Ray task; yield (experiment, Outcome or the exception) as each finishes.

    address: a running cluster (`ray start --head` prints it); None connects to the
    cluster RAY_ADDRESS or this machine's `ray start` names, else starts one here.
    First each machine removes what killed attempts left in its work folder.
    Leaving early (an exception, Ctrl-C) cancels the tasks still out: Ray kills
    their workers, and each attempt's process group dies with its worker.
    """
    ray = connect(address, echo)
    pending: dict = {}
    try:
        clean_nodes(ray, workdir, echo)
        task = ray.remote(attempt)
        pending = {task.options(num_cpus=RUN_CPUS, max_retries=RETRIES, retry_exceptions=False, name=exp.name)
                   .remote(exp, origin, workdir): exp for exp in todo}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                exp = pending.pop(ref)
                try:
                    yield exp, ray.get(ref)
                except ray.exceptions.RayTaskError as exc:  # the attempt raised: its own exception
                    yield exp, exc.cause if isinstance(exc.cause, Exception) else RuntimeError(str(exc).splitlines()[0])
                except ray.exceptions.RayError as exc:  # worker or node died more often than RETRIES
                    yield exp, RuntimeError(f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}")
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)
        ray.shutdown()


def ray_clean(workdir: Path | None, address: str | None, echo: Callable[[str], None]) -> None:
    """`gps sweep --clean --engine ray`: the leftovers of killed attempts on every machine of the cluster."""
    ray = connect(address, echo)
    try:
        clean_nodes(ray, workdir, echo)
    finally:
        ray.shutdown()
