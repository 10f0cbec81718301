"""compare_runs across two hand-written runs with different stages, turns and parallel samples."""

import json

import pytest

from riselm.analysis.budget import cumulative, run_budgets
from riselm.analysis.compare import compare_runs
from riselm.analysis.runs import read_run
from riselm.jsonl import DataError


def test_final_stages_in_table_1_form(tmp_path, rise_run, online_run):
    result = compare_runs([rise_run, online_run], tmp_path / "cmp", count_tokens=False)
    # the union of both runs' columns, in Table 1 order
    assert result["columns"] == ["m1@t1", "m3@t1", "m5@t1", "m1@t3", "m1@t5", "p1@t3", "p1@t5"]
    rise, online = result["rows"]
    assert (rise["run"], rise["stage"], online["run"], online["stage"]) == ("runs/rise", "iter1", "runs2/rise", "online")
    assert rise["metrics"] == {"m1@t1": 20.0, "m3@t1": None, "m5@t1": 30.0, "m1@t3": None, "m1@t5": 35.0, "p1@t3": None, "p1@t5": 50.0}
    assert online["metrics"]["m3@t1"] == 15.0 and online["metrics"]["m1@t5"] is None
    table = (tmp_path / "cmp" / "compare.md").read_text()
    assert "| runs/rise | iter1 | 20.0 | – | 30.0 | – | 35.0 | – | 50.0 | 10 | 5 | – | 150 |" in table
    assert "| runs2/rise | online | 12.0 | 15.0 | – | 16.0 | – | 25.0 | – | 24 | 24 | 12,345 | 17 |" in table
    saved = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert saved["rows"][1]["parallel"] == {"samples": 3, "value": 15.0}
    assert (tmp_path / "cmp" / "compare.png").stat().st_size > 0


def test_every_stage_with_cumulative_budgets(rise_run, online_run):
    rows = compare_runs([rise_run, online_run], all_stages=True, count_tokens=False)["rows"]
    assert [(r["run"], r["stage"]) for r in rows] == [
        ("runs/rise", "boost"),
        ("runs/rise", "iter1"),
        ("runs2/rise", "base"),
        ("runs2/rise", "online@2"),
        ("runs2/rise", "online"),
    ]
    boost, iter1, base, online2, online = rows
    assert boost["budget"] == {"generated_responses": 0, "trained_samples": 3, "trained_tokens": None, "wall_s": 70.0}
    assert iter1["stage_budget"]["generated_responses"] == 10 and iter1["budget"]["trained_samples"] == 5
    assert base["budget"] == {"generated_responses": 0, "trained_samples": 0, "trained_tokens": 0, "wall_s": 5.0}
    assert base["budget_sources"]["wall_s"] == "budget.json stages.base"
    # online@2 holds steps 1-2 (8 actions and 1 s, 2 s each); online the rest of the stage's 12 s
    assert online2["stage_budget"] == {"generated_responses": 16, "trained_samples": 16, "trained_tokens": None, "wall_s": 3.0}
    assert online["stage_budget"] == {"generated_responses": 8, "trained_samples": 8, "trained_tokens": None, "wall_s": 9.0}
    assert online["budget"] == {"generated_responses": 24, "trained_samples": 24, "trained_tokens": 12345, "wall_s": 17.0}


def test_trained_tokens_are_the_trained_spans_times_epochs(rise_run):
    # char tokenizer: a response of n characters trains n tokens plus the end-of-turn token
    own = run_budgets(read_run(rise_run), count_tokens=True)
    assert own[0].trained_tokens == (2 + 1) + (3 + 1) + (1 + 1)  # boost, 1 epoch
    assert own[1].trained_tokens == 2 * ((2 + 1) + (4 + 1))  # iter1, 2 epochs
    assert cumulative(own)[1].trained_tokens == 9 + 16


def test_a_directory_without_summary_is_an_error_naming_it(tmp_path, rise_run):
    empty = tmp_path / "not-a-run"
    empty.mkdir()
    with pytest.raises(DataError, match="not-a-run.*summary.json"):
        compare_runs([rise_run, empty], tmp_path / "cmp")
    assert not (tmp_path / "cmp").exists()  # nothing written before every run is read


def test_a_bad_budget_file_is_an_error(rise_run):
    (rise_run / "budget.json").write_text(json.dumps({"wall_s": "an hour"}))
    with pytest.raises(DataError, match="wall_s must be a number"):
        compare_runs([rise_run], count_tokens=False)
