"""The one rollout loop: its three uses, and seeds that do not depend on chunks, order or resumption."""

import pytest

from riselm.generation.fake import ScriptedGenerator
from riselm.rollout.engine import RolloutSpec, Step, conversation_seed, rollout
from riselm.settings import SamplingSettings
from tests.toy import ToyTask, attempt_number, question_value, toy_problems


def seeded(conversation, sample, seed):
    """A 'model' whose answer depends only on its seed: right when the seed is even."""
    value = 2 * question_value(conversation)
    return f"try {attempt_number(conversation)} seed {seed} \\boxed{{{value if seed % 2 == 0 else value + 1}}}"


def spec(**changes):
    base = dict(mode="sequential", turns=3, stop_when_correct=False, seed=7, chunk_size=2)
    return RolloutSpec(**{**base, **changes})


def test_conversation_seed_depends_on_every_part_and_fits_31_bits():
    seeds = {conversation_seed(s, pid, sample, turn) for s in (0, 1) for pid in ("a", "b") for sample in (0, 1) for turn in (0, 1)}
    assert len(seeds) == 16 and all(0 <= s < 2**31 for s in seeds)
    assert conversation_seed(3, "p1", 0, 2) == conversation_seed(3, "p1", 0, 2)


def test_each_conversation_gets_the_seed_of_its_problem_sample_and_turn():
    gen = ScriptedGenerator(seeded)
    episodes = rollout(ToyTask(), toy_problems(3), [Step(gen)], spec(chunk_size=3), show_progress=False)
    for turn, (_, _, seeds) in enumerate(gen.calls):
        assert seeds == [conversation_seed(7, e.id, e.sample, turn) for e in episodes]


def test_chunking_order_and_resumption_give_the_same_episodes(tmp_path):
    problems = toy_problems(5)

    def run(path, chunk_size, subset):
        return rollout(ToyTask(), subset, [Step(ScriptedGenerator(seeded), n=2)], spec(chunk_size=chunk_size), path, show_progress=False)

    whole = run(tmp_path / "a.jsonl", 5, problems)
    rechunked = run(tmp_path / "b.jsonl", 1, problems)
    run(tmp_path / "c.jsonl", 2, problems[3:])  # a first run that got through two problems ...
    resumed = run(tmp_path / "c.jsonl", 2, problems)  # ... then resumed with all of them
    shard = run(tmp_path / "d.jsonl", 3, problems[::-1])  # another order (another process's share)
    assert [e.to_dict() for e in rechunked] == [e.to_dict() for e in whole]
    assert [e.to_dict() for e in resumed] == [e.to_dict() for e in whole]
    assert sorted(e.to_dict()["turns"][0]["response"] for e in shard) == sorted(e.turns[0].response for e in whole)


def test_sequential_runs_every_turn_collection_stops_at_the_first_correct_one():
    always_right = ScriptedGenerator(lambda c, s: f"\\boxed{{{2 * question_value(c)}}}")
    (sequential,) = rollout(ToyTask(), toy_problems(2)[1:], [Step(always_right)], spec(), show_progress=False)
    (collected,) = rollout(
        ToyTask(), toy_problems(2)[1:], [Step(always_right)], spec(mode="collect", stop_when_correct=True), show_progress=False
    )
    assert [t.correct for t in sequential.turns] == [True, True, True]
    assert sequential.turns[0].feedback is not None and sequential.turns[-1].feedback is None
    assert len(collected.turns) == 1 and collected.turns[0].feedback is None


def test_parallel_is_k_one_turn_episodes_and_sample_0_is_the_sequential_first_turn():
    gen = ScriptedGenerator(seeded)
    parallel = rollout(ToyTask(), toy_problems(2), [Step(gen)], spec(mode="parallel", turns=1, episodes_per_problem=3), show_progress=False)
    sequential = rollout(ToyTask(), toy_problems(2), [Step(gen)], spec(), show_progress=False)
    assert [(e.id, e.sample, len(e.turns)) for e in parallel] == [(p, s, 1) for p in ("p0", "p1") for s in range(3)]
    assert len({e.turns[0].response for e in parallel}) == 6  # every sample its own seed
    first = {e.id: e.turns[0].response for e in sequential}
    assert all(e.turns[0].response == first[e.id] for e in parallel if e.sample == 0)


def test_episodes_record_how_they_were_made():
    sampling = SamplingSettings(temperature=0.7, top_p=0.9, max_new_tokens=33)
    gen = ScriptedGenerator(seeded)
    (episode,) = rollout(
        ToyTask(), toy_problems(1), [Step(gen)], spec(window=2, sampling=sampling, system="Be brief."), show_progress=False
    )
    assert (episode.window, episode.seed, episode.system) == (2, 7, "Be brief.")
    assert episode.sampling == {"temperature": 0.7, "top_p": 0.9, "max_new_tokens": 33}
    params = gen.calls[0][1]
    assert (params.temperature, params.top_p, params.max_new_tokens, params.n) == (0.7, 0.9, 33, 1)
    assert gen.calls[0][0][0][0] == {"role": "system", "content": "Be brief."}


def test_the_schedule_gives_each_turn_its_improver_and_n():
    learner = ScriptedGenerator(lambda c, s: "\\boxed{-1}", name="small")
    expert = ScriptedGenerator(lambda c, s: "\\boxed{-1}", name="big")
    (episode,) = rollout(ToyTask(), toy_problems(1), [Step(learner), Step(expert, n=3, source="teacher")], spec(), show_progress=False)
    assert [(t.source, t.num_candidates) for t in episode.turns] == [("small", 1), ("teacher", 3), ("teacher", 3)]


def test_bad_specs_are_refused():
    with pytest.raises(ValueError):
        spec(turns=0)
    with pytest.raises(ValueError, match="schedule is empty"):
        rollout(ToyTask(), toy_problems(1), [], spec())
