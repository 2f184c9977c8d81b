"""benchmarks/compare_rl.py: MDGPS against Stable-Baselines3's SAC and PPO, each scored in Gymnasium's own
Reacher-v5 on the same episodes; trained for real at toy scale (a few hundred steps each)."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "compare_rl.py"
sys.path.insert(0, str(ROOT / "benchmarks"))
import compare_rl  # noqa: E402

EPISODES = 5  # Gymnasium episodes per evaluation (reset seeds 0-4)


def toy_gps_config(tmp: Path) -> Path:
    """configs/reacher.yaml shrunk: 2 iterations, 4 training and 2 held-out targets, 100 S-step iterations."""
    params = yaml.safe_load((ROOT / "configs" / "reacher.yaml").read_text())
    params["iterations"] = 2
    params["task"]["conditions"] = params["task"]["conditions"][:4]
    params["task"]["test_conditions"] = params["task"]["test_conditions"][:2]
    params["policy"]["iterations"] = 100
    params["gym_evaluation"]["episodes"] = EPISODES
    path = tmp / "reacher_toy.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def toy_settings(tmp: Path, seeds=(0, 1), sac_steps: int = 300, algorithms=("sac", "ppo")) -> Path:
    sb3 = {
        "sac": {"steps": sac_steps, "eval_every": 100, "checkpoint_every": 200, "source": "SB3 defaults, small buffer",
                "hyperparameters": {"buffer_size": 2000, "learning_starts": 100}},
        "ppo": {"steps": 256, "eval_every": 64, "checkpoint_every": 128, "source": "the Zoo's, shorter rollouts",
                "normalize": True, "hyperparameters": {"n_steps": 64, "batch_size": 32, "gamma": 0.9, "n_epochs": 2}},
    }
    doc = {"seeds": list(seeds), "tasks": {"reacher": {"gps_config": str(toy_gps_config(tmp)), "gps_method": "on_classic",
                                                       "sb3": {a: sb3[a] for a in algorithms}}}}
    path = tmp / "compare.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def script(*args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], cwd=cwd, capture_output=True, text=True)


def curve(out: Path, method: str, seed: int) -> dict:
    return json.loads((out / "reacher" / f"{method}_s{seed}" / "curve.json").read_text())


@pytest.mark.sb3
@pytest.mark.slow
def test_the_comparison_end_to_end_at_toy_scale_from_real_training(tmp_path):
    import gymnasium
    from stable_baselines3 import PPO, SAC
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    from stages.settings.load import load_settings
    from stages.steps.evaluate_gym import score_in_gym

    settings, out = toy_settings(tmp_path), tmp_path / "out"
    r = script("run", "--settings", settings, "--out", out, "-j", "2", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith("6 runs to do") and r.stdout.count("finished in") == 6

    for seed in (0, 1):
        sac, ppo, mdgps = (curve(out, m, seed) for m in ("sac", "ppo", "mdgps"))
        assert sac["env_steps"] == [100, 200, 300] and ppo["env_steps"] == [64, 128, 192, 256]
        # MDGPS: 2 iterations x (4 conditions x 5 samples + 6 evaluation rollouts) x T = 50, no redraws here
        assert mdgps["env_steps"] == [1300, 2600]
        for c in (sac, ppo, mdgps):
            assert c["finished"] and c["env"] == "Reacher-v5" and c["episodes"] == EPISODES
            assert all(-60 < x < 0 for x in c["return_mean"]) and np.all(np.diff(c["train_seconds"]) > 0)
    # Seeds train differently, and each curve is the policy's own: the final SAC model, scored again on the
    # same episodes, gives its last point exactly, and it trained the steps it says.
    assert curve(out, "sac", 0)["return_mean"] != curve(out, "sac", 1)["return_mean"]
    model = SAC.load(out / "reacher" / "sac_s0" / "checkpoint" / "model.zip", device="cpu")
    # One gradient step after each step beyond learning_starts (101..299: the evaluation at step 300, and its
    # checkpoint, come before that step's update).
    assert model.num_timesteps == 300 and model._n_updates == 199
    env = gymnasium.make("Reacher-v5")
    again = compare_rl.gym_returns(env, lambda o: model.predict(o, deterministic=True)[0], list(range(EPISODES)))
    assert again.mean() == curve(out, "sac", 0)["return_mean"][-1]
    # PPO acts on observations normalised by the statistics it trained with, frozen
    ckpt = out / "reacher" / "ppo_s1" / "checkpoint"
    ppo = PPO.load(ckpt / "model.zip", device="cpu")
    norm = VecNormalize.load(str(ckpt / "vecnormalize.pkl"), DummyVecEnv([lambda: gymnasium.make("Reacher-v5")]))
    again = compare_rl.gym_returns(env, lambda o: ppo.predict(norm.normalize_obs(o), deterministic=True)[0],
                                   list(range(EPISODES)))
    assert again.mean() == curve(out, "ppo", 1)["return_mean"][-1]
    run = out / "reacher" / "mdgps_s1"
    s = load_settings(run / "params.yaml")
    assert score_in_gym(s, run / "data" / "itr_01" / "policy.h5", EPISODES).returns.mean() == curve(out, "mdgps", 1)["return_mean"][-1]

    r = script("report", "--settings", settings, "--out", out, "--figures", tmp_path / "fig", "--levels=-60,-1", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "| return level | MDGPS | SAC | PPO | SAC / MDGPS | PPO / MDGPS |\n|---|---|---|---|---|---|\n| -60 | 1,300 | 100 | 64 |" in r.stdout
    rows = [ln for ln in r.stdout.splitlines() if ln.startswith("| ") and not ln.startswith(("| method", "| return level", "| -"))]
    assert [row.split(" (")[0] for row in rows] == ["| MDGPS", "| SAC", "| PPO"]
    assert "steps to threshold -3.75" in r.stdout and all(" 2 |" in row for row in rows)  # 2 seeds each
    mdgps_best = max(np.mean([curve(out, "mdgps", s)["return_mean"] for s in (0, 1)], axis=0))
    assert f"steps to MDGPS's best ({mdgps_best:.2f})" in r.stdout
    png = tmp_path / "fig" / "compare_rl_reacher.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000

    again = script("run", "--settings", settings, "--out", out, cwd=tmp_path)
    assert again.returncode == 0 and again.stdout.startswith("0 runs to do")


@pytest.mark.sb3
@pytest.mark.slow
def test_a_stopped_run_checkpoints_and_resumes_reproducibly(tmp_path):
    settings, out = toy_settings(tmp_path, seeds=(0,), sac_steps=400, algorithms=("sac",)), tmp_path / "out"
    one = ("one", "--settings", settings, "--out", out, "--task", "reacher", "--method", "sac", "--seed", 0)
    proc = subprocess.Popen([sys.executable, str(SCRIPT), *map(str, one)], cwd=tmp_path, stdout=subprocess.PIPE, text=True)
    path = out / "reacher" / "sac_s0" / "curve.json"
    deadline = time.time() + 120
    while not (path.exists() and json.loads(path.read_text())["env_steps"]) and time.time() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    stdout, _ = proc.communicate(timeout=60)
    assert proc.returncode == compare_rl.STOPPED, stdout
    state = json.loads((out / "reacher" / "sac_s0" / "checkpoint" / "state.json").read_text())
    assert 100 <= state["env_steps"] < 400 and f"stopped at {state['env_steps']} steps, checkpointed" in stdout
    first = json.loads(path.read_text())
    assert not first["finished"]

    # Resumed twice from that checkpoint: the same run both times, the curve before the checkpoint kept.
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    for folder in (out, copy):
        r = script(*one[:4], folder, *one[5:], cwd=tmp_path)
        assert r.returncode == 0, r.stderr
    a, b = curve(out, "sac", 0), curve(copy, "sac", 0)
    assert a["env_steps"] == [100, 200, 300, 400] and a["finished"] and a["resumed_at"] == [state["env_steps"]]
    assert a["return_mean"] == b["return_mean"]
    kept = [i for i, s in enumerate(first["env_steps"]) if s <= state["env_steps"]]
    assert [a["return_mean"][i] for i in kept] == [first["return_mean"][i] for i in kept]
    assert a["train_seconds"][-1] > state["train_seconds"]

    # More steps in the settings continue the finished run from its last checkpoint.
    doc = yaml.safe_load(settings.read_text())
    doc["tasks"]["reacher"]["sb3"]["sac"]["steps"] = 600
    settings.write_text(yaml.safe_dump(doc))
    assert script(*one, cwd=tmp_path).returncode == 0
    c = curve(out, "sac", 0)
    assert c["env_steps"] == [100, 200, 300, 400, 500, 600] and c["resumed_at"] == [state["env_steps"], 400]
    assert c["return_mean"][:4] == a["return_mean"]


def test_without_stable_baselines3_one_line_and_nothing_written(tmp_path):
    settings, out = toy_settings(tmp_path), tmp_path / "out"
    code = ("import runpy, sys; sys.modules['stable_baselines3'] = None; "  # as if it were not installed
            f"sys.argv = ['compare_rl.py', 'run', '--settings', {str(settings)!r}, '--out', {str(out)!r}]; "
            f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr == f"compare_rl: error: {compare_rl.SB3_MISSING}\n"
    assert not out.exists()


BAD_SETTINGS = [
    (lambda d: d["tasks"]["reacher"]["sb3"]["sac"]["hyperparameters"].update(learning_rat=1e-3),
     "tasks.reacher.sb3.sac.hyperparameters.learning_rat: not an argument of stable_baselines3.SAC"),
    (lambda d: d["tasks"]["reacher"]["sb3"]["sac"].update(checkpoint_every=150),
     "tasks.reacher.sb3.sac.checkpoint_every: expected a multiple of eval_every (100), got 150"),
    (lambda d: d["tasks"]["reacher"]["sb3"]["ppo"].update(steps=0), "tasks.reacher.sb3.ppo.steps: expected a positive integer, got 0"),
    (lambda d: d["tasks"]["reacher"]["sb3"].update(td3={}), "tasks.reacher.sb3.td3: expected one of sac, ppo, got 'td3'"),
    (lambda d: d["tasks"]["reacher"].update(gps_method="badmm"), "tasks.reacher.gps_method: expected one of"),
    (lambda d: d["tasks"]["reacher"].update(gps_config="nowhere.yaml"), "tasks.reacher.gps_config: no such file 'nowhere.yaml'"),
    (lambda d: d.update(seeds=[0, -1]), "seeds: expected a list of non-negative integers, got [0, -1]"),
    (lambda d: d["tasks"]["reacher"]["sb3"]["sac"].pop("source"), "tasks.reacher.sb3.sac.source: expected a string"),
]


@pytest.mark.sb3
@pytest.mark.parametrize("change, message", BAD_SETTINGS, ids=[m.split(":")[0] for _, m in BAD_SETTINGS])
def test_bad_settings_one_line_naming_the_field_exit_2_nothing_written(tmp_path, capsys, change, message):
    settings, out = toy_settings(tmp_path), tmp_path / "out"
    doc = yaml.safe_load(settings.read_text())
    change(doc)
    settings.write_text(yaml.safe_dump(doc))
    with pytest.raises(SystemExit) as exc:
        compare_rl.main(["run", "--settings", str(settings), "--out", str(out)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"compare_rl: error: {settings}: {message}") and err.count("\n") == 1
    assert not out.exists()


def method_curve(returns: list[list[float]], steps: list[int]) -> compare_rl.MethodCurve:
    r = np.array(returns)
    return compare_rl.MethodCurve("sac", list(range(len(r))), np.array(steps, float), r,
                                  np.cumsum(np.ones_like(r), axis=1) * 10, True, "test")


def test_steps_to_a_level_are_where_the_mean_over_seeds_first_reaches_it():
    c = method_curve([[-9, -5, -3.5, -4.0], [-9, -4, -4.1, -3.6]], [10, 20, 30, 40])
    # means -9, -4.5, -3.8, -3.8: the mean never reaches -3.75 though both seeds do on their own
    assert c.first_reaching(-3.75) is None and c.seeds_reaching(-3.75) == 2
    assert c.first_reaching(-4.5) == 1 and c.first_reaching(-3.81) == 2
    assert compare_rl.reaching(c, -4.5) == ("20 (2/2 seeds)", "20 s")
    assert compare_rl.reaching(c, -3.0) == ("not reached (0/2 seeds)", "—")


def test_levels_table_gives_each_methods_steps_and_their_ratio_to_mdgps():
    mdgps = method_curve([[-9, -6, -4], [-9, -6, -4]], [100, 200, 300])
    sac = method_curve([[-7, -5, -4.5], [-7, -5, -4.5]], [50, 100, 150])
    mdgps.method = "mdgps"
    lines = compare_rl.levels_table({"mdgps": mdgps, "sac": sac}, [-6, -4])
    assert lines[0] == "| return level | MDGPS | SAC | SAC / MDGPS |"
    assert lines[2] == "| -6 | 200 | 100 | 0.50 |"  # SAC needs half of MDGPS's steps
    assert lines[3] == "| -4 | 300 | > 150 | > 0.5 |"  # not reached by SAC's 150 steps: a bound


# ------------------------------------------------------------------------- several GPS methods per task
def gps_settings(tmp: Path, gps_methods, seeds=(0,)) -> Path:
    doc = {"seeds": list(seeds), "tasks": {"reacher": {"gps_config": str(toy_gps_config(tmp)), "gps_methods": gps_methods}}}
    path = tmp / "compare.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def test_a_task_names_several_gps_methods_each_with_its_runs_name_and_label(tmp_path):
    variant = {"method": "pigps", "name": "pigps_n3", "label": "PIGPS, 3 samples", "set": {"agent.num_samples": 3}}
    cmp = compare_rl.load_comparison(gps_settings(tmp_path, ["on_classic", "mdgps_pilqr", "pigps", variant], seeds=(0, 1)))
    gps = cmp.tasks["reacher"].gps
    assert list(gps) == ["mdgps", "mdgps_pilqr", "pigps", "pigps_n3"]  # on_classic's runs keep their name
    assert [g.label for g in gps.values()] == ["MDGPS", "MDGPS-PILQR", "PIGPS", "PIGPS, 3 samples"]
    assert gps["pigps_n3"].source == "pigps, agent.num_samples=3"
    # the file's order, seeds within each method
    assert [(j.method, j.seed) for j in compare_rl.jobs(cmp)] == [
        (m, s) for m in ("mdgps", "mdgps_pilqr", "pigps", "pigps_n3") for s in (0, 1)]
    params = compare_rl.gps_params(cmp.tasks["reacher"], gps["pigps_n3"], 1)
    assert params["algorithm"]["name"] == "pigps" and params["algorithm"]["sample_on_policy"] is True
    assert params["agent"]["num_samples"] == 3 and params["seed"] == 1
    base = compare_rl.gps_params(cmp.tasks["reacher"], gps["mdgps"], 1)
    assert base["algorithm"]["name"] == "mdgps" and base["agent"]["num_samples"] == 5
    # one gps_method, as the settings of issue 18 have it, is a list of one
    single = yaml.safe_load((tmp_path / "compare.yaml").read_text())
    single["tasks"]["reacher"] = {"gps_config": single["tasks"]["reacher"]["gps_config"], "gps_method": "on_classic"}
    (tmp_path / "single.yaml").write_text(yaml.safe_dump(single))
    assert list(compare_rl.load_comparison(tmp_path / "single.yaml").tasks["reacher"].gps) == ["mdgps"]


BAD_GPS = [
    (["on_classic", "on_classic"], "tasks.reacher.gps_methods[1]: a second GPS method named 'mdgps' (give it a name)"),
    (["on_classic", "badmm"], "tasks.reacher.gps_methods[1]: expected one of"),
    ([{"method": "pigps", "set": {"algorithm.name": "pi2"}}], "tasks.reacher.gps_methods[0].set.algorithm.name: set by the method pigps"),
    ([{"method": "pigps", "name": "sac"}], "tasks.reacher.gps_methods[0].name: 'sac' names an SB3 algorithm's runs"),
    ([{"method": "pigps", "samples": 3}], "tasks.reacher.gps_methods[0].samples: not a setting"),
    ([], "tasks.reacher.gps_methods: expected a list of GPS methods"),
]


@pytest.mark.parametrize("methods, message", BAD_GPS, ids=[m.split(":")[1].strip() for _, m in BAD_GPS])
def test_bad_gps_methods_one_line_naming_the_item(tmp_path, methods, message):
    settings = gps_settings(tmp_path, methods)
    with pytest.raises(compare_rl.SettingsError) as exc:
        compare_rl.load_comparison(settings)
    assert str(exc.value).startswith(f"{settings}: {message}")
    doc = yaml.safe_load(settings.read_text())
    doc["tasks"]["reacher"]["gps_method"] = "on_classic"  # both: which one?
    settings.write_text(yaml.safe_dump(doc))
    with pytest.raises(compare_rl.SettingsError, match="expected gps_methods .* or gps_method"):
        compare_rl.load_comparison(settings)


def fake_curve(out: Path, name: str, seed: int, steps: list[int], returns: list[float], source: str) -> None:
    folder = out / "reacher" / f"{name}_s{seed}"
    folder.mkdir(parents=True)
    doc = {"method": name, "seed": seed, "source": source, "env_steps": steps, "return_mean": returns,
           "return_std": [0.0] * len(steps), "train_seconds": [float(s) / 100 for s in steps], "finished": True}
    (folder / "curve.json").write_text(json.dumps(doc))


def test_the_report_shows_each_gps_method_as_its_own_row_and_line(tmp_path, capsys):
    variant = {"method": "mdgps_pilqr", "name": "mdgps_pilqr_n20", "label": "MDGPS-PILQR, 20 samples (variant)",
               "set": {"agent.num_samples": 20}}
    settings, out = gps_settings(tmp_path, ["on_classic", "mdgps_pilqr", "pigps", variant], seeds=(0, 1)), tmp_path / "out"
    for s in (0, 1):
        fake_curve(out, "mdgps", s, [100, 200, 300], [-9, -6, -5], "reacher_toy.yaml, on_classic")
        fake_curve(out, "mdgps_pilqr", s, [100, 200, 300], [-9, -7, -4], "reacher_toy.yaml, mdgps_pilqr")
        fake_curve(out, "mdgps_pilqr_n20", s, [400, 800], [-8, -5], "reacher_toy.yaml, mdgps_pilqr, agent.num_samples=20")
    # no pigps runs yet: left out of the table
    compare_rl.main(["report", "--settings", str(settings), "--out", str(out), "--figures", str(tmp_path / "fig"),
                     "--levels=-6,-4.5", "--tasks", "reacher", "--ymin=-8"])
    text = capsys.readouterr().out
    rows = [ln for ln in text.splitlines() if ln.startswith("| ") and not ln.startswith(("| method", "| return level", "| -"))]
    assert [row.split(" (")[0] for row in rows] == ["| MDGPS", "| MDGPS-PILQR", "| MDGPS-PILQR, 20 samples"]
    assert "| MDGPS-PILQR, 20 samples (variant) (reacher_toy.yaml, mdgps_pilqr, agent.num_samples=20) | 2 | 800 |" in text
    assert "| return level | MDGPS | MDGPS-PILQR | MDGPS-PILQR, 20 samples (variant) | MDGPS-PILQR / MDGPS |" in text
    assert "| -4.5 | > 300 | 300 | > 800 | — | — |" in text  # MDGPS never reaches -4.5: no ratio
    assert "| -6 | 200 | 300 | 800 | 1.50 | 4.00 |" in text
    png = tmp_path / "fig" / "compare_rl_reacher.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(SystemExit) as exc:
        compare_rl.main(["report", "--settings", str(settings), "--out", str(out), "--tasks", "pusher"])
    assert exc.value.code == 2 and "no task 'pusher' (expected one of reacher)" in capsys.readouterr().err


@pytest.mark.slow
def test_gps_methods_run_and_count_their_steps_at_toy_scale(tmp_path):
    """PIGPS and a variant with fewer samples, trained for real: the same step count as MDGPS's (every draw plus
    the evaluation rollouts), the variant's with its own samples; a finished run of the same settings is scored
    again without training."""
    variant = {"method": "pigps", "name": "pigps_n3", "label": "PIGPS, 3 samples", "set": {"agent.num_samples": 3}}
    settings, out = gps_settings(tmp_path, ["pigps", variant]), tmp_path / "out"
    r = script("run", "--settings", settings, "--out", out, "-j", "1", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith("2 runs to do") and r.stdout.count("finished in") == 2
    pigps, n3 = curve(out, "pigps", 0), curve(out, "pigps_n3", 0)
    # 2 iterations x (4 conditions x 5 or 3 samples + 6 evaluation rollouts) x T = 50, no redraws here
    assert pigps["env_steps"] == [1300, 2600] and n3["env_steps"] == [900, 1800]
    assert pigps["method"] == "pigps" and pigps["source"] == "reacher_toy.yaml, pigps" and pigps["finished"]
    assert n3["source"] == "reacher_toy.yaml, pigps, agent.num_samples=3"
    run = out / "reacher" / "pigps_s0"
    assert yaml.safe_load((run / "params.yaml").read_text())["algorithm"]["name"] == "pigps"
    assert "gps pi2: done in" in (run / "run.log").read_text()
    (run / "curve.json").unlink()
    log_before = (run / "run.log").read_text()
    r = script("run", "--settings", settings, "--out", out, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.startswith("1 runs to do")
    assert "a finished run of these settings, scored again" in (run / "train.log").read_text()
    assert (run / "run.log").read_text() == log_before  # not trained again
    assert curve(out, "pigps", 0)["return_mean"] == pigps["return_mean"]
