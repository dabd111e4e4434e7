"""What the live widgets share: their front-end files, the throttle that flushes them, the
base class that handles their buttons, and a run's state as the front-end draws it.

The engine pushes snapshots from its loop thread; widgets only mark themselves dirty and
one throttle thread turns the latest state into traitlet updates at most every
``FLUSH_EVERY_S`` (a 10,000-run batch sends a handful of messages a second, not one per
change). Buttons in the front-end send messages that call the runs API.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import weakref
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import anywidget
import traitlets

from nbtasks.core.models import Attempt, Run
from nbtasks.core.status import RunStatus

FLUSH_EVERY_S = 0.1
FINAL_VALUES = {s.value for s in RunStatus if s.is_final}


def asset(name: str) -> Path:
    """A front-end file: in the wheel (nbtasks/widgets) or in the source tree (widgets/)."""
    here = Path(__file__).resolve().parent.parent  # the nbtasks package
    for folder in (here / "widgets", here.parent.parent / "widgets"):
        if (folder / name).exists():
            return folder / name
    raise FileNotFoundError(f"nbtasks widget asset {name!r} is missing from the install")


def esm(name: str) -> str:
    """A widget's ES module: the shared helpers, then the widget's own file."""
    return asset("common.js").read_text() + "\n" + asset(name).read_text()


class _Throttle:
    """One daemon thread flushing dirty widgets at most every FLUSH_EVERY_S."""

    def __init__(self) -> None:
        self._dirty: weakref.WeakSet[LiveWidget] = weakref.WeakSet()
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None

    def mark(self, widget: LiveWidget) -> None:
        with self._cv:
            self._dirty.add(widget)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, daemon=True,
                                                name="nbtasks-widgets")  # fmt: skip
                self._thread.start()
            self._cv.notify()

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._dirty:
                    self._cv.wait()
                dirty = list(self._dirty)
                self._dirty = weakref.WeakSet()
            for widget in dirty:
                try:
                    widget._flush()
                except Exception:  # a closed comm must not stop the others
                    pass
            time.sleep(FLUSH_EVERY_S)


throttle = _Throttle()


class LiveWidget(anywidget.AnyWidget):
    """Common ground: a flush of pending state, action messages from buttons, and the
    static HTML copy of its state that each displayed output carries beside the live view.

    Feedback may name times as ``{time:ISO}``: the front-end writes them as it writes every
    other time (the browser's locale), so a message and the view never disagree.
    """

    feedback = traitlets.Unicode("").tag(sync=True)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._lock = threading.Lock()
        self._displays: list[Any] = []  # IPython DisplayHandles of this widget's outputs
        self.on_msg(self._on_front_end_msg)

    def _static_html(self) -> str:
        """The widget's current state as plain HTML (``nbtasks.ui.static``)."""
        raise NotImplementedError

    def _send(self, msg: Any, buffers: Any = None) -> None:
        with _current_request():  # from the engine's or the throttle's thread too
            super()._send(msg, buffers=buffers)

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        bundle = super()._repr_mimebundle_(**kwargs)
        data, metadata = bundle if isinstance(bundle, tuple) else (bundle or {}, {})
        return {**data, "text/html": self._static_html()}, metadata

    def _ipython_display_(self, **kwargs: Any) -> None:
        """Display with a display id, so ``redisplay`` can replace the static copy later."""
        from IPython.display import display  # type: ignore[import-not-found,unused-ignore]

        data, metadata = self._repr_mimebundle_()
        handle = display(  # type: ignore[no-untyped-call,unused-ignore]
            data, metadata=metadata, raw=True, display_id=True
        )
        if handle is not None:
            self._displays.append(handle)

    def redisplay(self) -> None:
        """Replace every output this widget was displayed in with its current bundle: the
        live view stays, and a notebook saved from now on keeps the current static copy."""
        if not self._displays:
            return
        data, metadata = self._repr_mimebundle_()
        with _current_request():
            for handle in self._displays:
                try:
                    handle.update(data, metadata=metadata, raw=True)
                except Exception:  # a closed kernel channel must not break the widget
                    pass

    def _flush(self) -> None:
        raise NotImplementedError

    def _on_front_end_msg(self, _widget: Any, content: Any, _buffers: Any) -> None:
        if not isinstance(content, dict) or "action" not in content:
            return
        try:
            self.feedback = self._act(content) or ""
        except Exception as exc:  # shown in the widget, never raised into the kernel
            self.feedback = f"{type(exc).__name__}: {exc}"

    def _act(self, content: dict[str, Any]) -> str | None:
        return None


@contextlib.contextmanager
def _current_request() -> Iterator[None]:
    """Send what this thread sends (widget updates, display updates) on behalf of the
    request the kernel handles now (the cell that runs), not the one that started the
    thread: ipykernel 7 gives a thread the parent of the cell that started it, and a client
    like nbclient drops a message whose parent cell is over (so a notebook it saves would
    keep a stale widget state and static copy). ipykernel 6 has one parent for all threads,
    always the latest: nothing to do there, nor on the kernel's main thread."""
    if threading.current_thread() is threading.main_thread():
        yield
        return
    from IPython import get_ipython  # type: ignore[attr-defined,unused-ignore]

    shell = get_ipython()
    kernel = getattr(shell, "kernel", None)
    var = getattr(kernel, "_shell_parent", None)  # ipykernel 7: a ContextVar
    latest = getattr(kernel, "_shell_context", {}).get(var) if var is not None else None
    publisher = getattr(shell, "display_pub", None)
    if not latest or not hasattr(publisher, "set_thread_parent"):
        yield
        return
    token = var.set(latest)  # type: ignore[union-attr]
    display_token = publisher.set_thread_parent(latest)  # type: ignore[union-attr]
    try:
        yield
    finally:
        publisher.reset_thread_parent(display_token)  # type: ignore[union-attr]
        var.reset(token)  # type: ignore[union-attr]


def _error(error: Any) -> dict[str, str] | None:
    if error is None:
        return None
    return {"type": error.type, "message": error.message, "traceback": error.traceback}


def _iso(at: datetime | None) -> str | None:
    return at.isoformat() if at is not None else None


def _attempt_state(a: Attempt, logs: bool) -> dict[str, Any]:
    state = {
        "number": a.number,
        "status": a.status.value,
        "started_at": _iso(a.started_at),
        "duration_ms": a.duration_ms,
        "exit_code": a.exit_code,
        "signal": a.signal,
        "oom": a.oom,
        "error": _error(a.error),
        "displays": [d for d in a.displays if isinstance(d, dict)][:20],
    }
    if logs and a.finished_at is not None:  # a finished attempt's output, as it ended
        state["stdout"] = a.stdout[-LOG_TAIL_CHARS:]
        state["stderr"] = a.stderr[-LOG_TAIL_CHARS:]
    return state


LOG_TAIL_CHARS = 20_000


def run_state(run: Run, logs: bool = False) -> dict[str, Any]:
    """What the run widget draws, as JSON; with ``logs``, each finished attempt's output."""
    progress = run.metadata.get("progress")
    return {
        "id": run.id,
        "task_id": run.task_id,
        "version": run.version,
        "status": run.status.value,
        "is_final": run.is_final,
        "attempt_count": run.attempt_count,
        "max_attempts": run.max_attempts,
        "attempts": [_attempt_state(a, logs) for a in run.attempts],
        "progress": progress if isinstance(progress, (int, float)) else None,
        "metadata": json.loads(json.dumps(run.metadata, default=str)),
        "payload_preview": run.payload_preview,
        "output_preview": run.output_preview,
        "error": _error(run.error),
        "tags": list(run.tags),
        "created_at": run.created_at.isoformat(),
        "started_at": _iso(run.started_at),
        "finished_at": _iso(run.finished_at),
        "delay_until": _iso(run.delay_until),
        "duration_ms": run.duration_ms,
        "depth": run.depth,
        "replayed_from": run.replayed_from,
        "origin": run.origin,
        "now": datetime.now(timezone.utc).isoformat(),  # the kernel's clock, for elapsed time
    }
