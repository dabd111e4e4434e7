"""Listing runs without folding first: the journal's runs overlaid on the tables.

A listing takes the runs the journal holds (the store keeps them merged as they commit:
the layer a fold is writing, then the one commits go to) and lays them over the tables'
rows, newest first. The tables' newest ``RECENT`` runs are kept in memory as of the last
fold (each fold updates them from what it wrote, ``recent_after``), so a page that falls
within them and the overlay reads no table at all; a page that reaches below them reads
the tables' matching ids (one narrow column), then the page's rows by id.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

try:  # see store.py
    import _duckdb as duckdb
except ImportError:  # pragma: no cover
    import duckdb  # type: ignore[no-redef]

from nbtasks.store.journal import Batch, apply_run_update
from nbtasks.store.schema import RUN_COLUMNS

Row = tuple[Any, ...]
_CHUNK = 256  # rows a listing reads at a time
RECENT = 2000  # the newest runs kept in memory for listings (``Store._recent``)
_PAYLOAD_SLOTS = (RUN_COLUMNS.index("payload"), RUN_COLUMNS.index("output"))
# A listing never reads (or unpickles) payloads and outputs.
LISTED = ", ".join("NULL" if c in ("payload", "output") else c for c in RUN_COLUMNS)


def unlisted(row: Row) -> Row:
    """A run row as a listing gives it: without its payload and output."""
    out = list(row)
    for slot in _PAYLOAD_SLOTS:
        out[slot] = None
    return tuple(out)


def _overlaid(run_id: str, stored: Row | None, layers: list[Batch]) -> Row | None:
    """A run's listed row: ``stored`` (from the tables) with the overlay's layers, oldest
    first, written over it; None if neither has the run."""
    row = stored
    for layer in layers:
        if run_id in layer.new_runs:
            row = layer.new_runs[run_id]
        elif row is not None and run_id in layer.run_updates:
            row = apply_run_update(row, layer.run_updates[run_id])
    return None if row is None else unlisted(row)


def _rows_by_id(cur: duckdb.DuckDBPyConnection, ids: list[str]) -> list[Row]:
    """The listed rows of these runs (a list of values: DuckDB looks each up by key)."""
    if not ids:
        return []
    marks = ", ".join("?" * len(ids))
    return cur.execute(f"SELECT {LISTED} FROM runs WHERE id IN ({marks})", ids).fetchall()


def _id(row: Row) -> Any:
    return row[0]


def page(conn: duckdb.DuckDBPyConnection, layers: list[Batch], recent: list[Row],
         recent_all: bool, where: str, params: Sequence[Any], keep: Callable[[Row], bool],
         limit: int) -> list[Row]:  # fmt: skip
    """The newest ``limit`` runs (listed rows) matching ``where`` (SQL on ``runs``) and
    ``keep`` (the same test, on a row): ``layers`` (oldest first) over ``recent`` (the
    tables' newest runs, all of them if ``recent_all``) or over the tables."""
    overlaid = {run_id for layer in layers for run_id in (*layer.new_runs, *layer.run_updates)}
    known = _page_from_memory(layers, overlaid, recent, recent_all, keep, limit)
    if known is not None:
        return known
    cur, lookup = conn.cursor(), conn.cursor()
    try:
        # The tables' newest matching ids first (one narrow column: DuckDB reads every
        # column of every row it sorts), read only until the page is full, then the
        # page's rows, in one snapshot. Rows the overlay holds are skipped: its rows
        # are newer.
        cur.begin()
        cur.execute(
            f"SELECT id FROM runs WHERE ({where or 'true'}) "
            f"ORDER BY id DESC LIMIT {limit + len(overlaid)}",
            params,
        )
        page: list[str] = []
        while len(page) < limit:
            chunk = cur.fetchmany(_CHUNK)
            if not chunk:
                break
            page += [run_id for (run_id,) in chunk if run_id not in overlaid]
        older = _rows_by_id(cur, page[:limit])
        cur.rollback()
        older.sort(key=_id, reverse=True)
        # Only overlay runs newer than the page's last row can be on the page.
        floor = older[-1][0] if len(older) == limit else ""
        ids = sorted((i for i in overlaid if i > floor), reverse=True)
        newer = _overlay_rows(lookup, layers, ids, keep)
        return list(itertools.islice(heapq.merge(newer, older, key=_id, reverse=True), limit))
    finally:
        cur.close()
        lookup.close()


def _page_from_memory(layers: list[Batch], overlaid: set[str], recent: list[Row],
                      recent_all: bool, keep: Callable[[Row], bool],
                      limit: int) -> list[Row] | None:  # fmt: skip
    """The page from the newest runs kept in memory and the overlay alone, or None if
    it may reach below them. Every run newer than the last one kept is known here: an
    overlay run only updated is one of the kept (its base row is there)."""
    if not recent_all and not recent:
        return None
    floor = "" if recent_all else recent[-1][0]
    ids = sorted((i for i in overlaid if i >= floor), reverse=True)

    def overlay() -> Iterator[Row]:  # newest first, each row made only when reached
        base = {row[0]: row for row in recent} if ids else {}
        for run_id in ids:
            row = _overlaid(run_id, base.get(run_id), layers)
            if row is not None and keep(row):
                yield row

    newer = overlay()
    older = (row for row in recent if row[0] not in overlaid and keep(row))
    page = list(itertools.islice(heapq.merge(newer, older, key=_id, reverse=True), limit))
    return page if len(page) == limit or recent_all else None


def _overlay_rows(cur: duckdb.DuckDBPyConnection, layers: list[Batch], ids: list[str],
                  keep: Callable[[Row], bool]) -> Iterator[Row]:  # fmt: skip
    """The overlay's rows that ``keep`` keeps, in the order of ``ids`` (newest first).
    A run only updated in the overlay is read from the tables, a chunk at a time."""
    start, size = 0, 32  # a page is often all it takes: read more only when it is not
    while start < len(ids):
        chunk = ids[start : start + size]
        start, size = start + size, min(size * 4, _CHUNK)
        stored = [i for i in chunk if not any(i in layer.new_runs for layer in layers)]
        base = {row[0]: row for row in _rows_by_id(cur, stored)}
        for run_id in chunk:
            row = _overlaid(run_id, base.get(run_id), layers)
            if row is not None and keep(row):
                yield row


def recent_after(recent: list[Row], recent_all: bool, folded: Batch | None
                 ) -> tuple[list[Row], bool]:  # fmt: skip
    """The newest runs kept (``recent``, and whether that is every run) once the runs of
    ``folded`` are in the tables too."""
    if folded is None or not (folded.new_runs or folded.run_updates):
        return recent, recent_all
    rows = {row[0]: row for row in recent}
    for run_id, row in folded.new_runs.items():
        rows[run_id] = unlisted(row)
    for run_id, update in folded.run_updates.items():
        if run_id in rows:  # else older than every run kept here
            rows[run_id] = apply_run_update(rows[run_id], update)
    ordered = sorted(rows.values(), key=_id, reverse=True)
    return ordered[:RECENT], recent_all and len(ordered) <= RECENT
