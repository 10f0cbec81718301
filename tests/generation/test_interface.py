"""What every backend shares: the Generator protocol, seed checks, stream keys, close() twice."""

from __future__ import annotations

import numpy
import pytest

from riselm.generation import SEED_LIMIT, Generator, check_seeds, stream_key
from riselm.generation.base import SamplingParams, splitmix64
from riselm.generation.fake import ScriptedGenerator
from riselm.generation.hf import HFGenerator
from riselm.generation.openai_compat import OpenAIGenerator


@pytest.fixture(params=["hf", "openai", "scripted"])
def backend(request, tiny_model, char_tokenizer):
    if request.param == "hf":
        return HFGenerator(tiny_model, char_tokenizer)
    if request.param == "openai":
        return OpenAIGenerator("http://127.0.0.1:1/v1", "served")
    return ScriptedGenerator(["x"])


def test_every_backend_is_a_generator_and_closes_twice(backend):
    assert isinstance(backend, Generator)
    backend.close()
    backend.close()
    if isinstance(backend, ScriptedGenerator):  # the fake records the close and keeps answering (documented)
        assert backend.closed
        return
    with pytest.raises(RuntimeError, match="is closed"):  # a closed generator does not generate any more
        backend.generate([[{"role": "user", "content": "hi"}]], SamplingParams(max_new_tokens=2))


def test_seeds_are_checked():
    assert check_seeds(None, 3) is None
    assert check_seeds([0, numpy.int64(5), SEED_LIMIT - 1], 3) == [0, 5, 2**31 - 1]
    with pytest.raises(ValueError, match="non-negative ints below 2\\*\\*31"):
        check_seeds([-1], 1)
    with pytest.raises(ValueError, match="one seed per conversation"):
        check_seeds([1, 2], 3)
    for wrong in ([1.0], [True], 3, "12"):
        with pytest.raises(TypeError):
            check_seeds(wrong, 1)


def test_splitmix64_matches_its_published_outputs():
    # The first outputs of SplitMix64 seeded with 1234567 (Vigna's reference implementation).
    assert [splitmix64(1234567, i) for i in range(3)] == [6457827717110365317, 3203168211198807973, 9817491932198370423]


def test_stream_keys_depend_on_seed_and_sample_only():
    assert stream_key(3, 1) == stream_key(3, 1) == splitmix64(splitmix64(3), 1)
    assert len({stream_key(seed, sample) for seed in range(100) for sample in range(10)}) == 1000
