"""Handles returned by triggers: ``RunHandle`` and ``BatchHandle``."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any, Generic, TypeVar

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
        from nbtasks.client.runs import runs

        return runs.retrieve(self.id)

    def wait(self, timeout: float | None = None) -> Result[R]:
        from nbtasks.client.runs import runs

        return runs.wait(self.id, timeout=timeout)

    def cancel(self) -> Run:
        from nbtasks.client.runs import runs

        return runs.cancel(self.id)

    async def await_result(self) -> Result[R]:
        from nbtasks.client.calls import await_runs

        (result,) = await await_runs([self.id])
        return result

    def __await__(self) -> Generator[Any, None, Result[R]]:
        return self.await_result().__await__()

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        """In a notebook: the live run widget; elsewhere, the text."""
        from nbtasks.ui.widgets import RunWidget, in_notebook

        if not in_notebook():
            return {"text/plain": repr(self)}
        return RunWidget(self.id, text=repr(self))._repr_mimebundle_(**kwargs)

    def __repr__(self) -> str:
        cached = ", cached" if self.is_cached else ""
        return f"RunHandle(task={self.task_id!r}{cached})"


class BatchHandle(Generic[R]):
    """The runs of one batch trigger, in item order."""

    def __init__(self, batch_id: str, handles: list[RunHandle[R]]) -> None:
        self.id = batch_id
        self.runs = handles

    def wait(self, timeout: float | None = None) -> BatchResult[R]:
        from nbtasks.client.calls import wait_runs

        return BatchResult(self.id, wait_runs([h.id for h in self.runs], timeout))

    async def await_result(self) -> BatchResult[R]:
        from nbtasks.client.calls import await_runs

        return BatchResult(self.id, await await_runs([h.id for h in self.runs]))

    def __await__(self) -> Generator[Any, None, BatchResult[R]]:
        return self.await_result().__await__()

    def __len__(self) -> int:
        return len(self.runs)

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        """In a notebook: the live batch widget; elsewhere, the text."""
        from nbtasks.ui.widgets import in_notebook

        if not in_notebook():
            return {"text/plain": repr(self)}
        return _batch_widget(self)._repr_mimebundle_(**kwargs)

    def __repr__(self) -> str:
        return f"BatchHandle({len(self.runs)} runs)"


def _batch_widget(handle: BatchHandle[Any]) -> Any:
    from nbtasks.ui.widgets import BatchWidget

    task_id = handle.runs[0].task_id if handle.runs else ""
    return BatchWidget([h.id for h in handle.runs], task_id, repr(handle))
