"""The run table widget: the store's runs, filtered, sorted, paged and kept fresh, with
the selected rows (or every run the filter matches) canceled or replayed, and a row opened
as a run view with its attempts' logs."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import traitlets

from nbtasks.client.config import engine, in_background
from nbtasks.client.control import cancel
from nbtasks.client.runs import runs, status_values
from nbtasks.ui import static
from nbtasks.ui.base import FINAL_VALUES, LiveWidget, asset, esm, run_state

_SORTS = {
    "created": "id",
    "task_id": "task_id",
    "origin": "origin",
    "status": "status",
    "attempt_count": "attempt_count",
    "duration_ms": "finished_at - started_at",
}
FILTERS = ("status", "task", "tag", "id")
BULK_LIMIT = 1000  # runs one bulk action acts on at most
_FINAL_SQL = ", ".join(f"'{s}'" for s in sorted(FINAL_VALUES))


def filter_sql(filters: dict[str, str]) -> tuple[str, list[Any]]:
    """The WHERE clause of a filter: a status; a task and a tag by substring, any case;
    an id by prefix (with or without its ``run_``)."""
    where, params = [], []
    if filters.get("status"):
        where.append("status = ?")
        params.append(filters["status"].upper())
    if filters.get("task"):
        where.append("contains(lower(task_id), lower(?))")
        params.append(filters["task"])
    if filters.get("tag"):  # chr(31) never occurs in what anyone types
        where.append("contains(lower(array_to_string(tags, chr(31))), lower(?))")
        params.append(filters["tag"])
    if filters.get("id"):
        where.append("(starts_with(id, ?) OR starts_with(id, 'run_' || ?))")
        params += [filters["id"], filters["id"]]
    return (" WHERE " + " AND ".join(where) if where else ""), params


class RunTable(LiveWidget):
    """The runs of the store: filter, sort, page, live refresh, cancel/replay selected or
    every match, open."""

    _esm = esm("table.js")
    _css = asset("nbtasks.css").read_text()
    rows: traitlets.List[dict[str, Any]] = traitlets.List().tag(sync=True)
    filters = traitlets.Dict().tag(sync=True)
    sort = traitlets.Dict({"col": "created", "desc": True}).tag(sync=True)
    page = traitlets.Int(0).tag(sync=True)
    page_size = traitlets.Int(25).tag(sync=True)
    has_next = traitlets.Bool(False).tag(sync=True)
    total = traitlets.Int(0).tag(sync=True)  # runs the filter matches
    unfinished = traitlets.Int(0).tag(sync=True)  # ... of them not final yet
    detail = traitlets.Dict().tag(sync=True)

    def __init__(self, status: str | None = None, task: str | None = None,
                 tag: str | None = None, limit: int = 25,
                 id: str | None = None) -> None:  # fmt: skip
        super().__init__()
        if status is not None:
            status_values(status)  # a bad status names itself now
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 1000:
            raise ValueError(f"limit={limit!r} is not valid: use an integer from 1 to 1000")
        self.page_size = limit
        given = {"status": status, "task": task, "tag": tag, "id": id}
        self.filters = {k: str(v or "") for k, v in given.items()}
        shown = ", ".join(f"{k}={v!r}" for k, v in self.filters.items() if v)
        self._text = f"RunTable({shown})"
        self._refreshing = False
        self._redrawn = False
        # one refresh at a time: the kernel's (a filter changed) and the live refresh's
        # thread would otherwise race, and a slower one read under the old filter could
        # overwrite the rows of the new one last
        self._refresh_lock = threading.Lock()
        self.refresh()

    def refresh(self) -> None:
        """Load the current page; keep refreshing every second while it shows live runs."""
        with self._refresh_lock:
            self._load()
        live = any(r["status"] not in FINAL_VALUES for r in self.rows)
        if live and not self._refreshing:
            self._refreshing = True
            threading.Thread(target=self._keep_fresh, daemon=True).start()

    def _load(self) -> None:
        where, params = filter_sql(self.filters)
        order = _SORTS.get(str(self.sort.get("col", "created")), "id")
        direction = "DESC" if self.sort.get("desc", True) else "ASC"
        sql = (
            "SELECT id, task_id, origin, status, attempt_count, created_at, started_at, "
            "finished_at, output_preview, error FROM runs" + where
            + f" ORDER BY {order} {direction} NULLS LAST, id DESC"
            + f" LIMIT {self.page_size + 1} OFFSET {self.page * self.page_size}"
        )  # fmt: skip
        store = engine().store
        rows = store.query(sql, params)
        ((total, unfinished),) = store.query(
            f"SELECT count(*), count(*) FILTER (WHERE status NOT IN ({_FINAL_SQL})) FROM runs"
            + where,
            params,
        )
        out = []
        for (run_id, task_id, origin, status, attempts, created, started, finished, preview,
             err) in rows:  # fmt: skip
            duration = (finished - started).total_seconds() * 1000 if started and finished else None
            error = json.loads(err) if err else None
            out.append({
                "id": run_id, "task_id": task_id, "origin": origin, "status": status,
                "attempt_count": attempts,
                "created_at": created.isoformat(),
                "started_at": started.isoformat() if started else None,
                "finished_at": finished.isoformat() if finished else None,
                "duration_ms": duration, "output_preview": preview,
                "error": f"{error['type']}: {error['message']}" if error else None,
            })  # fmt: skip
        with self.hold_sync():
            self.has_next = len(out) > self.page_size
            self.rows = out[: self.page_size]
            self.total, self.unfinished = total, unfinished
        if self.detail.get("id"):
            self._open(self.detail["id"])

    def _keep_fresh(self) -> None:
        try:
            while self.comm is not None and any(r["status"] not in FINAL_VALUES for r in self.rows):
                time.sleep(1.0)
                self.refresh_quietly()
        finally:
            self._refreshing = False
        if not self._redrawn:  # the static copy was drawn with live runs: draw it again, once
            self._redrawn = True
            self.redisplay()

    def refresh_quietly(self) -> None:
        """A refresh from a background thread: skipped while no server runs the store."""
        try:
            self._refreshing = True
            with in_background():
                self.refresh()
        except Exception:
            pass

    def _open(self, run_id: str) -> None:
        self.detail = run_state(runs.retrieve(run_id), logs=True)

    def _matching(self, filters: dict[str, str], unfinished: bool) -> list[str]:
        where, params = filter_sql(filters)
        if unfinished:
            where += (" AND " if where else " WHERE ") + f"status NOT IN ({_FINAL_SQL})"
        rows = engine().store.query(
            f"SELECT id FROM runs{where} ORDER BY id DESC LIMIT {BULK_LIMIT}", params
        )
        return [run_id for (run_id,) in rows]

    def _act(self, content: dict[str, Any]) -> str | None:
        action = content["action"]
        if action == "filter":
            with self.hold_sync():  # the filter and what it matches reach the page together
                self.filters = {k: str(content.get(k) or "").strip() for k in FILTERS}
                self.page = 0
                self.refresh()
            return None
        elif action == "sort":
            col = str(content.get("col"))
            same = self.sort.get("col") == col
            self.sort = {"col": col, "desc": not self.sort.get("desc") if same else True}
        elif action == "page":
            self.page = max(0, self.page + int(content.get("delta", 0)))
        elif action == "open":
            self._open(str(content["id"]))
            return None
        elif action in ("cancel", "replay"):
            ids = [str(i) for i in content.get("ids", [])]
            return self._apply_to(action, ids, "selected")
        elif action == "bulk":  # every run the filter the user confirmed matches
            op = str(content.get("op"))
            if op not in ("cancel", "replay"):
                return f"unknown bulk action {op!r}"
            filters = {k: str((content.get("filters") or {}).get(k) or "") for k in FILTERS}
            return self._apply_to(op, self._matching(filters, op == "cancel"), "matching")
        self.refresh()
        return None

    def _apply_to(self, action: str, ids: list[str], which: str) -> str:
        new = []
        for run_id in ids:
            if action == "cancel":
                cancel(run_id, "from the run table")
            else:
                new.append(runs.replay(run_id).id)
        self.refresh()
        done = "canceled" if action == "cancel" else "replayed"
        text = f"{done} {len(ids)} {which} run{'s' if len(ids) != 1 else ''}"
        if new:
            text += (
                " as " + ", ".join(new[:3]) + (f" and {len(new) - 3} more" if len(new) > 3 else "")
            )
        return text

    def _static_html(self) -> str:
        return static.table_html(self.rows, self.total, self.filters)

    def _flush(self) -> None:
        self.refresh()

    def __repr__(self) -> str:
        return self._text
