"""A batch's final snapshots travel to its blocking wait as they end, as plain values
(``RunState.wire()``, MessagePack) that the client makes the same snapshots of."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

import nbtasks
from nbtasks import BatchItem, RunError, RunStatus
from nbtasks.core.status import AttemptStatus
from nbtasks.engine.state import AttemptState, RunState, error_json
from nbtasks.service.finals import pack, unpack

from tasks import CustomError, echo, fail, succeed_on_third

T0 = datetime(2026, 12, 2, 11, 0, 0, 123456, tzinfo=timezone.utc)


def _plain(value: Any) -> Any:
    """``value`` comparable by ``==``: errors (exceptions) by their attributes, attempts
    by every field."""
    if isinstance(value, RunError):
        return ("RunError", {k: v for k, v in vars(value).items() if not k.startswith("__")})
    if isinstance(value, nbtasks.Attempt):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    return value


def _every_field(snapshot: nbtasks.Run) -> dict[str, Any]:
    """All of a snapshot's fields, those left out of ``==`` too (not the store reader)."""
    skip = {"_fetch", "_cache"}
    return {f.name: _plain(getattr(snapshot, f.name)) for f in dataclasses.fields(snapshot)
            if f.name not in skip}  # fmt: skip


def _run_with_everything() -> RunState:
    failed = AttemptState(
        id="attempt_1", run_id="run_w", number=1, status=AttemptStatus.FAILED, started_at=T0,
        pid=41, finished_at=T0 + timedelta(seconds=1), exit_code=None, signal=None, oom=False,
        error=error_json(AttemptStatus.FAILED, "ValueError", "bad", "Traceback...", b"\x80x"),
        stdout="out\n", stderr="err\n", displays=[{"text/plain": "1", "text/html": "<b>1</b>"}],
    )  # fmt: skip
    crashed = AttemptState(
        id="attempt_2", run_id="run_w", number=2, status=AttemptStatus.CRASHED,
        started_at=T0 + timedelta(seconds=2), pid=42, finished_at=T0 + timedelta(seconds=3),
        exit_code=-9, signal=9, oom=True,
        error=error_json(AttemptStatus.CRASHED, "OutOfMemory", "over 1GiB"),
    )  # fmt: skip
    return RunState(
        id="run_w", task_id="wired", version="v3", status=RunStatus.CRASHED, queue="q1",
        payload=b"\x80payload", payload_preview="{'a': 1}", created_at=T0,
        updated_at=T0 + timedelta(seconds=3), output=None, output_preview=None,
        error=error_json(RunStatus.CRASHED, "OutOfMemory", "over 1GiB"),
        queued_at=T0 + timedelta(microseconds=7),
        started_at=T0 + timedelta(seconds=2),
        finished_at=T0 + timedelta(seconds=3),
        delay_until=datetime(2026, 12, 2, 10, 59, 59),  # naive: comes back as text
        ttl_s=30.5, expired_at=None, idempotency_key="key-1",
        idempotency_expires_at=T0 + timedelta(hours=1), tags=("a", "b"),
        metadata={"progress": 0.5, "nested": {"list": [1, "two", None]}},
        trigger_metadata={"from": "test"}, max_attempts=3, max_duration_s=60.0,
        attempt_count=2, parent_id="run_parent", root_id="run_root", depth=2,
        batch_id="batch_x", replayed_from="run_before", owner="host:1",
        resources={"gpu": 1.0}, origin="test.ipynb", attempts=[failed, crashed],
        history=[("QUEUED", T0), ("EXECUTING", T0 + timedelta(seconds=1)),
                 ("CRASHED", T0 + timedelta(seconds=3))],
    )  # fmt: skip


def test_a_final_run_crosses_the_wire_as_its_snapshot() -> None:
    """Every field, the attempts and the history too, comes back equal: times as times
    (a naive one too), errors with their exception's bytes, metadata nested."""
    run = _run_with_everything()
    completed = dataclasses.replace(
        run, id="run_c", status=RunStatus.COMPLETED, error=None, output=b"\x80out",
        output_preview="3", attempts=[], history=[], tags=(), metadata={}, resources=None,
        delay_until=None, queue=None,
    )  # fmt: skip
    back = unpack(pack([(4, run.wire()), (0, completed.wire())]))
    assert [i for i, _ in back] == [4, 0]
    for (_, got), want in zip(back, (run.snapshot(), completed.snapshot()), strict=True):
        assert _every_field(got) == _every_field(want)
    got = back[0][1]
    same = {f.name for f in dataclasses.fields(got)} & {f.name for f in dataclasses.fields(run)}
    assert len(same) > 20
    for name in same - {"error"}:  # each value is the live run's (the error is parsed)
        want_value = getattr(run, name)
        assert getattr(got, name) == (tuple(want_value) if name == "tags" else want_value), name
    assert (got.ttl, got._history) == (30.5, tuple(run.history))
    assert got._payload_bytes == run.payload and [a.id for a in got.attempts] == [
        "attempt_1",
        "attempt_2",
    ]
    assert got.delay_until == datetime(2026, 12, 2, 10, 59, 59)
    assert got.attempts[0].error is not None and got.attempts[0].error.exc_bytes == b"\x80x"
    assert got.attempts[0].displays == ({"text/plain": "1", "text/html": "<b>1</b>"},)
    assert got.error is not None and got.error.run_id == "run_w"


def test_a_batch_wait_gets_every_result_in_item_order(nb: object) -> None:
    """Through the server: outputs, errors (the task's own exception), retried runs with
    all their attempts, and a run found by its idempotency key, each in its item's place,
    and each as the store has it."""
    cached = echo.trigger_and_wait("first", idempotency_key="same")
    items = list(range(40))
    done = echo.batch_trigger_and_wait(
        [*items[:20], BatchItem("again", idempotency_key="same"), *items[20:]]
    )
    outputs = [r.output for r in done.runs]
    assert outputs == [*items[:20], "first", *items[20:]]
    assert done.runs[20].id == cached.id
    assert len({r.id for r in done.runs}) == 41
    for result in done.runs:
        stored = nbtasks.runs.retrieve(result.id)
        assert result.run == stored
        assert [a.status for a in result.run.attempts] == [a.status for a in stored.attempts]

    mixed = succeed_on_third.batch_trigger_and_wait(["x", "y"])
    assert [r.output for r in mixed.runs] == [3, 3]
    assert [a.number for a in mixed.runs[1].run.attempts] == [1, 2, 3]
    failing = fail.batch_trigger_and_wait([7, 8])
    assert [r.status for r in failing.runs] == [RunStatus.FAILED, RunStatus.FAILED]
    with pytest.raises(CustomError) as raised:
        failing.runs[1].unwrap()
    assert raised.value.code == 8
