"""Several processes, one `riselm run`: launching them, and the little the pipeline needs to share.

`riselm run CONFIG distributed.processes=N` starts N worker processes per node through PyTorch's
elastic launcher (what `torchrun` runs), each running the same pipeline with RANK / WORLD_SIZE /
LOCAL_RANK set. Inside a worker, collection and evaluation are sharded (riselm.rollout.shards),
training runs data-parallel through the HF Trainer and accelerate (DDP, FSDP or DeepSpeed ZeRO-3),
and only the main process writes metrics, reports and summaries. Processes meet at barriers of a
gloo group whose operations time out (`distributed.timeout_s`), so a dead worker ends the run
instead of hanging it; the launcher then stops the others, and the command names the rank and the
stage that failed. Running the same command again resumes.

Under SLURM (or any launcher that starts one task per node), run the same command on every node with
`distributed.nodes`, `distributed.node_rank` and `distributed.main_address` set (README).
"""

from __future__ import annotations

import datetime
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from riselm.files import write_json
from riselm.hardware import usable_cpus
from riselm.settings import DistributedSettings

WORKER_ENV = "RISELM_WORKER"  # set in the processes the launcher starts
STATUS_DIR = ".workers"  # in the run directory: each worker's current stage, read when one fails


@dataclass(frozen=True)
class World:
    """This process's place among the processes of a run (one process: rank 0 of 1)."""

    rank: int = 0  # global rank
    size: int = 1  # processes in all
    local_rank: int = 0  # rank on this node (the GPU it uses)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.size > 1:
            import torch.distributed as dist

            dist.barrier(group=_control_group())


def world() -> World:
    """This process's World, from the variables the launcher sets (none: a single process)."""
    return World(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0)))


_GROUP = None


def init(settings: DistributedSettings) -> World:
    """Join the run's process group (once): nccl for training on GPUs, a gloo group for barriers."""
    global _GROUP
    current = world()
    if current.size == 1 or _GROUP is not None:
        return current
    import torch
    import torch.distributed as dist

    timeout = datetime.timedelta(seconds=settings.timeout_s)
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(current.local_rank)
        dist.init_process_group(backend=backend, timeout=timeout)
    _GROUP = dist.new_group(backend="gloo", timeout=timeout)
    return current


def _control_group():
    if _GROUP is None:  # a library call under torchrun without a run config: default settings
        init(DistributedSettings())
    return _GROUP


def processes_per_node(settings: DistributedSettings) -> int:
    """`processes`, or one per visible GPU (one on a machine without GPUs)."""
    if settings.processes is not None:
        return settings.processes
    import torch

    return max(1, torch.cuda.device_count())


def in_worker() -> bool:
    """Whether this process was started by `launch`."""
    return os.environ.get(WORKER_ENV) is not None


def needs_launch(settings: DistributedSettings) -> bool:
    """Whether this command must start worker processes (it is not one, and the run has several)."""
    return not in_worker() and processes_per_node(settings) * settings.nodes > 1


def launch(settings: DistributedSettings, out: Path, argv: list[str]) -> None:
    """Run `python -m riselm.cli <argv>` in every worker process of this node; raise WorkerFailed on a failure."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    per_node = processes_per_node(settings)
    config = LaunchConfig(
        min_nodes=settings.nodes,
        max_nodes=settings.nodes,
        nproc_per_node=per_node,
        run_id=f"riselm-{settings.main_port}",
        rdzv_backend="static",
        rdzv_endpoint=f"{settings.main_address}:{settings.main_port}",
        rdzv_configs={"rank": settings.node_rank, "timeout": settings.timeout_s},
        max_restarts=0,  # a failed worker ends the run; running the command again resumes it
        monitor_interval=1,
    )
    os.environ[WORKER_ENV] = "1"
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, usable_cpus() // per_node)))
    try:
        elastic_launch(config, entrypoint=sys.executable)("-m", "riselm.cli", *argv)
    except ChildFailedError as error:
        rank, failure = error.get_first_failure()  # the root cause; the launcher stopped the others
        raise WorkerFailed(rank, failure.exitcode, stage_of(out, rank), error_of(out, rank)) from None
    finally:
        os.environ.pop(WORKER_ENV, None)


class WorkerFailed(RuntimeError):
    """A worker process died or failed; the message names its rank and the stage it was in."""

    def __init__(self, rank: int, exitcode: int, stage: str | None, error: str | None):
        how = f"failed: {error}" if error else f"died (exit code {exitcode})"
        super().__init__(f"worker rank {rank} {how} during stage {stage or 'start-up'}; run the same command again to resume")


def set_stage(out: Path, current: World, stage: str) -> None:
    """Record which stage this worker is in (read by the launching command when a worker fails)."""
    if current.size > 1:
        path = Path(out) / STATUS_DIR / f"rank{current.rank}.json"
        write_json(path, {"stage": stage})


def set_error(out: Path, current: World, error: BaseException) -> None:
    if current.size > 1:
        path = Path(out) / STATUS_DIR / f"rank{current.rank}.json"
        status = json.loads(path.read_text()) if path.exists() else {}
        write_json(path, {**status, "error": f"{type(error).__name__}: {error}"[:300]})


def stage_of(out: Path, rank: int) -> str | None:
    path = Path(out) / STATUS_DIR / f"rank{rank}.json"
    return json.loads(path.read_text()).get("stage") if path.exists() else None


def error_of(out: Path, rank: int) -> str | None:
    path = Path(out) / STATUS_DIR / f"rank{rank}.json"
    return json.loads(path.read_text()).get("error") if path.exists() else None
