"""nbtasks: a notebook-native task runner with durable runs in isolated worker processes.

from nbtasks import task, runs

@task
def add(payload):
    return payload["a"] + payload["b"]

add.trigger_and_wait({"a": 1, "b": 2}).unwrap()   # 3
"""

from ._config import configure, shutdown
from ._context import TaskContext, context, metadata
from ._errors import (
    AbortRun,
    EngineStoppedError,
    NbtasksError,
    PayloadError,
    RunError,
    StoreLockedError,
    UnknownRunError,
)
from ._handles import BatchHandle, RunHandle
from ._models import Attempt, BatchItem, BatchResult, Page, Result, Run
from ._options import Queue, Retry
from ._runs import runs
from ._status import AttemptStatus, RunStatus
from ._task import Task, task

__version__ = "0.1.0"

__all__ = [
    "AbortRun",
    "Attempt",
    "AttemptStatus",
    "BatchHandle",
    "BatchItem",
    "BatchResult",
    "EngineStoppedError",
    "NbtasksError",
    "Page",
    "PayloadError",
    "Queue",
    "Result",
    "Retry",
    "Run",
    "RunError",
    "RunHandle",
    "RunStatus",
    "StoreLockedError",
    "Task",
    "TaskContext",
    "UnknownRunError",
    "configure",
    "context",
    "metadata",
    "runs",
    "shutdown",
    "task",
]


def load_ipython_extension(shell: object) -> None:
    """``%load_ext nbtasks``: register ``%%task`` and ``%runs``."""
    from ._magics import load

    load(shell)
