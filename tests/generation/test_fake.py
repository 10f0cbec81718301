"""ScriptedGenerator: scripted answers by function or list, seeds passed on, every call recorded."""

from __future__ import annotations

import doctest

import pytest

from riselm.generation import fake
from riselm.generation.base import Completion, Generator, SamplingParams
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
    assert gen.calls == [(CONVERSATIONS, params, None)]
    assert gen.stats.completions == 4 and gen.stats.generated_tokens == 12 and gen.stats.calls == 1
    seeds = [3, 4]
    gen.generate(CONVERSATIONS, params, seeds=seeds)
    seeds[0] = 99
    assert gen.calls[-1].seeds == [3, 4] and gen.calls[-1].params == params and gen.calls[-1].conversations == CONVERSATIONS


def test_a_three_argument_script_sees_the_seed():
    gen = ScriptedGenerator(lambda conversation, sample, seed: f"{conversation[-1]['content']}-{sample}-{seed}")
    results = gen.generate(CONVERSATIONS, SamplingParams(n=2), seeds=[7, 8])
    assert [[c.text for c in r] for r in results] == [["a-0-7", "a-1-7"], ["bb-0-8", "bb-1-8"]]
    assert gen.generate(CONVERSATIONS[:1], SamplingParams())[0][0].text == "a-0-None"  # unseeded call


def test_how_the_seed_is_passed_can_be_chosen():
    def respond(conversation, sample, *extra):
        return f"{sample} {extra}"

    assert ScriptedGenerator(respond).generate(CONVERSATIONS[:1], SamplingParams(), seeds=[5])[0][0].text == "0 (5,)"
    quiet = ScriptedGenerator(respond, pass_seed=False)
    assert quiet.generate(CONVERSATIONS[:1], SamplingParams(), seeds=[5])[0][0].text == "0 ()"


def test_a_script_can_answer_with_whole_completions():
    cut = Completion("partial", num_tokens=9, finish_reason="length", token_ids=(1, 2))
    gen = ScriptedGenerator([cut, "full answer"])
    results = gen.generate(CONVERSATIONS, SamplingParams())
    assert results == [[cut], [Completion("full answer", num_tokens=2)]]
    assert gen.stats.generated_tokens == 11
    with pytest.raises(TypeError, match="str or a Completion"):
        ScriptedGenerator(lambda c, s: 42).generate(CONVERSATIONS, SamplingParams())


def test_seeds_are_checked_and_close_is_recorded():
    gen = ScriptedGenerator(["x"])
    with pytest.raises(ValueError, match="1 seeds for 2 conversations"):
        gen.generate(CONVERSATIONS, SamplingParams(), seeds=[1])
    assert gen.calls == [] and not gen.closed
    gen.close()
    gen.close()
    assert gen.closed


def test_the_docstring_example_runs():
    assert doctest.testmod(fake).failed == 0


def test_empty_list_or_a_lone_string_is_refused():
    with pytest.raises(ValueError, match="empty"):
        ScriptedGenerator([])
    with pytest.raises(TypeError, match="list of responses"):
        ScriptedGenerator("one answer")
