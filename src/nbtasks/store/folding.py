"""Folding: the store thread's work once the file is open.

A mixin of ``Store``. The store thread is the only one that writes to DuckDB. It folds the
journal's committed batches into the tables, merged, in one transaction with the number of
the last frame folded (``journal_state``): when commits pause for ``FOLD_IDLE_S``, when
``FOLD_MAX_ROWS`` rows (or ``FOLD_MAX_BYTES``) wait, when the oldest is ``FOLD_MAX_AGE_S``
old, and before any read (``fold``). A fold that fails leaves the batches in the journal,
durable, for the next one.
The thread also runs the jobs other threads hand it (``_on_store_thread``): folds for
reads, and the only other writes to the tables, ``write`` and ``put_payloads``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, TypeVar

try:  # see store.py
    import _duckdb as duckdb
except ImportError:  # pragma: no cover
    import duckdb  # type: ignore[no-redef]

from nbtasks.core.errors import NbtasksError, StoreWriteError
from nbtasks.store import listing
from nbtasks.store.journal import Batch

if TYPE_CHECKING:
    from nbtasks.store.store import StoreBase as _Base
else:
    _Base = object

T = TypeVar("T")
FOLD_IDLE_S = 0.1  # the journal is folded once no commit came for this long
# Or once it holds this many rows, or bytes of frames: a fold of 20,000 rows takes about
# 0.1 s of the store thread, much of it holding the GIL; fewer, bigger folds leave a burst
# of a few thousand runs undisturbed, and write more runs only once (created and finished
# between two folds).
FOLD_MAX_ROWS = 50_000
FOLD_MAX_BYTES = 32 << 20
FOLD_MAX_AGE_S = 2.0  # or once its oldest batch is this old
FOLD_RETRY_S = 1.0  # after a fold failed (the batches stay in the journal), try again after


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


class FoldingMixin(_Base):
    # -- the store thread --------------------------------------------------------------

    def _next_fold(self) -> str:
        """(``_wake`` held.) Wait until the store thread has something to do: "job",
        "fold" or "close"."""
        while True:
            if self._jobs:
                return "job"
            if self._commits_done:
                return "close"
            now = time.monotonic()
            fold_at = None
            if self._pending:
                since = self._pending_since or now
                fold_at = min(self._last_commit + FOLD_IDLE_S, since + FOLD_MAX_AGE_S)
                if self._pending_rows >= FOLD_MAX_ROWS or self._pending_bytes >= FOLD_MAX_BYTES:
                    fold_at = now
                fold_at = max(fold_at, self._fold_retry_at)
                if fold_at <= now:
                    return "fold"
            self._wake.wait(None if fold_at is None else fold_at - now)

    def _fold_loop(self) -> None:
        """The store thread, once the file is open: folds when due, and runs the jobs of
        other threads (``_on_store_thread``)."""
        while True:
            with self._wake:
                job = self._next_fold()
                if job == "job":
                    fn, done = self._jobs.pop(0)
            if job == "job":
                if done.set_running_or_notify_cancel():
                    try:
                        done.set_result(fn())
                    except BaseException as exc:
                        done.set_exception(exc)
                continue
            self._fold_quietly()
            if job == "close":
                return

    def _on_store_thread(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the store thread and return what it returns."""
        if threading.current_thread() is self._thread:
            return fn()
        done: Future[T] = Future()
        with self._wake:
            if self._commits_done:
                raise NbtasksError(f"the nbtasks store {self.path!r} is closed")
            self._jobs.append((fn, done))
            self._wake.notify()
        return done.result()

    def fold(self) -> None:
        """Write the journal's batches to the tables in one transaction (on the store
        thread). Reads call it first, so they see everything committed before them."""
        with self._lock:
            if not self._pending and self._folding_runs is None:
                return
        try:
            self._on_store_thread(self._fold)
        except duckdb.Error as exc:  # the rows stay in the journal, durable
            raise StoreWriteError(self.path, _first_line(exc)) from None

    def write(self, fn: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
        """Run ``fn(cursor)`` on the store thread inside one transaction, after a fold:
        the way for anything but the journal to change the tables."""

        def transaction() -> T:
            self._fold()
            cur = self._conn.cursor()
            try:
                cur.begin()
                result = fn(cur)
                cur.commit()
                self._load_recent()
                return result
            except BaseException:
                cur.rollback()
                raise
            finally:
                cur.close()

        return self._on_store_thread(transaction)

    def put_payloads(self, items: list[tuple[str, bytes]]) -> None:
        """Write ``(run_id, payload)`` pairs to the payloads table in a transaction of their
        own, on the store thread, and return once they are durable: big payloads go there
        rather than through the journal, before their runs are created."""

        def insert() -> None:
            cur = self._conn.cursor()
            try:
                cur.begin()
                cur.executemany("INSERT OR REPLACE INTO payloads VALUES (?, ?)", items)
                cur.commit()
            except BaseException:
                cur.rollback()
                raise
            finally:
                cur.close()

        try:
            self._on_store_thread(insert)
        except duckdb.Error as exc:
            raise StoreWriteError(self.path, _first_line(exc)) from None

    def _fold(self) -> None:
        # Commits never wait for a fold: they go on in the other file meanwhile. Every
        # frame in the spare is older than what a fold takes, so once that is in the tables
        # the spare is emptied. (After a fold failed, the spare still holds frames: the next
        # fold takes them and those committed since, but commits stay where they are.)
        with self._lock:
            if not self._pending:
                return
            batches, rows, since = self._pending, self._pending_rows, self._pending_since
            size = self._pending_bytes
            self._pending, self._pending_rows, self._pending_since = [], 0, None
            self._pending_bytes = 0
            self._folding_runs, self._pending_runs = self._pending_runs, Batch()
            last_seq = self._seq - 1
            if self._spare_clear:
                self._journal, self._spare = self._spare, self._journal
                self._spare_clear = False
        try:
            self._write_tables(batches, last_seq)
            recent, recent_all = listing.recent_after(
                self._recent, self._recent_all, self._folding_runs
            )
        except BaseException:
            with self._lock:  # still durable in the journal files: fold them next time
                self._pending[:0] = batches
                self._pending_rows += rows
                self._pending_bytes += size
                if since is not None:
                    self._pending_since = min(since, self._pending_since or since)
                merged = Batch()  # a new object: listings may be reading the old ones
                merged.absorb_runs(self._folding_runs or Batch())
                merged.absorb_runs(self._pending_runs)
                self._pending_runs, self._folding_runs = merged, None
                self._spare.check()  # no commit goes there to notice it was deleted
            raise
        with self._lock:  # a listing sees the folded runs in the overlay or in _recent
            self._spare.clear()
            self._spare_clear = True
            self._folding_runs = None
            self._recent, self._recent_all = recent, recent_all
        if not self.private:
            self._tighten()

    def _write_tables(self, batches: list[Batch], last_seq: int) -> None:
        """(Store thread.) ``batches``, merged, into the tables; ``last_seq`` into
        ``journal_state``: all in one transaction."""
        merged = Batch()
        for batch in batches:
            merged.absorb(batch)
        w = self._writer
        w.begin()
        try:
            if merged.versions:
                w.executemany(
                    "INSERT OR IGNORE INTO task_versions VALUES (?, ?, ?, ?, ?, ?, ?)",
                    merged.versions,
                )
            for appender, rows in (
                (self._insert_runs, merged.new_runs.values()),
                (self._update_runs, merged.run_updates.values()),
                (self._insert_attempts, merged.new_attempts.values()),
                (self._update_attempts, merged.attempt_updates.values()),
                (self._insert_events, merged.events),
            ):
                if rows:
                    appender.append_rows(list(rows))
                    appender.flush()
            w.execute("DELETE FROM journal_state")
            w.execute("INSERT INTO journal_state VALUES (?)", [last_seq])
            w.commit()
        except BaseException:
            try:
                w.rollback()
            except duckdb.Error:
                pass
            self._open_appenders()
            raise

    def _fold_quietly(self) -> None:
        """Fold on the store thread's own schedule. A failure leaves the batches in the journal
        (they are durable there) and is raised to the next read, which tries again."""
        try:
            self._fold()
        except Exception:
            self._fold_retry_at = time.monotonic() + FOLD_RETRY_S
