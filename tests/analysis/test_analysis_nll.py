"""The NLL of gold solutions equals transformers' own causal-LM loss on the trained span."""

import json

import pytest
import torch

from riselm.analysis.nll import conversations, nll_of_run
from riselm.tasks import get_task
from riselm.training.tokenize import IGNORE_INDEX, tokenize_sample
from tests.analysis.helpers import episode, stage_row, write_jsonl, write_summary

TASK_OPTIONS = {"digits": 1}  # 100 distinct problems: 10 test, 90 train


def hf_loss(model_dir, convs):
    """Mean CE over every label token of the conversations, from CausalLM's loss (one conversation at a time)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    total, count = 0.0, 0
    for conv in convs:
        row = tokenize_sample(tokenizer, conv, 2048)
        n = sum(label != IGNORE_INDEX for label in row["labels"][1:])
        with torch.no_grad():
            loss = model(input_ids=torch.tensor([row["input_ids"]]), labels=torch.tensor([row["labels"]])).loss
        total, count = total + float(loss) * n, count + n
    return total / count


@pytest.fixture
def nll_run(tmp_path, tiny_model_dir):
    """A run whose only stage is the tiny model, with a wrong answer of its own to test-0 and a stray one."""
    task = get_task("arithmetic", **TASK_OPTIONS)
    problem = task.load(limit=1)[0]
    wrong = int(problem.answer) + 1
    run = write_summary(tmp_path / "run", ["m1@t1"], [stage_row("iter1", tiny_model_dir, ["m1@t1"], [0.0], 2)])
    write_jsonl(
        run / "iter1" / "eval" / "episodes.sequential.jsonl",
        [
            episode(
                "test-0",
                [1, 0],
                preds=[problem.answer, str(wrong)],
                prompt=task.prompt(problem),
                responses={0: f"\\boxed{{{problem.answer}}}", 1: f"my try \\boxed{{{wrong}}}"},
            ),
            episode("test-1", [0, 0], prompt="a problem of another difficulty"),  # same id, other prompt: not used
        ],
    )
    return run, task, problem, f"my try \\boxed{{{wrong}}}"


def test_nll_equals_the_causal_lm_loss(tmp_path, nll_run, tiny_model_dir):
    run, task, problem, own_attempt = nll_run
    problems = task.load(limit=3)
    result = nll_of_run(run, "arithmetic", TASK_OPTIONS, tmp_path / "out", limit=3, batch_size=2)
    (row,) = result["rows"]
    direct, multi, own = conversations(task, problems, _own(run, task, problems))
    assert direct[0] == [{"role": "user", "content": task.prompt(problem)}, {"role": "assistant", "content": problem.solution}]
    # test-0 is conditioned on the stage's own wrong answer, the others on a corrupted gold solution
    assert multi[0] == [
        {"role": "user", "content": task.prompt(problem)},
        {"role": "assistant", "content": own_attempt},
        {"role": "user", "content": task.retry_message(problem)},
        {"role": "assistant", "content": problem.solution},
    ]
    assert (row["own_attempts"], own, row["problems"], row["multi_turn_problems"]) == (1, 1, 3, 3)
    assert row["direct"] == pytest.approx(hf_loss(tiny_model_dir, direct), abs=1e-5)
    assert row["multi_turn"] == pytest.approx(hf_loss(tiny_model_dir, multi), abs=1e-5)
    # the scored span is the solution and its end-of-turn token: one token per character, plus one
    assert row["direct_tokens"] == sum(len(p.solution) + 1 for p in problems)
    assert "| iter1 |" in (tmp_path / "out" / "nll.md").read_text()
    assert json.loads((tmp_path / "out" / "nll.json").read_text())["attempts"] == "own"
    assert (tmp_path / "out" / "nll.png").exists()


def test_corrupted_attempts_ignore_the_episodes(nll_run):
    run, *_ = nll_run
    (row,) = nll_of_run(run, "arithmetic", TASK_OPTIONS, limit=2, attempts="corrupted")["rows"]
    assert row["own_attempts"] == 0 and row["multi_turn_problems"] == 2


def test_an_unknown_stage_is_an_error(nll_run):
    run, *_ = nll_run
    with pytest.raises(ValueError, match="no stage 'iter9'"):
        nll_of_run(run, "arithmetic", TASK_OPTIONS, stages=["iter9"], limit=1)


def _own(run, task, problems):
    from riselm.analysis.nll import _own_episodes
    from riselm.analysis.runs import read_run

    return _own_episodes(read_run(run), "iter1", task, problems)
