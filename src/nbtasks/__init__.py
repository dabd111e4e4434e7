"""nbtasks: a notebook-native task runner with durable runs in isolated worker processes.

    from nbtasks import task, runs

    @task
    def add(payload):
        return payload["a"] + payload["b"]

    add.trigger_and_wait({"a": 1, "b": 2}).unwrap()   # 3

Names are loaded on first use, so ``import nbtasks`` (and every worker process) stays
cheap: the engine, DuckDB and the widgets are imported only when they are needed.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_WHERE = {
    "configure": "_config",
    "shutdown": "_config",
    "TaskContext": "_context",
    "context": "_context",
    "metadata": "_context",
    "AbortRun": "_errors",
    "EngineStoppedError": "_errors",
    "NbtasksError": "_errors",
    "PayloadError": "_errors",
    "RunError": "_errors",
    "StoreLockedError": "_errors",
    "UnknownRunError": "_errors",
    "BatchHandle": "_handles",
    "RunHandle": "_handles",
    "Attempt": "_models",
    "BatchItem": "_models",
    "BatchResult": "_models",
    "Page": "_models",
    "Result": "_models",
    "Run": "_models",
    "Queue": "_options",
    "Retry": "_options",
    "runs": "_runs",
    "AttemptStatus": "_status",
    "RunStatus": "_status",
    "Task": "_task",
    "task": "_task",
}

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

if TYPE_CHECKING:
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


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'nbtasks' has no attribute {name!r}")
    value = getattr(import_module(f"nbtasks.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*__all__, "__version__", "load_ipython_extension"})


def load_ipython_extension(shell: object) -> None:
    """``%load_ext nbtasks``: register ``%%task`` and ``%runs``."""
    from ._magics import load

    load(shell)
