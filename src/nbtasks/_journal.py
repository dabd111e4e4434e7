"""Batches of staged rows, and how the store's journal holds them.

The hot path commits each batch as one row of the ``journal`` table: a pickled ``Batch``, a
single Appender row, so a durable commit costs one small write and its ``fdatasync``
instead of an Appender flush per table (each 0.5-2.5 ms, with their indexes). The store
later *folds* the journal: it merges the batches, so a run created and finished in between
is written once with its final state, and writes them to ``runs``, ``attempts`` and
``run_events`` in bulk, deleting the folded journal rows in the same transaction. After a
hard exit the next store to open the file folds what was left.
"""

from __future__ import annotations

import pickle
from typing import Any

from ._schema import RUN_COLUMNS, RUN_UPDATE_COLUMNS

Row = tuple[Any, ...]

# Where each column of a run update goes in a full run row.
_UPDATE_SLOTS = tuple(RUN_COLUMNS.index(c) for c in RUN_UPDATE_COLUMNS)


def apply_run_update(row: Row, update: Row) -> Row:
    """A full run row with the columns of ``update`` (``RUN_UPDATE_COLUMNS``) written in."""
    merged = list(row)
    for slot, value in zip(_UPDATE_SLOTS, update, strict=True):
        merged[slot] = value
    return tuple(merged)


class Batch:
    """Rows staged between two commits, the latest version per key."""

    __slots__ = ("attempt_updates", "events", "new_attempts", "new_runs", "run_updates", "versions")

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

    def size(self) -> int:
        """Rows held, the measure of how much a fold has to write."""
        return (
            len(self.new_runs)
            + len(self.run_updates)
            + len(self.new_attempts)
            + len(self.attempt_updates)
            + len(self.events)
            + len(self.versions)
        )

    def absorb(self, later: Batch) -> None:
        """Merge a batch committed after this one: writing the result once leaves the
        tables as writing both in order would."""
        self.new_runs.update(later.new_runs)
        for run_id, update in later.run_updates.items():
            created = self.new_runs.get(run_id)
            if created is not None:
                self.new_runs[run_id] = apply_run_update(created, update)
            else:
                self.run_updates[run_id] = update
        self.new_attempts.update(later.new_attempts)
        for attempt_id, row in later.attempt_updates.items():  # attempt updates are whole rows
            if attempt_id in self.new_attempts:
                self.new_attempts[attempt_id] = row
            else:
                self.attempt_updates[attempt_id] = row
        self.events.extend(later.events)
        self.versions.extend(later.versions)

    def dumps(self) -> bytes:
        return pickle.dumps(
            (self.new_runs, self.run_updates, self.new_attempts, self.attempt_updates,
             self.events, self.versions),
            protocol=pickle.HIGHEST_PROTOCOL,
        )  # fmt: skip

    @classmethod
    def loads(cls, data: bytes) -> Batch:
        batch = cls()
        (batch.new_runs, batch.run_updates, batch.new_attempts, batch.attempt_updates,
         batch.events, batch.versions) = pickle.loads(data)  # fmt: skip
        return batch
