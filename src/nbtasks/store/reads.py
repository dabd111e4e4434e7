"""Reads: queries, run listings and ``runs.sql``, on the caller's thread.

A mixin of ``Store``. Every read but a listing folds the journal first (``fold``), so it
sees every committed state in the tables; a listing overlays the runs the journal holds on
the tables instead (``listing.py``), so it never waits for a fold. Reads use cursors of the
store's connection, which cannot reach any file but the store's, nor load extensions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

try:  # see store.py
    import _duckdb as duckdb
except ImportError:  # pragma: no cover
    import duckdb  # type: ignore[no-redef]

from nbtasks.store import listing
from nbtasks.store.journal import Batch

if TYPE_CHECKING:
    from nbtasks.store.store import StoreBase as _Base
else:
    _Base = object

Row = tuple[Any, ...]


class ReadsMixin(_Base):
    # -- reads (any thread) --------------------------------------------------------------

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        self.fold()
        cur = self._conn.cursor()
        try:
            return cur.execute(sql, list(params)).fetchall()
        finally:
            cur.close()

    def list_runs(self, where: str, params: Sequence[Any], keep: Callable[[Row], bool],
                  limit: int) -> list[Row]:  # fmt: skip
        """The newest ``limit`` runs (``RUN_COLUMNS`` rows, with no payload or output)
        matching ``where`` (SQL on ``runs``) and ``keep`` (the same test, on a row).

        Runs the journal holds are overlaid on the tables rather than folded first, so a
        listing never waits for a fold, however busy the store, and still sees every
        committed state: the tables' matching rows and the overlay's are merged newest
        first, each read only as far as the page needs."""
        with self._lock:  # the layers, oldest first; the pending one is copied
            layers = [self._folding_runs] if self._folding_runs is not None else []
            pending = Batch()
            pending.absorb_runs(self._pending_runs)
            layers.append(pending)
            recent, recent_all = self._recent, self._recent_all
        return listing.page(self._conn, layers, recent, recent_all, where, params, keep, limit)

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A cursor for reads, after the journal is folded."""
        self.fold()
        return self._conn.cursor()

    def select_rows(self, query: str, params: Sequence[Any] | None = None
                    ) -> tuple[list[tuple[str, str]], list[Row]]:  # fmt: skip
        """The columns (name, type) and rows of one SELECT statement, read in a read-only
        transaction; ``readonly.detached`` makes them the relation ``runs.sql`` returns.
        Any other statement raises ``ValueError``."""
        cur = self.cursor()
        try:
            statements = cur.extract_statements(query)
            if len(statements) != 1:
                raise ValueError(f"runs.sql takes one statement, got {len(statements)}")
            kind = str(statements[0].type).rsplit(".", 1)[-1]
            if kind != "SELECT":
                raise ValueError(
                    f"runs.sql is read-only: a {kind} statement is refused ({query!r})"
                )
            cur.execute("BEGIN TRANSACTION READ ONLY")
            try:
                result = cur.execute(query, list(params) if params else None)
                described = [(d[0], str(d[1])) for d in result.description]
                rows = result.fetchall()
            finally:
                cur.execute("ROLLBACK")
        finally:
            cur.close()
        return described, rows
