"""RunLayout names every path of a run directory, and the README shows its tree."""

from pathlib import Path

from riselm.rundir import RunLayout

ROOT = Path(__file__).parent.parent


def test_the_readme_shows_the_layouts_tree():
    assert RunLayout.describe() in (ROOT / "README.md").read_text()


def test_stage_paths(tmp_path):
    layout = RunLayout(tmp_path)
    assert layout.model("boost") == tmp_path / "boost" / "train" / "final"
    assert layout.model("iter2") == tmp_path / "iter2" / "train" / "final"
    assert layout.model("online") == tmp_path / "online" / "final"
    assert layout.eval_dir("online@40") == tmp_path / "online" / "eval-step40"
    assert layout.collect_dir(2) == layout.collect_dir("iter2") == tmp_path / "iter2" / "collect"
    assert RunLayout.stage_of(layout.eval_dir("boost") / "episodes.sequential.jsonl") == "boost"
    assert RunLayout.stage_of(layout.online_eval_dir(40) / "episodes.sequential.jsonl") == "online@40"
    assert RunLayout.stage_of(tmp_path / "x.jsonl") is None


def test_online_evaluations_are_found_by_step_in_order(tmp_path):
    layout = RunLayout(tmp_path)
    for step in (100, 20, 3):
        layout.online_eval_dir(step).mkdir(parents=True)
        (layout.online_eval_dir(step) / "metrics.json").write_text("{}")
    layout.online_eval_dir(7).mkdir()  # unfinished: no metrics.json
    (layout.online_dir / "eval-stepX").mkdir()
    assert [step for step, _ in layout.online_evaluations()] == [3, 20, 100]
