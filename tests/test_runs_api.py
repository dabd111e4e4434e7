"""The runs API, handles, results and their reprs, against real workers and a real store."""

from __future__ import annotations

import asyncio
import os
import queue
import re
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest

import nbtasks
from nbtasks import (
    AttemptStatus,
    BatchItem,
    BatchResult,
    Result,
    Run,
    RunError,
    RunHandle,
    RunStatus,
    UnknownRunError,
    runs,
    task,
)

from conftest import has_status, wait_for
from crashers import sleep_for
from tasks import CustomError, add, chatty, echo, fail, succeed_on_third

S = RunStatus
TIMEOUT = 15.0  # generous upper bound for any single wait; never part of an assertion
LONG = 60.0  # seconds a blocking run would take; such runs are always canceled


# --------------------------------------------------------------------------- helpers


_BREAK_UNPICKLING = False  # set in the kernel only; workers import this module unchanged


class Fragile:
    """A payload whose unpickling fails while ``_BREAK_UNPICKLING`` is set."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __setstate__(self, state: dict[str, Any]) -> None:
        if _BREAK_UNPICKLING:
            raise RuntimeError("Fragile cannot be unpickled now")
        self.__dict__.update(state)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Fragile) and other.value == self.value

    def __hash__(self) -> int:
        return hash(self.value)

    def __repr__(self) -> str:
        return f"Fragile({self.value})"


@task(id="runs-api-cancel-another")
def cancel_another(run_id: str) -> str:
    return runs.cancel(run_id).status.value


@task(id="runs-api-echo-or-raise")
def echo_or_raise(p: object) -> object:
    """Returns its payload, or raises it when it is an exception."""
    if isinstance(p, BaseException):
        raise p
    return p


class Watch:
    """Follows ``runs.subscribe(run_id)`` in a thread so the test can wait with a timeout
    (it reads every snapshot as it comes: a stream, not a state to poll for)."""

    def __init__(self, run_id: str) -> None:
        self.snapshots: queue.Queue[Run | BaseException | None] = queue.Queue()
        self.seen: list[Run] = []
        self._thread = threading.Thread(target=self._follow, args=(run_id,), daemon=True)
        self._thread.start()
        self._next(time.monotonic() + TIMEOUT)  # returns once subscribed (first snapshot)

    def _follow(self, run_id: str) -> None:
        try:
            for snapshot in runs.subscribe(run_id):
                self.snapshots.put(snapshot)
        except BaseException as exc:
            self.snapshots.put(exc)
        self.snapshots.put(None)

    def _next(self, deadline: float) -> Run | None:
        item = self.snapshots.get(timeout=max(0.0, deadline - time.monotonic()))
        if isinstance(item, BaseException):
            raise item
        if item is not None:
            self.seen.append(item)
        return item

    def to_end(self, timeout: float = TIMEOUT) -> list[Run]:
        """Every snapshot until the subscription ends."""
        deadline = time.monotonic() + timeout
        while not (self.seen and self.seen[-1].is_final):
            if self._next(deadline) is None:
                break
        self._thread.join(timeout=max(0.0, deadline - time.monotonic()))
        return self.seen


def executing(handle: RunHandle[Any]) -> Run:
    """Block (with a timeout) until the run is EXECUTING; return that snapshot."""
    return wait_for(has_status(handle.id, S.EXECUTING), "the run to execute", TIMEOUT)


@pytest.fixture
def busy_workers(nb: object) -> Iterator[list[RunHandle[Any]]]:
    """Both workers executing a long run, so anything triggered next stays QUEUED."""
    blockers = [sleep_for.trigger(LONG) for _ in range(2)]
    for h in blockers:
        executing(h)
    yield blockers
    for h in blockers:
        runs.cancel(h.id)


def statuses(snapshots: list[Run]) -> list[RunStatus]:
    """Statuses in order, with repeats of the same status (metadata changes) folded."""
    out: list[RunStatus] = []
    for s in snapshots:
        if not out or out[-1] is not s.status:
            out.append(s.status)
    return out


def ids(page: list[Run]) -> list[str]:
    return [r.id for r in page]


# --------------------------------------------------------------------------- runs.list


def test_list_newest_first_and_filters_by_status_task_and_tag(nb: object) -> None:
    a1 = add.trigger_and_wait({"a": 1, "b": 1}, tags=["alpha"])
    f1 = fail.trigger_and_wait(1, tags=["beta"])
    a2 = add.trigger_and_wait({"a": 2, "b": 2}, tags=["alpha", "beta"])
    e1 = echo.trigger_and_wait("x")
    created = [a1.id, f1.id, a2.id, e1.id]

    assert ids(runs.list()) == created[::-1]

    completed = [a1.id, a2.id, e1.id][::-1]
    assert ids(runs.list(status="COMPLETED")) == completed
    assert ids(runs.list(status="completed")) == completed
    assert ids(runs.list(status=RunStatus.FAILED)) == [f1.id]
    assert ids(runs.list(status=["failed", "Completed"])) == created[::-1]
    assert ids(runs.list(status=["CANCELED", "failed"])) == [f1.id]
    assert ids(runs.list(status="EXPIRED")) == []

    assert ids(runs.list(task="add")) == [a2.id, a1.id]
    assert ids(runs.list(task=["fail", "echo"])) == [e1.id, f1.id]
    assert ids(runs.list(task="no-such-task")) == []
    assert ids(runs.list(task="add", status="COMPLETED")) == [a2.id, a1.id]

    assert ids(runs.list(tag="alpha")) == [a2.id, a1.id]
    assert ids(runs.list(tag="beta")) == [a2.id, f1.id]
    assert ids(runs.list(tag="beta", task="add")) == [a2.id]
    assert ids(runs.list(tag="gamma")) == []


@pytest.mark.parametrize("bad", ["DONE", ["COMPLETED", "nope"], "running"])
def test_list_rejects_an_unknown_status_naming_it(nb: object, bad: object) -> None:
    name = bad if isinstance(bad, str) else bad[1]  # type: ignore[index]
    with pytest.raises(ValueError, match=re.escape(repr(name))):
        runs.list(status=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("limit", [0, -1, 10_001, "5", 2.5, True, None])
def test_list_rejects_a_bad_limit(nb: object, limit: object) -> None:
    with pytest.raises(ValueError, match=r"limit=" + re.escape(repr(limit))):
        runs.list(limit=limit)  # type: ignore[arg-type]


def test_list_filters_by_creation_time_and_period(nb: object) -> None:
    first = add.trigger_and_wait({"a": 0, "b": 1})
    second = add.trigger_and_wait({"a": 0, "b": 2})
    third = add.trigger_and_wait({"a": 0, "b": 3})
    t2 = runs.retrieve(second.id).created_at
    assert isinstance(t2, datetime) and t2.tzinfo is not None

    assert ids(runs.list(created_after=t2)) == [third.id, second.id]
    assert ids(runs.list(created_before=t2)) == [first.id]
    t3 = runs.retrieve(third.id).created_at
    assert ids(runs.list(created_after=t2, created_before=t3)) == [second.id]

    assert ids(runs.list(period="1h")) == [third.id, second.id, first.id]
    assert ids(runs.list(period=3600)) == [third.id, second.id, first.id]
    assert ids(runs.list(period=0)) == []  # only runs created from now on
    with pytest.raises(ValueError, match=r"period='soon'"):
        runs.list(period="soon")
    with pytest.raises(ValueError, match=r"created_after='yesterday'"):
        runs.list(created_after="yesterday")  # type: ignore[arg-type]


def test_list_filters_by_batch_and_version(nb: object) -> None:
    lone = echo.trigger_and_wait(0)
    batch = echo.batch_trigger([1, 2, 3])
    other = echo.batch_trigger([4])
    batch.wait(timeout=TIMEOUT)
    other.wait(timeout=TIMEOUT)

    assert batch.id.startswith("batch_")
    assert ids(runs.list(batch=batch.id)) == [h.id for h in batch.runs][::-1]
    assert ids(runs.list(batch=other.id)) == [other.runs[0].id]
    assert ids(runs.list(batch="batch_none")) == []

    version = lone.run.version
    assert version is not None
    every = {lone.id, *(h.id for h in batch.runs), other.runs[0].id}
    assert set(ids(runs.list(version=version))) == every
    assert ids(runs.list(version="19990101.1")) == []


def test_cursor_pagination_visits_every_run_exactly_once(nb: object) -> None:
    batch = echo.batch_trigger(list(range(7)))
    batch.wait(timeout=TIMEOUT)
    expected = [h.id for h in batch.runs][::-1]

    seen: list[str] = []
    sizes = []
    cursor = None
    while True:
        page = runs.list(limit=3, after=cursor)
        seen += ids(page)
        sizes.append(len(page))
        cursor = page.next
        if cursor is None:
            break
        assert cursor == page[-1].id
    assert seen == expected
    assert sizes == [3, 3, 1]

    # an exact multiple of the page size ends without an empty last page
    first = runs.list(limit=7)
    assert ids(first) == expected and first.next is None
    page1 = runs.list(limit=2, task="echo")
    page2 = runs.list(limit=2, task="echo", after=page1.next)
    assert ids(page1) + ids(page2) == expected[:4]


def test_listing_does_not_load_payloads(nb: object, monkeypatch: pytest.MonkeyPatch) -> None:
    result = echo.trigger_and_wait(Fragile(41), tags=["fragile"])
    assert result.ok

    monkeypatch.setattr(sys.modules[__name__], "_BREAK_UNPICKLING", True)
    (listed,) = runs.list(tag="fragile")  # must not unpickle anything
    assert listed.id == result.id
    assert listed.status is S.COMPLETED
    assert listed.payload_preview == "Fragile(41)"
    assert listed.output_preview == "Fragile(41)"
    assert "Fragile(41)" in repr(listed)
    with pytest.raises(RuntimeError, match="cannot be unpickled"):
        _ = listed.payload  # loaded on access, not before

    monkeypatch.setattr(sys.modules[__name__], "_BREAK_UNPICKLING", False)
    assert listed.payload == Fragile(41)
    assert listed.output == Fragile(41)
    assert [a.status for a in listed.attempts] == [AttemptStatus.COMPLETED]


# --------------------------------------------------------------------------- runs.retrieve


def test_retrieve_a_finished_run_has_every_field(nb: object) -> None:
    batch = chatty.batch_trigger(["hi"], tags=["t1", "t2"], metadata={"who": "me"})
    (handle,) = batch.runs
    handle.wait(timeout=TIMEOUT)
    run = runs.retrieve(handle.id)

    assert run.id == handle.id and run.id.startswith("run_")
    assert run.task_id == "chatty"
    assert re.fullmatch(r"\d{8}\.\d+", run.version or "")
    assert run.status is S.COMPLETED and run.is_final
    assert run.payload == "hi" and run.output == "hi"
    assert run.error is None
    assert run.tags == ("t1", "t2")
    assert run.metadata == {"who": "me"}
    assert run.batch_id == batch.id
    assert run.parent_id is None and run.depth == 0
    assert run.idempotency_key is None and run.replayed_from is None
    assert run.delay_until is None and run.expired_at is None
    assert run.created_at <= run.updated_at
    assert run.started_at is not None and run.finished_at is not None
    assert run.created_at <= run.started_at <= run.finished_at
    assert run.duration_ms == pytest.approx(
        (run.finished_at - run.started_at).total_seconds() * 1000, abs=0.01
    )
    assert run.duration_ms >= 0

    assert run.attempt_count == 1
    (attempt,) = run.attempts
    assert attempt.id.startswith("attempt_")
    assert attempt.run_id == run.id
    assert attempt.number == 1
    assert attempt.status is AttemptStatus.COMPLETED
    assert isinstance(attempt.pid, int) and attempt.pid not in (0, os.getpid())
    assert attempt.finished_at is not None
    assert run.started_at <= attempt.started_at <= attempt.finished_at <= run.finished_at
    assert attempt.duration_ms is not None and attempt.duration_ms >= 0
    assert attempt.stdout == "out: hi\n"
    assert attempt.stderr == "err: hi\n"
    assert attempt.error is None and not attempt.oom
    assert attempt.exit_code is None and attempt.signal is None


def test_retrieve_a_failed_run_has_its_error(nb: object) -> None:
    handle = fail.trigger(7)
    handle.wait(timeout=TIMEOUT)
    run = runs.retrieve(handle.id)
    assert run.status is S.FAILED
    assert run.output is None
    assert isinstance(run.error, RunError)
    assert run.error.type == "tasks.CustomError"
    assert run.error.message == "custom failure 7"
    assert "in fail" in run.error.traceback
    (attempt,) = run.attempts
    assert attempt.status is AttemptStatus.FAILED
    assert attempt.error is not None and attempt.error.type == "tasks.CustomError"


def test_retrieve_an_executing_run(nb: object) -> None:
    handle = sleep_for.trigger(LONG, tags=["slow"])
    executing(handle)
    run = runs.retrieve(handle.id)
    try:
        assert run.status is S.EXECUTING and not run.is_final
        assert run.payload == LONG
        assert run.output is None and run.error is None
        assert run.tags == ("slow",)
        assert run.started_at is not None and run.created_at <= run.started_at
        assert run.finished_at is None and run.duration_ms is None
        assert run.attempt_count == 1
        (attempt,) = run.attempts
        assert attempt.number == 1
        assert attempt.status is AttemptStatus.EXECUTING
        assert isinstance(attempt.pid, int) and attempt.pid != os.getpid()
        assert attempt.finished_at is None and attempt.duration_ms is None
        assert run.started_at <= attempt.started_at
        # the handle reads the same run
        assert handle.retrieve().status is S.EXECUTING
    finally:
        handle.cancel()


def test_retrieve_an_unknown_run(nb: object) -> None:
    add.trigger_and_wait({"a": 1, "b": 1})  # the store exists and has runs
    with pytest.raises(UnknownRunError) as info:
        runs.retrieve("run_doesnotexist")
    assert "run_doesnotexist" in str(info.value)
    assert isinstance(info.value, KeyError)
    assert isinstance(info.value, nbtasks.NbtasksError)
    with pytest.raises(KeyError):
        runs.retrieve("run_doesnotexist")


# --------------------------------------------------------------------------- runs.cancel


def test_cancel_a_queued_run(busy_workers: list[RunHandle[Any]]) -> None:
    handle = add.trigger({"a": 1, "b": 2})
    assert runs.retrieve(handle.id).status is S.QUEUED  # both workers are busy

    run = runs.cancel(handle.id)
    assert run.status is S.CANCELED and run.is_final
    assert run.attempt_count == 0 and run.attempts == ()
    assert run.error is not None
    result = handle.wait(timeout=TIMEOUT)
    assert result.status is S.CANCELED and not result.ok
    stored = runs.retrieve(handle.id)
    assert stored.status is S.CANCELED and stored.attempts == ()
    assert stored.finished_at is not None


def test_cancel_an_executing_run(nb: object) -> None:
    handle = sleep_for.trigger(LONG)
    executing(handle)

    run = runs.cancel(handle.id)
    assert run.status is S.CANCELED
    assert run.error is not None and run.error.message == "by runs.cancel()"  # the cause
    assert "error=Canceled: by runs.cancel()" in repr(run)
    (attempt,) = run.attempts
    assert attempt.status is AttemptStatus.CANCELED
    assert attempt.finished_at is not None

    result = handle.wait(timeout=TIMEOUT)
    assert result.status is S.CANCELED
    assert result.error is not None
    stored = runs.retrieve(handle.id)
    assert stored.status is S.CANCELED
    assert [a.status for a in stored.attempts] == [AttemptStatus.CANCELED]


def test_a_cancel_from_task_code_names_where_it_came_from(nb: object) -> None:
    victim = sleep_for.trigger(LONG)
    assert cancel_another.trigger_and_wait(victim.id).unwrap() == "CANCELED"
    error = victim.wait(timeout=TIMEOUT).error
    assert error is not None and error.message == "by runs.cancel() in the task of another run"


def test_cancel_a_final_run_is_a_no_op(nb: object) -> None:
    result = add.trigger_and_wait({"a": 2, "b": 3})
    before = runs.retrieve(result.id)

    after = runs.cancel(result.id)
    assert after.status is S.COMPLETED
    assert after.output == 5
    assert after.error is None
    assert after.updated_at == before.updated_at
    assert after.finished_at == before.finished_at
    assert after.attempt_count == before.attempt_count == 1
    assert runs.retrieve(result.id).status is S.COMPLETED

    failed = fail.trigger_and_wait(3)
    assert runs.cancel(failed.id).status is S.FAILED


def test_cancel_an_unknown_run(nb: object) -> None:
    with pytest.raises(UnknownRunError, match="run_nope"):
        runs.cancel("run_nope")


# --------------------------------------------------------------------------- waiting


def test_wait_and_handle_methods(nb: object) -> None:
    handle = add.trigger({"a": 20, "b": 22})
    assert isinstance(handle, RunHandle)
    assert handle.task_id == "add" and not handle.is_cached
    result = runs.wait(handle.id, timeout=TIMEOUT)
    assert isinstance(result, Result)
    assert result.ok and result.output == 42 and result.id == handle.id

    again = handle.wait(timeout=TIMEOUT)  # a finished run: read from the store
    assert again.ok and again.output == 42 and again.id == handle.id
    assert handle.retrieve().output == 42
    assert handle.cancel().status is S.COMPLETED

    with pytest.raises(UnknownRunError):
        runs.wait("run_missing", timeout=TIMEOUT)


def test_wait_with_a_timeout_raises_timeout_error(nb: object) -> None:
    handle = sleep_for.trigger(LONG)
    try:
        with pytest.raises(TimeoutError):
            handle.wait(timeout=0.2)
        assert not handle.retrieve().is_final  # a timed-out wait leaves the run alone
    finally:
        handle.cancel()
    assert handle.wait(timeout=TIMEOUT).status is S.CANCELED


def test_await_handle_and_async_twins(nb: object) -> None:
    handle = add.trigger({"a": 1, "b": 2})

    async def main() -> tuple[Any, ...]:
        awaited = await handle
        one, two = await asyncio.gather(
            add.atrigger_and_wait({"a": 3, "b": 4}), fail.atrigger_and_wait(9)
        )
        batch = await echo.abatch_trigger_and_wait(["a", BatchItem("b", tags=["own"]), "c"])
        return awaited, one, two, batch

    awaited, one, two, batch = asyncio.run(main())
    assert isinstance(awaited, Result) and awaited.output == 3 and awaited.id == handle.id
    assert one.ok and one.output == 7
    assert two.status is S.FAILED and two.error.type == "tasks.CustomError"
    assert isinstance(batch, BatchResult)
    assert batch.outputs == ["a", "b", "c"]
    assert [r.run.tags for r in batch] == [(), ("own",), ()]


def test_batch_handle_wait_returns_results_in_item_order(nb: object) -> None:
    items = [0.3, 0.0, 0.2, 0.0, 0.1]
    handle = sleep_for.batch_trigger(items)
    assert len(handle) == len(items)
    assert [h.task_id for h in handle.runs] == ["sleep_for"] * len(items)
    result = handle.wait(timeout=TIMEOUT)
    assert isinstance(result, BatchResult)
    assert result.id == handle.id
    assert [r.id for r in result] == [h.id for h in handle.runs]
    assert result.outputs == items
    assert result.ok and result.unwrap() == items


def test_batch_item_gets_its_own_options(nb: object) -> None:
    handle = echo.batch_trigger(
        [1, BatchItem(2, tags=["special"], metadata={"i": 2}), 3], tags=["common"]
    )
    handle.wait(timeout=TIMEOUT)
    got = [runs.retrieve(h.id) for h in handle.runs]
    assert [r.tags for r in got] == [("common",), ("special",), ("common",)]
    assert [r.metadata for r in got] == [{}, {"i": 2}, {}]
    assert [r.payload for r in got] == [1, 2, 3]
    assert ids(runs.list(tag="special")) == [handle.runs[1].id]
    assert {r.batch_id for r in got} == {handle.id}


def test_batch_result_with_mixed_outcomes_is_in_item_order(nb: object) -> None:
    items: list[object] = [
        1,
        "two",
        ValueError("bad three"),
        {"four": [4]},
        None,
        CustomError(6),
        (7, 7.0),
    ]
    result = echo_or_raise.batch_trigger_and_wait(items)
    assert len(result) == len(items)
    assert [r.status for r in result] == [
        S.COMPLETED, S.COMPLETED, S.FAILED, S.COMPLETED, S.COMPLETED, S.FAILED, S.COMPLETED,
    ]  # fmt: skip
    assert result.outputs == [1, "two", None, {"four": [4]}, None, None, (7, 7.0)]
    assert result[2].error is not None and result[2].error.type == "ValueError"
    assert result[2].error.message == "bad three"
    assert result[5].error is not None and result[5].error.type == "tasks.CustomError"
    assert all(r.error is None for i, r in enumerate(result) if i not in (2, 5))
    assert not result.ok
    assert result.counts() == {"COMPLETED": 5, "FAILED": 2}
    assert [r.run.payload_preview for r in result][:2] == ["1", "'two'"]
    with pytest.raises(ValueError, match="bad three"):
        result.unwrap()
    assert {r.run.batch_id for r in result} == {result.id}


# --------------------------------------------------------------------------- subscribe


def test_subscribe_to_a_retried_run(busy_workers: list[RunHandle[Any]]) -> None:
    handle = succeed_on_third.trigger(None)  # stays QUEUED until a worker is free
    watch = Watch(handle.id)
    for blocker in busy_workers:
        blocker.cancel()
    seen = watch.to_end()

    assert seen[-1].is_final and seen[-1].status is S.COMPLETED
    assert all(not s.is_final for s in seen[:-1])
    assert seen[-1].output == 3
    assert statuses(seen) == [
        S.QUEUED,
        S.EXECUTING, S.REATTEMPTING, S.QUEUED,
        S.EXECUTING, S.REATTEMPTING, S.QUEUED,
        S.EXECUTING, S.COMPLETED,
    ]  # fmt: skip
    assert [a.status for a in seen[-1].attempts] == [
        AttemptStatus.FAILED, AttemptStatus.FAILED, AttemptStatus.COMPLETED,
    ]  # fmt: skip
    assert all(s.id == handle.id for s in seen)


def test_subscribe_to_a_finished_run_yields_one_final_snapshot(nb: object) -> None:
    result = add.trigger_and_wait({"a": 1, "b": 1})
    seen = list(runs.subscribe(result.id))
    assert len(seen) == 1
    assert seen[0].status is S.COMPLETED and seen[0].is_final
    assert seen[0].output == 2

    with pytest.raises(UnknownRunError):
        list(runs.subscribe("run_unknown"))


def test_asubscribe(busy_workers: list[RunHandle[Any]]) -> None:
    handle = succeed_on_third.trigger(None)

    async def follow(run_id: str) -> list[Run]:
        out = []
        async for snapshot in runs.asubscribe(run_id):
            out.append(snapshot)
            if len(out) == 1:  # subscribed: let the run start
                for blocker in busy_workers:
                    await asyncio.to_thread(blocker.cancel)
        return out

    seen = asyncio.run(asyncio.wait_for(follow(handle.id), TIMEOUT))
    assert seen[0].status is S.QUEUED
    assert seen[-1].status is S.COMPLETED and seen[-1].output == 3
    assert S.EXECUTING in statuses(seen) and S.REATTEMPTING in statuses(seen)

    async def follow_finished(run_id: str) -> list[Run]:
        return [s async for s in runs.asubscribe(run_id)]

    again = asyncio.run(asyncio.wait_for(follow_finished(handle.id), TIMEOUT))
    assert [s.status for s in again] == [S.COMPLETED]


# --------------------------------------------------------------------------- Result


def test_result_unwrap_reraises_the_tasks_own_exception(nb: object) -> None:
    result = fail.trigger_and_wait(42)
    assert not result.ok
    assert result.status is S.FAILED
    assert result.task_id == "fail"
    assert result.id.startswith("run_")
    assert result.output is None
    assert isinstance(result.error, RunError)
    assert result.error.type == "tasks.CustomError"
    assert result.error.message == "custom failure 42"

    with pytest.raises(CustomError) as info:
        result.unwrap()
    assert type(info.value) is CustomError
    assert info.value.code == 42
    cause = info.value.__cause__
    assert cause is not None
    text = str(cause)
    assert "in fail" in text
    assert "raise CustomError(code)" in text
    assert "custom failure 42" in text


def test_result_of_a_completed_run(nb: object) -> None:
    result = add.trigger_and_wait({"a": 5, "b": 6})
    assert result.ok and result.status is S.COMPLETED
    assert result.output == 11 and result.unwrap() == 11
    assert result.error is None
    assert result.task_id == "add"
    assert runs.retrieve(result.id).output == 11


def test_unwrap_of_a_canceled_run_raises_run_error(nb: object) -> None:
    handle = sleep_for.trigger(LONG)
    handle.cancel()
    result = handle.wait(timeout=TIMEOUT)
    with pytest.raises(RunError) as info:
        result.unwrap()
    assert info.value.status == "CANCELED"
    assert str(info.value) == "CANCELED: by handle.cancel()"  # said once, with its cause
    ((detail,),) = runs.sql(
        "select detail from run_events where run_id = ? and status = 'CANCELED'", [handle.id]
    ).fetchall()
    assert detail == "by handle.cancel()"


# --------------------------------------------------------------------------- reprs


_UNSTABLE = re.compile(
    r"(run_|attempt_|batch_)[0-9a-z]+|\d{4}-\d{2}-\d{2}|\d{2}:\d{2}:\d{2}|0x[0-9a-f]+"
)


def _assert_stable(text: str, *forbidden: object) -> None:
    assert not _UNSTABLE.search(text), text
    for value in forbidden:
        if value is not None:
            assert str(value) not in text, (value, text)


def test_reprs_are_stable_across_executions(nb: object) -> None:
    reprs = []
    for _ in range(2):
        handle = add.trigger({"a": 1, "b": 2})
        result = handle.wait(timeout=TIMEOUT)
        failed = fail.trigger_and_wait(5)
        batch = echo_or_raise.batch_trigger_and_wait([1, KeyError("k"), "x"])
        run = runs.retrieve(handle.id)
        listed = runs.list(limit=1)[0]
        texts = [repr(handle), repr(result), repr(failed), repr(batch), repr(run),
                 repr(listed), repr(run.attempts[0]), repr(failed.run)]  # fmt: skip
        for text in texts:
            _assert_stable(text, handle.id, run.attempts[0].pid, run.created_at, failed.id)
        reprs.append(texts)
    assert reprs[0] == reprs[1]
    handle_repr, result_repr, failed_repr, batch_repr, run_repr = reprs[0][:5]
    assert handle_repr == "RunHandle(task='add')"
    assert "COMPLETED" in result_repr and "3" in result_repr
    assert "FAILED" in failed_repr and "CustomError" in failed_repr
    assert "3 runs" in batch_repr and "COMPLETED=2" in batch_repr and "FAILED=1" in batch_repr
    assert "'add'" in run_repr and "COMPLETED" in run_repr


def test_repr_of_an_executing_run_is_stable(nb: object) -> None:
    texts = []
    for _ in range(2):
        handle = sleep_for.trigger(LONG)
        live = executing(handle)
        texts.append(repr(live))
        _assert_stable(repr(live), handle.id, live.attempts[0].pid)
        handle.cancel()
    assert texts[0] == texts[1]
    assert "EXECUTING" in texts[0]


def test_a_batch_waited_for_after_its_runs_ended_reads_them_from_the_store(
    store_path: str,
) -> None:
    """Waiting on a batch whose runs are no longer live (a new engine, a later kernel)
    gives the same results as retrieving each run: outputs, errors and attempts."""
    nbtasks.configure(store=store_path, workers=2)
    try:
        batch = succeed_on_third.batch_trigger(list(range(3)))
        failing = fail.batch_trigger([1, 2])
        live = batch.wait(), failing.wait()
        nbtasks.shutdown()
        nbtasks.configure(store=store_path, workers=2)
        for handle, before in zip((batch, failing), live, strict=True):
            again = handle.wait()
            assert [r.status for r in again.runs] == [r.status for r in before.runs]
            for result in again.runs:
                one = nbtasks.runs.retrieve(result.id)
                assert result.run.output_preview == one.output_preview
                assert str(result.run.error) == str(one.error)
                assert [(a.number, a.status, str(a.error)) for a in result.run.attempts] == [
                    (a.number, a.status, str(a.error)) for a in one.attempts
                ]
        assert [len(r.run.attempts) for r in batch.wait().runs] == [3, 3, 3]
        unknown = "run_0mx503fa40000996gx7"
        with pytest.raises(nbtasks.UnknownRunError, match=unknown):
            nbtasks.BatchHandle("batch_x", [*batch.runs, nbtasks.RunHandle(unknown, "t")]).wait()
    finally:
        nbtasks.shutdown()


def test_a_run_id_of_the_wrong_type_is_named_briefly(nb: object) -> None:
    ids = [f"run_{i:019d}" for i in range(5000)]
    with pytest.raises(TypeError, match="is not a run id") as raised:
        nbtasks.runs.wait(ids)  # type: ignore[arg-type]
    assert len(str(raised.value)) < 400
