"""ScriptedGenerator: scripted answers by function or list, every call recorded."""

from __future__ import annotations

import pytest

from riselm.generation.base import Generator, SamplingParams
from riselm.generation.fake import ScriptedGenerator

CONVERSATIONS = [[{"role": "user", "content": "a"}], [{"role": "user", "content": "bb"}]]


def test_function_script_sees_conversation_and_sample_index():
    gen = ScriptedGenerator(lambda conversation, sample: f"{conversation[-1]['content']}-{sample}")
    results = gen.generate(CONVERSATIONS, SamplingParams(n=3))
    assert [[c.text for c in r] for r in results] == [["a-0", "a-1", "a-2"], ["bb-0", "bb-1", "bb-2"]]
    assert isinstance(gen, Generator) and gen.name == "scripted"


def test_list_script_cycles_across_samples_conversations_and_calls():
    gen = ScriptedGenerator(["x", "y", "z"])
    first = gen.generate(CONVERSATIONS, SamplingParams(n=2))
    second = gen.generate(CONVERSATIONS[:1], SamplingParams(n=1))
    assert [[c.text for c in r] for r in first] == [["x", "y"], ["z", "x"]]
    assert second[0][0].text == "y"


def test_calls_are_recorded_as_copies_and_counted():
    gen = ScriptedGenerator(["one two three"])
    conversations = [list(c) for c in CONVERSATIONS]
    params = SamplingParams(n=2, temperature=0.0)
    gen.generate(conversations, params)
    conversations[0].append({"role": "assistant", "content": "changed later"})
    assert gen.calls == [(CONVERSATIONS, params)]
    assert gen.stats.completions == 4 and gen.stats.generated_tokens == 12 and gen.stats.calls == 1


def test_empty_list_is_refused():
    with pytest.raises(ValueError, match="empty"):
        ScriptedGenerator([])
