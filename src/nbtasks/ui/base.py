"""What the live widgets share: their front-end files, the throttle that flushes them, the
base class that handles their buttons, and a run's state as the front-end draws it.

The engine pushes snapshots from its loop thread; widgets only mark themselves dirty and
one throttle thread turns the latest state into traitlet updates at most every
``FLUSH_EVERY_S`` (a 10,000-run batch sends a handful of messages a second, not one per
change). Buttons in the front-end send messages that call the runs API.
"""

from __future__ import annotations

import json
import threading
import time
import weakref
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
    """Common ground: a flush of pending state, and action messages from buttons."""

    feedback = traitlets.Unicode("").tag(sync=True)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._lock = threading.Lock()
        self.on_msg(self._on_front_end_msg)

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


def _error(error: Any) -> dict[str, str] | None:
    if error is None:
        return None
    return {"type": error.type, "message": error.message, "traceback": error.traceback}


def _attempt_state(a: Attempt) -> dict[str, Any]:
    return {
        "number": a.number,
        "status": a.status.value,
        "duration_ms": a.duration_ms,
        "exit_code": a.exit_code,
        "signal": a.signal,
        "oom": a.oom,
        "error": _error(a.error),
        "displays": [d for d in a.displays if isinstance(d, dict)][:20],
    }


def run_state(run: Run) -> dict[str, Any]:
    """What the run widget draws, as JSON."""
    progress = run.metadata.get("progress")
    return {
        "id": run.id,
        "task_id": run.task_id,
        "version": run.version,
        "status": run.status.value,
        "is_final": run.is_final,
        "attempt_count": run.attempt_count,
        "max_attempts": run.max_attempts,
        "attempts": [_attempt_state(a) for a in run.attempts],
        "progress": progress if isinstance(progress, (int, float)) else None,
        "metadata": json.loads(json.dumps(run.metadata, default=str)),
        "output_preview": run.output_preview,
        "error": _error(run.error),
        "tags": list(run.tags),
        "created_at": run.created_at.isoformat(),
        "delay_until": run.delay_until.isoformat() if run.delay_until else None,
        "duration_ms": run.duration_ms,
        "depth": run.depth,
    }
