"""`riselm score`: rows in, the same rows out with `pred` and `reward`; bad rows name file:line."""

from __future__ import annotations

import json

import pytest

from riselm.jsonl import DataError, read_jsonl
from riselm.scoring import score_file, score_rows
from riselm.tasks import get_task

GSM8K_ROW = {
    "question": "Tom has 1,000 apples and buys 600. How many?",
    "answer": "1000 + 600 = <<1000+600=1600>>1600\n#### 1,600",
}


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_score_rows_keeps_rows_and_order():
    responses = ["\\boxed{1,600}", "\\boxed{1599}", "no idea", "\\boxed{1600}"]
    rows = [{**GSM8K_ROW, "response": r, "sample": i} for i, r in enumerate(responses)]
    scored = score_rows(get_task("gsm8k"), rows)
    assert [r["sample"] for r in scored] == [0, 1, 2, 3]
    assert [r["reward"] for r in scored] == [1.0, 0.0, 0.0, 1.0]
    assert [r["pred"] for r in scored] == ["1,600", "1599", None, "1600"]
    assert all(r["response"] == s["response"] and r["answer"] == s["answer"] for r, s in zip(rows, scored))
    assert "pred" not in rows[0]  # the caller's rows are not modified


def test_score_file_to_output_and_stdout(tmp_path, capsys):
    source = tmp_path / "responses.jsonl"
    _write(source, [{**GSM8K_ROW, "response": "\\boxed{1600}"}, {**GSM8K_ROW, "response": "nothing"}])
    out = tmp_path / "scored.jsonl"
    scored = score_file("gsm8k", source, out, unparsable_reward=-1.0)
    assert read_jsonl(out) == scored
    assert [r["reward"] for r in scored] == [1.0, -1.0]
    score_file("gsm8k", source)
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["reward"] for r in printed] == [1.0, 0.0]


def test_score_file_in_place(tmp_path):
    source = tmp_path / "responses.jsonl"
    _write(source, [{"problem": "1/2 as a decimal?", "solution": "$\\boxed{\\frac12}$", "response": "\\boxed{0.5}"}])
    score_file("math", source, source)
    [row] = read_jsonl(source)
    assert row["reward"] == 1.0 and row["pred"] == "0.5"


@pytest.mark.parametrize(
    "row, message",
    [
        ({"question": "q", "response": "r"}, r"bad\.jsonl:2: missing field\(s\) 'answer'"),
        ({**GSM8K_ROW, "response": None}, r"bad\.jsonl:2: expected 'response' holding the text"),
        ({"question": "q", "answer": "no final line", "response": "r"}, r"bad\.jsonl:2: not a valid gsm8k row"),
    ],
)
def test_malformed_rows_name_file_and_line(tmp_path, row, message):
    source = tmp_path / "bad.jsonl"
    _write(source, [{**GSM8K_ROW, "response": "\\boxed{1600}"}, row])
    out = tmp_path / "out.jsonl"
    with pytest.raises(DataError, match=message):
        score_file("gsm8k", source, out)
    assert not out.exists()  # nothing half-written


def test_score_rows_error_names_the_source():
    task = get_task("gsm8k")
    with pytest.raises(DataError, match=r"mine:1: expected a JSON object"):
        score_rows(task, [["not", "a", "row"]], source="mine")
    with pytest.raises(DataError, match=r"mine:2: missing field\(s\) 'question'"):
        score_rows(task, [{**GSM8K_ROW, "response": ""}, {"answer": "#### 1", "response": ""}], source="mine")


def test_invalid_json_names_the_line(tmp_path):
    source = tmp_path / "broken.jsonl"
    source.write_text(json.dumps({**GSM8K_ROW, "response": "x"}) + "\n{oops\n")
    with pytest.raises(DataError, match=r"broken\.jsonl:2"):
        score_file("gsm8k", source, tmp_path / "out.jsonl")
