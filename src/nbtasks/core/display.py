"""How runs show themselves: the hook through which the notebook UI is reached.

In a notebook, runs, results and handles display as live widgets, a blocking wait shows
what it waits for and keeps handling widget messages, and ``runs.table()`` is a widget.
All of that lives in ``nbtasks.ui``, the top layer; the layers below ask this module, and
the UI installs itself here. ``nbtasks/__init__`` sets a loader that installs it on first
need, so ipywidgets and anywidget are imported only when something is displayed.

Without a UI: plain-text reprs, blocking waits that handle no widget message, no live view
of a wait, and ``runs.table()`` raises.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import Any, Protocol

from nbtasks.core.errors import NbtasksError


class Pump(Protocol):
    """Handles a kernel's widget messages while its cell blocks; see ``nbtasks.ui.pump``."""

    def __call__(self) -> None: ...

    def release(self) -> None: ...


class UI(Protocol):
    """What a UI provides. Views are displayable objects (``_repr_mimebundle_``); a view
    with ``_ipython_display_`` displays itself, so it can update its output later."""

    def run_view(self, run_id: str, text: str) -> Any:
        """A live view of a run; ``text`` is its plain-text form."""

    def batch_view(self, run_ids: list[str], task_id: str, text: str) -> Any:
        """A live view of a batch's runs; ``text`` is its plain-text form."""

    def show_wait(self, run_ids: list[str], task_id: str, batch: bool) -> None:
        """Display, in the current cell, what a blocking wait waits for."""

    def ending(self, within: float) -> bool:
        """Whether this process is being shut down, waiting up to ``within`` seconds for
        word of it (Jupyter interrupts a busy kernel before it asks it to shut down)."""
        ...

    def pump(self) -> Pump | None:
        """A pump for the cell that is about to block, if it can have one."""

    def run_table(self, status: str | None, task: str | None, tag: str | None,
                  limit: int, id: str | None = None) -> Any:  # fmt: skip
        """The interactive table of the store's runs."""


_ui: UI | None = None
_loader: Callable[[], None] | None = None
_lock = threading.RLock()


def install(ui: UI | None) -> None:
    """Make ``ui`` the UI (None: no UI)."""
    global _ui
    _ui = ui


def set_loader(loader: Callable[[], None] | None) -> None:
    """``loader`` installs the UI when it is first needed (and is not run again once it has)."""
    global _loader
    _loader = loader


def current() -> UI | None:
    """The installed UI, after running the loader if it has not run yet."""
    global _loader
    if _ui is None and _loader is not None:
        with _lock:  # another thread asking meanwhile waits for the UI
            if _ui is None and _loader is not None:
                _loader()
                _loader = None
    return _ui


def kernel(main_thread_only: bool = True) -> Any:
    """The Jupyter kernel this process runs, or None; with ``main_thread_only``, None
    also when called off the kernel's main thread (the one that runs cells)."""
    if "ipykernel" not in sys.modules:
        return None
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    shell = get_ipython()
    found = getattr(shell, "kernel", None) if shell is not None else None
    if main_thread_only and threading.current_thread() is not threading.main_thread():
        return None
    return found


def process_ending(within: float) -> bool:
    """Whether an interrupt that just came is the start of this process's shutdown (a
    kernel restart) rather than someone stopping a cell."""
    ui = current()
    return ui is not None and ui.ending(within)


def in_notebook() -> bool:
    """True in a Jupyter kernel (a front-end can draw widgets)."""
    return kernel(main_thread_only=False) is not None


def run_bundle(run_id: str, text: str, **kwargs: Any) -> Any:
    """A run's MIME bundle: its live view in a notebook, else ``text``."""
    ui = current() if in_notebook() else None
    if ui is None:
        return {"text/plain": text}
    return ui.run_view(run_id, text)._repr_mimebundle_(**kwargs)


def batch_bundle(run_ids: list[str], task_id: str, text: str, **kwargs: Any) -> Any:
    """A batch's MIME bundle: its live view in a notebook, else ``text``."""
    ui = current() if in_notebook() else None
    if ui is None:
        return {"text/plain": text}
    return ui.batch_view(run_ids, task_id, text)._repr_mimebundle_(**kwargs)


def _show(view: Any) -> None:
    shown = getattr(view, "_ipython_display_", None)
    if shown is None:
        raise NotImplementedError  # IPython then asks for the MIME bundle
    shown()


def display_run(run_id: str, text: str) -> None:
    """IPython's ``_ipython_display_`` of a run: its live view displays itself (so that its
    output can show the final state later). Elsewhere ``NotImplementedError``, on which
    IPython falls back to ``_repr_mimebundle_``."""
    ui = current() if in_notebook() else None
    if ui is None:
        raise NotImplementedError
    _show(ui.run_view(run_id, text))


def display_batch(run_ids: list[str], task_id: str, text: str) -> None:
    """``display_run`` for a batch."""
    ui = current() if in_notebook() else None
    if ui is None:
        raise NotImplementedError
    _show(ui.batch_view(run_ids, task_id, text))


def show_wait(run_ids: list[str], task_id: str, batch: bool) -> None:
    """In a notebook's cell, show the live view of what a blocking wait waits for."""
    if not run_ids or kernel() is None:
        return
    ui = current()
    if ui is not None:
        ui.show_wait(run_ids, task_id, batch)


def start_pump() -> Pump | None:
    """A pump for a wait about to block a notebook's cell; None elsewhere."""
    if kernel() is None:
        return None
    ui = current()
    return ui.pump() if ui is not None else None


def run_table(status: str | None = None, task: str | None = None, tag: str | None = None,
              limit: int = 25, id: str | None = None) -> Any:  # fmt: skip
    ui = current()
    if ui is None:
        raise NbtasksError("runs.table() needs the nbtasks notebook UI, which is not installed")
    if id is None:
        return ui.run_table(status, task, tag, limit)
    return ui.run_table(status, task, tag, limit, id=id)
