"""The user tools' `gps` commands, apart from the pipeline's steps: report, resume, inspect, status,
render, sweep, configure, pipeline, worker. Each imports its code (in this folder, stages/pipeline/,
stages/sweep/ or stages/worker/) when it runs, so that `gps --help` and the steps start fast."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from stages.settings import params as cfg
from stages.app import ParamsOpt, app, debugging, dvc_executable
from stages.artifacts.io import write_text_atomic
from stages.errors import UserError


@app.command("report")
def report(
    runs: Optional[list[Path]] = typer.Argument(
        None, help="run directories (params.yaml and data/learning_curve.csv); runs that stopped early are named and left out"),
    experiments: bool = typer.Option(False, "--experiments", help="use the DVC experiments of this repository (dvc exp show --json)"),
    exp_json: Optional[Path] = typer.Option(None, "--exp-json", help="use this saved `dvc exp show --json` output"),
    iterations: str = typer.Option("3,6,9,12", "--iterations", help="comma-separated iterations (1-based) to tabulate"),
    out: Path | None = typer.Option(None, "--out", help="also write the Markdown tables to this file"),
    figure: Path | None = typer.Option(None, "--figure", help="write the Figure 1 style PNG (distance per iteration)"),
) -> None:
    """Table 1 (success mean ± std over seeds, per task and method) and Figure 1 from finished runs."""
    from stages.app import user_errors
    from stages.tools.report import distance_figure, experiment_runs, group_runs, load_run, parse_iterations, report_markdown, stopped_run

    with user_errors("report", debugging()):
        itrs = parse_iterations(iterations)
        stopped = [path for path in runs or [] if stopped_run(path)]
        found = [load_run(path) for path in runs or [] if path not in stopped]
        if stopped:
            typer.echo(f"gps report: {len(stopped)} run(s) stopped before the end, left out: {', '.join(map(str, stopped))}", err=True)
        if experiments or exp_json is not None:
            exp_runs, failed = experiment_runs(exp_json, dvc_executable())
            if failed:
                typer.echo(f"gps report: {len(failed)} experiment(s) failed or unfinished, left out: {', '.join(sorted(failed))}", err=True)
            found += exp_runs
        if not found:
            raise UserError("no finished runs given: pass run directories, --experiments or --exp-json")
        groups = group_runs(found)
        text = report_markdown(groups, itrs)
        typer.echo(text, nl=False)
        if out is not None:
            write_text_atomic(out, text)
        if figure is not None:
            distance_figure(groups, figure)


@app.command("resume", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def resume(ctx: typer.Context) -> None:
    """Finish an interrupted run: set aside torn dvc.lock files, then `dvc repro` (extra arguments go to it).

    DVC does not write dvc.lock atomically, so a run killed at the wrong moment can
    leave a lock file (the root's or an iteration's) that DVC refuses to read. Finished stages are then restored
    from DVC's run-cache instead of being rerun. The same holds for DVC's stage-lock file
    .dvc/tmp/rwlock, which only describes DVC processes that are running.
    """
    import subprocess

    from stages.pipeline.locks import lock_file_problem, lock_files, rwlock_problem

    torn = [(lock, lock_file_problem(lock), "dvc.lock.broken") for lock in lock_files(Path("."))]
    rwlock = Path(".dvc") / "tmp" / "rwlock"
    torn.append((rwlock, rwlock_problem(rwlock), "rwlock.broken"))
    for lock, problem, aside_name in torn:
        if problem:
            aside = lock.with_name(aside_name)
            lock.replace(aside)
            typer.echo(f"gps resume: {lock} was unreadable ({problem}); moved it to {aside}", err=True)
    for tmp in Path("data").rglob(".*.tmp") if Path("data").is_dir() else []:
        tmp.unlink(missing_ok=True)  # temporary files of stages that were killed mid-write
    raise typer.Exit(subprocess.call([dvc_executable(), "repro", *ctx.args]))


@app.command("inspect")
def inspect_cmd(
    file: Path = typer.Argument(..., help="an HDF5 artifact (any stage's output)"),
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="print this dataset (e.g. K, prior/X, policy/W0)"),
    condition: Optional[int] = typer.Option(None, "--condition", "-m", help="index of the condition axis M"),
    sample: Optional[int] = typer.Option(None, "--sample", "-n", help="index of the sample axis N (Nb in prior/X, prior/U)"),
    time: Optional[int] = typer.Option(None, "--time", "-t", help="index of the time axis T (negative counts from the end)"),
    full: bool = typer.Option(False, "--full", help="print every value, not numpy's summary of a large array"),
) -> None:
    """Show an artifact: stage, iteration, params, and each dataset with shape, dtype and statistics."""
    from stages.app import user_errors
    from stages.tools.inspect import inspect_text

    with user_errors("inspect", debugging()):
        typer.echo(inspect_text(file, dataset, condition, sample, time, full), nl=False)


@app.command("status")
def status_cmd(
    data: Path = typer.Option(Path("data"), "--data", help="the run's data folder"),
    params_path: Optional[Path] = typer.Option(None, "--params", help="params.yaml of the run (default: ./params.yaml if present)"),
) -> None:
    """One row per iteration: cost, distance, success, KL vs bound, eta, step multipliers, time; works mid-run."""
    from stages.app import user_errors
    from stages.tools.status import status_text

    with user_errors("status", debugging()):
        typer.echo(status_text(data, params_path), nl=False)


@app.command("render")
def render_cmd(
    policy: Path = typer.Argument(..., help="policy.h5 (global policy) or controllers.h5 (local controllers) of an iteration"),
    params_path: Path = ParamsOpt,
    condition: int = typer.Option(0, "--condition", "-m", help="condition to roll out"),
    out: Path = typer.Option(Path("rollout.gif"), "--out", "-o", help=".gif, .mp4 (needs imageio-ffmpeg) or .png (one frame)"),
    width: int = typer.Option(320, "--width", min=16),
    height: int = typer.Option(240, "--height", min=16),
    every: int = typer.Option(1, "--every", min=1, help="draw every n-th time step"),
    time: Optional[int] = typer.Option(None, "--time", "-t", help="the time step drawn into a .png (default: the last)"),
    fps: Optional[float] = typer.Option(None, "--fps", help="frames per second (default: real time)"),
    shadows: bool = typer.Option(False, "--shadows", help="draw shadows (slow with software OpenGL)"),
    held_out: bool = typer.Option(False, "--held-out", help="--condition counts the task's held-out conditions (policy only)"),
) -> None:
    """Draw a noise-free rollout offscreen (MUJOCO_GL=egl or osmesa) with the target marked."""
    from stages.app import user_errors
    from stages.tools.render import render_rollout

    with user_errors("render", debugging()):
        typer.echo(render_rollout(params_path, policy, condition, out, width, height, every, time, fps, shadows, held_out))


@app.command("sweep")
def sweep_cmd(
    tasks: str = typer.Option("peg,peg_blind,obstacle", "--tasks", help="comma-separated tasks of configs/"),
    methods: str = typer.Option("badmm,off_classic,off_global,on_classic,on_global", "--methods",
                                help="comma-separated: badmm, off_classic, off_global, on_classic, on_global (the paper's), "
                                     "traj_opt, pi2, pilqr, mdgps_pilqr, pigps (the reference's other optimizers)"),
    seeds: str = typer.Option("0-9", "--seeds", help="e.g. 0-9 or 0,2,4"),
    settings: list[str] = typer.Option([], "--set", "-S", help="KEY=VALUE: a setting of every experiment (recorded in "
                                       "its params, as dvc exp run -S); KEY=V1,V2,... makes one experiment per value "
                                       "(several make a grid); the names say the values"),
    engine: str = typer.Option("queue", "--engine",
                               help="queue: DVC's local queue; ray: a Ray cluster; inline: here, one after another "
                                    "(ray and inline land each experiment on the git and DVC remotes)"),
    address: Optional[str] = typer.Option(None, "--address", help="ray: the cluster (default: RAY_ADDRESS, "
                                          "this machine's `ray start`, else a new local one)"),
    git_remote: str = typer.Option("origin", "--git-remote", help="ray, inline: the git remote workers clone "
                                   "from and push experiments to"),
    workdir: Optional[Path] = typer.Option(None, "--workdir", help="ray, inline: where the clones go on each "
                                           "machine (default: its temporary folder)"),
    index: Optional[int] = typer.Option(None, "--index", min=0, help="inline: run only the experiment with this "
                                        "index of the sweep's order (a Slurm array's $SLURM_ARRAY_TASK_ID)"),
    status: bool = typer.Option(False, "--status", help="ray, inline: list the experiments done (on the git "
                                "remote), running and failed, and the disk killed attempts left here, and stop"),
    clean: bool = typer.Option(False, "--clean", help="remove what killed attempts left in the work folder (with "
                               "--engine ray: of every machine of the cluster), never a running attempt's, and stop"),
    jobs: int = typer.Option(0, "--jobs", "-j", min=0, help="queue: also start this many queue workers (0: only queue)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="queue: print the dvc commands instead of queuing"),
) -> None:
    """Run a comparison as DVC experiments (one per task x method x seed) on DVC's queue, a Ray cluster or inline."""
    import subprocess

    from stages.app import user_errors
    from stages.sweep.queue import METHODS, experiments, known_tasks, parse_list, parse_seeds, queue_sweep
    from stages.sweep.job import clean_here, default_workdir
    from stages.sweep.remote import ENGINES, run_remote_sweep, status_report

    root = Path(".")
    with user_errors("sweep", debugging()):
        if engine not in ENGINES:
            raise UserError(f"--engine is {engine!r}; allowed: {', '.join(ENGINES)}")
        if address is not None and engine != "ray":
            raise UserError("--address goes with --engine ray")
        if (jobs or dry_run) and engine != "queue":
            raise UserError(f"--{'jobs' if jobs else 'dry-run'} goes with --engine queue")
        if engine == "ray":
            from stages.sweep.ray_engine import import_ray
            import_ray()
        if clean:
            if status or dry_run or jobs or index is not None:
                raise UserError("--clean goes alone (with --workdir, and --engine ray --address for a cluster)")
            if engine == "ray":
                from stages.sweep.ray_engine import ray_clean
                ray_clean(workdir, address, typer.echo)
            elif not clean_here(workdir, typer.echo):
                typer.echo(f"{workdir or default_workdir()}: no leftovers of killed attempts")
            return
        selection = (parse_list(tasks, known_tasks(root), "tasks"), parse_list(methods, tuple(METHODS), "methods"),
                     parse_seeds(seeds))
        if engine == "queue" and not status:
            n = queue_sweep(*selection, root, dry_run, echo=typer.echo, dvc=dvc_executable(), settings=settings)
        else:
            chosen = experiments(*selection, root, settings=settings)
            if index is not None:
                if engine != "inline" or status:
                    raise UserError("--index goes with --engine inline (one experiment of the sweep per call)")
                if index >= len(chosen):
                    raise UserError(f"--index is {index}; the sweep has {len(chosen)} experiments (0-{len(chosen) - 1})")
                chosen = chosen[index:index + 1]
            if status:
                for line in status_report(chosen, root, git_remote, workdir):
                    typer.echo(line)
                return
            landed, failed = run_remote_sweep(chosen, root, git_remote, engine, workdir, address, echo=typer.echo,
                                              ledger=index is None)  # array jobs would overwrite each other's
    if engine != "queue":
        if failed:
            typer.echo(f"{failed} failed; `gps sweep ... --status` lists them, the same command again reruns what is "
                       "missing", err=True)
            raise typer.Exit(1)
        typer.echo(f"{landed} landed; `dvc exp pull {git_remote}` in any clone, then `gps report --experiments`")
        return
    if dry_run:
        return
    typer.echo(f"queued {n} experiments; `dvc queue status` follows them, `gps report --experiments` tabulates the finished ones")
    if jobs:
        raise typer.Exit(subprocess.call([dvc_executable(), "queue", "start", "-j", str(jobs)]))


RootOpt = typer.Option(Path("."), "--root", help="project root: dvc.yaml goes here, iteration k's stages to pipelines/itr_kk/<step>/dvc.yaml")


@app.command("configure")
def configure(
    task: str = typer.Argument(..., help="a task of configs/: configs/<task>.yaml (an unknown name lists them)"),
    params_path: Path = ParamsOpt,
    root: Path = RootOpt,
) -> None:
    """Switch the run to a task: copy configs/<task>.yaml to params.yaml and regenerate the pipeline."""
    import shutil

    from stages.app import user_errors
    from stages.pipeline.generate import write_pipeline

    preset = Path("configs") / f"{task}.yaml"
    with user_errors("configure", debugging()):
        if not preset.exists():
            known = ", ".join(sorted(p.stem for p in Path("configs").glob("*.yaml"))) or "none (run from the project root)"
            raise UserError(f"{preset}: no such task settings; available: {known}")
        params = cfg.load_params(preset)
        tmp = params_path.with_name(f".{params_path.name}.tmp")
        shutil.copyfile(preset, tmp)
        tmp.replace(params_path)
        files = write_pipeline(params, params_path, root)
    typer.echo(f"wrote {params_path} (task {task}) and {len(files)} dvc.yaml files")


@app.command("pipeline")
def pipeline_cmd(params_path: Path = ParamsOpt, root: Path = RootOpt) -> None:
    """Write the pipeline (dvc.yaml and one pipelines/itr_kk/<step>/dvc.yaml per stage) for params.yaml."""
    from stages.app import user_errors
    from stages.pipeline.generate import write_pipeline

    with user_errors("pipeline", debugging()):
        files = write_pipeline(cfg.load_params(params_path), params_path, root)
    typer.echo(f"wrote {len(files)} dvc.yaml files ({files[0]} and {files[1].parent.parent.parent}/itr_*/*/dvc.yaml)")


@app.command("worker")
def worker_cmd(stop: bool = typer.Option(False, "--stop", help="ask every running worker of this user to exit")) -> None:
    """List the warm workers that run the pipeline commands (see stages/worker/client.py), or stop them.

    A worker exits by itself after GPS_WORKER_IDLE seconds (default 300) without work;
    GPS_WORKER=0 runs every command in its own process instead.
    """
    from stages.worker import client as launch

    folder = launch.worker_dir()
    socks = sorted(folder.glob("*.sock")) if folder else []
    if stop:
        typer.echo(f"asked {launch.stop_workers(folder)} worker(s) to stop")
        return
    current = launch.socket_path()
    for sock in socks:
        typer.echo(f"{sock}{'  (this code)' if sock == current else ''}")
    if not socks:
        typer.echo(f"no workers (sockets live in {folder})")
