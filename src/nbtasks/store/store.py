"""The DuckDB store: one file holding runs, attempts, run events and task versions.

Writes are staged by the engine and committed by the committer thread in groups:
everything staged while the previous commit ran goes into the next one. A staged row
replaces an earlier staged row of the same run, so a run that changes five times between
two commits is written once. A group commits as one append to a journal file
(``journal.py``), which the store thread folds into the tables when commits pause, when the
journal grows, and before any read: reads see every committed state, in the tables. There
are two journal files: commits go to one while what the other holds is folded, so they
never wait for a fold.

The store thread is the only one that writes to DuckDB (it opens the file, folds, settles
what a previous engine left, checkpoints and closes), with a umask of its own, so that the
files DuckDB creates are private (``files.py``). Reads run on the caller's thread, on a
connection that cannot reach any file but the store's, nor load extensions.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any, TypeVar

try:  # DuckDB's C extension alone: its package's Python layer (the relational API,
    # version metadata) costs about 100 ms to import, on the path to a notebook's first run,
    # and the store uses none of it. Older DuckDB releases only ship the package.
    import _duckdb as duckdb
except ImportError:  # pragma: no cover
    import duckdb  # type: ignore[no-redef]

from nbtasks.core.errors import NbtasksError, StoreLockedError, StoreWriteError
from nbtasks.store import listing, readonly
from nbtasks.store.files import make_store_folder, private_umask
from nbtasks.store.journal import Batch, JournalError, JournalFile, codec, decode_frames
from nbtasks.store.schema import (
    ATTEMPT_COLUMNS,
    DDL,
    RUN_COLUMNS,
    RUN_UPDATE_COLUMNS,
    SCHEMA_VERSION,
)

T = TypeVar("T")
Row = tuple[Any, ...]
DEFER_MAX_S = 0.02  # staged rows commit within this, or at once when someone waits on them
FOLD_IDLE_S = 0.1  # the journal is folded once no commit came for this long
FOLD_MAX_ROWS = 20_000  # or once it holds this many rows
FOLD_MAX_AGE_S = 2.0  # or once its oldest batch is this old
FOLD_RETRY_S = 1.0  # after a fold failed (the batches stay in the journal), try again after
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


def connect(path: str) -> duckdb.DuckDBPyConnection:
    """Open the store file, turning DuckDB's lock conflict into a ``StoreLockedError``."""
    try:
        conn = duckdb.connect(path, config=dict(readonly.SEALED))
    except duckdb.IOException as exc:
        holder = _holder(str(exc))
        if holder is None:
            raise NbtasksError(f"cannot open the nbtasks store {path!r}: {exc}") from None
        raise StoreLockedError(path, holder) from None
    conn.execute("SET TimeZone = 'UTC'")
    conn.execute("SET lock_configuration = true")
    return conn


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _check_folder(path: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    make_store_folder(folder)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise NbtasksError(
            f"cannot open the nbtasks store {path!r}: its folder {folder!r} is not writable; "
            "choose another store with nbtasks.configure(store=...) or NBTASKS_STORE"
        )


class Store:
    """Owns the DuckDB connection of one store file for the life of an engine."""

    def __init__(
        self,
        path: str,
        on_commit: Callable[[int, BaseException | None], None],
        after_step: Callable[[Callable[[], None]], object] | None = None,
    ) -> None:
        """``on_commit(ticket, error)`` is called by the committer after each commit: every
        row staged under that ticket, or an earlier one, is durable (or failed with
        ``error``). ``after_step(fn)`` runs ``fn`` on the staging thread once its current
        step is over: the rows staged by one step (an attempt and its run, say) are sealed
        then, and always commit together. Without it, each staged row is sealed at once."""
        self.path = path
        self._after_step = after_step
        self._on_commit = on_commit
        _check_folder(path)
        # Owned by the staging thread: the open batch, and the ticket it will commit under.
        self._open = Batch()
        self._open_ticket = 0
        self._open_urgent = False
        self._seal_due = False
        # Shared with the committer and the store thread, under _cv.
        self._cv = threading.Condition()
        self._sealed: list[tuple[int, Batch]] = []
        self._commit_by: float | None = None  # when the sealed batches must be committed
        self._inflight: int | None = None  # the last ticket being committed now
        # The store thread sleeps on a condition of its own: a commit wakes it only when
        # it brings a fold nearer, not at every commit (_commit).
        self._wake = threading.Condition()
        self._jobs: list[tuple[Callable[[], Any], Future[Any]]] = []  # under _wake
        self._closing = False
        # Commits append to one journal file while a fold writes what the other holds to
        # the tables, so a fold (tens of ms for thousands of rows) never holds commits up.
        self._lock = threading.Lock()  # the journal files, _pending and _seq
        self._pending: list[Batch] = []  # committed to the journal, not folded yet
        self._pending_runs = Batch()  # their runs, merged: what run listings overlay
        self._folding_runs: Batch | None = None  # those of the fold under way, if one is
        # The tables' newest RECENT runs (listed: no payload or output), newest first, as of
        # the last fold; and whether that is every run. Replaced whole, under _lock.
        self._recent: list[Row] = []
        self._recent_all = True
        self._pending_rows = 0
        self._pending_since: float | None = None  # when its oldest batch committed
        self._last_commit = time.monotonic()
        self._seq = 0  # the next journal frame's number
        self._fold_retry_at = 0.0
        self.private = False  # DuckDB's own files are created 0600 (files.private_umask)
        self._commits_done = False  # the committer is gone: a last fold, then close
        opened: Future[None] = Future()
        self._thread = threading.Thread(
            target=self._folder_main, args=(opened,), name="nbtasks-store", daemon=True
        )
        self._thread.start()
        opened.result()  # the file is open, its journal folded; or why not
        self._committer = threading.Thread(
            target=self._commit_loop, name="nbtasks-commit", daemon=True
        )
        self._committer.start()

    # -- opening (store thread) --------------------------------------------------------

    def _folder_main(self, opened: Future[None]) -> None:
        self.private = private_umask()  # what DuckDB creates from here on is 0600
        try:
            self._open_files()
        except BaseException as exc:
            opened.set_exception(exc)
            return
        opened.set_result(None)
        try:
            self._fold_loop()
        finally:
            self._close_files()

    def _open_files(self) -> None:
        self._conn = connect(self.path)
        try:
            if not self.private:
                self._tighten()
            self._migrate()
            self._journal = JournalFile(self.path + ".journal")  # where commits go
            self._spare = JournalFile(self.path + ".journal.1")  # being folded, or empty
            self._spare_clear = True
            self._writer = self._conn.cursor()
            self._open_appenders()
            self._recover()
            self._load_recent()
        except BaseException:
            for name in ("_journal", "_spare"):
                journal = getattr(self, name, None)
                if journal is not None:
                    journal.close()
            self._conn.close()
            raise

    def _tighten(self) -> None:
        """Where the store thread cannot have a umask of its own: make DuckDB's files private
        after the fact (the WAL is made anew after each checkpoint)."""
        for path in (self.path, self.path + ".wal"):
            try:
                os.chmod(path, 0o600)
            except FileNotFoundError:
                pass

    def _load_recent(self) -> None:
        """(Store thread.) Read the tables' newest RECENT runs, for listings."""
        rows = self._writer.execute(
            f"SELECT {listing.LISTED} FROM runs ORDER BY id DESC LIMIT {listing.RECENT + 1}"
        ).fetchall()
        with self._lock:
            self._recent, self._recent_all = rows[: listing.RECENT], len(rows) <= listing.RECENT

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
        """Fold what a process that ended without closing the store left in the journal:
        the frames past the last one folded, while their numbers follow on."""
        row = self._writer.execute("SELECT max(folded_seq) FROM journal_state").fetchone()
        folded = row[0] if row and row[0] is not None else -1
        frames = sorted(
            (seq, body, journal.path)
            for journal in (self._journal, self._spare)
            for seq, body in journal.read()
            if seq > folded
        )
        batches: list[Batch] = []
        for seq, body, path in frames:  # the files take turns: together the numbers follow on
            if seq != folded + 1 + len(batches):
                break
            batches.extend(decode_frames(path, [(seq, body)]))
        self._pending = batches
        for batch in batches:
            self._pending_runs.absorb_runs(batch)
        self._seq = folded + 1 + len(batches)
        try:
            self._fold()
        except duckdb.Error as exc:
            raise JournalError(
                f"the journal of {self.path!r} holds rows this store cannot take ({exc}); "
                "nothing of it was used. If you did not expect this, move the files "
                f"{self._journal.path!r} and {self._spare.path!r} away and open the store again"
            ) from None
        self._journal.clear()
        self._spare.clear()
        # Payloads written for runs whose creation never committed (a trigger cut short).
        self._writer.execute("DELETE FROM payloads WHERE run_id NOT IN (SELECT id FROM runs)")

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
        """Hand the open batch to the committer: it commits within DEFER_MAX_S, or at once
        if someone hurried it. A hurried batch is committed right here when the committer is not
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
            if urgent and self._inflight is None:  # the committer waits on _cv, held here
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

    # -- the committer and the store thread ----------------------------------------------

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
        except OSError as exc:  # a full disk, a read-only folder: keep the rows, try again
            error = StoreWriteError(self.path, exc)
        except BaseException as exc:  # reported to every waiter of this ticket
            error = exc
        with self._cv:
            self._inflight = None
            if isinstance(error, StoreWriteError) and not self._closing:
                # The engine goes on with these rows as its state: the store must come to
                # hold them, or it would say less than what happened (a run that executed).
                # (Closing, they are given up: a store that cannot be written must not hold
                # the kernel's shutdown. The waiters heard why.)
                self._sealed.insert(0, (ticket, batch))
                retry_at = time.monotonic() + FOLD_RETRY_S
                self._commit_by = (
                    retry_at if self._commit_by is None else min(self._commit_by, retry_at)
                )
            self._cv.notify()  # the committer may have waited for this commit to end
        self._on_commit(ticket, error)

    def _next_commit(self) -> bool:
        """(Lock held.) Wait until sealed batches are due: True, or False to stop."""
        while True:
            if self._inflight is not None:  # the staging thread commits a hurried batch
                self._cv.wait()
                continue
            if self._closing and not self._sealed:
                return False
            now = time.monotonic()
            if self._commit_by is not None and (self._closing or self._commit_by <= now):
                return True
            self._cv.wait(None if self._commit_by is None else self._commit_by - now)

    def _commit_loop(self) -> None:
        """The committer thread: appends sealed batches to the journal when they are due."""
        codec()  # imported here, meanwhile, rather than on the way to the first commit
        while True:
            with self._cv:  # taken in the same hold: the staging thread may commit too
                if not self._next_commit():
                    return
                taken = self._take_locked()
            self._commit_and_report(*taken)

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
                if self._pending_rows >= FOLD_MAX_ROWS:
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

    def _commit(self, batch: Batch) -> None:
        """Make ``batch`` durable: one append to the journal."""
        data = batch.dumps()
        with self._lock:
            self._journal.append(self._seq, data)
            self._seq += 1
            self._pending.append(batch)
            self._pending_runs.absorb_runs(batch)
            self._pending_rows += batch.size()
            self._last_commit = time.monotonic()
            first = self._pending_since is None
            if first:
                self._pending_since = self._last_commit
            full = self._pending_rows >= FOLD_MAX_ROWS
        if first or full:  # else a fold is already due no later than it was
            with self._wake:
                self._wake.notify()

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
            self._pending, self._pending_rows, self._pending_since = [], 0, None
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

    def close(self) -> None:
        """Commit what is staged (the staging thread is done), fold, and let go of the file."""
        self._seal()
        with self._cv:
            self._closing = True
            self._cv.notify()
        self._committer.join()
        with self._wake:
            self._commits_done = True
            self._wake.notify()
        self._thread.join()

    def _close_files(self) -> None:
        """(Store thread, last.) Let go of the file; remove the journals if all is folded."""
        try:
            self._conn.close()  # a checkpoint: the WAL's rows go into the file
        except duckdb.Error:
            pass  # what the WAL holds is durable: the next open replays it
        for journal in (self._journal, self._spare):
            journal.close()
            if not self._pending:  # all folded: the files have nothing to keep
                journal.remove()
        with self._wake:
            jobs, self._jobs = self._jobs, []
        for _, done in jobs:
            done.set_exception(NbtasksError(f"the nbtasks store {self.path!r} is closed"))

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
