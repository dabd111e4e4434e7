"""The notebook UI behind ``core.display``: the run and batch widgets, the pump that keeps
them working while a cell blocks, and the run table.

``nbtasks`` installs it on first need (see ``nbtasks/__init__``). Importing this module is
cheap: each part imports its widgets (anywidget, ipywidgets) when it is first used.
"""

from __future__ import annotations

import threading
from typing import Any

from nbtasks.core import display

_shutdown_requested = threading.Event()
_watched: set[int] = set()  # the kernels whose shutdown requests are watched


class NotebookUI:
    """``core.display.UI`` for Jupyter."""

    def run_view(self, run_id: str, text: str) -> Any:
        from nbtasks.ui.widgets import RunWidget

        return RunWidget(run_id, text=text)

    def batch_view(self, run_ids: list[str], task_id: str, text: str) -> Any:
        from nbtasks.ui.widgets import BatchWidget

        return BatchWidget(run_ids, task_id, text)

    def show_wait(self, run_ids: list[str], task_id: str, batch: bool) -> None:
        from nbtasks.ui.widgets import show_batch, show_run

        if batch:
            show_batch(run_ids, task_id)
        else:
            show_run(run_ids[0], task_id)

    def ending(self, within: float) -> bool:
        kernel = display.kernel(main_thread_only=False)
        if kernel is None or id(kernel) not in _watched:
            return False
        return _shutdown_requested.wait(within)

    def pump(self) -> display.Pump | None:
        from nbtasks.ui.pump import start

        return start()

    def run_table(self, status: str | None, task: str | None, tag: str | None,
                  limit: int, id: str | None = None) -> Any:  # fmt: skip
        from nbtasks.ui.table import RunTable

        return RunTable(status=status, task=task, tag=tag, limit=limit, id=id)


def _watch_shutdown(kernel: Any) -> None:
    """Note the kernel's shutdown and restart requests, which arrive on its control
    channel (handled by a thread of its own while a cell blocks)."""
    handlers = getattr(kernel, "control_handlers", None)
    if not isinstance(handlers, dict) or id(kernel) in _watched:
        return
    original = handlers.get("shutdown_request")
    if original is None:
        return

    async def shutdown_request(*args: Any, **kwargs: Any) -> Any:
        _shutdown_requested.set()
        result = original(*args, **kwargs)
        return await result if hasattr(result, "__await__") else result

    handlers["shutdown_request"] = shutdown_request
    _watched.add(id(kernel))


def install() -> None:
    display.install(NotebookUI())
    kernel = display.kernel(main_thread_only=False)
    if kernel is not None:
        _watch_shutdown(kernel)
