"""The paper's analyses as library functions (the `riselm compare` / `riselm analyze` commands call them).

- compare_runs: Table 1 across run directories, with each row's budget (riselm.analysis.budget).
- transitions_of_file: right/wrong transitions from turn k-1 to turn k of a sequential episodes file.
- fixes_of_files: Fig. 2, the problems an earlier model misses in B samples that a later one solves over turns.
- nll_of_run: rebuttal Fig. 1, the NLL of gold solutions per checkpoint, directly and after a wrong attempt.
- transfer: Table 2, the stage models evaluated on other tasks.
"""

from riselm.analysis.compare import compare_runs
from riselm.analysis.fixes import fixes, fixes_of_files
from riselm.analysis.nll import nll_of_run
from riselm.analysis.runs import RunDir, read_run
from riselm.analysis.transfer import TaskSpec, transfer
from riselm.analysis.transitions import transitions, transitions_of_file

__all__ = [
    "RunDir",
    "TaskSpec",
    "compare_runs",
    "fixes",
    "fixes_of_files",
    "nll_of_run",
    "read_run",
    "transfer",
    "transitions",
    "transitions_of_file",
]
