"""Live notebook widgets (anywidget): one run, one batch, and the run table.

The engine pushes snapshots from its loop thread; widgets only mark themselves dirty and
one throttle thread turns the latest state into traitlet updates at most every
``FLUSH_EVERY_S`` (a 10,000-run batch sends a handful of messages a second, not one per
change). Buttons in the front-end send messages that call the runs API. Plain-text reprs
carry no ids, times or pids, so executed notebooks compare equal across runs.
"""

from __future__ import annotations

import json
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anywidget
import traitlets

from nbtasks.core.models import Attempt, BatchResult, Result, Run
from nbtasks.core.status import RunStatus

FLUSH_EVERY_S = 0.1
LOG_TAIL_CHARS = 20_000
BATCH_SAMPLE = 200  # runs of a batch listed for drill-down


def _asset(name: str) -> Path:
    """A front-end file: in the wheel (nbtasks/widgets) or in the source tree (widgets/)."""
    here = Path(__file__).resolve().parent.parent  # the nbtasks package
    for folder in (here / "widgets", here.parent.parent / "widgets"):
        if (folder / name).exists():
            return folder / name
    raise FileNotFoundError(f"nbtasks widget asset {name!r} is missing from the install")


def _module(name: str) -> str:
    """A widget's ES module: the shared helpers, then the widget's own file."""
    return _asset("common.js").read_text() + "\n" + _asset(name).read_text()


class _Throttle:
    """One daemon thread flushing dirty widgets at most every FLUSH_EVERY_S."""

    def __init__(self) -> None:
        self._dirty: weakref.WeakSet[_LiveWidget] = weakref.WeakSet()
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None

    def mark(self, widget: _LiveWidget) -> None:
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


_throttle = _Throttle()


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


def _logs(run: Run) -> str:
    if not run.attempts:
        return ""
    last = run.attempts[-1]
    text = last.stdout + (f"\n[stderr]\n{last.stderr}" if last.stderr else "")
    return text[-LOG_TAIL_CHARS:]


class _LiveWidget(anywidget.AnyWidget):
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


class RunWidget(_LiveWidget):
    """A run, live: status, timeline, attempts, logs, progress, Cancel/Replay/Reschedule."""

    _esm = _module("run.js")
    _css = _asset("nbtasks.css").read_text()
    run = traitlets.Dict().tag(sync=True)
    timeline: traitlets.List[list[str]] = traitlets.List().tag(sync=True)
    logs = traitlets.Unicode("").tag(sync=True)
    replays: traitlets.List[str] = traitlets.List().tag(
        sync=True
    )  # ids of runs started by the Replay button

    def __init__(self, run_id: str, *, follow: bool = True, text: str | None = None) -> None:
        """``text`` is the widget's plain text (the displayed object's repr); without it,
        the run's outcome if it is final now, else ``Run(task=..., live)``."""
        super().__init__()
        from nbtasks.client.runs import runs

        self.run_id = run_id
        self._pending: Run | None = None
        self._ready = False  # snapshots that arrive before the first one wait for it
        self._timeline: list[list[str]] = []
        live = _follow(run_id, self._on_snapshot) if follow else None
        snapshot = live or runs.retrieve(run_id)  # not live: final, and in the store
        self._text = text or _text_of(snapshot)
        if snapshot._history:  # live: the engine's record, also of what is not stored yet
            stored = [[status, at.isoformat(), ""] for status, at in snapshot._history]
        else:
            stored = [list(e) for e in _events(run_id)]
        with self._lock:  # the known transitions, then those seen since (newer ones)
            seen, self._timeline = self._timeline, stored
            for entry in [*seen, _entry(snapshot)]:
                self._record(entry)
        self._apply(snapshot)
        self._ready = True
        self._flush()

    def _record(self, entry: list[str]) -> None:
        """Add a transition to the timeline unless it is already there."""
        if not self._timeline or (
            entry[0] != self._timeline[-1][0] and entry[1] > self._timeline[-1][1]
        ):
            self._timeline.append(entry)

    def _on_snapshot(self, snapshot: Run) -> None:
        with self._lock:
            self._pending = snapshot
            self._record(_entry(snapshot))  # every transition, even those not drawn
        if snapshot.is_final:
            self._flush()  # the final state is never held back
        else:
            _throttle.mark(self)

    def _flush(self) -> None:
        if not self._ready:
            return
        with self._lock:
            snapshot, self._pending = self._pending, None
        if snapshot is not None:
            self._apply(snapshot)

    def _apply(self, snapshot: Run) -> None:
        with self._lock:
            timeline = list(self._timeline)
        with self.hold_sync():
            self.run = run_state(snapshot)
            self.timeline = timeline
            self.logs = _logs(snapshot)

    def _act(self, content: dict[str, Any]) -> str | None:
        from nbtasks.client.runs import runs

        action = content["action"]
        if action == "cancel":
            return f"canceled: {runs.cancel(self.run_id).status.value}"
        if action == "replay":
            handle = runs.replay(self.run_id)
            self.replays = [*self.replays, handle.id]
            return "replayed as a new run"
        if action == "reschedule":
            run = runs.reschedule(self.run_id, content.get("delay"))
            self._apply(run)
            return f"rescheduled to {run.delay_until:%H:%M:%S}"
        return f"unknown action {action!r}"

    def __repr__(self) -> str:
        return self._text


class BatchWidget(_LiveWidget):
    """A batch in one compact view: counts per status, progress, drill-down into runs."""

    _esm = _module("batch.js")
    _css = _asset("nbtasks.css").read_text()
    total = traitlets.Int(0).tag(sync=True)
    counts = traitlets.Dict().tag(sync=True)
    sample: traitlets.List[dict[str, Any]] = traitlets.List().tag(
        sync=True
    )  # [{id, index, status}] for drill-down
    selected = traitlets.Dict().tag(sync=True)  # run_state of the run picked in the list

    def __init__(self, run_ids: list[str], task_id: str, text: str | None = None) -> None:
        super().__init__()
        self.run_ids = run_ids
        self.task_id = task_id
        self._statuses: dict[str, str] = {}
        self._changed = False
        self._text = text or f"Batch(task={task_id!r}, runs={len(run_ids)})"
        self.total = len(run_ids)
        from nbtasks.client.calls import block, engine

        eng = engine()
        # Watch first, then read the store for the runs that were not live any more: those
        # are final and committed, so no change falls between the two.
        live: dict[str, str] = block(eng.call(eng.watch, run_ids, self._on_status))
        with self._lock:  # a change reported meanwhile is newer than ``live``
            for run_id, status in live.items():
                self._statuses.setdefault(run_id, status)
        rest = [run_id for run_id in run_ids if run_id not in live]
        if rest:
            rows = eng.store.query(
                "SELECT id, status FROM runs WHERE id IN (SELECT unnest(?::VARCHAR[]))", [rest]
            )
            with self._lock:
                self._statuses.update({run_id: status for run_id, status in rows})
        self._flush_now()

    def _on_status(self, run_id: str, status: str) -> None:
        """From the engine's thread, at every status change: only mark, never draw here."""
        with self._lock:
            self._statuses[run_id] = status
            self._changed = True
        _throttle.mark(self)

    def _flush(self) -> None:
        with self._lock:
            changed, self._changed = self._changed, False
        if changed:
            self._flush_now()

    def _flush_now(self) -> None:
        with self._lock:
            statuses = dict(self._statuses)
        with self.hold_sync():
            self.counts = dict(Counter(statuses.values()))
            self.sample = [
                {"id": run_id, "index": i, "status": statuses.get(run_id, "QUEUED")}
                for i, run_id in enumerate(self.run_ids[:BATCH_SAMPLE])
            ]

    def _act(self, content: dict[str, Any]) -> str | None:
        from nbtasks.client.runs import runs

        if content["action"] == "select":
            self.selected = run_state(runs.retrieve(str(content["run_id"])))
            return None
        if content["action"] == "cancel_all":
            for run_id in self.run_ids:
                runs.cancel(run_id)
            return "canceled the batch's unfinished runs"
        return None

    def __repr__(self) -> str:
        return self._text


_FINAL_VALUES = {s.value for s in RunStatus if s.is_final}


def _entry(run: Run) -> list[str]:
    return [run.status.value, run.updated_at.isoformat(), ""]


def _events(run_id: str) -> list[tuple[str, str, str]]:
    from nbtasks.client.calls import engine

    rows = engine().store.query(
        "SELECT status, \"at\", coalesce(detail, '') FROM run_events WHERE run_id = ? "
        'ORDER BY "at"',
        [run_id],
    )
    return [(status, at.isoformat(), detail) for status, at, detail in rows]


def _follow(run_id: str, listener: Callable[[Run], None]) -> Run | None:
    """Call ``listener`` with every later snapshot of a live run, from the engine's thread;
    return its snapshot now, or None if it is not live (then it is final and stored)."""
    from nbtasks.client.calls import block, engine

    eng = engine()
    snapshot: Run | None = block(eng.call(eng.subscribe, run_id, listener))
    return snapshot


def _text_of(run: Run) -> str:
    """A run's stable text: its outcome once final, else only that it is live."""
    return repr(run) if run.is_final else f"Run(task={run.task_id!r}, live)"


def show_run(run_id: str, task_id: str) -> RunWidget | None:
    """Display the live widget of a run in the current cell, when in a notebook."""
    if not in_notebook():
        return None
    from IPython.display import display  # type: ignore[import-not-found,unused-ignore]

    # the text of what a wait shows must not depend on how fast the run is
    widget = RunWidget(run_id, text=f"Run(task={task_id!r}, live)")
    display(widget)
    return widget


def show_batch(run_ids: list[str], task_id: str) -> BatchWidget | None:
    if not in_notebook():
        return None
    from IPython.display import display  # type: ignore[import-not-found,unused-ignore]

    widget = BatchWidget(run_ids, task_id)
    display(widget)
    return widget


def in_notebook() -> bool:
    """True in a Jupyter kernel (a front-end can draw widgets)."""
    from nbtasks.ui.pump import kernel

    return kernel(main_thread_only=False) is not None


def result_widget(result: Result[Any]) -> RunWidget:
    return RunWidget(result.id, follow=False)


def batch_result_widget(batch: BatchResult[Any]) -> BatchWidget:
    return BatchWidget([r.id for r in batch.runs], batch.runs[0].task_id if batch.runs else "",
                       repr(batch))  # fmt: skip
