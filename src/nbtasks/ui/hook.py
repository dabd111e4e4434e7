"""The notebook UI behind ``core.display``: the run and batch widgets, the pump that keeps
them working while a cell blocks, and the run table.

``nbtasks`` installs it on first need (see ``nbtasks/__init__``). Importing this module is
cheap: each part imports its widgets (anywidget, ipywidgets) when it is first used.
"""

from __future__ import annotations

from typing import Any

from nbtasks.core import display


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

    def pump(self) -> display.Pump | None:
        from nbtasks.ui.pump import start

        return start()

    def run_table(self, status: str | None, task: str | None, tag: str | None,
                  limit: int, id: str | None = None) -> Any:  # fmt: skip
        from nbtasks.ui.table import RunTable

        return RunTable(status=status, task=task, tag=tag, limit=limit, id=id)


def install() -> None:
    display.install(NotebookUI())
