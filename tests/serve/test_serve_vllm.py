"""`riselm serve` on the vLLM backend (CPU build): the turns come from the engine, voted as on every backend.

Skipped when vLLM is not installed; CI runs it in its vLLM virtual environment.
"""

from __future__ import annotations

import pytest

pytest.importorskip("vllm", exc_type=ImportError)

from riselm.generation.base import SamplingParams  # noqa: E402
from riselm.serve import ServeSettings  # noqa: E402
from riselm.settings import SamplingSettings  # noqa: E402
from tests.generation.test_vllm import chaotic_llama, save_model  # noqa: E402
from tests.serve.conftest import client, create_app, needs_serve_extra, running  # noqa: E402

needs_serve_extra()


def test_three_turns_from_the_vllm_engine_each_as_the_engine_answers_it(tmp_path, char_tokenizer):
    from riselm.serve.server import build_backend

    model_dir = save_model(chaotic_llama(char_tokenizer, seed=3), char_tokenizer, tmp_path / "model")
    generator = build_backend(str(model_dir), backend="vllm")
    try:
        settings = ServeSettings(turns=3, sampling=SamplingSettings(temperature=0.0, max_new_tokens=12))
        with running(create_app(generator, settings, model_name="tiny")) as url:
            response = client(url).chat.completions.create(model="tiny", messages=[{"role": "user", "content": "2+2=?"}])
        info = response.model_extra["riselm"]
        assert len(info["turns"]) == 3
        # turn 1 is the engine's own greedy answer to the question alone
        [[first]] = generator.generate([[{"role": "user", "content": "2+2=?"}]], SamplingParams(temperature=0.0, max_new_tokens=12))
        assert info["turns"][0]["text"] == first.text
        assert response.usage.completion_tokens == sum(t["tokens"] for t in info["turns"]) > 0
    finally:
        generator.close()
