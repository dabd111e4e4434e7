"""``runs.list`` overlays what the journal holds on the tables instead of folding first:
it never waits for a fold, and it lists exactly what a fold would have written."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest

from nbtasks import BatchItem, runs
from nbtasks.core.durations import utcnow
from nbtasks.store.schema import RUN_UPDATE_COLUMNS

from conftest import wait_for
from tasks import add, always_fail, echo

TIMEOUT = 60.0  # a bound on a hang, never part of an assertion


def _page(**filters: Any) -> list[tuple[str, str, int]]:
    return [(r.id, r.status.value, r.attempt_count) for r in runs.list(limit=40, **filters)]


FILTERS: list[dict[str, Any]] = [
    {},
    {"status": "COMPLETED"},
    {"status": ["FAILED", "DELAYED"]},
    {"task": "echo"},
    {"task": ["add", "always_fail"]},
    {"tag": "odd"},
    {"tag": "odd", "status": "COMPLETED"},
    {"period": "1h"},
    {"created_after": utcnow() - timedelta(days=1)},
    {"created_before": utcnow() - timedelta(days=1)},
    {"created_after": (utcnow() - timedelta(days=1)).replace(tzinfo=None)},  # read as UTC
]


@pytest.mark.parametrize("recent", [2000, 25, 1, 0])
def test_a_listing_shows_what_a_fold_would_write(
    served: Any, monkeypatch: pytest.MonkeyPatch, recent: int
) -> None:
    """With folds held off, runs created, updated and finished since the last fold live
    only in the journal; each filter lists the same page before and after the fold,
    whether the newest runs kept in memory cover the page (``RECENT``) or not."""
    monkeypatch.setattr("nbtasks.store.listing.RECENT", recent)
    add.batch_trigger_and_wait([{"a": i, "b": 0} for i in range(30)])  # folded: in the tables
    delayed = [echo.trigger(i, delay="1h", tags=["odd"]) for i in range(4)]
    runs.cancel(delayed[2].id)  # (a read: it folds)
    served.engine.store.fold()
    monkeypatch.setattr("nbtasks.store.folding.FOLD_IDLE_S", 600.0)
    monkeypatch.setattr("nbtasks.store.folding.FOLD_MAX_AGE_S", 600.0)
    echo.batch_trigger_and_wait(
        [BatchItem(i, tags=["odd" if i % 2 else "even"]) for i in range(50)]
    )
    add.batch_trigger_and_wait([{"a": i, "b": 1} for i in range(10)])  # updated since
    always_fail.trigger_and_wait(None)
    echo.trigger(1, delay="1h", tags=["odd"])
    store = served.engine.store
    for handle in delayed[:2]:  # runs in the tables, updated only in the journal
        runs.reschedule(handle.id, 0)
    status = RUN_UPDATE_COLUMNS.index("status")
    wait_for(  # watched in the journal's overlay: a wait that reads the store would fold
        lambda: all(
            store._pending_runs.run_updates.get(h.id, ())[status : status + 1] == ("COMPLETED",)
            for h in delayed[:2]
        ),
        "the rescheduled runs completed",
    )
    assert store._pending, "the journal holds what was done since the fold"
    assert {h.id for h in delayed[:2]} <= set(store._pending_runs.run_updates)
    before = [_page(**f) for f in FILTERS]
    after_cursor = runs.list(limit=7)
    second = runs.list(limit=7, after=after_cursor.next)
    store.fold()
    assert not store._pending
    assert [_page(**f) for f in FILTERS] == before
    assert [r.id for r in runs.list(limit=7, after=after_cursor.next)] == [r.id for r in second]
    assert sum(len(p) for p in before) > 100  # the filters did select runs


def test_a_listing_never_waits_for_a_fold(served: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    echo.trigger_and_wait(0)
    store = served.engine.store
    store.fold()
    inside, release = threading.Event(), threading.Event()
    write_tables = store._write_tables

    def stuck(*args: Any) -> None:  # a fold that lasts until the test lets it go
        inside.set()
        assert release.wait(TIMEOUT)
        write_tables(*args)

    monkeypatch.setattr(store, "_write_tables", stuck)
    try:
        done = echo.batch_trigger_and_wait(list(range(20)))
        folding = threading.Thread(target=store.fold, daemon=True)
        folding.start()
        assert inside.wait(TIMEOUT)  # the fold took those runs and is stuck writing them
        later = echo.trigger_and_wait(99)  # committed meanwhile, into the other journal
        listed: list[Any] = []
        reader = threading.Thread(target=lambda: listed.append(runs.list(limit=100)))
        reader.start()
        reader.join(TIMEOUT)
        assert not reader.is_alive(), "runs.list waited for the fold"
        statuses = {r.id: r.status.value for r in listed[0]}
        assert statuses[later.id] == "COMPLETED"
        assert all(statuses[r.id] == "COMPLETED" for r in done.runs)
    finally:
        release.set()
    folding.join(TIMEOUT)
