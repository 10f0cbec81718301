"""Collection across iterations: new random streams and new problems each iteration; no turn degrades."""

from riselm.generation.fake import ScriptedGenerator
from riselm.rollout.collect import collect, iteration_problems
from riselm.rollout.engine import conversation_seed
from riselm.settings import CollectSettings, ScheduleStep
from tests.toy import ToyTask, attempt_number, toy_problems

SETTINGS = CollectSettings(max_turns=3, schedule=[ScheduleStep(model="learner", n=1), ScheduleStep(model="learner", n=3)])


def test_each_iteration_samples_with_its_own_seeds(tmp_path):
    learner = ScriptedGenerator(lambda c, s, seed: "\\boxed{-1}")
    for k in (1, 2):
        collect(ToyTask(), learner, toy_problems(2), tmp_path / f"{k}.jsonl", SETTINGS, seed=5, show_progress=False, iteration=k)
    first_turn_seeds = [call.seeds for call in learner.calls if call.params.n == 1]
    assert first_turn_seeds[0] == [conversation_seed(5, p.id, 0, 0, "iter1") for p in toy_problems(2)]
    assert first_turn_seeds[1] == [conversation_seed(5, p.id, 0, 0, "iter2") for p in toy_problems(2)]
    assert set(first_turn_seeds[0]).isdisjoint(first_turn_seeds[1])
    # evaluation leaves the stage out: its seeds are the same for every stage
    assert conversation_seed(5, "p0", 0, 0) == conversation_seed(5, "p0", 0, 0, "")


def test_limit_takes_a_new_slice_each_iteration_unless_asked_for_the_first():
    problems = toy_problems(10)
    rotate = CollectSettings(limit=4)
    assert [[p.id for p in iteration_problems(problems, rotate, k)] for k in (1, 2, 3)] == [
        ["p0", "p1", "p2", "p3"],
        ["p4", "p5", "p6", "p7"],
        ["p8", "p9", "p0", "p1"],
    ]
    first = CollectSettings(limit=4, limit_slices="first")
    assert [p.id for p in iteration_problems(problems, first, 3)] == ["p0", "p1", "p2", "p3"]
    assert len(iteration_problems(problems, CollectSettings(limit=20), 2)) == 10  # fewer problems than the limit: all


def test_collect_uses_the_iterations_slice(tmp_path):
    learner = ScriptedGenerator(lambda c, s: "\\boxed{0}")
    settings = SETTINGS.model_copy(update={"limit": 2})
    episodes = collect(ToyTask(), learner, toy_problems(5), tmp_path / "e.jsonl", settings, show_progress=False, iteration=2)
    assert [e.id for e in episodes] == ["p2", "p3"]


def test_no_turn_is_worse_than_the_one_before(tmp_path):
    """With unparsable answers at -1, best-of-N may offer only worse candidates: the episode ends instead."""

    def script(conversation, sample):
        if attempt_number(conversation) == 1:
            return "\\boxed{99}"  # wrong: reward 0
        return "no answer at all"  # unparsable: reward -1, worse than turn 1

    episodes = collect(
        ToyTask(unparsable_reward=-1.0), ScriptedGenerator(script), toy_problems(3)[1:], tmp_path / "e.jsonl", SETTINGS, show_progress=False
    )
    for episode in episodes:
        assert [t.reward for t in episode.turns] == [0.0]
        assert episode.turns[-1].feedback is None  # it ended there

    # an improvement of the same kind is kept: unparsable first, then a wrong but parsable answer
    def better(conversation, sample):
        return "none" if attempt_number(conversation) == 1 else "\\boxed{99}"

    episodes = collect(
        ToyTask(unparsable_reward=-1.0), ScriptedGenerator(better), toy_problems(2)[1:], tmp_path / "f.jsonl", SETTINGS, show_progress=False
    )
    assert [t.reward for t in episodes[0].turns] == [-1.0, 0.0, 0.0]
