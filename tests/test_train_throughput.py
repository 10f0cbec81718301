"""benchmarks/train_throughput.py refuses a trainer it does not know before loading anything."""

import pytest

from tests.bench import load_benchmark


def test_an_unknown_kind_is_a_one_line_error_with_exit_2(capsys):
    with pytest.raises(SystemExit) as stopped:
        load_benchmark("train_throughput").main(["--kinds", "plain,bogus", "--model", "no/such/model"])
    assert stopped.value.code == 2
    assert "--kinds: unknown trainer(s) bogus; expected some of plain, weighted" in capsys.readouterr().err
