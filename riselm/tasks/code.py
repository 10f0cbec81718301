"""Code benchmarks: MBPP and HumanEval, checked by running tests, and CoNaLa, checked by matching.

A response is what a chat model writes: normally a ```python block holding the whole function
(`extract_code` takes the longest python block; plain code without a fence is accepted too).

* `mbpp` — the problem text with its three test asserts; reward 1 when the extracted code followed by
  the asserts runs to the end in the sandbox (riselm.verify.sandbox). Splits by task_id as in the
  MBPP paper: prompt 1–10, test 11–510 (default), validation 511–600, train 601–974; "sanitized" is
  the 257 hand-verified test problems (task_ids 11–510) of sanitized-mbpp.json.
* `humaneval` — the prompt is the function signature and docstring; the program run is that prompt,
  the extracted code (a whole function overrides the prompt's stub; a bare body completes it), the
  hidden tests and `check(entry_point)`.
* `conala` — intent → one-line snippet. There is nothing to execute, so a snippet is right when it
  equals the reference after canonicalisation: both are parsed with `ast` and their dumps compared,
  which ignores whitespace, quote style, redundant parentheses and comments (text that does not parse
  is compared with whitespace collapsed). This is strict: an equivalent but differently written
  snippet scores 0, so `conala_bleu` reports the usual corpus BLEU beside the exact-match reward.

Code tasks also offer `score_many(problems, responses)`, which runs the programs concurrently through
the sandbox's bounded pool, and an optional `feedback=True` variant whose retry message quotes the
failing test or error (off by default: RISE's feedback says only that the answer was wrong).
"""

from __future__ import annotations

import ast
import re
import textwrap
from abc import abstractmethod
from collections.abc import Sequence

from riselm.tasks.base import Problem, Score, Task
from riselm.verify.sandbox import ExecResult, Limits, isolation, run_programs

CODE_INSTRUCTION = (
    "Write Python code that solves the task below. Reply with the complete code, including any imports, in a single ```python code block."
)
# The feedback variant: the sandbox's short reason (e.g. "failed: AssertionError at line 9: assert f(2) == 4").
FEEDBACK_RETRY = "Your code is incorrect: {feedback}\nPlease try again. Here's the question: {question}"

_FENCE = re.compile(r"^([ \t]*)```[ \t]*([\w+.#-]*)[^\n]*\n(.*?)^[ \t]*```", re.DOTALL | re.MULTILINE)
_OPEN_FENCE = re.compile(r"^[ \t]*```[ \t]*([\w+.#-]*)[^\n]*\n", re.MULTILINE)
_PYTHON_TAGS = {"python", "py", "python3", "py3"}


def extract_code(response: str) -> str | None:
    """The program in a chat response: the longest ```python block (the last on ties); else the
    longest untagged block; else the text after an unclosed fence (a truncated answer); else the
    whole text. Indentation is kept (a bare function body stays a body). None when there is no
    code. Never raises."""
    if not isinstance(response, str):
        return None
    # A fence indented inside a list item indents its code too: remove that, keep the code's own.
    blocks = [(tag.lower(), textwrap.dedent(body) if indent else body) for indent, tag, body in _FENCE.findall(response)]
    python = [body for tag, body in blocks if tag in _PYTHON_TAGS]
    untagged = [body for tag, body in blocks if not tag]
    candidates = python or untagged
    if not candidates and not blocks:
        opening = _OPEN_FENCE.search(response)
        candidates = [response[opening.end() :]] if opening else [response]
    if not candidates:  # only blocks in other languages (```bash, ```text): no program
        return None
    longest = max(len(c) for c in candidates)
    code = [c for c in candidates if len(c) == longest][-1].strip("\r\n")
    return code if code.strip() else None


def canonical_code(code: str) -> str:
    """A form of the code that ignores formatting: the `ast` dump when it parses, else the text with
    whitespace collapsed."""
    try:
        return ast.dump(ast.parse(code))
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return " ".join(code.split())


def conala_bleu(preds: Sequence[str | None], refs: Sequence[str]) -> float:
    """Corpus BLEU (0–100) of predicted snippets against references, CoNaLa style: code is split
    into identifier/number runs and single punctuation characters, camelCase words are split, and
    both quote characters count as one token kind, then sacrebleu scores the tokens as given."""
    import sacrebleu  # only needed for this report

    if len(preds) != len(refs):
        raise ValueError(f"conala_bleu: {len(preds)} predictions but {len(refs)} references")
    hypotheses = [_bleu_tokens(p or "") for p in preds]
    return sacrebleu.corpus_bleu(hypotheses, [[_bleu_tokens(r) for r in refs]], tokenize="none").score


def _bleu_tokens(code: str) -> str:
    code = re.sub(r"([a-z])([A-Z])", r"\1 \2", code).replace('"', "'")
    return " ".join(re.findall(r"\w+|[^\w\s]", code))


class ExecutedCodeTask(Task):
    """A code task whose answers are checked by running the problem's tests in the sandbox."""

    instruction = CODE_INSTRUCTION

    def __init__(
        self,
        unparsable_reward: float = 0.0,
        retry_template: str | None = None,
        feedback: bool = False,
        workers: int | None = None,
        limits: Limits | None = None,
    ):
        super().__init__(unparsable_reward, retry_template)
        self.feedback = feedback  # quote the failing test/error in the retry message
        self.workers = workers  # programs run at once by score_many (default: usable CPUs)
        self.limits = limits or Limits()

    @abstractmethod
    def program(self, code: str, problem: Problem) -> str:
        """The source run in the sandbox: the candidate code followed by the problem's tests."""

    def extract_answer(self, response: str) -> str | None:
        return extract_code(response)

    def is_correct(self, pred: str, problem: Problem) -> bool:
        return self.run([pred], [problem])[0].passed

    def same_answer(self, a: str, b: str) -> bool:
        return canonical_code(a) == canonical_code(b)

    def answer_key(self, answer: str) -> str:
        return canonical_code(answer)

    def score(self, problem: Problem, response: str) -> Score:
        return self.score_many([problem], [response])[0]

    def score_many(self, problems: Sequence[Problem], responses: Sequence[str]) -> list[Score]:
        """Score many responses, their programs running concurrently in the sandbox's bounded pool."""
        if len(problems) != len(responses):
            raise ValueError(f"score_many: {len(problems)} problems but {len(responses)} responses")
        preds = [extract_code(r) for r in responses]
        scores = [Score(pred=None, reward=self.unparsable_reward) for _ in preds]
        todo = [i for i, pred in enumerate(preds) if pred is not None]
        results = self.run([pred for pred in preds if pred is not None], [problems[i] for i in todo])
        for i, result in zip(todo, results):
            scores[i] = Score(pred=preds[i], reward=1.0 if result.passed else 0.0, feedback=_feedback(result))
        return scores

    def run(self, codes: Sequence[str], problems: Sequence[Problem]) -> list[ExecResult]:
        """Run each code against its problem's tests (full sandbox results, for reports and tests)."""
        if codes:
            isolation()  # fails loudly, once, if the sandbox cannot run at all (rather than scoring 0s)
        sources = [self.program(code, problem) for code, problem in zip(codes, problems)]
        return run_programs(sources, self.limits, self.workers)

    def retry_message(self, problem: Problem, last: Score | None = None) -> str:
        if self.feedback and last is not None and last.feedback:
            return FEEDBACK_RETRY.format(feedback=last.feedback, question=problem.question)
        return super().retry_message(problem, last)


def _feedback(result: ExecResult) -> str | None:
    return None if result.passed else f"{result.status}: {result.reason}"


def _fenced(code: str) -> str:
    return f"```python\n{code.strip()}\n```"


# MBPP's own split of task_ids (Austin et al. 2021): few-shot prompts, test, validation, train.
_MBPP_SPLIT_IDS = {
    "prompt": range(1, 11),
    "test": range(11, 511),
    "validation": range(511, 601),
    "train": range(601, 975),
}


class MBPPTask(ExecutedCodeTask):
    name = "mbpp"
    splits = ("test", "train", "validation", "prompt", "sanitized")
    row_fields = ("task_id", "code", "test_list")  # + "text" (original) or "prompt" (sanitized)
    text_fields = ("code",)  # task_id is an integer, test_list a list
    files = {split: "mbpp/mbpp.jsonl.gz" for split in _MBPP_SPLIT_IDS} | {"sanitized": "mbpp/sanitized-mbpp.json.gz"}

    def _rows_from_shipped(self, split: str) -> list[dict]:
        rows = super()._rows_from_shipped(split)
        ids = _MBPP_SPLIT_IDS["test" if split == "sanitized" else split]
        return [row for row in rows if row["task_id"] in ids]

    def problem_from_row(self, row: dict, default_id: str) -> Problem:
        text = row["text"] if "text" in row else row.get("prompt")
        if not isinstance(text, str):
            raise KeyError("'text' (or 'prompt', as in sanitized MBPP)")
        tests = list(row["test_list"])
        if not tests or not all(isinstance(t, str) for t in tests):
            raise ValueError("'test_list' must be a non-empty list of assert statements")
        question = f"{text.strip()}\nYour code should pass these tests:\n\n" + "\n".join(t.strip() for t in tests)
        return Problem(
            id=str(row["task_id"]),
            question=question,
            answer=row["code"],
            solution=_fenced(row["code"]),
            meta={
                "tests": tests,
                "test_setup_code": row.get("test_setup_code") or "",
                "test_imports": list(row.get("test_imports") or []),
            },
        )

    def program(self, code: str, problem: Problem) -> str:
        # Setup code comes after the solution: MBPP's setup builds objects of classes it defines.
        parts = [*problem.meta["test_imports"], code, problem.meta["test_setup_code"], *problem.meta["tests"]]
        return "\n\n".join(part for part in parts if part.strip()) + "\n"


class HumanEvalTask(ExecutedCodeTask):
    name = "humaneval"
    splits = ("test",)
    row_fields = ("task_id", "prompt", "entry_point", "canonical_solution", "test")
    files = {"test": "humaneval/HumanEval.jsonl.gz"}
    instruction = (
        "Complete the Python function below. Reply with the whole function (its signature included) "
        "and any imports it needs in a single ```python code block."
    )

    def problem_from_row(self, row: dict, default_id: str) -> Problem:
        return Problem(
            id=str(row["task_id"]),
            question=_fenced(row["prompt"]),
            answer=row["prompt"] + row["canonical_solution"],
            solution=_fenced(row["prompt"] + row["canonical_solution"]),
            meta={"prompt": row["prompt"], "entry_point": row["entry_point"], "test": row["test"]},
        )

    def program(self, code: str, problem: Problem) -> str:
        entry_point = problem.meta["entry_point"]
        # The prompt first: its imports and helper functions (e.g. is_palindrome for
        # make_palindrome) are often left out of an answer. A whole function then redefines the
        # prompt's stub; a bare body (base-model style) completes it.
        is_whole_function = re.search(rf"^\s*def\s+{re.escape(entry_point)}\s*\(", code, re.MULTILINE)
        solution = problem.meta["prompt"] + ("\n\n" + code if is_whole_function else code)
        return f"{solution}\n\n{problem.meta['test']}\n\ncheck({entry_point})\n"


class CoNaLaTask(Task):
    name = "conala"
    splits = ("test", "train")
    row_fields = ("intent", "snippet")  # + "rewritten_intent" (may be null), "question_id"
    text_fields = ("snippet",)  # intent may be null when rewritten_intent is given
    files = {"test": "conala/conala-test.json.gz", "train": "conala/conala-train.json.gz"}
    instruction = (
        "Write a short Python snippet (usually one line) that does what is asked below. "
        "Reply with the snippet in a single ```python code block."
    )

    def problem_from_row(self, row: dict, default_id: str) -> Problem:
        # question_id is not unique (several intents per StackOverflow question): ids are positions.
        intent = row.get("rewritten_intent") or row["intent"]
        if not isinstance(intent, str) or not isinstance(row["snippet"], str):
            raise ValueError("'intent' and 'snippet' must be strings")
        return Problem(
            id=default_id,
            question=intent.strip(),
            answer=row["snippet"],
            solution=_fenced(row["snippet"]),
            meta={"question_id": row.get("question_id"), "intent": row["intent"]},
        )

    def extract_answer(self, response: str) -> str | None:
        return extract_code(response)

    def is_correct(self, pred: str, problem: Problem) -> bool:
        return canonical_code(pred) == canonical_code(problem.answer)

    def same_answer(self, a: str, b: str) -> bool:
        return canonical_code(a) == canonical_code(b)

    def answer_key(self, answer: str) -> str:
        return canonical_code(answer)


CODE_TASKS = (MBPPTask, HumanEvalTask, CoNaLaTask)
