"""One browser page of the dashboard: the widgets it shows, and the messages between them.

A dashboard page shows the notebook's own widgets (``RunTable``, ``RunWidget``): their
Python side runs here, in the dashboard's process, and their front-end code in the page.
ipywidgets talks to a front-end through comms, made by ``comm.create_comm``, the hook the
``comm`` package provides for this; a widget created for a page gets a ``PageComm``, which
queues what the widget sends (its opening state, updates, closing) for the page's event
stream, and the page's messages (buttons, filters) reach the widget through it in turn.

Widgets are created and messages handled on threads of their own (they call the store's
server); what they send is put on the page's queue from any thread, through its loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextvars
import secrets
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import comm
from comm.base_comm import BaseComm

STATUS_EVERY_S = 2.0  # how often a page is told what the server is doing
TABLE_EVERY_S = 1.0  # how often a page's table looks for runs of other processes

_page: contextvars.ContextVar[Page | None] = contextvars.ContextVar("nbtasks_page", default=None)
_work = cf.ThreadPoolExecutor(max_workers=4, thread_name_prefix="nbtasks-dashboard")


class PageComm(BaseComm):
    """A widget's comm whose other end is a dashboard page."""

    def __init__(self, page: Page, **kwargs: Any) -> None:
        self.page = page
        super().__init__(**kwargs)

    def publish_msg(self, msg_type: str, data: Any = None, metadata: Any = None,
                    buffers: Any = None, **keys: Any) -> None:  # fmt: skip
        self.page.push({"type": msg_type, "comm_id": self.comm_id, "data": data or {}})


def _create_comm(*args: Any, **kwargs: Any) -> BaseComm:
    page = _page.get()
    if page is None:
        return _previous_create_comm(*args, **kwargs)
    return PageComm(page, *args, **kwargs)


_previous_create_comm = comm.create_comm
comm.create_comm = _create_comm


class Page:
    """A page's widgets and the queue of what they send it.

    ``view`` is ``"table"`` (every run of the store) or ``"run"`` (one run, ``run_id``)."""

    def __init__(self, view: str, run_id: str | None, loop: asyncio.AbstractEventLoop) -> None:
        self.id = secrets.token_urlsafe(16)
        self.view, self.run_id = view, run_id
        self.loop = loop
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.widgets: list[Any] = []
        self.closed = threading.Event()
        self._handling = threading.Lock()  # one message of the page at a time, in order

    def push(self, message: dict[str, Any]) -> None:
        """Queue ``message`` for the page; from any thread."""
        if self.closed.is_set():
            return
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, message)
        except RuntimeError:  # the loop has closed: the dashboard is stopping
            pass

    async def start(self) -> None:
        """Create the page's widgets (they open their comms on the queue), then keep the
        server's status and the table fresh until the page closes."""
        await self.loop.run_in_executor(_work, self._create)
        for every, step in ((STATUS_EVERY_S, self._send_status), (TABLE_EVERY_S, self._refresh)):
            threading.Thread(target=self._repeat, args=(every, step), daemon=True,
                             name="nbtasks-dashboard-page").start()  # fmt: skip

    def _create(self) -> None:
        from nbtasks.ui.table import RunTable
        from nbtasks.ui.widgets import RunWidget

        self._send_status()
        try:
            with self._bound():
                if self.view == "run":
                    assert self.run_id is not None
                    self.widgets.append(RunWidget(self.run_id))
                else:
                    self.widgets.append(RunTable(limit=50))
        except Exception as exc:  # e.g. no such run: said on the page
            self.push({"type": "error", "message": f"{type(exc).__name__}: {exc}"})
        if self.closed.is_set():  # the page left while its widgets were made
            self.close_widgets()

    @contextmanager
    def _bound(self) -> Iterator[None]:
        token = _page.set(self)
        try:
            yield
        finally:
            _page.reset(token)

    def _repeat(self, every: float, step: Callable[[], None]) -> None:
        from nbtasks.client.config import in_background

        while not self.closed.wait(every):
            with in_background():  # a stopped server stays stopped; the page says so
                step()

    def _send_status(self) -> None:
        from nbtasks.client.config import get_engine

        try:
            info = get_engine().request("status")
        except Exception as exc:  # shown on the page; the next tick tries again
            self.push({"type": "server", "error": f"{type(exc).__name__}: {exc}"})
            return
        self.push({"type": "server", "info": info})  # the stream writes it as JSON

    def _refresh(self) -> None:
        """Runs that other notebooks, scripts or the CLI started appear without a click."""
        for widget in list(self.widgets):
            refresh = getattr(widget, "refresh_quietly", None)
            if refresh is not None:
                with self._handling:
                    refresh()

    async def receive(self, message: dict[str, Any]) -> None:
        """A message from the page to one of its widgets' comms."""
        await self.loop.run_in_executor(_work, self._handle, message)

    def _handle(self, message: dict[str, Any]) -> None:
        comm_id, data = message.get("comm_id"), message.get("data")
        target = next((w.comm for w in self.widgets if w.comm and w.comm.comm_id == comm_id),
                      None)  # fmt: skip
        if target is None or not isinstance(data, dict):
            return
        with self._handling:
            target.handle_msg({"content": {"comm_id": comm_id, "data": data}, "buffers": []})

    def close(self) -> None:
        """The page has gone: close its widgets (they stop refreshing and following)."""
        if self.closed.is_set():
            return
        self.closed.set()
        self.close_widgets()

    def close_widgets(self) -> None:
        for widget in list(self.widgets):
            try:
                widget.close()
            except Exception:
                pass


class Pages:
    """The open pages of one dashboard, by id."""

    def __init__(self) -> None:
        self._pages: dict[str, Page] = {}
        self._lock = threading.Lock()

    def open(self, view: str, run_id: str | None) -> Page:
        page = Page(view, run_id, asyncio.get_running_loop())
        with self._lock:
            self._pages[page.id] = page
        return page

    def get(self, page_id: str) -> Page | None:
        with self._lock:
            return self._pages.get(page_id)

    def close(self, page: Page) -> None:
        with self._lock:
            self._pages.pop(page.id, None)
        page.close()

    def close_all(self) -> None:
        with self._lock:
            pages, self._pages = list(self._pages.values()), {}
        for page in pages:
            page.close()
