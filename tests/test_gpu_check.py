"""benchmarks/gpu_check.py runs end to end (tiny shapes on CPU) and its MFU is the FLOPs it states over time."""

import pytest

from tests.bench import load_benchmark


@pytest.fixture(scope="module")
def gpu_check():
    return load_benchmark("gpu_check")


def test_tiny_shapes_on_cpu_write_the_table(gpu_check, tmp_path):
    out = tmp_path / "gpu.md"
    report = gpu_check.main(
        [
            "--shapes",
            "tiny",
            "--batch",
            "2",
            "--seq",
            "32",
            "--warmup",
            "1",
            "--steps",
            "2",
            "--gen-batches",
            "2,4",
            "--gen-tokens",
            "8",
            "--peak-tflops",
            "1",
            "--output",
            str(out),
        ]
    )
    [train] = report["training"]
    model = gpu_check.build_model("tiny", "cpu")
    n, layers, hidden = gpu_check.parameters(model), 2, 32
    tokens = 2 * 32
    flops = 6 * n * tokens + 12 * layers * hidden * 32 * tokens
    assert train["mfu"] == pytest.approx(flops / train["step_s"] / 1e12, rel=0.02)
    assert train["tokens_per_s"] == pytest.approx(tokens / train["step_s"], rel=0.01)
    assert [g["batch"] for g in report["generation"]] == [2, 4]
    for g in report["generation"]:  # every row generates all its tokens: the end token is never sampled
        assert g["bound_fraction"] == pytest.approx(g["tokens_per_s"] * 2 * n / 1e12, rel=0.02)
    text = out.read_text()
    assert "| tiny |" in text and "MFU" in text and "--peak-tflops 1" in text
