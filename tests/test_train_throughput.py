"""benchmarks/train_throughput.py refuses a trainer it does not know before loading anything."""

import pytest

from tests.bench import load_benchmark


def test_an_unknown_kind_is_a_one_line_error_with_exit_2(capsys):
    with pytest.raises(SystemExit) as stopped:
        load_benchmark("train_throughput").main(["--kinds", "plain,bogus", "--model", "no/such/model"])
    assert stopped.value.code == 2
    assert "--kinds: unknown trainer(s) bogus; expected some of plain, weighted" in capsys.readouterr().err


def test_the_results_compare_with_the_first_kind_and_are_added_to_the_record(tmp_path):
    from types import SimpleNamespace

    bench = load_benchmark("train_throughput")
    record = tmp_path / "train_throughput.md"
    record.write_text("# earlier runs\n")
    opts = SimpleNamespace(model=None, hidden=16, layers=1, heads=2, micro_batch=4, warmup=1, steps=2, repeats=2, output=record)
    results = {"weighted": [(100.0, 50.0), (120.0, 60.0)], "weighted-bf16": [(220.0, 99.0), (220.0, 121.0)]}
    bench.write_results(opts, ["--kinds", "weighted,weighted-bf16"], results, [{"input_ids": [1, 2, 3]}], ((0.0,), (0.0,)))
    text = record.read_text()
    assert text.startswith("# earlier runs\n")  # the record keeps what it had
    assert "| vs weighted |" in text and "| weighted-bf16 | 220 | +100.0% |" in text and "| +100.0% |" in text
