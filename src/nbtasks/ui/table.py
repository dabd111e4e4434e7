"""The run table widget: the store's runs, filtered, sorted, paged and kept fresh, with
the selected rows canceled or replayed and a row opened as a run view."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import traitlets

from nbtasks.client.config import engine
from nbtasks.client.control import cancel
from nbtasks.client.runs import runs, status_values
from nbtasks.ui.base import FINAL_VALUES, LiveWidget, asset, esm, run_state

_SORTS = {
    "created": "id",
    "task_id": "task_id",
    "status": "status",
    "attempt_count": "attempt_count",
    "duration_ms": "finished_at - started_at",
}


class RunTable(LiveWidget):
    """The runs of the store: filter, sort, page, live refresh, cancel/replay selected, open."""

    _esm = esm("table.js")
    _css = asset("nbtasks.css").read_text()
    rows: traitlets.List[dict[str, Any]] = traitlets.List().tag(sync=True)
    filters = traitlets.Dict().tag(sync=True)
    sort = traitlets.Dict({"col": "created", "desc": True}).tag(sync=True)
    page = traitlets.Int(0).tag(sync=True)
    page_size = traitlets.Int(25).tag(sync=True)
    has_next = traitlets.Bool(False).tag(sync=True)
    detail = traitlets.Dict().tag(sync=True)

    def __init__(self, status: str | None = None, task: str | None = None,
                 tag: str | None = None, limit: int = 25) -> None:  # fmt: skip
        super().__init__()
        if status is not None:
            status_values(status)  # a bad status names itself now
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 1000:
            raise ValueError(f"limit={limit!r} is not valid: use an integer from 1 to 1000")
        self.page_size = limit
        self.filters = {"status": status or "", "task": task or "", "tag": tag or ""}
        shown = ", ".join(f"{k}={v!r}" for k, v in self.filters.items() if v)
        self._text = f"RunTable({shown})"
        self._refreshing = False
        self.refresh()

    def refresh(self) -> None:
        """Load the current page; keep refreshing every second while it shows live runs."""
        f = self.filters
        where, params = [], []
        if f.get("status"):
            where.append("status = ?")
            params.append(f["status"].upper())
        if f.get("task"):
            where.append("task_id = ?")
            params.append(f["task"])
        if f.get("tag"):
            where.append("list_contains(tags, ?)")
            params.append(f["tag"])
        order = _SORTS.get(str(self.sort.get("col", "created")), "id")
        direction = "DESC" if self.sort.get("desc", True) else "ASC"
        sql = (
            "SELECT id, task_id, status, attempt_count, created_at, started_at, finished_at, "
            "output_preview, error FROM runs"
            + (" WHERE " + " AND ".join(where) if where else "")
            + f" ORDER BY {order} {direction} NULLS LAST, id DESC"
            + f" LIMIT {self.page_size + 1} OFFSET {self.page * self.page_size}"
        )
        rows = engine().store.query(sql, params)
        out = []
        for run_id, task_id, status, attempts, created, started, finished, preview, err in rows:
            duration = (finished - started).total_seconds() * 1000 if started and finished else None
            error = json.loads(err) if err else None
            out.append({
                "id": run_id, "task_id": task_id, "status": status, "attempt_count": attempts,
                "created_at": created.isoformat(), "duration_ms": duration,
                "output_preview": preview,
                "error": f"{error['type']}: {error['message']}" if error else None,
            })  # fmt: skip
        with self.hold_sync():
            self.has_next = len(out) > self.page_size
            self.rows = out[: self.page_size]
        if self.detail.get("id"):
            self._open(self.detail["id"])
        live = any(r["status"] not in FINAL_VALUES for r in self.rows)
        if live and not self._refreshing:
            self._refreshing = True
            threading.Thread(target=self._keep_fresh, daemon=True).start()

    def _keep_fresh(self) -> None:
        try:
            while self.comm is not None and any(r["status"] not in FINAL_VALUES for r in self.rows):
                time.sleep(1.0)
                self.refresh_quietly()
        finally:
            self._refreshing = False

    def refresh_quietly(self) -> None:
        try:
            self._refreshing = True
            self.refresh()
        except Exception:
            pass

    def _open(self, run_id: str) -> None:
        self.detail = run_state(runs.retrieve(run_id))

    def _act(self, content: dict[str, Any]) -> str | None:
        action = content["action"]
        if action == "filter":
            self.filters = {k: str(content.get(k) or "") for k in ("status", "task", "tag")}
            self.page = 0
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
            for run_id in ids:
                if action == "cancel":
                    cancel(run_id, "from the run table")
                else:
                    runs.replay(run_id)
            self.refresh()
            return f"{action}: {len(ids)} run(s)"
        self.refresh()
        return None

    def _flush(self) -> None:
        self.refresh()

    def __repr__(self) -> str:
        return self._text
