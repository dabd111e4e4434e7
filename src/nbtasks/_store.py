"""The DuckDB store: one file holding runs, attempts, run events and task versions.

Writes are staged by the engine and committed by one writer thread in groups: everything
staged while the previous commit ran goes into the next transaction, through Appenders
(one row costs microseconds, one commit about a millisecond). A staged row replaces an
earlier staged row of the same run, so a run that changes five times between two commits
is written once. Reads use their own cursor and see committed data only.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import duckdb

from ._errors import NbtasksError, StoreLockedError
from ._schema import ATTEMPT_COLUMNS, DDL, RUN_COLUMNS, RUN_UPDATE_COLUMNS, SCHEMA_VERSION

Row = tuple[Any, ...]
DEFER_MAX_S = 0.02  # deferred rows are committed within this, if nothing commits sooner
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


class _Staged:
    """Rows waiting for the next commit, latest version per key."""

    def __init__(self) -> None:
        self.new_runs: dict[str, Row] = {}
        self.run_updates: dict[str, Row] = {}
        self.new_attempts: dict[str, Row] = {}
        self.attempt_updates: dict[str, Row] = {}
        self.events: list[Row] = []
        self.versions: list[Row] = []

    def __bool__(self) -> bool:
        return bool(
            self.new_runs
            or self.run_updates
            or self.new_attempts
            or self.attempt_updates
            or self.events
            or self.versions
        )


class Store:
    """Owns the DuckDB connection of one store file for the life of an engine."""

    def __init__(
        self,
        path: str,
        on_commit: Callable[[int, BaseException | None], None],
        handoff: Callable[[Callable[[], None]], None] | None = None,
    ) -> None:
        """``on_commit(ticket, error)`` is called by the writer after each commit.
        ``handoff(fn)`` runs ``fn`` on the thread that stages rows, between two of its
        steps: the writer takes staged rows only there, so rows staged by one step (an
        attempt and its run, say) always commit together."""
        self.path = path
        self._handoff = handoff
        self._conn = connect(path)
        self._on_commit = on_commit
        self._migrate()
        self._cv = threading.Condition()
        self._staged = _Staged()
        self._ticket = 0  # the ticket the staged rows will commit under
        self._inflight: int | None = None  # the ticket being committed now
        self.deferring = False  # set by the staging thread around rows that may wait
        self._deferred_since: float | None = None
        self._closing = False
        self._writer = self._conn.cursor()
        self._insert_runs = self._writer.appender("runs", columns=list(RUN_COLUMNS))
        self._update_runs = self._writer.appender(
            "runs", columns=list(RUN_UPDATE_COLUMNS), action="update", key=["id"]
        )
        self._insert_attempts = self._writer.appender("attempts", columns=list(ATTEMPT_COLUMNS))
        self._update_attempts = self._writer.appender(
            "attempts", columns=list(ATTEMPT_COLUMNS), action="update", key=["id"]
        )
        self._insert_events = self._writer.appender("run_events")
        self._thread = threading.Thread(target=self._write_loop, name="nbtasks-store", daemon=True)
        self._thread.start()

    def _migrate(self) -> None:
        self._conn.execute(DDL)
        row = self._conn.execute("SELECT max(version) FROM schema_version").fetchone()
        found = row[0] if row else None
        if found is None:
            self._conn.execute("INSERT INTO schema_version VALUES (?)", [SCHEMA_VERSION])
        elif found > SCHEMA_VERSION:
            raise NbtasksError(
                f"the store {self.path!r} has schema version {found}, newer than this nbtasks "
                f"understands ({SCHEMA_VERSION}); upgrade nbtasks or use another store"
            )

    # -- staging (engine thread) -------------------------------------------------------

    def stage_run(self, row: Row, update: Row | None = None) -> int:
        """Stage a run: ``row`` has every column; ``update`` only ``RUN_UPDATE_COLUMNS``
        and is None for a new run."""
        with self._cv:
            s = self._staged
            run_id = row[0]
            if update is None or run_id in s.new_runs:
                s.new_runs[run_id] = row
            else:
                s.run_updates[run_id] = update
            self._wake()
            return self._ticket

    def stage_attempt(self, row: Row, *, new: bool = False) -> int:
        with self._cv:
            s = self._staged
            attempt_id = row[0]
            if new or attempt_id in s.new_attempts:
                s.new_attempts[attempt_id] = row
            else:
                s.attempt_updates[attempt_id] = row
            self._wake()
            return self._ticket

    def stage_event(self, row: Row) -> int:
        with self._cv:
            self._staged.events.append(row)
            self._wake()
            return self._ticket

    def stage_version(self, row: Row) -> int:
        with self._cv:
            self._staged.versions.append(row)
            self._wake()
            return self._ticket

    def _wake(self) -> None:
        """(Lock held.) Let the writer commit now, unless staging is deferred."""
        if self.deferring:
            if self._deferred_since is None:
                self._deferred_since = time.monotonic()
        else:
            self._deferred_since = None  # rows that must not wait: commit all now
            self._cv.notify()

    def barrier(self) -> int | None:
        """The ticket whose commit makes everything staged so far durable, or None if it
        already is."""
        with self._cv:
            if self._staged:
                return self._ticket
            return self._inflight

    # -- the writer thread -------------------------------------------------------------

    def _take(self) -> tuple[_Staged, int]:
        with self._cv:
            staged, self._staged = self._staged, _Staged()
            ticket = self._inflight = self._ticket
            self._ticket += 1
            return staged, ticket

    def _take_between_steps(self) -> tuple[_Staged, int]:
        if self._handoff is not None and not self._closing:
            taken: list[tuple[_Staged, int]] = []
            done = threading.Event()

            def take() -> None:
                taken.append(self._take())
                done.set()

            try:
                self._handoff(take)
                done.wait()
                return taken[0]
            except RuntimeError:  # the staging thread's loop is gone
                pass
        return self._take()

    def _write_loop(self) -> None:
        while True:
            with self._cv:
                while not self._closing:
                    if self._staged and self._deferred_since is None:
                        break
                    timeout = None
                    if self._deferred_since is not None:  # deferred rows wait a little only
                        timeout = self._deferred_since + DEFER_MAX_S - time.monotonic()
                        if timeout <= 0:
                            break
                    self._cv.wait(timeout)
                if not self._staged and self._closing:
                    return
                self._deferred_since = None
            staged, ticket = self._take_between_steps()
            error: BaseException | None = None
            try:
                self._commit(staged)
            except BaseException as exc:  # reported to every waiter of this ticket
                error = exc
                try:
                    self._writer.rollback()
                except duckdb.Error:
                    pass
            with self._cv:
                self._inflight = None
            self._on_commit(ticket, error)

    def _commit(self, s: _Staged) -> None:
        w = self._writer
        w.begin()
        if s.versions:
            w.executemany(
                "INSERT OR IGNORE INTO task_versions VALUES (?, ?, ?, ?, ?, ?, ?)", s.versions
            )
        for appender, rows in (
            (self._insert_runs, s.new_runs.values()),
            (self._update_runs, s.run_updates.values()),
            (self._insert_attempts, s.new_attempts.values()),
            (self._update_attempts, s.attempt_updates.values()),
            (self._insert_events, s.events),
        ):
            if rows:
                appender.append_rows(list(rows))
                appender.flush()
        w.commit()

    def close(self) -> None:
        with self._cv:
            self._closing = True
            self._cv.notify()
        self._thread.join()
        self._conn.close()

    # -- reads (any thread) --------------------------------------------------------------

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        cur = self._conn.cursor()
        try:
            return cur.execute(sql, list(params)).fetchall()
        finally:
            cur.close()

    def cursor(self) -> duckdb.DuckDBPyConnection:
        return self._conn.cursor()
