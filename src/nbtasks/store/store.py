"""The DuckDB store: one file holding runs, attempts, run events and task versions.

Writes are staged by the engine and committed by one writer thread in groups: everything
staged while the previous commit ran goes into the next transaction. A staged row replaces
an earlier staged row of the same run, so a run that changes five times between two
commits is written once. A group commits as one append to a journal file (``_journal``),
which the writer folds into the tables when it is idle, when the journal grows, and before
any read: reads see every committed state, in the tables. There are two journal files:
commits go to one while what the other holds is folded, so they never wait for a fold.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

try:  # DuckDB's C extension alone: its package's Python layer (the relational API,
    # version metadata) costs about 100 ms to import, on the path to a notebook's first run,
    # and the store uses none of it. Older DuckDB releases only ship the package.
    import _duckdb as duckdb
except ImportError:  # pragma: no cover
    import duckdb  # type: ignore[no-redef]

from nbtasks.core.errors import NbtasksError, StoreLockedError
from nbtasks.store.journal import Batch, JournalFile
from nbtasks.store.schema import (
    ATTEMPT_COLUMNS,
    DDL,
    RUN_COLUMNS,
    RUN_UPDATE_COLUMNS,
    SCHEMA_VERSION,
)

Row = tuple[Any, ...]
DEFER_MAX_S = 0.02  # staged rows commit within this, or at once when someone waits on them
FOLD_IDLE_S = 0.1  # the journal is folded once no commit came for this long
FOLD_MAX_ROWS = 20_000  # or once it holds this many rows
FOLD_MAX_AGE_S = 2.0  # or once its oldest batch is this old
FOLD_RETRY_S = 1.0  # after a fold failed (the batches stay in the journal), try again after
FOLD_BUSY_S = 0.01  # after finding a read folding, look again after
_LOCK_RE = re.compile(r"Conflicting lock is held in (?P<exe>.*?) \(PID (?P<pid>\d+)\)")


def _holder(message: str) -> str | None:
    m = _LOCK_RE.search(message)
    if m is None:
        return None
    pid = int(m["pid"])
    description = f"process {pid} ({m['exe']})"
    try:
        import psutil

        cmdline = " ".join(psutil.Process(pid).cmdline())
        if cmdline:
            description = f"process {pid} ({cmdline[:200]})"
    except Exception:
        pass
    return description


def connect(path: str, *, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """Open the store file, turning DuckDB's lock conflict into a ``StoreLockedError``."""
    if not read_only:
        os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
    try:
        conn = duckdb.connect(path, read_only=read_only)
    except duckdb.IOException as exc:
        holder = _holder(str(exc))
        if holder is None:
            raise NbtasksError(f"cannot open the nbtasks store {path!r}: {exc}") from None
        raise StoreLockedError(path, holder) from None
    conn.execute("SET TimeZone = 'UTC'")
    # Statements here are small (a group commit, a page of runs): a second thread costs
    # more in scheduling than it saves, and the workers need the cores.
    conn.execute("SET threads = 1")
    return conn


class Store:
    """Owns the DuckDB connection of one store file for the life of an engine."""

    def __init__(
        self,
        path: str,
        on_commit: Callable[[int, BaseException | None], None],
        after_step: Callable[[Callable[[], None]], object] | None = None,
    ) -> None:
        """``on_commit(ticket, error)`` is called by the writer after each commit: every
        row staged under that ticket, or an earlier one, is durable (or failed with
        ``error``). ``after_step(fn)`` runs ``fn`` on the staging thread once its current
        step is over: the rows staged by one step (an attempt and its run, say) are sealed
        then, and always commit together. Without it, each staged row is sealed at once."""
        self.path = path
        self._after_step = after_step
        self._conn = connect(path)
        self._on_commit = on_commit
        self._migrate()
        # Owned by the staging thread: the open batch, and the ticket it will commit under.
        self._open = Batch()
        self._open_ticket = 0
        self._open_urgent = False
        self._seal_due = False
        # Shared with the writer, under _cv.
        self._cv = threading.Condition()
        self._sealed: list[tuple[int, Batch]] = []
        self._commit_by: float | None = None  # when the sealed batches must be committed
        self._inflight: int | None = None  # the last ticket being committed now
        self._closing = False
        # Commits append to one journal file while a fold writes what the other holds to
        # the tables, so a fold (tens of ms for thousands of rows) never holds commits up.
        self._lock = threading.Lock()  # the journal files, _pending and _seq
        self._fold_lock = threading.Lock()  # one fold at a time, and the writer cursor
        self._journal = JournalFile(path + ".journal")  # where commits go
        self._spare = JournalFile(path + ".journal.1")  # being folded, or empty
        self._spare_clear = True
        self._pending: list[Batch] = []  # committed to the journal, not folded yet
        self._pending_rows = 0
        self._pending_since: float | None = None  # when its oldest batch committed
        self._last_commit = time.monotonic()
        self._seq = 0  # the next journal frame's number
        self._fold_retry_at = 0.0
        self._writer = self._conn.cursor()
        self._open_appenders()
        self._recover()
        self._thread = threading.Thread(target=self._write_loop, name="nbtasks-store", daemon=True)
        self._thread.start()

    def _open_appenders(self) -> None:
        w = self._writer
        self._insert_runs = w.appender("runs", columns=list(RUN_COLUMNS))
        self._update_runs = w.appender(
            "runs", columns=list(RUN_UPDATE_COLUMNS), action="update", key=["id"]
        )
        self._insert_attempts = w.appender("attempts", columns=list(ATTEMPT_COLUMNS))
        self._update_attempts = w.appender(
            "attempts", columns=list(ATTEMPT_COLUMNS), action="update", key=["id"]
        )
        self._insert_events = w.appender("run_events")

    def _recover(self) -> None:
        """Fold what a process that ended without closing the store left in the journal."""
        row = self._writer.execute("SELECT max(folded_seq) FROM journal_state").fetchone()
        folded = row[0] if row and row[0] is not None else -1
        self._seq = folded + 1
        frames = self._journal.read() + self._spare.read()
        for seq, batch in sorted(frames, key=lambda frame: frame[0]):
            if seq > folded:  # older frames are left over from folds that committed
                self._pending.append(batch)
                self._seq = seq + 1
        self.fold()
        self._journal.clear()
        self._spare.clear()

    def _migrate(self) -> None:
        conn = self._conn
        conn.begin()  # one commit for the whole schema
        try:
            conn.execute(DDL)
            row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
            found = row[0] if row else None
            if found is not None and found > SCHEMA_VERSION:
                raise NbtasksError(
                    f"the store {self.path!r} has schema version {found}, newer than this "
                    f"nbtasks understands ({SCHEMA_VERSION}); upgrade nbtasks or use another store"
                )
            if found is None or found < SCHEMA_VERSION:
                conn.execute("INSERT INTO schema_version VALUES (?)", [SCHEMA_VERSION])
            conn.commit()
        except BaseException:
            conn.rollback()
            raise

    # -- staging (engine thread) -------------------------------------------------------

    def stage_run(self, row: Row, update: Row | None = None) -> int:
        """Stage a run: ``row`` has every column; ``update`` only ``RUN_UPDATE_COLUMNS``
        and is None for a new run."""
        s = self._open
        run_id = row[0]
        if update is None or run_id in s.new_runs:
            s.new_runs[run_id] = row
        else:
            s.run_updates[run_id] = update
        return self._staged()

    def stage_attempt(self, row: Row, *, new: bool = False) -> int:
        s = self._open
        attempt_id = row[0]
        if new or attempt_id in s.new_attempts:
            s.new_attempts[attempt_id] = row
        else:
            s.attempt_updates[attempt_id] = row
        return self._staged()

    def stage_event(self, row: Row) -> int:
        self._open.events.append(row)
        return self._staged()

    def stage_version(self, row: Row) -> int:
        self._open.versions.append(row)
        return self._staged()

    def _staged(self) -> int:
        """After a row joined the open batch: the ticket it will commit under."""
        ticket = self._open_ticket
        if self._after_step is None:
            self._seal()
        elif not self._seal_due:
            self._seal_due = True
            self._after_step(self._seal)
        return ticket

    def _seal(self) -> None:
        """Hand the open batch to the writer: it commits within DEFER_MAX_S, or at once if
        someone hurried it. A hurried batch is committed right here when the writer is not
        committing (a fold never holds commits up): the waiter hears of it without two hops
        between threads."""
        with self._cv:
            batch, self._open = self._open, Batch()
            self._seal_due = False
            urgent, self._open_urgent = self._open_urgent, False
            if not batch:
                return
            self._sealed.append((self._open_ticket, batch))
            self._open_ticket += 1
            if urgent and self._inflight is None:  # the writer waits on _cv, held here
                staged, ticket = self._take_locked()
            else:
                commit_by = time.monotonic() + (0.0 if urgent else DEFER_MAX_S)
                if self._commit_by is None or commit_by < self._commit_by:
                    self._commit_by = commit_by
                    self._cv.notify()
                return
        self._commit_and_report(staged, ticket)

    def hurry(self, ticket: int) -> None:
        """(Staging thread.) Someone waits on ``ticket``: commit it, and everything staged
        before it, now rather than within DEFER_MAX_S."""
        if ticket == self._open_ticket and self._seal_due:
            self._open_urgent = True
            return
        with self._cv:
            if self._sealed and self._sealed[0][0] <= ticket:
                self._commit_by = 0.0
                self._cv.notify()

    def barrier(self) -> int | None:
        """(Staging thread.) The ticket whose commit makes everything staged so far
        durable, or None if it already is."""
        if self._seal_due:
            return self._open_ticket
        with self._cv:
            if self._sealed:
                return self._sealed[-1][0]
            return self._inflight

    # -- the writer thread -------------------------------------------------------------

    def _take_locked(self) -> tuple[Batch, int]:
        """(``_cv`` held.) Everything sealed, as one batch, and the ticket it commits."""
        sealed, self._sealed = self._sealed, []
        self._commit_by = None
        ticket = self._inflight = sealed[-1][0]
        if len(sealed) == 1:
            return sealed[0][1], ticket
        merged = Batch()
        for _, batch in sealed:
            merged.absorb(batch)
        return merged, ticket

    def _commit_and_report(self, batch: Batch, ticket: int) -> None:
        error: BaseException | None = None
        try:
            self._commit(batch)
        except BaseException as exc:  # reported to every waiter of this ticket
            error = exc
        with self._cv:
            self._inflight = None
            self._cv.notify()  # the writer may have waited for this commit to end
        self._on_commit(ticket, error)

    def _next_job(self) -> str:
        """(Lock held.) Wait until there is something to do: "commit", "fold" or "close"."""
        while True:
            if self._inflight is not None:  # the staging thread commits a hurried batch
                self._cv.wait()
                continue
            if self._closing:
                return "commit" if self._sealed else "close"
            now = time.monotonic()
            deadlines = []
            if self._commit_by is not None:
                if self._commit_by <= now:
                    return "commit"
                deadlines.append(self._commit_by)
            if self._pending:
                since = self._pending_since or now
                fold_at = min(self._last_commit + FOLD_IDLE_S, since + FOLD_MAX_AGE_S)
                if self._pending_rows >= FOLD_MAX_ROWS:
                    fold_at = now
                fold_at = max(fold_at, self._fold_retry_at)
                if fold_at <= now:
                    return "fold"
                deadlines.append(fold_at)
            self._cv.wait(min(deadlines) - now if deadlines else None)

    def _write_loop(self) -> None:
        while True:
            with self._cv:  # taken in the same hold: the staging thread may commit too
                job = self._next_job()
                taken = self._take_locked() if job == "commit" else None
            if taken is None:
                self._fold_quietly()
                if job == "close":
                    return
                continue
            self._commit_and_report(*taken)

    def _commit(self, batch: Batch) -> None:
        """Make ``batch`` durable: one append to the journal."""
        data = batch.dumps()
        with self._lock:
            self._journal.append(self._seq, data)
            self._seq += 1
            self._pending.append(batch)
            self._pending_rows += batch.size()
            self._last_commit = time.monotonic()
            if self._pending_since is None:
                self._pending_since = self._last_commit

    def fold(self, wait: bool = True) -> None:
        """Write the journal's batches to the tables in one transaction. Any thread; reads
        call it first. Without ``wait``, a fold under way makes this one return at once."""
        if not self._fold_lock.acquire(blocking=wait):
            return
        try:
            self._fold()
        finally:
            self._fold_lock.release()

    def _fold(self) -> None:
        # Commits never wait for a fold: they go on in the other file meanwhile. Every
        # frame in the spare is older than what a fold takes, so once that is in the tables
        # the spare is emptied. (After a fold failed, the spare still holds frames: the next
        # fold takes them and those committed since, but commits stay where they are.)
        with self._lock:
            if not self._pending:
                return
            batches, rows, since = self._pending, self._pending_rows, self._pending_since
            self._pending, self._pending_rows, self._pending_since = [], 0, None
            last_seq = self._seq - 1
            if self._spare_clear:
                self._journal, self._spare = self._spare, self._journal
                self._spare_clear = False
        try:
            self._write_tables(batches, last_seq)
        except BaseException:
            with self._lock:  # still durable in the journal files: fold them next time
                self._pending[:0] = batches
                self._pending_rows += rows
                if since is not None:
                    self._pending_since = min(since, self._pending_since or since)
            raise
        with self._lock:
            self._spare.clear()
            self._spare_clear = True

    def _write_tables(self, batches: list[Batch], last_seq: int) -> None:
        """(Fold lock held.) ``batches``, merged, into the tables; ``last_seq`` into
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
        """Fold from the writer thread. A failure leaves the batches in the journal (they
        are durable there) and is raised to the next read, which tries again."""
        try:
            self.fold(wait=False)
        except Exception:
            self._fold_retry_at = time.monotonic() + FOLD_RETRY_S
            return
        if self._pending_since is not None and self._fold_lock.locked():
            # A read is folding: what it did not take, fold once it is done.
            self._fold_retry_at = time.monotonic() + FOLD_BUSY_S

    def close(self) -> None:
        """Commit what is staged (the staging thread is done), fold, and let go of the file."""
        self._seal()
        with self._cv:
            self._closing = True
            self._cv.notify()
        self._thread.join()
        self._conn.close()
        for journal in (self._journal, self._spare):
            journal.close()
            if not self._pending:  # all folded: the files have nothing to keep
                journal.remove()

    # -- reads (any thread) --------------------------------------------------------------

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        self.fold()
        cur = self._conn.cursor()
        try:
            return cur.execute(sql, list(params)).fetchall()
        finally:
            cur.close()

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A cursor for reads, after the journal is folded."""
        self.fold()
        return self._conn.cursor()
