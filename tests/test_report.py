"""gps report: Table 1 and Figure 1 from hand-made finished runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml
from conftest import task_params
from typer.testing import CliRunner

from stages.main import registered_app

app = registered_app()

runner = CliRunner()


def make_run(root: Path, name: str, task: str, seed: int, on_policy: bool, rule: str, rows: list[dict],
             settings: dict | None = None) -> Path:
    """A finished run's folder; settings: {dotted key: value} over the task's shipped params."""
    d = root / name
    (d / "data").mkdir(parents=True)
    params = task_params(task)
    params["seed"] = seed
    params["algorithm"]["sample_on_policy"] = on_policy
    params["algorithm"]["step_rule"] = rule
    for dotted, value in (settings or {}).items():
        *parents, last = dotted.split(".")
        node = params
        for part in parents:
            node = node[part]
        node[last] = value
    (d / "params.yaml").write_text(yaml.safe_dump(params))
    cols = list(rows[0])
    lines = [",".join(["iteration", *cols])] + [",".join([str(i + 1), *(f"{r[c]:g}" for c in cols)]) for i, r in enumerate(rows)]
    (d / "data" / "learning_curve.csv").write_text("\n".join(lines) + "\n")
    return d


def peg_rows(success_01: list[float], distance: list[float]) -> list[dict]:
    return [{"final_distance": d, "success_0.06": s / 2, "success_0.1": s} for s, d in zip(success_01, distance)]


def table_lines(output: str, heading: str) -> list[str]:
    block = output.split(f"### {heading}")[1].split("###")[0]
    return [line for line in block.splitlines() if line.startswith("| ")]


def test_table_mean_population_std_and_paper_values(tmp_path):
    # two seeds of On/Classic, one of Off/Global; success as a fraction of the 9 conditions
    a = make_run(tmp_path, "a", "peg", 0, True, "classic", peg_rows([0.0, 1 / 3, 1.0], [0.3, 0.2, 0.05]))
    b = make_run(tmp_path, "b", "peg", 1, True, "classic", peg_rows([0.0, 2 / 3, 0.5], [0.5, 0.1, 0.15]))
    c = make_run(tmp_path, "c", "peg", 0, False, "global", peg_rows([1 / 9, 0.0, 0.0], [0.2, 0.2, 0.2]))
    result = runner.invoke(app, ["report", str(a), str(b), str(c), "--iterations", "2,3"])
    assert result.exit_code == 0, result.output
    lines = table_lines(result.output, "Success rate (%) with threshold 0.1")
    assert lines[0] == "| task | itr | Off/Global | On/Classic |"  # the paper's column order
    # iteration 2: On/Classic 33.3 and 66.7 -> mean 50.0, population std 16.7; the paper has no iteration 2
    assert lines[1] == "| Peg | 2 | 0.0 ± 0.0 (1) | 50.0 ± 16.7 (2) |"
    # iteration 3: the paper's values follow in brackets
    assert lines[2] == "| Peg | 3 | 0.0 ± 0.0 (1) [6.7 ± 7.4] | 75.0 ± 25.0 (2) [6.7 ± 7.4] |"
    lines06 = table_lines(result.output, "Success rate (%) with threshold 0.06")  # halved rates, no paper values
    assert lines06[2] == "| Peg | 3 | 0.0 ± 0.0 (1) | 37.5 ± 12.5 (2) |"
    dist = table_lines(result.output, "Final distance to the target")
    assert dist[1] == "| Peg | 2 | 0.200 ± 0.000 (1) | 0.150 ± 0.050 (2) |"


def test_paper_value_in_brackets_at_the_paper_iterations(tmp_path):
    rows = peg_rows([1.0] * 12, [0.05] * 12)
    a = make_run(tmp_path, "a", "peg_blind", 0, False, "classic", rows)
    result = runner.invoke(app, ["report", str(a), "--out", str(tmp_path / "t.md")])
    assert result.exit_code == 0, result.output
    lines = table_lines(result.output, "Success rate (%) with threshold 0.1")
    assert lines[-1] == "| Blind Peg | 12 | 100.0 ± 0.0 (1) [95.0 ± 10.0] |"
    assert (tmp_path / "t.md").read_text() == result.output


def test_runs_shorter_than_an_iteration_are_left_out_of_its_cell(tmp_path):
    a = make_run(tmp_path, "a", "peg", 0, True, "classic", peg_rows([1.0, 1.0, 1.0], [0.0] * 3))
    b = make_run(tmp_path, "b", "peg", 1, True, "classic", peg_rows([0.0, 0.0], [0.0] * 2))
    result = runner.invoke(app, ["report", str(a), str(b), "--iterations", "2,3"])
    lines = table_lines(result.output, "Success rate (%) with threshold 0.1")
    assert lines[1:] == ["| Peg | 2 | 50.0 ± 50.0 (2) |", "| Peg | 3 | 100.0 ± 0.0 (1) [6.7 ± 7.4] |"]


def test_figure_is_a_png_with_a_panel_per_task(tmp_path):
    a = make_run(tmp_path, "a", "peg", 0, True, "classic", peg_rows([0.0, 1.0], [0.3, 0.05]))
    o = make_run(tmp_path, "o", "obstacle", 0, True, "classic", [{"final_distance": 2.0}, {"final_distance": 1.0}])
    fig = tmp_path / "fig" / "figure1.png"
    result = runner.invoke(app, ["report", str(a), str(o), "--figure", str(fig)])
    assert result.exit_code == 0, result.output
    from matplotlib.image import imread

    img = imread(fig)
    assert img.shape[1] > img.shape[0] * 1.8  # two panels side by side
    assert np.std(img[..., :3]) > 0.05  # something is drawn


def test_bad_runs_are_one_line_errors(tmp_path):
    a = make_run(tmp_path, "a", "peg", 0, True, "classic", peg_rows([0.0], [0.3]))
    b = make_run(tmp_path, "b", "peg", 0, True, "classic", peg_rows([0.0], [0.3]))
    dup = runner.invoke(app, ["report", str(a), str(b)])
    assert dup.exit_code == 2 and "seed given twice" in dup.output
    missing = runner.invoke(app, ["report", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "nope/params.yaml: file not found" in missing.output
    bad_itr = runner.invoke(app, ["report", str(a), "--iterations", "three"])
    assert bad_itr.exit_code == 2 and "--iterations" in bad_itr.output
    zero = runner.invoke(app, ["report", str(a), "--iterations", "0,1"])  # iteration 0 would show the last one's values
    assert zero.exit_code == 2 and "--iterations is '0,1', expected iterations from 1 on" in zero.output, zero.output


def test_a_run_that_stopped_is_named_and_left_out(tmp_path):
    done = make_run(tmp_path, "done", "peg", 0, True, "classic", peg_rows([1.0], [0.05]))
    stopped = make_run(tmp_path, "stopped", "peg", 1, True, "classic", peg_rows([0.0], [0.3]))
    (stopped / "data" / "learning_curve.csv").unlink()  # its summary stage never ran
    result = runner.invoke(app, ["report", str(done), str(stopped), "--iterations", "1"])
    assert result.exit_code == 0, result.output
    assert f"1 run(s) stopped before the end, left out: {stopped}" in result.output
    assert "100.0 ± 0.0 (1)" in table_lines(result.output, "Success rate (%) with threshold 0.1")[-1]
    only = runner.invoke(app, ["report", str(stopped)])
    assert only.exit_code == 2 and "no finished runs given" in only.output


def test_tasks_come_in_the_papers_order_whatever_the_order_of_the_runs(tmp_path):
    blind = make_run(tmp_path, "b", "peg_blind", 0, False, "classic", peg_rows([1.0], [0.05]))
    peg = make_run(tmp_path, "p", "peg", 0, True, "classic", peg_rows([1.0], [0.05]))
    obstacle = make_run(tmp_path, "o", "obstacle", 0, True, "classic", [{"final_distance": 1.0}])
    result = runner.invoke(app, ["report", str(blind), str(peg), str(obstacle), "--iterations", "1"])
    assert result.exit_code == 0, result.output
    rows = table_lines(result.output, "Final distance to the target")
    assert [r.split(" | ")[0] for r in rows[1:]] == ["| Obstacle", "| Peg", "| Blind Peg"]


def test_runs_are_grouped_by_the_settings_that_differ_within_a_method(tmp_path):
    rows = peg_rows([0.0, 0.5, 1.0], [0.3, 0.2, 0.1])
    runs = [make_run(tmp_path, "plain", "peg", 0, False, "global", rows),  # Off/Global: its runs differ in nothing
            make_run(tmp_path, "k2a", "peg", 0, True, "classic", rows),  # the shipped kl_step, 2.0
            make_run(tmp_path, "k2b", "peg", 1, True, "classic", peg_rows([1.0, 1.0, 0.0], [0.3, 0.2, 0.1])),
            make_run(tmp_path, "k10", "peg", 0, True, "classic", rows, {"algorithm.kl_step": 10}),
            make_run(tmp_path, "k05", "peg", 0, True, "classic", rows, {"algorithm.kl_step": 0.5})]
    result = runner.invoke(app, ["report", *map(str, runs), "--iterations", "3"])
    assert result.exit_code == 0, result.output
    lines = table_lines(result.output, "Success rate (%) with threshold 0.1")
    # the paper's method order, then the values by size (10 after 2.0); the paper's value only on the plain label
    assert lines[0] == "| task | itr | Off/Global | On/Classic kl_step=0.5 | On/Classic kl_step=2.0 | On/Classic kl_step=10 |"
    assert lines[1:] == ["| Peg | 3 | 100.0 ± 0.0 (1) [6.7 ± 7.4] | 100.0 ± 0.0 (1) | 50.0 ± 50.0 (2) | 100.0 ± 0.0 (1) |"]
    dup = make_run(tmp_path, "k10again", "peg", 0, True, "classic", rows, {"algorithm.kl_step": 10.0})
    twice = runner.invoke(app, ["report", *map(str, runs), str(dup)])  # 10 and 10.0 are one setting
    assert twice.exit_code == 2 and "Peg On/Classic kl_step=10: seed given twice ([0, 0])" in twice.output, twice.output


def test_settings_with_the_same_last_part_are_shown_by_their_whole_keys(tmp_path):
    rows = [{"final_distance": 1.0}]
    a = make_run(tmp_path, "a", "obstacle", 0, True, "classic", rows, {"iterations": 1, "policy.iterations": 50})
    b = make_run(tmp_path, "b", "obstacle", 0, True, "classic", rows, {"iterations": 2, "policy.iterations": 60})
    result = runner.invoke(app, ["report", str(a), str(b), "--iterations", "1"])
    assert result.exit_code == 0, result.output
    assert table_lines(result.output, "Final distance to the target")[0] == (
        "| task | itr | On/Classic iterations=1 policy.iterations=50 | On/Classic iterations=2 policy.iterations=60 |")


def test_rows_are_the_iterations_the_runs_have(tmp_path):
    peg = [make_run(tmp_path, f"p{s}", "peg", s, True, "classic", peg_rows([0.0] * 3, [0.3] * 3)) for s in (0, 1)]
    obstacle = make_run(tmp_path, "o", "obstacle", 0, True, "classic", [{"final_distance": 2.0}, {"final_distance": 1.0}])
    result = runner.invoke(app, ["report", *map(str, peg), str(obstacle)])  # the default --iterations 3,6,9,12
    assert result.exit_code == 0, result.output
    dist = table_lines(result.output, "Final distance to the target")
    # peg: row 3 only; obstacle reached none of them: its longest run's last iteration
    assert dist[1:] == ["| Obstacle | 2 | 1.000 ± 0.000 (1) |", "| Peg | 3 | 0.300 ± 0.000 (2) |"]
    success = table_lines(result.output, "Success rate (%) with threshold 0.1")  # peg's alone
    assert success[1:] == ["| Peg | 3 | 0.0 ± 0.0 (2) [6.7 ± 7.4] |"]
