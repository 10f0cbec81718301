"""Transition matrices and the Fig. 2 table, checked against counts done by hand."""

import json

import pytest

from riselm.analysis.fixes import fixes_of_files
from riselm.analysis.transitions import transitions_of_file
from riselm.jsonl import DataError
from tests.analysis.helpers import episode, write_jsonl


def test_transitions_by_hand(tmp_path):
    path = write_jsonl(
        tmp_path / "seq.jsonl",
        [
            episode("a", [1, 1, 1]),
            episode("b", [0, 1, 0]),
            episode("c", [0, 0, 1]),
            episode("d", [1, 0]),  # stopped after two turns: counted at k=2 only
        ],
    )
    result = transitions_of_file(path, tmp_path / "out")
    k2, k3 = result["turns"]
    assert (k2["turn"], k2["right_right"], k2["right_wrong"], k2["wrong_right"], k2["wrong_wrong"]) == (2, 1, 1, 1, 1)
    assert k2["shares"] == {"right_right": 25.0, "right_wrong": 25.0, "wrong_right": 25.0, "wrong_wrong": 25.0}
    assert (k2["fixed"], k2["broken"]) == (50.0, 50.0)
    assert (k3["total"], k3["right_right"], k3["right_wrong"], k3["wrong_right"], k3["wrong_wrong"]) == (3, 1, 1, 1, 0)
    assert k3["shares"]["wrong_wrong"] == 0.0 and k3["shares"]["right_right"] == 33.33
    assert (k3["fixed"], k3["broken"]) == (100.0, 50.0)
    table = (tmp_path / "out" / "transitions.md").read_text()
    assert "| 2 | 4 | 1 (25.0%) | 1 (25.0%) | 1 (25.0%) | 1 (25.0%) | 50.0 | 50.0 |" in table
    assert "| 3 | 3 | 1 (33.3%) | 1 (33.3%) | 1 (33.3%) | 0 (0.0%) | 100.0 | 50.0 |" in table
    assert json.loads((tmp_path / "out" / "transitions.json").read_text())["episodes"] == 4
    assert (tmp_path / "out" / "transitions.png").stat().st_size > 0


def test_transitions_refuse_parallel_and_one_turn_files(tmp_path):
    parallel = write_jsonl(tmp_path / "par.jsonl", [episode("a", [1], mode="parallel")])
    with pytest.raises(DataError, match="parallel"):
        transitions_of_file(parallel)
    single = write_jsonl(tmp_path / "one.jsonl", [episode("a", [1])])
    with pytest.raises(DataError, match="second turn"):
        transitions_of_file(single)


@pytest.fixture
def fix_files(tmp_path):
    samples = {"p0": [0, 0, 0], "p1": [0, 1, 0], "p2": [1, 0, 0], "p3": [0, 0, 1], "p4": [0, 0, 0]}
    parallel = [episode(pid, [r], mode="parallel", sample=s, prompt=f"Q {pid}") for pid, rs in samples.items() for s, r in enumerate(rs)]
    sequential = [
        episode("p0", [0, 1, 0], preds=["5", "7", "5"], prompt="Q p0"),  # solved at t2; majority 5 is wrong
        episode("p1", [1, 1, 1], preds=["7", "7", "7"], prompt="Q p1"),
        episode("p2", [0, 0, 0], preds=["1", "2", "3"], prompt="Q p2"),
        episode("p3", [0, 1, 1], preds=["1", "9", "9"], prompt="Q p3"),  # majority 9 is right
    ]  # p4 has no sequential episode: left out
    return write_jsonl(tmp_path / "par.jsonl", parallel[::-1]), write_jsonl(tmp_path / "seq.jsonl", sequential)


def test_fixes_by_hand(tmp_path, fix_files):
    result = fixes_of_files(*fix_files, out_dir=tmp_path / "out")
    assert (result["problems"], result["turns"], result["parallel_only"]) == (4, 3, 1)
    rows = [(r["samples"], r["unsolved"], r["first_turn"], r["p1"], r["m1"]) for r in result["rows"]]
    # B=1: p0, p1, p3 miss with their first sample; B=2: p0, p3; B=3: p0
    assert rows == [(1, 3, 33.33, 100.0, 66.67), (2, 2, 0.0, 100.0, 50.0), (3, 1, 0.0, 100.0, 0.0)]
    table = (tmp_path / "out" / "fixes.md").read_text()
    assert "| 2 | 2 of 4 | 0.0 | 100.0 | 50.0 |" in table and "1 parallel-only left out" in table
    assert (tmp_path / "out" / "fixes.png").exists()


def test_fixes_with_fewer_turns(fix_files):
    rows = fixes_of_files(*fix_files, turns=1)["rows"]
    assert [(r["p1"], r["m1"]) for r in rows] == [(33.33, 33.33), (0.0, 0.0), (0.0, 0.0)]


def test_fixes_refuse_swapped_files_and_different_problems(tmp_path, fix_files):
    parallel, sequential = fix_files
    with pytest.raises(DataError, match="expected parallel episodes"):
        fixes_of_files(sequential, parallel)
    other = write_jsonl(tmp_path / "other.jsonl", [episode("p0", [0, 1], prompt="another question")])
    with pytest.raises(DataError, match="different prompts"):
        fixes_of_files(parallel, other)
