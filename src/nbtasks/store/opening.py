"""Opening a store file: what happens before ``Store(...)`` returns.

``check_folder`` (on the caller's thread, before any thread starts) makes the store's folder
and refuses one that cannot be written. ``connect`` opens the DuckDB file, turning DuckDB's
lock conflict into a ``StoreLockedError`` that names the process holding the file.
``OpeningMixin``, a mixin of ``Store`` whose methods run on the store thread, then makes
DuckDB's files private where that thread has no umask of its own (``_tighten``, again after
each fold), creates or migrates the schema, opens the two journal files and the appenders
folds write through, folds what a process that ended without closing left in the journal
(recovery) and drops payloads whose runs never committed, and reads the tables' newest
runs, which listings start from. Closing is ``store.py``'s (``_close_files``).
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING

try:  # see store.py
    import _duckdb as duckdb
except ImportError:  # pragma: no cover
    import duckdb  # type: ignore[no-redef]

from nbtasks.core.errors import NbtasksError, StoreLockedError
from nbtasks.store import listing, readonly
from nbtasks.store.files import make_store_folder
from nbtasks.store.journal import Batch, JournalError, JournalFile, decode_frames
from nbtasks.store.schema import (
    ATTEMPT_COLUMNS,
    DDL,
    RUN_COLUMNS,
    RUN_UPDATE_COLUMNS,
    SCHEMA_VERSION,
)

if TYPE_CHECKING:
    from nbtasks.store.store import StoreBase as _Base
else:
    _Base = object

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


def check_folder(path: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    make_store_folder(folder)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise NbtasksError(
            f"cannot open the nbtasks store {path!r}: its folder {folder!r} is not writable; "
            "choose another store with nbtasks.configure(store=...) or NBTASKS_STORE"
        )


class OpeningMixin(_Base):
    # -- opening (store thread) --------------------------------------------------------

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
