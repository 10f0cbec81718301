"""Multi-turn evaluation and collection on a code task: the sandboxed reward inside the same loops."""

from riselm.evaluation.evaluate import evaluate
from riselm.generation.fake import ScriptedGenerator
from riselm.rollout.collect import collect
from riselm.settings import CollectSettings, EvalSettings, ScheduleStep
from riselm.tasks import get_task


def test_mbpp_eval_scores_reference_code_right_and_junk_wrong(tmp_path):
    task = get_task("mbpp")
    problems = task.load(limit=3)
    solutions = {p.question: p.solution for p in problems}

    def respond(conversation, sample):
        # turn 1: broken code; later turns: the reference solution (fenced, as a chat model writes it)
        if sum(m["role"] == "assistant" for m in conversation) == 0:
            return "```python\ndef nothing():\n    return None\n```"
        return next(s for q, s in solutions.items() if q in conversation[0]["content"])

    result = evaluate(
        task, ScriptedGenerator(respond), tmp_path, EvalSettings(turns=2, parallel_samples=0), problems=problems, show_progress=False
    )
    assert result.sequential["acc@t1"] == 0.0 and result.sequential["acc@t2"] == 100.0


def test_collection_on_humaneval_stops_at_the_passing_turn(tmp_path):
    task = get_task("humaneval")
    problem = task.load(limit=1)[0]
    gen = ScriptedGenerator(lambda c, s: problem.solution if s == 1 else "```python\nimport os\nos._exit(0)\n```")
    settings = CollectSettings(max_turns=3, schedule=[ScheduleStep(n=1), ScheduleStep(n=2)])
    (episode,) = collect(task, gen, [problem], tmp_path / "e.jsonl", settings, show_progress=False)
    assert [t.reward for t in episode.turns] == [0.0, 1.0]  # os._exit(0) never passes; best of 2 picks the solution
