"""gps sweep --engine ray on a real local Ray cluster: a head with no CPUs and two one-CPU worker
nodes, a bare git repository as the git remote and a local directory as the DVC remote.

The faults are real too: a worker node removed while a stage runs, a worker process killed
after the data push while its ref push hangs (a pre-receive hook on the remote holds it), and
the driver killed, then the same command run again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from remotes import (Landing, attempt_processes, attempts, fresh_clone_experiments, gps_sweep, landing_project,
                     nothing_of_the_attempt_left, remote_refs, sweep, wait_for)
from test_dvc_pipeline import BIN, env, run

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.slow]

# Notice a dead node within about 1.5 s (the defaults take 15 s), so that its task is retried soon.
FAST_FAILURE_DETECTION = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500,
                          "health_check_failure_threshold": 3}
SMALL_OBJECT_STORE = 100 * 1024**2  # the tasks pass a few kB; Ray's default reserves 30 % of the memory per node
# No dashboard: the sweep talks to Ray's GCS and raylets only; without it the 3-node cluster runs 13
# Ray processes instead of 23 beside the stages, and starts about 2 s sooner on a 2-core machine.
WORKER_NODE = {"num_cpus": 1, "object_store_memory": SMALL_OBJECT_STORE, "include_dashboard": False}


@pytest.fixture(scope="module")
def cluster():
    """One cluster for the module: a head with no CPUs and two one-CPU worker nodes. Each test starts
    with two live worker nodes (two_workers): test_a_node_removed_while_a_stage_runs removes the node
    its experiment runs on, which can be either, and the next test adds a new one in its place."""
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "object_store_memory": SMALL_OBJECT_STORE,
                                                            "include_dashboard": False,
                                                            "_system_config": FAST_FAILURE_DETECTION})
    for _ in range(2):
        cluster.add_node(**WORKER_NODE)
    cluster.wait_for_nodes()
    yield cluster
    cluster.shutdown()


def two_workers(cluster: Cluster) -> None:
    """Back to two live one-CPU worker nodes (a test may have removed one)."""
    while len(cluster.worker_nodes) < 2:
        cluster.add_node(**WORKER_NODE)
    cluster.wait_for_nodes()


def start_driver(landing: Landing, cluster: Cluster, workdir: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(sweep(*args, "--engine", "ray", "--address", cluster.address, "--workdir", str(workdir)),
                            cwd=landing.repo, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def finish(driver: subprocess.Popen, timeout: float = 300) -> str:
    out = driver.communicate(timeout=timeout)[0]
    assert driver.returncode == 0, out
    return out


def landed_lines(out: str) -> dict[str, str]:
    return {line.split(":")[0]: line for line in out.splitlines() if ": landed as " in line}


def test_a_sweep_lands_every_experiment_once_and_a_fresh_clone_sees_them(cluster, tmp_path):
    """A grid of a setting through Ray: one experiment per value, named by it, its value in the params
    DVC recorded, and `gps report` shows one column per value."""
    two_workers(cluster)
    landing = landing_project(tmp_path)
    args = ("--methods", "on_classic,badmm", "--seeds", "0", "-S", "algorithm.kl_step=1,2.5")
    out = finish(start_driver(landing, cluster, tmp_path / "work", *args))
    names = sorted(f"obstacle-{m}-kl_step={v}-s0" for m in ("on_classic", "badmm") for v in ("1", "2.5"))
    assert "4 experiments of" in out and "0 already on origin, 4 to run (ray)" in out, out
    assert "Ray cluster at" in out and "3 nodes, 2 CPUs" in out, out
    lines = landed_lines(out)
    assert sorted(lines) == names, out
    assert len({line.split("(node ")[1][:8] for line in lines.values()}) == 2  # both worker nodes took work
    refs = remote_refs(landing)
    assert sorted(refs) == names
    status = gps_sweep(landing, *args, "--status")
    assert status.stdout.splitlines()[0].endswith(": 4 done"), status.stdout
    again = finish(start_driver(landing, cluster, tmp_path / "work", *args))
    assert "4 already on origin, 0 to run" in again and remote_refs(landing) == refs
    assert not list((tmp_path / "work").iterdir())  # every clone removed
    runs, failed = fresh_clone_experiments(landing, tmp_path / "fresh")
    assert runs == names and failed == []
    fresh = tmp_path / "fresh"
    shown = json.loads(run([str(BIN / "dvc"), "exp", "show", "--json"], fresh).stdout)
    recorded = {rev["name"]: rev["data"]["params"]["params.yaml"]["data"]["algorithm"]["kl_step"]
                for baseline in shown for exp in baseline.get("experiments") or [] for rev in exp["revs"]}
    assert recorded == {name: float(name.split("kl_step=")[1].split("-")[0]) for name in names}
    report = run([str(BIN / "gps"), "report", "--experiments"], fresh).stdout
    header = next(line for line in report.splitlines() if line.startswith("| task | itr |"))
    assert header == "| task | itr | BADMM kl_step=1 | BADMM kl_step=2.5 | On/Classic kl_step=1 | On/Classic kl_step=2.5 |", report


def test_a_node_removed_while_a_stage_runs(cluster, tmp_path):
    """The experiment is retried on the other node and lands once; nothing of the dead attempt runs
    on or writes afterwards, and `gps sweep --clean` removes its clone."""
    two_workers(cluster)
    landing = landing_project(tmp_path)
    work = tmp_path / "work"
    driver = start_driver(landing, cluster, work, "--methods", "on_classic", "--seeds", "4")
    first = wait_for(lambda: attempts(work), 60, "an attempt to start")[0]
    clone = Path(first["clone"])
    wait_for(lambda: (clone / "data" / "init").exists(), 60, "the run's first stage")  # the pipeline is under way
    guards, members = attempt_processes(first)
    node = next(n for n in cluster.worker_nodes if n.node_id.startswith(first["where"].split()[-1]))
    cluster.remove_node(node, allow_graceful=False)
    nothing_of_the_attempt_left(first, guards, members, within=10)

    out = finish(driver)
    lines = landed_lines(out)
    assert list(lines) == ["obstacle-on_classic-s4"], out
    assert first["where"] not in lines["obstacle-on_classic-s4"]  # the retry ran on the other node
    assert list(remote_refs(landing)) == ["obstacle-on_classic-s4"]
    assert [a["clone"] for a in attempts(work)] == [str(clone)]  # the dead attempt's, left for the next sweep
    cleaned = subprocess.run(sweep("--clean", "--engine", "ray", "--address", cluster.address, "--workdir", str(work)),
                             cwd=landing.repo, env=env(), capture_output=True, text=True, timeout=120)
    assert cleaned.returncode == 0, cleaned.stdout + cleaned.stderr
    assert f"removed the leftovers of killed attempts from {work}: 1 clone, " in cleaned.stdout, cleaned.stdout
    assert not list(work.iterdir())
    runs, failed = fresh_clone_experiments(landing, tmp_path / "fresh")
    assert runs == ["obstacle-on_classic-s4"] and failed == []


HANG_FIRST_EXPERIMENT_PUSH = """#!/bin/sh
# The first push of an experiment ref: tell the test, then hang (the test kills the pusher's worker).
while read old new ref; do
  case "$ref" in refs/exps/*)
    if [ ! -e "{flag}" ]; then echo "$ref" > "{flag}"; sleep 120; exit 1; fi;;
  esac
done
exit 0
"""


def test_a_worker_killed_between_the_data_push_and_the_ref_push(cluster, tmp_path):
    """The retry lands the experiment once, and its data is on the DVC remote."""
    two_workers(cluster)
    landing = landing_project(tmp_path)
    flag = tmp_path / "ref-push-started"
    hook = landing.remote / "hooks" / "pre-receive"
    hook.write_text(HANG_FIRST_EXPERIMENT_PUSH.format(flag=flag))
    hook.chmod(0o755)
    work = tmp_path / "work"
    driver = start_driver(landing, cluster, work, "--methods", "on_classic", "--seeds", "5")
    wait_for(flag.exists, 120, "the first ref push")
    first = attempts(work)[0]
    pushed = {p.relative_to(landing.store) for p in landing.store.rglob("*") if p.is_file()}
    assert pushed, "the data push comes before the ref push"
    guards, members = attempt_processes(first)  # git push, the remote's receive-pack and its hanging hook
    assert guards and len(members) >= 3, (guards, members)
    os.kill(first["pid"], signal.SIGKILL)  # the Ray worker process running the attempt
    nothing_of_the_attempt_left(first, guards, members, within=5)

    out = finish(driver)
    assert list(landed_lines(out)) == ["obstacle-on_classic-s5"], out
    assert list(remote_refs(landing)) == ["obstacle-on_classic-s5"]
    hook.unlink()
    runs, failed = fresh_clone_experiments(landing, tmp_path / "fresh")
    assert runs == ["obstacle-on_classic-s5"] and failed == []


def test_the_driver_killed_and_the_same_command_run_again(cluster, tmp_path):
    """Nothing of the attempts under way outlives the driver; the rerun removes their clones and does
    only what the remote lacks: the experiments that landed are not redone."""
    two_workers(cluster)
    landing = landing_project(tmp_path)
    args = ("--methods", "on_classic,off_classic", "--seeds", "6-7")
    names = sorted(f"obstacle-{m}-s{s}" for m in ("on_classic", "off_classic") for s in (6, 7))
    work = tmp_path / "work"
    driver = start_driver(landing, cluster, work, *args)
    wait_for(lambda: remote_refs(landing), 180, "a first experiment to land")

    def under_way() -> list[tuple[dict, set[int], set[int]]]:
        """The attempts whose pipeline runs (not one that landed and is removing its clone)."""
        landed = remote_refs(landing)
        found = [(a, *attempt_processes(a)) for a in attempts(work)
                 if a["experiment"] not in landed and (Path(a["clone"]) / "data" / "init").exists()]
        return [f for f in found if f[1]]
    seen = wait_for(under_way, 60, "a stage of the next experiments")
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    # Ray ends the dead driver's job: its workers die, and with them the attempts' process groups
    for marker, guards, members in seen:
        nothing_of_the_attempt_left(marker, guards, members, within=10)
    before = remote_refs(landing)
    status = gps_sweep(landing, *args, "--status", "--workdir", str(work))
    assert f"{len(before)} done" in status.stdout.splitlines()[0] and "interrupted" in status.stdout, status.stdout
    assert "of killed attempts (the next sweep here" in status.stdout, status.stdout

    out = finish(start_driver(landing, cluster, work, *args))
    assert f"{len(before)} already on origin, {4 - len(before)} to run (ray)" in out, out
    assert f"removed the leftovers of killed attempts from {work}: " in out, out
    assert sorted(landed_lines(out)) == sorted(set(names) - set(before)), out
    after = remote_refs(landing)
    assert sorted(after) == names and all(after[n] == sha for n, sha in before.items())
    assert not list(work.iterdir())
