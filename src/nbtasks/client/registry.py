"""The tasks defined in this process: task id -> its latest definition."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nbtasks.client.task import Task

registry: dict[str, Task[Any, Any]] = {}
_lock = threading.Lock()


def register(task: Task[Any, Any]) -> None:
    """Make ``task`` the definition of its id (a redefinition replaces the earlier one)."""
    with _lock:
        registry[task.id] = task
