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

The ``Store`` class is split by what its code does, each part a mixin: ``opening``
opens the file (the folder, the lock's holder, private files, the schema, recovering the
journal); ``commits`` stages rows and commits them to the journal (the staging thread and
the committer thread); ``folding`` is the store thread's work once the file is open (folds,
and the writes other threads hand it); ``reads`` serves reads on the caller's thread. This
module holds the state they share (``StoreBase``), the start and end of the two threads,
and closing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

try:  # DuckDB's C extension alone: its package's Python layer (the relational API,
    # version metadata) costs about 100 ms to import, on the path to a notebook's first run,
    # and the store uses none of it. Older DuckDB releases only ship the package.
    import _duckdb as duckdb
except ImportError:  # pragma: no cover
    import duckdb  # type: ignore[no-redef]

from nbtasks.core.errors import NbtasksError
from nbtasks.store.commits import CommitsMixin
from nbtasks.store.files import private_umask
from nbtasks.store.folding import FoldingMixin
from nbtasks.store.journal import Batch, JournalFile
from nbtasks.store.opening import OpeningMixin, check_folder
from nbtasks.store.reads import ReadsMixin

Row = tuple[Any, ...]


class StoreBase:
    """The state of a store, and the lives of its threads (see the module docstring)."""

    if TYPE_CHECKING:  # provided by the mixins below

        def _open_files(self) -> None: ...
        def _tighten(self) -> None: ...
        def _load_recent(self) -> None: ...
        def _open_appenders(self) -> None: ...
        def _seal(self) -> None: ...
        def _commit_loop(self) -> None: ...
        def _fold_loop(self) -> None: ...
        def _fold(self) -> None: ...
        def fold(self) -> None: ...

    # Made by the store thread as it opens the file (opening.py).
    _conn: duckdb.DuckDBPyConnection
    _writer: duckdb.DuckDBPyConnection  # the cursor folds write through
    _journal: JournalFile
    _spare: JournalFile
    _spare_clear: bool
    _insert_runs: duckdb.Appender
    _update_runs: duckdb.Appender
    _insert_attempts: duckdb.Appender
    _update_attempts: duckdb.Appender
    _insert_events: duckdb.Appender

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
        check_folder(path)
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
        # When the committer wakes next if not notified (inf: only when notified; -inf:
        # it is awake, and looks before it waits again), whether it waits for the staging
        # thread's commit to end, and when a batch was last sealed.
        self._committer_wakes = -float("inf")
        self._committer_waits = False
        self._last_seal = 0.0
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
        self._pending_bytes = 0  # their frames' size
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

    # -- the store thread's life, and closing ------------------------------------------

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

    def holds_runs(self) -> bool:
        """Whether any run is stored or committed: False for a new store."""
        with self._lock:
            return bool(self._recent or self._pending or self._folding_runs is not None)

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


class Store(OpeningMixin, CommitsMixin, FoldingMixin, ReadsMixin, StoreBase):
    """Owns the DuckDB connection of one store file for the life of an engine."""
