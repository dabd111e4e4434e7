"""Delays, TTL, queues, idempotency, replay, versions, nested runs, live updates, SQL."""

from __future__ import annotations

import os
import signal
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

import nbtasks
from nbtasks import BatchItem, Queue, Retry, RunHandle, RunStatus, Task, metadata, runs, task

from conftest import has_status, run_script, wait_for
from crashers import sleep_for
from tasks import add, always_fail

# -- tasks local to these tests -----------------------------------------------------------

ONE = Queue("sched-one", concurrency_limit=1)
TWO = Queue("sched-two", concurrency_limit=2)


@task(id="sched-child")
def child(x: int) -> int:
    metadata.set("seen", x)
    return x + 1


@task(id="sched-parent")
def parent(n: int) -> int:
    results = child.batch_trigger_and_wait(list(range(n)))
    single = child.trigger_and_wait(100)
    return sum(results.unwrap()) + single.unwrap()


@task(id="sched-inner", queue=ONE)
def inner(x: int) -> int:
    return x * 10


@task(id="sched-outer", queue=ONE)
def outer(x: int) -> int:
    return inner.trigger_and_wait(x).unwrap() + 1


@task(id="sched-grandchild")
def grandchild(_: object) -> None:
    time.sleep(300)


@task(id="sched-middle")
def middle(_: object) -> None:
    grandchild.trigger_and_wait(None)


@task(id="sched-top")
def top(_: object) -> None:
    middle.trigger_and_wait(None)


@task(id="sched-keyed-children")
def keyed_children(key: str) -> list[str]:
    scoped = [child.trigger(1, idempotency_key=key).id for _ in range(2)]
    global_ = child.trigger(1, idempotency_key=key, idempotency_key_scope="global").id
    return [*scoped, global_]


@task(id="sched-progress")
def progress(steps: int) -> str:
    for i in range(steps):
        metadata.set("progress", (i + 1) / steps)
        metadata.increment("done")
        metadata.append("log", f"step {i}")
        print(f"step {i}", flush=True)
        time.sleep(0.15)
    metadata.remove("log", "step 0")
    metadata.del_("done")
    ctx = nbtasks.context()
    return f"{ctx.task_id} attempt {ctx.attempt_number} tags {list(ctx.tags)}"


@task(id="sched-displays")
def displays(_: object) -> None:
    class Html:
        def _repr_html_(self) -> str:
            return "<b>bold</b>"

    show = display  # noqa: F821  (a builtin in workers, as in IPython)
    show(Html())
    show({"k": 1})


@task(id="sched-retry-twice", retry=Retry(max_attempts=2, min_delay=0.01, randomize=False))
def retry_twice(_: object) -> int:
    if nbtasks.context().attempt_number == 1:
        raise RuntimeError("first attempt fails")
    return 2


def _statuses(run_id: str) -> list[RunStatus]:
    return [s.status for s in runs.subscribe(run_id)]


# -- delays -----------------------------------------------------------------------------


def test_delayed_run_waits_then_runs(nb: object) -> None:
    handle = add.trigger({"a": 1, "b": 2}, delay="1s")
    run = handle.retrieve()
    assert run.status is RunStatus.DELAYED and run.delay_until is not None
    result = handle.wait(timeout=10)
    assert result.unwrap() == 3
    started = result.run.started_at
    assert started is not None and started >= run.delay_until


@pytest.mark.parametrize(
    "delay",
    [timedelta(milliseconds=200), datetime.now(timezone.utc) - timedelta(days=1), 0.2],
)
def test_delay_accepts_timedelta_datetime_and_seconds(nb: object, delay: object) -> None:
    assert add.trigger_and_wait({"a": 1, "b": 1}, delay=delay).unwrap() == 2


def test_naive_datetime_delay_is_local_time(nb: object) -> None:
    soon = datetime.now() + timedelta(seconds=1)
    handle = add.trigger({"a": 1, "b": 1}, delay=soon)
    assert handle.retrieve().status is RunStatus.DELAYED
    assert handle.wait(timeout=10).ok


def test_reschedule_only_while_delayed(nb: object) -> None:
    handle = add.trigger({"a": 1, "b": 1}, delay="1h")
    run = runs.reschedule(handle.id, "100ms")
    assert run.status is RunStatus.DELAYED
    assert handle.wait(timeout=10).ok
    with pytest.raises(ValueError, match="is COMPLETED: only a DELAYED run"):
        runs.reschedule(handle.id, "1s")
    with pytest.raises(ValueError, match=r"delay='soon'"):
        runs.reschedule(handle.id, "soon")


def test_delayed_run_can_be_canceled(nb: object) -> None:
    handle = add.trigger({"a": 1, "b": 1}, delay="1h")
    assert handle.cancel().status is RunStatus.CANCELED


# -- ttl and queues ---------------------------------------------------------------------


def test_ttl_expires_a_run_stuck_behind_a_busy_queue(nb: object) -> None:
    busy = sleep_for.trigger(1.0, queue=ONE)
    wait_for(has_status(busy.id, RunStatus.EXECUTING), "the sleeping run to execute")
    waiting = add.trigger({"a": 1, "b": 1}, queue=ONE, ttl="150ms")
    result = waiting.wait(timeout=10)
    assert result.status is RunStatus.EXPIRED
    assert result.run.attempt_count == 0 and result.run.expired_at is not None
    assert busy.wait(timeout=10).ok


def test_ttl_does_not_expire_delayed_or_executing_runs(nb: object) -> None:
    add.trigger_and_wait({"a": 0, "b": 0})  # the pool is warm: the next run starts at once
    executing = sleep_for.trigger(1.5, ttl="1s")
    delayed = add.trigger({"a": 1, "b": 1}, delay="1.5s", ttl="1s")
    assert delayed.wait(timeout=10).ok
    assert executing.wait(timeout=10).ok


def test_a_run_sent_ahead_to_a_busy_worker_still_expires_unstarted(nb: object) -> None:
    add.trigger_and_wait({"a": 0, "b": 0})  # warm: both workers are up
    busy = [sleep_for.trigger(1.0) for _ in range(2)]
    for handle in busy:
        wait_for(has_status(handle.id, RunStatus.EXECUTING), "the sleeping run to execute")
    late = add.trigger({"a": 1, "b": 1}, ttl="200ms")  # sent ahead to a busy worker
    result = late.wait(timeout=10)
    assert result.status is RunStatus.EXPIRED and result.run.attempt_count == 0
    assert all(h.wait(timeout=10).ok for h in busy)
    assert add.trigger_and_wait({"a": 2, "b": 2}).unwrap() == 4  # the workers carry on


def test_a_run_sent_ahead_moves_to_a_worker_that_frees_up(nb: object) -> None:
    add.trigger_and_wait({"a": 0, "b": 0})
    long = sleep_for.trigger(30)
    short = sleep_for.trigger(0.3)
    for handle in (long, short):
        wait_for(has_status(handle.id, RunStatus.EXECUTING), "the sleeping run to execute")
    queued = [add.trigger({"a": i, "b": 0}) for i in range(3)]  # one goes ahead to each
    assert [h.wait(timeout=10).output for h in queued] == [0, 1, 2]  # not behind `long`
    long.cancel()


def _sent_ahead(served: Any) -> dict[int, int]:
    """How many runs each worker (by pid) holds sent ahead, read on the engine's loop."""
    eng = served.engine
    lengths: dict[int, int] = eng.call(
        lambda fut: fut.set_result({w.pid: len(w.ahead) for w in eng.dispatch.workers.values()})
    ).result(10)
    return lengths


def _busy_workers_with_quick_runs_ahead(served: Any) -> tuple[list[Any], list[Any]]:
    """Both workers sleeping, with quick runs sent several deep to each."""
    add.batch_trigger_and_wait([{"a": i, "b": 0} for i in range(40)])  # attempts look quick
    busy = [sleep_for.trigger(1.0) for _ in range(2)]
    for handle in busy:
        wait_for(has_status(handle.id, RunStatus.EXECUTING), "the sleeping run to execute")
    quick = [add.trigger({"a": i, "b": 100}) for i in range(8)]
    assert max(_sent_ahead(served).values()) > 1
    return busy, quick


def test_canceling_a_run_deep_in_a_workers_queue_skips_only_that_one(served: Any) -> None:
    busy, quick = _busy_workers_with_quick_runs_ahead(served)
    quick[3].cancel()
    results = [h.wait(timeout=10) for h in quick]
    assert [r.status for r in results] == [RunStatus.COMPLETED] * 3 + [RunStatus.CANCELED] + [
        RunStatus.COMPLETED
    ] * 4
    assert results[3].run.attempt_count == 0
    assert [r.output for i, r in enumerate(results) if i != 3] == [
        100,
        101,
        102,
        104,
        105,
        106,
        107,
    ]
    assert all(h.wait(timeout=10).ok for h in busy)
    assert add.trigger_and_wait({"a": 2, "b": 2}).unwrap() == 4  # the workers carry on


def test_runs_sent_ahead_to_a_worker_that_dies_run_elsewhere(served: Any) -> None:
    busy, quick = _busy_workers_with_quick_runs_ahead(served)
    ahead = _sent_ahead(served)
    victim = max(ahead, key=lambda pid: ahead[pid])  # the worker holding the most
    on_victim = [h for h in busy if runs.retrieve(h.id).attempts[0].pid == victim]
    others = [h for h in busy if h not in on_victim]
    os.kill(victim, signal.SIGKILL)
    assert [h.wait(timeout=10).status for h in on_victim] == [RunStatus.CRASHED]
    assert [h.wait(timeout=10).output for h in quick] == list(range(100, 108))
    assert all(runs.retrieve(h.id).attempt_count == 1 for h in quick)
    assert all(h.wait(timeout=10).ok for h in others)


def test_queue_limit_is_never_exceeded(nb: object) -> None:
    batch = sleep_for.batch_trigger_and_wait([0.2] * 4, queue=TWO)
    intervals = [(r.run.started_at, r.run.finished_at) for r in batch]
    for start, _ in intervals:
        overlapping = sum(1 for s, f in intervals if s <= start < f)
        assert overlapping <= 2


def test_a_parent_waiting_on_a_child_in_its_own_limit_1_queue_does_not_deadlock(
    nb: object,
) -> None:
    result = outer.trigger_and_wait(4)
    assert result.unwrap() == 41
    kid = runs.list(task="sched-inner", limit=1)[0]
    assert kid.parent_id == result.id


# -- idempotency ------------------------------------------------------------------------


def test_duplicate_key_returns_the_existing_run(nb: object) -> None:
    first = add.trigger({"a": 1, "b": 1}, idempotency_key="k1")
    second = add.trigger({"a": 9, "b": 9}, idempotency_key="k1")
    assert second.id == first.id and second.is_cached and not first.is_cached
    assert add.trigger_and_wait({"a": 5, "b": 5}, idempotency_key="k1").unwrap() == 2
    assert len(runs.list(task="add")) == 1
    assert runs.retrieve(first.id).idempotency_key == "k1"


def test_same_key_twice_in_one_batch_is_one_run(nb: object) -> None:
    result = add.batch_trigger_and_wait(
        [
            BatchItem({"a": 1, "b": 1}, idempotency_key="dup"),
            BatchItem({"a": 2, "b": 2}, idempotency_key="dup"),
            {"a": 3, "b": 3},
        ]
    )
    assert [r.output for r in result] == [2, 2, 6]
    assert result[0].id == result[1].id
    assert len(runs.list(task="add")) == 2


def test_key_of_a_failed_run_is_released(nb: object) -> None:
    first = always_fail.trigger_and_wait(None, idempotency_key="retry-me", max_attempts=1)
    assert first.status is RunStatus.FAILED
    again = always_fail.trigger(None, idempotency_key="retry-me", max_attempts=1)
    assert not again.is_cached and again.id != first.id


def test_key_ttl_releases_the_key(nb: object) -> None:
    first = add.trigger_and_wait({"a": 1, "b": 1}, idempotency_key="brief",
                                 idempotency_key_ttl="100ms")  # fmt: skip

    def a_fresh_run() -> RunHandle[Any] | None:
        again = add.trigger({"a": 1, "b": 1}, idempotency_key="brief")
        return None if again.is_cached else again

    again = wait_for(a_fresh_run, "the key to expire", interval=0.05)
    assert again.id != first.id


def test_keys_inside_a_task_are_scoped_to_the_parent_run(nb: object) -> None:
    a = keyed_children.trigger_and_wait("same").unwrap()
    b = keyed_children.trigger_and_wait("same").unwrap()
    assert a[0] == a[1] and b[0] == b[1]  # duplicates within one parent
    assert a[0] != b[0]  # but not across parents
    assert a[2] == b[2]  # the global key is shared
    assert a[0] != a[2]


# -- replay and versions ----------------------------------------------------------------


def test_replay_makes_a_new_run_with_the_same_payload_tags_and_metadata(nb: object) -> None:
    original = add.trigger_and_wait({"a": 2, "b": 3}, tags=["x"], metadata={"m": 1},
                                    idempotency_key="orig")  # fmt: skip
    replay = runs.replay(original.id)
    result = replay.wait(timeout=10)
    assert result.unwrap() == 5
    run = replay.retrieve()
    assert run.replayed_from == original.id and run.id != original.id
    assert run.tags == ("x",) and run.metadata == {"m": 1} and run.idempotency_key is None
    changed = runs.replay(original.id, payload={"a": 10, "b": 1})
    assert changed.wait(timeout=10).unwrap() == 11


def test_replay_of_a_failed_run(nb: object) -> None:
    failed = always_fail.trigger_and_wait(None, max_attempts=1)
    replay = runs.replay(failed.id)
    assert replay.wait(timeout=10).status is RunStatus.FAILED


def test_trigger_by_id_waits_for_the_task_to_be_defined(nb: object) -> None:
    handle = runs.trigger("sched-defined-later", 21)
    assert handle.retrieve().status is RunStatus.WAITING_FOR_DEPLOY

    def doubled(x: int) -> int:
        return x * 2

    Task(doubled, id="sched-defined-later")
    result = handle.wait(timeout=10)
    assert result.unwrap() == 42
    assert result.run.version is not None


def test_versions_filter_and_change_with_the_body(nb: object) -> None:
    t1 = Task(lambda p: p, id="sched-versioned", source="def v(p): return p")
    v1 = t1.trigger_and_wait(1).run.version
    t2 = Task(lambda p: p, id="sched-versioned", source="def v(p): return p  # changed")
    v2 = t2.trigger_and_wait(2).run.version
    assert v1 is not None and v2 is not None and v1 != v2
    assert v2.split(".")[0] == v1.split(".")[0]
    assert int(v2.split(".")[1]) == int(v1.split(".")[1]) + 1
    assert [r.payload for r in runs.list(version=v1)] == [1]


# -- nested runs ------------------------------------------------------------------------


def test_nested_waits_freeze_the_parent_and_link_children(nb: object) -> None:
    handle = parent.trigger(3)
    seen = _statuses(handle.id)
    assert RunStatus.FROZEN in seen and seen[-1] is RunStatus.COMPLETED
    assert handle.wait(timeout=10).unwrap() == (1 + 2 + 3) + 101
    kids = runs.list(task="sched-child", limit=10)
    assert len(kids) == 4
    assert all(k.parent_id == handle.id and k.root_id == handle.id and k.depth == 1
               for k in kids)  # fmt: skip
    assert {k.metadata["seen"] for k in kids} == {0, 1, 2, 100}


def test_cancel_cascades_to_a_grandchild(nb: object) -> None:
    handle = top.trigger(None)
    wait_for(lambda: runs.list(task="sched-grandchild", status="EXECUTING"),
             "the grandchild to start")  # fmt: skip
    handle.cancel()
    for task_id in ("sched-top", "sched-middle", "sched-grandchild"):
        (run,) = runs.list(task=task_id)
        assert run.status is RunStatus.CANCELED, task_id
    (g,) = runs.list(task="sched-grandchild")
    assert g.depth == 2 and g.root_id == handle.id


# -- live updates -----------------------------------------------------------------------


def test_subscription_sees_reattempting(nb: object) -> None:
    handle = retry_twice.trigger(None)
    seen = _statuses(handle.id)
    assert RunStatus.REATTEMPTING in seen
    assert seen[-1] is RunStatus.COMPLETED
    assert seen.index(RunStatus.REATTEMPTING) < len(seen) - 1


def test_metadata_and_logs_stream_live(nb: object) -> None:
    handle = progress.trigger(4, tags=["t1"])
    progress_seen = []
    logs_seen = []
    for snapshot in runs.subscribe(handle.id):
        if "progress" in snapshot.metadata:
            progress_seen.append(snapshot.metadata["progress"])
        if snapshot.attempts and not snapshot.is_final:
            logs_seen.append(snapshot.attempts[-1].stdout)
    assert progress_seen[0] < 1.0 and progress_seen[-1] == 1.0
    assert any("step 0" in log and "step 3" not in log for log in logs_seen)
    final = handle.retrieve()
    assert final.metadata == {"progress": 1.0, "log": ["step 1", "step 2", "step 3"]}
    assert final.output == "sched-progress attempt 1 tags ['t1']"


@task(id="sched-big-metadata")
def big_metadata(_: object) -> str:
    metadata.set("small", 1)
    try:
        metadata.set("huge", "x" * 300_000)
    except ValueError as exc:
        return str(exc)
    return "no error"


def test_metadata_past_the_size_cap_is_refused_and_keeps_what_was_set(nb: object) -> None:
    result = big_metadata.trigger_and_wait(None)
    assert "over the 262144-byte cap" in result.unwrap()
    assert result.run.metadata == {"small": 1}


def test_metadata_outside_a_task_is_a_clear_error() -> None:
    with pytest.raises(nbtasks.NbtasksError, match="only available inside a running task"):
        metadata.set("x", 1)
    with pytest.raises(nbtasks.NbtasksError, match="only available inside a running task"):
        nbtasks.context()


def test_display_in_a_task_is_captured_as_mime_bundles(nb: object) -> None:
    result = displays.trigger_and_wait(None)
    (attempt,) = result.run.attempts
    assert attempt.displays[0]["text/html"] == "<b>bold</b>"
    assert attempt.displays[1] == {"text/plain": "{'k': 1}"}


def test_display_where_ipython_cannot_be_imported_uses_the_workers_own(tmp_path: Path) -> None:
    """A worker whose IPython fails to import keeps its builtin ``display``: still bundles."""
    (tmp_path / "IPython").mkdir()  # found first on the path, by the script and its workers
    (tmp_path / "IPython" / "__init__.py").write_text("raise ImportError('no IPython here')\n")
    done = run_script(
        """
        import nbtasks
        from nbtasks import task

        nbtasks.configure(store="s.duckdb", workers=1)

        class Card:
            def _repr_html_(self):
                return "<b>card</b>"

            def __repr__(self):
                return "Card()"

        @task
        def shows(_):
            try:
                import IPython.display
            except ImportError:
                pass
            display(Card())

        attempt = shows.trigger_and_wait(None).run.attempts[-1]
        print(attempt.status.value, attempt.displays, repr(attempt.stdout))
        """,
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        "COMPLETED ({'text/html': '<b>card</b>', 'text/plain': 'Card()'},) ''"
    ), done.stdout


async def _collect(run_id: str) -> list[RunStatus]:
    return [s.status async for s in runs.asubscribe(run_id)]


def test_async_subscription(nb: object) -> None:
    import asyncio

    handle = retry_twice.trigger(None)
    seen = asyncio.run(_collect(handle.id))
    assert RunStatus.REATTEMPTING in seen and seen[-1] is RunStatus.COMPLETED


# -- sql ----------------------------------------------------------------------------------


def test_sql_reads_runs_and_attempts_and_refuses_writes(nb: object) -> None:
    add.batch_trigger_and_wait([{"a": i, "b": 0} for i in range(3)])
    rows = runs.sql(
        "select r.status, count(*) from runs r join attempts a on a.run_id = r.id group by all"
    ).fetchall()
    assert rows == [("COMPLETED", 3)]
    for statement in ("delete from runs", "drop table runs", "update runs set status = 'X'"):
        with pytest.raises(ValueError, match="read-only"):
            runs.sql(statement)
    assert len(runs.list()) == 3


def test_sql_gives_duckdbs_whole_relation_api_in_a_fresh_process(tmp_path: Path) -> None:
    # The store loads DuckDB's C extension alone; a relation needs DuckDB's Python package,
    # which this process never imported itself (a test process has, through test_store).
    done = run_script(
        """
        import sys
        import nbtasks
        from nbtasks import runs, task

        @task
        def add(p):
            return p + 1

        add.trigger_and_wait(1)
        relation = runs.sql("select status, count(*) from runs group by all")
        print(relation.fetchall(), type(relation).__name__, "duckdb" in sys.modules)
        """,
        tmp_path,
        env={"NBTASKS_STORE": str(tmp_path / "store.duckdb")},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["[('COMPLETED',", "1)]", "DuckDBPyRelation", "True"]
