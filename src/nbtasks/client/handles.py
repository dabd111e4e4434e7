"""Handles returned by triggers: ``RunHandle`` and ``BatchHandle``."""

from __future__ import annotations

from collections.abc import Generator
from datetime import timedelta
from typing import Any, Generic, TypeVar

from nbtasks.client import control
from nbtasks.core import display
from nbtasks.core.models import BatchResult, Result, Run

R = TypeVar("R")


class RunHandle(Generic[R]):
    """A triggered run. ``is_cached`` is True when an idempotency key matched an existing run."""

    __slots__ = ("id", "is_cached", "task_id")

    def __init__(self, run_id: str, task_id: str, is_cached: bool = False) -> None:
        self.id = run_id
        self.task_id = task_id
        self.is_cached = is_cached

    def retrieve(self) -> Run:
        return control.retrieve(self.id)

    def wait(self, timeout: float | str | timedelta | None = None) -> Result[R]:
        (result,) = control.wait_runs([self.id], timeout)
        return result

    def cancel(self) -> Run:
        return control.cancel(self.id, "by handle.cancel()")

    async def await_result(self) -> Result[R]:
        (result,) = await control.await_runs([self.id])
        return result

    def __await__(self) -> Generator[Any, None, Result[R]]:
        return self.await_result().__await__()

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        """In a notebook: the live run widget; elsewhere, the text."""
        return display.run_bundle(self.id, repr(self), **kwargs)

    def _ipython_display_(self) -> None:
        """In a notebook: the live run widget, in an output it can update."""
        display.display_run(self.id, repr(self))

    def __repr__(self) -> str:
        cached = ", cached" if self.is_cached else ""
        return f"RunHandle(task={self.task_id!r}{cached})"


class BatchHandle(Generic[R]):
    """The runs of one batch trigger, in item order."""

    def __init__(self, batch_id: str, handles: list[RunHandle[R]]) -> None:
        self.id = batch_id
        self.runs = handles

    def wait(self, timeout: float | str | timedelta | None = None) -> BatchResult[R]:
        return BatchResult(self.id, control.wait_runs([h.id for h in self.runs], timeout))

    async def await_result(self) -> BatchResult[R]:
        return BatchResult(self.id, await control.await_runs([h.id for h in self.runs]))

    def __await__(self) -> Generator[Any, None, BatchResult[R]]:
        return self.await_result().__await__()

    def __len__(self) -> int:
        return len(self.runs)

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        """In a notebook: the live batch widget; elsewhere, the text."""
        task_id = self.runs[0].task_id if self.runs else ""
        return display.batch_bundle([h.id for h in self.runs], task_id, repr(self), **kwargs)

    def _ipython_display_(self) -> None:
        """In a notebook: the live batch widget, in an output it can update."""
        task_id = self.runs[0].task_id if self.runs else ""
        display.display_batch([h.id for h in self.runs], task_id, repr(self))

    def __repr__(self) -> str:
        return f"BatchHandle({len(self.runs)} runs)"
