"""``runs``: list, retrieve, cancel, wait for and watch runs, live or stored."""

from __future__ import annotations

import functools
import json
import queue as queue_mod
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

from nbtasks.client import control
from nbtasks.client.blocking import block
from nbtasks.client.config import engine
from nbtasks.client.handles import RunHandle
from nbtasks.client.registry import registry
from nbtasks.core import display
from nbtasks.core.durations import parse_delay, parse_duration, utcnow
from nbtasks.core.ids import check_task_id
from nbtasks.core.models import Page, Result, Run, run_from_row
from nbtasks.core.status import RunStatus
from nbtasks.store.schema import RUN_COLUMNS, RUN_PAYLOAD

_SLOT = {column: i for i, column in enumerate(RUN_COLUMNS)}
_SAME: Any = object()  # replay: keep the original payload
_POLL_S = 0.25  # a subscription checks this often that its server is still there


def status_values(value: RunStatus | str | Sequence[RunStatus | str]) -> list[str]:
    items = [value] if isinstance(value, (str, RunStatus)) else list(value)
    out = []
    for item in items:
        try:
            out.append(RunStatus(item.upper() if isinstance(item, str) else item).value)
        except ValueError:
            names = ", ".join(s.value for s in RunStatus)
            raise ValueError(f"status={item!r} is not a run status; use one of {names}") from None
    return out


def _test_at(slot: int, test: Callable[[Any], bool], row: tuple[Any, ...]) -> bool:
    """A filter's test on a row the journal holds (sent to the server: a module function)."""
    return test(row[slot])


def _eq(value: Any, found: Any) -> bool:
    return bool(found == value)


def _has(value: Any, found: Any) -> bool:
    return value in (found or ())


def _less(value: Any, found: Any) -> bool:
    return bool(found < value)


def _at_or_after(value: Any, found: Any) -> bool:
    return bool(found >= value)


class Runs:
    """The runs API: ``runs.list``, ``runs.retrieve``, ``runs.cancel``, ``runs.wait``, ..."""

    def list(
        self,
        status: RunStatus | str | Sequence[RunStatus | str] | None = None,
        task: str | Sequence[str] | None = None,
        version: str | None = None,
        tag: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        period: str | float | timedelta | None = None,
        limit: int = 25,
        after: str | None = None,
        batch: str | None = None,
        origin: str | None = None,
    ) -> Page:
        """Runs newest first, filtered; ``Page.next`` is the cursor to pass as ``after=``."""
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 10_000:
            raise ValueError(f"limit={limit!r} is not valid: use an integer from 1 to 10000")
        # Each filter as SQL on the tables and as the same test on a row the journal holds.
        where: list[str] = []
        params: list[Any] = []
        tests: list[Callable[[tuple[Any, ...]], bool]] = []

        def add(clause: str, param: Any, test: Callable[[Any], bool], column: str) -> None:
            where.append(clause)
            params.append(param)
            tests.append(functools.partial(_test_at, _SLOT[column], test))

        if status is not None:
            statuses = status_values(status)  # list_contains: faster than IN (subquery)
            add("list_contains(?::VARCHAR[], status)", statuses, statuses.__contains__, "status")
        if task is not None:
            tasks = [task] if isinstance(task, str) else list(task)
            add("list_contains(?::VARCHAR[], task_id)", tasks, tasks.__contains__, "task_id")
        for name, value, clause, column, test in (
            ("version", version, "version = ?", "version", _eq),
            ("tag", tag, "list_contains(tags, ?)", "tags", _has),
            ("after", after, "id < ?", "id", _less),
            ("batch", batch, "batch_id = ?", "batch_id", _eq),
            ("origin", origin, "origin = ?", "origin", _eq),
        ):
            if value is not None:
                if not isinstance(value, str):
                    raise ValueError(f"{name}={value!r} is not valid: use a string")
                add(clause, value, functools.partial(test, value), column)
        for name, when, clause, test in (
            ("created_after", created_after, "created_at >= ?", _at_or_after),
            ("created_before", created_before, "created_at < ?", _less),
        ):
            if when is not None:
                if not isinstance(when, datetime):
                    raise ValueError(f"{name}={when!r} is not valid: use a datetime")
                if when.tzinfo is None:  # as the store reads times: UTC
                    when = when.replace(tzinfo=timezone.utc)
                add(clause, when, functools.partial(test, when), "created_at")
        seconds = parse_duration("period", period)
        if seconds is not None:
            since = utcnow() - timedelta(seconds=seconds)
            add("created_at >= ?", since, functools.partial(_at_or_after, since), "created_at")
        rows = engine().store.list_runs(" AND ".join(where), params, tests, limit + 1)
        items = [run_from_row(r, control.fetch) for r in rows[:limit]]
        return Page(items, items[-1].id if len(rows) > limit else None)

    def retrieve(self, run_id: str) -> Run:
        """The run as it is now: live from the engine, or from the store."""
        return control.retrieve(run_id)

    def cancel(self, run_id: str) -> Run:
        """Cancel a run and its descendants (their process trees are killed); a final run
        is left as it is."""
        return control.cancel(run_id)

    def wait(self, run_id: str, timeout: float | str | timedelta | None = None) -> Result[Any]:
        """Block until the run is final and return its result; ``timeout`` is a duration
        (seconds, a timedelta or a string like ``"5s"``), past it ``TimeoutError``."""
        return control.wait_runs([run_id], timeout)[0]

    def trigger(self, task_id: str, payload: Any, **options: Any) -> RunHandle[Any]:
        """Trigger a task by id. A task that neither this process nor any other client of
        the store's server has defined gets a run that is WAITING_FOR_DEPLOY until its
        definition runs; otherwise the server runs the latest definition it was sent."""
        from nbtasks.client.specs import make_specs  # dill: only where runs are made
        from nbtasks.client.triggers import handles, submit

        check_task_id(task_id, "task_id")  # the rule @task applies, before any run is made
        task = registry.get(task_id)
        if task is not None:
            return task.trigger(payload, **options)
        (handle,) = handles(task_id, submit(make_specs(None, [payload], options, task_id=task_id)))
        return handle

    def replay(self, run_id: str, payload: Any = _SAME) -> RunHandle[Any]:
        """A new run of the same task (its latest version), with the same payload unless
        one is given, the same tags and trigger metadata, and no idempotency key."""
        from nbtasks.client.specs import make_specs
        from nbtasks.client.triggers import handles, submit

        control.check_run_id(run_id)
        original = self.retrieve(run_id)
        row = engine().store.query(
            f"SELECT {RUN_PAYLOAD}, trigger_metadata FROM runs WHERE id = ?", [run_id]
        )[0]
        options: dict[str, Any] = {"tags": list(original.tags)}
        if row[1]:
            options["metadata"] = json.loads(row[1])
        if original.resources:
            options["resources"] = original.resources
        task = registry.get(original.task_id)
        (spec,) = make_specs(task, [None if payload is _SAME else payload], options,
                             task_id=original.task_id)  # fmt: skip
        if payload is _SAME:
            spec.payload = row[0]
            spec.payload_preview = original.payload_preview or ""
        spec.replayed_from = run_id
        (handle,) = handles(original.task_id, submit([spec]))
        return handle

    def reschedule(self, run_id: str, delay: Any) -> Run:
        """Move a DELAYED run's start; any other status raises ``ValueError`` naming it."""
        control.check_run_id(run_id)
        until = parse_delay("delay", delay, utcnow())
        eng = engine()
        eng.require_run(run_id)
        run: Run = block(eng.call("reschedule", run_id, until or utcnow()))
        return run

    def sql(self, query: str, params: Sequence[Any] | None = None) -> Any:
        """A DuckDB relation with the result of one SELECT over the ``runs``,
        ``attempts``, ``run_events`` and ``task_versions`` tables. It is a copy, detached
        from the store: nothing done with it reaches the store, and the query reads no file
        or URL but the store. Any other statement is refused."""
        import duckdb

        from nbtasks.store.readonly import detached

        described, rows = engine().store.select_rows(query, params)
        return detached(duckdb, described, rows)

    def table(self, status: str | None = None, task: str | None = None, tag: str | None = None,
              limit: int = 25, id: str | None = None) -> Any:  # fmt: skip
        """The interactive run table widget (filter, sort, page, cancel/replay, open).
        ``task`` and ``tag`` match by substring, ``id`` by prefix."""
        return display.run_table(status=status, task=task, tag=tag, limit=limit, id=id)

    def subscribe(self, run_id: str) -> Iterator[Run]:
        """Yield a snapshot now and at every change of the run, ending when it is final."""
        return self._subscribe(control.check_run_id(run_id))  # a bad id fails at the call

    def _subscribe(self, run_id: str) -> Iterator[Run]:
        eng = engine()
        eng.require_run(run_id)
        changes: queue_mod.SimpleQueue[Run] = queue_mod.SimpleQueue()
        first = block(eng.call("subscribe", run_id, changes.put))
        if first is None:
            yield self.retrieve(run_id)
            return
        try:
            current: Run = first
            yield current
            while not current.is_final:
                try:
                    current = changes.get(timeout=_POLL_S)
                except queue_mod.Empty:
                    eng.check()  # the server is gone: say so rather than wait forever
                    continue
                yield current
        finally:
            if not eng.closed:
                eng.call("unsubscribe", run_id, changes.put)

    def asubscribe(self, run_id: str) -> AsyncIterator[Run]:
        """The async twin of ``subscribe``."""
        return self._asubscribe(control.check_run_id(run_id))  # a bad id fails at the call

    async def _asubscribe(self, run_id: str) -> AsyncIterator[Run]:
        import asyncio  # about 35 ms to import: only for async callers

        eng = engine()
        loop = asyncio.get_running_loop()
        changes: asyncio.Queue[Run] = asyncio.Queue()

        def put(snapshot: Run) -> None:
            loop.call_soon_threadsafe(changes.put_nowait, snapshot)

        first = await asyncio.wrap_future(eng.call("subscribe", run_id, put))
        if first is None:
            yield await loop.run_in_executor(None, self.retrieve, run_id)
            return
        try:
            current: Run = first
            yield current
            while not current.is_final:
                try:
                    current = await asyncio.wait_for(changes.get(), _POLL_S)
                except asyncio.TimeoutError:
                    eng.check()
                    continue
                yield current
        finally:
            if not eng.closed:
                eng.call("unsubscribe", run_id, put)

    def __repr__(self) -> str:
        return "<nbtasks.runs>"


runs = Runs()
