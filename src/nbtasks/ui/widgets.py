"""Live notebook widgets (anywidget) of one run and of one batch, and the live view a
blocking wait shows in its cell.

Plain-text reprs carry no ids, times or pids, so executed notebooks compare equal across
runs.
"""

from __future__ import annotations

import threading
import weakref
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import traitlets

from nbtasks.client.blocking import block
from nbtasks.client.config import add_follower, engine
from nbtasks.client.control import cancel
from nbtasks.client.runs import runs
from nbtasks.core.display import in_notebook
from nbtasks.core.models import Run
from nbtasks.core.status import RunStatus
from nbtasks.ui import static
from nbtasks.ui.base import (
    FINAL_VALUES,
    LOG_TAIL_CHARS,
    LiveWidget,
    asset,
    esm,
    run_state,
    throttle,
)

BATCH_SAMPLE = 200  # items of a batch on one page of its grid


class _Views:
    """This process's live run and batch views, held weakly. After a server crash the
    client connects to a new server (one is started for them) and they follow their runs
    again there: those the crashed server was executing show how the new one settled them
    (INTERRUPTED), instead of staying on their last state."""

    def __init__(self) -> None:
        self._views: weakref.WeakSet[RunWidget | BatchWidget] = weakref.WeakSet()
        self._lock = threading.Lock()

    def add(self, view: RunWidget | BatchWidget) -> None:
        with self._lock:
            self._views.add(view)

    def _live(self) -> list[RunWidget | BatchWidget]:
        """The views showing runs not final yet, and not closed."""
        with self._lock:
            return [v for v in self._views if not v._final_drawn and v.comm is not None]

    def wanted(self) -> bool:
        return bool(self._live())

    def resume(self) -> None:
        for view in self._live():
            try:
                view.follow_again()
            except Exception:  # e.g. its run is gone with a store deleted meanwhile
                pass


views = _Views()
add_follower(views)


def _logs(run: Run) -> str:
    if not run.attempts:
        return ""
    last = run.attempts[-1]
    text = last.stdout + (f"\n[stderr]\n{last.stderr}" if last.stderr else "")
    return text[-LOG_TAIL_CHARS:]


class RunWidget(LiveWidget):
    """A run, live: status, timeline, attempts, logs, progress, Cancel/Replay/Reschedule;
    the runs its Replay button started, one of them opened below it, live too."""

    _esm = esm("run.js")
    _css = asset("nbtasks.css").read_text()
    run = traitlets.Dict().tag(sync=True)
    timeline: traitlets.List[list[str]] = traitlets.List().tag(sync=True)
    logs = traitlets.Unicode("").tag(sync=True)
    replays: traitlets.List[str] = traitlets.List().tag(
        sync=True
    )  # ids of runs started by the Replay button
    detail = traitlets.Dict().tag(sync=True)  # run_state of the replay opened below

    def __init__(self, run_id: str, *, follow: bool = True, text: str | None = None) -> None:
        """``text`` is the widget's plain text (the displayed object's repr); without it,
        the run's outcome if it is final now, else ``Run(task=..., live)``."""
        super().__init__()
        self.run_id = run_id
        self._pending: Run | None = None
        self._final_drawn = False
        self._drawing = threading.Lock()
        self._detail_id: str | None = None
        self._pending_detail: Run | None = None
        self._ready = False  # snapshots that arrive before the first one wait for it
        self._heard = self._heard_detail = 0  # snapshots taken (of the run, of the detail)
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
        if live is not None:
            views.add(self)

    def follow_again(self) -> None:
        """On a new server: follow the run (and the replay opened below it) from there."""
        with self._lock:
            heard = self._heard
        live = _follow(self.run_id, self._on_snapshot)
        self._on_snapshot(live or runs.retrieve(self.run_id), heard)
        detail_id = self._detail_id
        if detail_id is not None:
            with self._lock:
                heard = self._heard_detail
            live = _follow(detail_id, self._on_detail)
            self._on_detail(live or runs.retrieve(detail_id), heard)

    def _record(self, entry: list[str]) -> None:
        """Add a transition to the timeline unless it is already there."""
        if not self._timeline or (
            entry[0] != self._timeline[-1][0] and entry[1] > self._timeline[-1][1]
        ):
            self._timeline.append(entry)

    def _on_snapshot(self, snapshot: Run, heard: int | None = None) -> None:
        """A snapshot pushed by the server; or, with ``heard``, the one a new subscription
        answered with, taken unless a pushed one came since (then it is the newer)."""
        with self._lock:
            if heard is not None and heard != self._heard:
                return
            self._heard += 1
            self._pending = snapshot
            self._record(_entry(snapshot))  # every transition, even those not drawn
        if snapshot.is_final:
            self._flush()  # the final state is never held back
        else:
            throttle.mark(self)

    def _flush(self) -> None:
        if not self._ready:
            return
        with self._lock:
            snapshot, self._pending = self._pending, None
            detail, self._pending_detail = self._pending_detail, None
        if snapshot is not None:
            self._apply(snapshot)
        if detail is not None and detail.id == self._detail_id:
            self.detail = run_state(detail, logs=True)

    def _apply(self, snapshot: Run) -> None:
        # The engine's and the throttle's threads both draw: one at a time, and a snapshot
        # taken before the final one is never drawn after it.
        with self._drawing:
            if self._final_drawn and not snapshot.is_final:
                return
            with self._lock:
                timeline = list(self._timeline)
            with self.hold_sync():
                self.run = run_state(snapshot, logs=snapshot.is_final)
                self.timeline = timeline
                self.logs = _logs(snapshot)
            if snapshot.is_final and not self._final_drawn:
                self._final_drawn = True
                self.redisplay()  # the outputs' static copies show the final state

    def _static_html(self) -> str:
        return static.run_html(self.run, self.logs, self.replays)

    def _on_detail(self, snapshot: Run, heard: int | None = None) -> None:
        with self._lock:
            if heard is not None and heard != self._heard_detail:
                return
            self._heard_detail += 1
            self._pending_detail = snapshot
        if snapshot.is_final:
            self._flush()
        else:
            throttle.mark(self)

    def _open(self, run_id: str) -> None:
        """Show ``run_id`` below this run, following it while it is live."""
        self._detail_id = run_id
        live = _follow(run_id, self._on_detail)
        self.detail = run_state(live or runs.retrieve(run_id), logs=True)

    def _act(self, content: dict[str, Any]) -> str | None:
        action = content["action"]
        if action == "cancel":
            before = runs.retrieve(self.run_id)
            if before.is_final:
                return f"already {before.status.value}"
            run = cancel(self.run_id, "by the Cancel button of its run widget")
            return "canceled" if run.status is RunStatus.CANCELED else f"ended {run.status.value}"
        if action == "replay":
            handle = runs.replay(self.run_id)
            self.replays = [*self.replays, handle.id]
            return f"replayed as {handle.id}"
        if action == "open":
            self._open(str(content["id"]))
            return None
        if action == "reschedule":
            # Later by ``by`` than the run is due now (not than the clock): +1m twice is +2m.
            by = timedelta(seconds=float(content.get("by_s", 60)))
            due = runs.retrieve(self.run_id).delay_until
            run = runs.reschedule(self.run_id, due + by if due is not None else by)
            self._apply(run)
            until = run.delay_until.isoformat() if run.delay_until else ""
            return f"rescheduled to {{time:{until}}}"
        return f"unknown action {action!r}"

    def __repr__(self) -> str:
        return self._text


class BatchWidget(LiveWidget):
    """A batch in one compact view: counts per status, progress, and a grid of its items,
    a page at a time, filtered by a status (its badge), for drill-down into runs."""

    _esm = esm("batch.js")
    _css = asset("nbtasks.css").read_text()
    total = traitlets.Int(0).tag(sync=True)
    counts = traitlets.Dict().tag(sync=True)
    sample: traitlets.List[dict[str, Any]] = traitlets.List().tag(
        sync=True
    )  # [{id, index, status}]: the grid's page
    grid = traitlets.Dict().tag(sync=True)  # {status, page, size, matching}
    selected = traitlets.Dict().tag(sync=True)  # run_state of the run picked in the grid

    def __init__(self, run_ids: list[str], task_id: str, text: str | None = None) -> None:
        super().__init__()
        self.run_ids = run_ids
        self.task_id = task_id
        self._statuses: dict[str, str] = {}
        self._heard = 0  # status changes taken, and when each run's last one was
        self._heard_at: dict[str, int] = {}
        self._counts: Counter[str] | None = None  # kept up to date once the view is set up
        self._grid_status = ""
        self._grid_page = 0
        self._final_drawn = False
        self._changed = False
        self._text = text or f"Batch(task={task_id!r}, runs={len(run_ids)})"
        self.total = len(run_ids)
        live, stored = self._watch(run_ids)
        with self._lock:  # a change reported meanwhile is newer than ``live``
            for run_id, status in live.items():
                self._statuses.setdefault(run_id, status)
            self._statuses.update(stored)
            self._counts = Counter(self._statuses.values())
        self._flush_now()
        if live:
            views.add(self)

    def _watch(self, run_ids: list[str]) -> tuple[dict[str, str], dict[str, str]]:
        """Watch ``run_ids``: the statuses of those live now, and of the others, final and
        committed, from the store (read after the watch began: no change falls between)."""
        eng = engine()
        live: dict[str, str] = block(eng.call("watch", run_ids, self._on_status))
        rest = [run_id for run_id in run_ids if run_id not in live]
        if not rest:
            return live, {}
        rows = eng.store.query(
            "SELECT id, status FROM runs WHERE id IN (SELECT unnest(?::VARCHAR[]))", [rest]
        )
        return live, dict(rows)

    def follow_again(self) -> None:
        """On a new server: watch the runs not final here from there."""
        with self._lock:
            unfinished = [r for r in self.run_ids if self._statuses.get(r) not in FINAL_VALUES]
            heard = self._heard + 1
        live, stored = self._watch(unfinished)
        for run_id, status in {**stored, **live}.items():
            self._on_status(run_id, status, heard)

    def _finished(self) -> bool:
        counts: Counter[str] = self._counts or Counter()
        return sum(n for s, n in counts.items() if s in FINAL_VALUES) == len(self.run_ids)

    def _on_status(self, run_id: str, status: str, heard: int | None = None) -> None:
        """From the engine's thread, at every status change: only mark, and draw at once
        only the batch's end (before a wait on it returns, so the cell ends with it).
        With ``heard``: a status a new watch answered with, taken unless a change of that
        run was pushed since (then it is the newer)."""
        with self._lock:
            if heard is not None and self._heard_at.get(run_id, -1) >= heard:
                return
            self._heard += 1
            self._heard_at[run_id] = self._heard
            old = self._statuses.get(run_id)
            self._statuses[run_id] = status
            if self._counts is not None:
                if old is not None:
                    self._counts[old] -= 1
                    if not self._counts[old]:
                        del self._counts[old]
                self._counts[status] += 1
            self._changed = True
            ended = self._counts is not None and not self._final_drawn and self._finished()
        if ended:
            self._flush()
        else:
            throttle.mark(self)

    def _flush(self) -> None:
        with self._lock:
            changed, self._changed = self._changed, False
        if changed:
            self._flush_now()

    def _flush_now(self) -> None:
        with self._lock:
            statuses = dict(self._statuses)
            counts: dict[str, int] = dict(self._counts or Counter(statuses.values()))
            finished = self._counts is not None and self._finished()
            want, page = self._grid_status, self._grid_page
        if want:
            matching = [i for i, run_id in enumerate(self.run_ids)
                        if statuses.get(run_id, "QUEUED") == want]  # fmt: skip
        else:
            matching = range(len(self.run_ids))  # type: ignore[assignment]
        page = min(page, max(0, (len(matching) - 1) // BATCH_SAMPLE))
        shown = matching[page * BATCH_SAMPLE : (page + 1) * BATCH_SAMPLE]
        with self.hold_sync():
            self.counts = counts
            self.grid = {"status": want, "page": page, "size": BATCH_SAMPLE,
                         "matching": len(matching)}  # fmt: skip
            self.sample = [
                {"id": self.run_ids[i], "index": i,
                 "status": statuses.get(self.run_ids[i], "QUEUED")}
                for i in shown
            ]  # fmt: skip
        with self._lock:  # the engine's and the throttle's threads may both get here
            first_end, self._final_drawn = (
                finished and not self._final_drawn,
                (self._final_drawn or finished),
            )
        if first_end:
            self.redisplay()  # the outputs' static copies show the batch's end

    def _static_html(self) -> str:
        return static.batch_html(self.task_id, self.total, self.counts, FINAL_VALUES)

    def _act(self, content: dict[str, Any]) -> str | None:
        action = content["action"]
        if action == "select":
            self.selected = run_state(runs.retrieve(str(content["run_id"])), logs=True)
            return None
        if action == "grid":  # a status badge (again: every status), or a page
            with self._lock:
                if "status" in content:
                    status = str(content["status"] or "")
                    self._grid_status = "" if status == self._grid_status else status
                    self._grid_page = 0
                if "page" in content:
                    self._grid_page = max(0, int(content["page"]))
            self._flush_now()
            return None
        if action == "cancel_all":
            with self._lock:
                live = [r for r in self.run_ids if self._statuses.get(r) not in FINAL_VALUES]
            for run_id in live:
                cancel(run_id, "by the Cancel button of its batch widget")
            return f"canceled {len(live)} unfinished run(s)"
        return None

    def __repr__(self) -> str:
        return self._text


def _entry(run: Run) -> list[str]:
    return [run.status.value, run.updated_at.isoformat(), ""]


def _events(run_id: str) -> list[tuple[str, str, str]]:
    rows = engine().store.query(
        "SELECT status, \"at\", coalesce(detail, '') FROM run_events WHERE run_id = ? "
        'ORDER BY "at"',
        [run_id],
    )
    return [(status, at.isoformat(), detail) for status, at, detail in rows]


def _follow(run_id: str, listener: Callable[[Run], None]) -> Run | None:
    """Call ``listener`` with every later snapshot of a live run, from the engine's thread;
    return its snapshot now, or None if it is not live (then it is final and stored)."""
    eng = engine()
    snapshot: Run | None = block(eng.call("subscribe", run_id, listener))
    return snapshot


def _text_of(run: Run) -> str:
    """A run's stable text: its outcome once final, else only that it is live."""
    return repr(run) if run.is_final else f"Run(task={run.task_id!r}, live)"


def show_run(run_id: str, task_id: str) -> RunWidget | None:
    """Display the live widget of a run in the current cell, when in a notebook."""
    if not in_notebook():
        return None
    # the text of what a wait shows must not depend on how fast the run is
    widget = RunWidget(run_id, text=f"Run(task={task_id!r}, live)")
    widget._ipython_display_()
    return widget


def show_batch(run_ids: list[str], task_id: str) -> BatchWidget | None:
    if not in_notebook():
        return None
    widget = BatchWidget(run_ids, task_id)
    widget._ipython_display_()
    return widget
