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

from nbtasks.core import display as _display
from nbtasks.core.version import VERSION as __version__  # noqa: F401  (re-exported)

_WHERE = {
    "configure": "client.config",
    "DaskExecutor": "executor.dask",
    "shutdown": "client.config",
    "TaskContext": "core.context",
    "context": "core.context",
    "metadata": "core.context",
    "AbortRun": "core.errors",
    "EngineStoppedError": "core.errors",
    "NbtasksError": "core.errors",
    "PayloadError": "core.errors",
    "RunError": "core.errors",
    "NbtasksWarning": "core.errors",
    "StoreLockedError": "core.errors",
    "StoreWriteError": "core.errors",
    "UnknownRunError": "core.errors",
    "BatchHandle": "client.handles",
    "RunHandle": "client.handles",
    "Attempt": "core.models",
    "BatchItem": "core.models",
    "BatchResult": "core.models",
    "Page": "core.models",
    "Result": "core.models",
    "Run": "core.models",
    "Queue": "core.options",
    "Retry": "core.options",
    "runs": "client.runs",
    "AttemptStatus": "core.status",
    "RunStatus": "core.status",
    "Task": "client.task",
    "task": "client.task",
}

__all__ = [
    "AbortRun",
    "Attempt",
    "AttemptStatus",
    "BatchHandle",
    "BatchItem",
    "BatchResult",
    "DaskExecutor",
    "EngineStoppedError",
    "NbtasksError",
    "NbtasksWarning",
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
    "StoreWriteError",
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
    from nbtasks.client.config import configure, shutdown
    from nbtasks.client.handles import BatchHandle, RunHandle
    from nbtasks.client.runs import runs
    from nbtasks.client.task import Task, task
    from nbtasks.core.context import TaskContext, context, metadata
    from nbtasks.core.errors import (
        AbortRun,
        EngineStoppedError,
        NbtasksError,
        NbtasksWarning,
        PayloadError,
        RunError,
        StoreLockedError,
        StoreWriteError,
        UnknownRunError,
    )
    from nbtasks.core.models import Attempt, BatchItem, BatchResult, Page, Result, Run
    from nbtasks.core.options import Queue, Retry
    from nbtasks.core.status import AttemptStatus, RunStatus
    from nbtasks.executor.dask import DaskExecutor


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
    from nbtasks.ui.magics import load

    load(shell)


def _install_ui() -> None:
    """The notebook UI (widgets, the wait pump, the run table), installed on first need:
    the layers below reach it only through ``core.display``."""
    from nbtasks.ui.hook import install

    install()


_display.set_loader(_install_ui)
