"""Staging and committing: how staged rows become durable, in groups.

A mixin of ``Store``. The staging thread (the engine's loop) stages rows into the open
batch, each under a ticket; a row replaces an earlier staged row of the same run or
attempt. The batch is sealed when the staging thread's current step is over
(``after_step``; at once without it), so the rows of one step commit together, and handed
to the committer thread, which commits everything sealed as one append to the journal
(``journal.py``, with ``fdatasync``) within ``DEFER_MAX_S``, or at once when someone waits
on a ticket (``hurry``); a hurried batch is committed by the staging thread itself when the
committer is not committing. A commit that fails for want of disk keeps its rows and is
tried again. A commit adds its batch to the store thread's pending ones, and wakes that
thread only when it brings a fold nearer (``folding.py``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from nbtasks.core.errors import StoreWriteError
from nbtasks.store import folding
from nbtasks.store.folding import FOLD_RETRY_S
from nbtasks.store.journal import Batch, codec

if TYPE_CHECKING:
    from nbtasks.store.store import StoreBase as _Base
else:
    _Base = object

Row = tuple[Any, ...]
DEFER_MAX_S = 0.02  # staged rows commit within this, or at once when someone waits on them
SEALING_S = 1.0  # the committer looks every DEFER_MAX_S until sealing paused this long


class CommitsMixin(_Base):
    # -- staging (engine thread) -------------------------------------------------------

    def stage_run(self, row: Row, update: Row | None = None) -> int:
        """Stage a run: ``row`` has every column; ``update`` only ``RUN_UPDATE_COLUMNS``
        and is None for a new run."""
        if update is not None:
            return self.stage_run_update(update, lambda: row)
        self._open.new_runs[row[0]] = row
        return self._staged()

    def stage_run_update(self, update: Row, row_of: Callable[[], Row]) -> int:
        """Stage a change of a run: ``update`` has ``RUN_UPDATE_COLUMNS``; ``row_of()``
        gives every column, asked for only if the run is new in the open batch."""
        s = self._open
        run_id = update[0]
        if run_id in s.new_runs:
            s.new_runs[run_id] = row_of()
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
            self._last_seal = now = time.monotonic()
            if urgent and self._inflight is None:  # the committer waits on _cv, held here
                staged, ticket = self._take_locked()
            else:
                commit_by = now + (0.0 if urgent else DEFER_MAX_S)
                if self._commit_by is None or commit_by < self._commit_by:
                    self._commit_by = commit_by
                    if commit_by < self._committer_wakes:  # else it wakes in time anyway
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

    def created_in_open_batch(self, run_id: str) -> bool:
        """(Staging thread.) Whether ``run_id`` was created in the batch still open: no
        commit holds the run yet, and what is staged for it now commits in the same frame."""
        return run_id in self._open.new_runs

    def barrier(self) -> int | None:
        """(Staging thread.) The ticket whose commit makes everything staged so far
        durable, or None if it already is."""
        if self._seal_due:
            return self._open_ticket
        with self._cv:
            if self._sealed:
                return self._sealed[-1][0]
            return self._inflight

    # -- the committer -----------------------------------------------------------------

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
                self._cv.notify()
            elif self._committer_waits:  # for this commit to end
                self._cv.notify()
        self._on_commit(ticket, error)

    def _next_commit(self) -> bool:
        """(Lock held.) Wait until sealed batches are due: True, or False to stop.

        While batches are being sealed, it looks every DEFER_MAX_S even with none due,
        so that a deferred batch needs no wake-up of its own (a thread switch, and the
        GIL, on every trigger-and-wait); once sealing pauses, it sleeps until told."""
        while True:
            if self._inflight is not None:  # the staging thread commits a hurried batch
                self._committer_waits = True
                self._cv.wait()
                self._committer_waits = False
                continue
            if self._closing and not self._sealed:
                return False
            now = time.monotonic()
            if self._commit_by is not None and (self._closing or self._commit_by <= now):
                return True
            if self._commit_by is not None:
                timeout: float | None = self._commit_by - now
            elif now - self._last_seal < SEALING_S:
                timeout = DEFER_MAX_S
            else:
                timeout = None
            self._committer_wakes = float("inf") if timeout is None else now + timeout
            self._cv.wait(timeout)
            self._committer_wakes = -float("inf")

    def _commit_loop(self) -> None:
        """The committer thread: appends sealed batches to the journal when they are due."""
        codec()  # imported here, meanwhile, rather than on the way to the first commit
        while True:
            with self._cv:  # taken in the same hold: the staging thread may commit too
                if not self._next_commit():
                    return
                taken = self._take_locked()
            self._commit_and_report(*taken)

    def _commit(self, batch: Batch) -> None:
        """Make ``batch`` durable: one append to the journal."""
        data = batch.dumps()
        with self._lock:
            self._journal.append(self._seq, data)
            self._seq += 1
            self._pending.append(batch)
            self._pending_runs.absorb_runs(batch)
            self._pending_rows += batch.size()
            self._pending_bytes += len(data)
            self._last_commit = time.monotonic()
            first = self._pending_since is None
            if first:
                self._pending_since = self._last_commit
            full = (
                self._pending_rows >= folding.FOLD_MAX_ROWS
                or self._pending_bytes >= folding.FOLD_MAX_BYTES
            )
        if first or full:  # else a fold is already due no later than it was
            with self._wake:
                self._wake.notify()
