"""benchmarks/rollout_throughput.py refuses a contender it does not know before loading anything."""

import pytest

from tests.bench import load_benchmark


def test_an_unknown_contender_is_a_one_line_error_with_exit_2(capsys):
    with pytest.raises(SystemExit) as stopped:
        load_benchmark("rollout_throughput").main(["--contenders", "hf,vllm_fp16", "--model", "no/such/model"])
    assert stopped.value.code == 2
    expected = "--contenders: unknown contender(s) vllm_fp16; expected some of naive, hf, hf_bf16, vllm, vllm_bf16"
    assert expected in capsys.readouterr().err
