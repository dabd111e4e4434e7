"""Runs coming in: creation (idempotency keys, delays, TTL, waiting for deploy), the
timers that move them on, task versions, deploys, and runs adopted from an earlier kernel.

A mixin of ``Engine``; every method runs on the engine's loop thread.
"""

from __future__ import annotations

import concurrent.futures as cf
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from nbtasks.core.durations import utcnow
from nbtasks.core.errors import UnknownRunError
from nbtasks.core.status import FINAL, KEY_HOLDING, RunStatus
from nbtasks.engine.state import BatchWait, RunSpec, RunState, TaskVersion, error_json

if TYPE_CHECKING:
    from nbtasks.engine.engine import EngineBase as _Base
else:
    _Base = object

S = RunStatus


class IntakeMixin(_Base):
    # -- creating runs -----------------------------------------------------------------

    def submit(self, fut: cf.Future[Any], specs: list[RunSpec],
               final: cf.Future[Any] | None = None,
               each: Callable[[int, RunState], None] | None = None) -> None:  # fmt: skip
        """Create runs; resolve ``fut`` with ``(run_id, is_cached)`` per spec once they are
        committed, and ``final`` (if given) with their final snapshots, in order (with
        ``each``: ``each(i, run)`` is given each final run instead, ``_wait_all``)."""
        self.executor.check()  # e.g. a cluster that cannot be reached: no run is made
        if not self.executor.accepts_resources:
            for spec in specs:
                wanted = spec.resources or (spec.task.resources if spec.task else None)
                if wanted:
                    raise ValueError(
                        f"resources={wanted!r} is not valid here: the local executor runs "
                        "every attempt on this machine; use nbtasks.DaskExecutor to place "
                        "runs on workers that have them"
                    )
        if final is None:
            created = self._create(specs)
            self._ack_after_commit(fut, created)
            return
        # A blocking wait needs only final states to be durable: new runs are not hurried
        # for it (those that start at once are, with their starts: dispatch.py, I1).
        created = self._create(specs)
        live = [self.runs[i] for i, cached in created if not cached and i in self.runs]
        if len(live) > 1:  # their final states commit together when the last one is final
            group = BatchWait(sum(1 for r in live if r.status not in FINAL))
            for run in live:
                run.batch_wait = group
        self._wait_all(final, [self._live_or_none(i) for i, _ in created], each=each)
        fut.set_result(created)

    def _create(self, specs: list[RunSpec], parent: RunState | None = None
                ) -> list[tuple[str, bool]]:  # fmt: skip
        """Make runs from specs (idempotency keys first); return (id, is_cached) each."""
        now = utcnow()
        out: list[tuple[str, bool]] = []
        for spec in specs:
            if spec.idempotency_key is not None:
                existing = self._find_key(spec.task_id, spec.idempotency_key, now)
                if existing is not None:
                    out.append((existing, True))
                    continue
            run = self._new_run(spec, now, parent)
            out.append((run.id, False))
            if self.dispatch.idle:  # idle workers take the first runs while the rest are made
                self._pump()
        self.dispatch.spawn_failures = 0  # a new trigger tries to start workers again
        self._top_up()
        self._pump()
        return out

    def _find_key(self, task_id: str, key: str, now: Any) -> str | None:
        live = self._keys.get((task_id, key))
        if live is not None:
            return live
        rows = self.store.query(
            "SELECT id, status, idempotency_expires_at FROM runs "
            "WHERE task_id = ? AND idempotency_key = ? ORDER BY id DESC LIMIT 1",
            [task_id, key],
        )
        if rows:
            run_id, status, expires = rows[0]
            if RunStatus(status) in KEY_HOLDING and (expires is None or expires > now):
                return str(run_id)
        return None

    def _new_run(self, spec: RunSpec, now: Any, parent: RunState | None) -> RunState:
        tv = spec.task
        delayed = spec.delay_until is not None and spec.delay_until > now
        status = S.DELAYED if delayed else S.QUEUED if tv is not None else S.WAITING_FOR_DEPLOY
        run = RunState(
            id=spec.id,
            task_id=spec.task_id,
            version=tv.version if tv else None,
            status=status,
            queue=spec.queue,
            payload=spec.payload,
            payload_preview=spec.payload_preview,
            created_at=spec.created_at,
            updated_at=now,
            task=tv,
            delay_until=spec.delay_until,
            ttl_s=spec.ttl_s,
            idempotency_key=spec.idempotency_key,
            tags=spec.tags,
            trigger_metadata=spec.metadata,
            metadata=dict(spec.metadata or {}),
            max_attempts=spec.max_attempts or 1,
            max_duration_s=spec.max_duration_s,
            batch_id=spec.batch_id,
            replayed_from=spec.replayed_from,
            owner=self.owner,
            concurrency_limit=spec.concurrency_limit,
            payload_stored=spec.payload_stored,
            resources=spec.resources,
            origin=spec.origin,
        )
        if spec.idempotency_key is not None:
            ttl = spec.idempotency_key_ttl_s
            run.idempotency_expires_at = None if ttl is None else now + timedelta(seconds=ttl)
            self._keys[(run.task_id, spec.idempotency_key)] = run.id
        if parent is not None:
            run.parent_id, run.root_id, run.depth = parent.id, parent.root_id, parent.depth + 1
            run.origin = parent.origin  # the root's: a worker is no origin of its own
        else:
            run.root_id = run.id
        if tv is not None:
            self._apply_task_defaults(run, tv, spec)
        self.runs[run.id] = run
        self.store.stage_run(run.row())
        self._event(run)
        self._enter(run)
        return run

    def _apply_task_defaults(self, run: RunState, tv: TaskVersion, spec: RunSpec | None) -> None:
        run.task, run.version = tv, tv.version
        if spec is None or spec.max_attempts is None:
            run.max_attempts = tv.retry.max_attempts if tv.retry else 1
        if run.max_duration_s is None:
            run.max_duration_s = tv.max_duration_s
        if run.ttl_s is None:
            run.ttl_s = tv.ttl_s
        if run.resources is None:
            run.resources = tv.resources
        if run.queue is None and tv.queue is not None:
            run.queue, run.concurrency_limit = tv.queue, tv.concurrency_limit
        self.scheduler.set_limit(run.queue, run.concurrency_limit)

    def _enter(self, run: RunState) -> None:
        """Start the timers and queues of a run that just reached its current status."""
        if run.task is None:
            self.waiting_tasks.add(run.task_id)
        if run.status is S.DELAYED:
            left = (run.delay_until - utcnow()).total_seconds() if run.delay_until else 0
            run.timer = self.loop.call_later(max(0.0, left), self._due, run)
        elif run.status is S.QUEUED:
            if run.queued_at is None:
                run.queued_at = utcnow()
            if run.ttl_s is not None and run.attempt_count == 0 and run.ttl_timer is None:
                left = run.ttl_s - (utcnow() - run.queued_at).total_seconds()
                run.ttl_timer = self.loop.call_later(max(0.0, left), self._expire, run)
            self.scheduler.push(run)

    def _due(self, run: RunState) -> None:
        run.timer = None
        if run.status is S.DELAYED:
            new = S.QUEUED if run.task is not None else S.WAITING_FOR_DEPLOY
            self._transition(run, new, queued_at=utcnow() if new is S.QUEUED else None)
            self._enter(run)
            self._top_up()
            self._pump()

    def _expire(self, run: RunState) -> None:
        run.ttl_timer = None
        if run.status is S.QUEUED and run.attempt_count == 0:
            now = utcnow()
            text = error_json(S.EXPIRED, "Expired", f"the run's ttl of {run.ttl_s:g}s passed "
                              "while it was still queued")  # fmt: skip
            self._transition(run, S.EXPIRED, error=text, expired_at=now)

    def reschedule(self, fut: cf.Future[Any], run_id: str, delay_until: Any) -> None:
        run = self.runs.get(run_id)
        if run is None or run.status is not S.DELAYED:
            status = run.status.value if run else self._stored_status(run_id)
            raise ValueError(f"run {run_id} is {status}: only a DELAYED run can be rescheduled")
        if run.timer is not None:
            run.timer.cancel()
        self._update(run, "rescheduled", delay_until=delay_until)
        self._enter(run)
        self._ack_after_commit(fut, run.snapshot())

    def _stored_status(self, run_id: str) -> str:
        rows = self.store.query("SELECT status FROM runs WHERE id = ?", [run_id])
        if not rows:
            raise UnknownRunError(run_id)
        return str(rows[0][0])

    # -- versions and deploys -----------------------------------------------------------

    def register_version(self, fut: cf.Future[Any], *args: Any) -> None:
        fut.set_result(self.version_for(*args))

    def version_for(self, task_id: str, code_hash: str, source: str, fn_bytes: bytes,
                    options: str) -> str:  # fmt: skip
        """The version of this definition of a task, created (and staged) if new."""
        key = (task_id, code_hash)
        if key in self.versions:
            return self.versions[key]
        rows = self.store.query(
            "SELECT version, code_hash FROM task_versions WHERE task_id = ?", [task_id]
        )
        known: dict[str, str] = {h: v for v, h in rows}
        if code_hash in known:
            version = known[code_hash]
        else:
            today = utcnow().strftime("%Y%m%d")
            taken = [int(v.split(".")[1]) for v, _ in rows if v.startswith(today + ".")]
            version = f"{today}.{max(taken, default=0) + 1}"
            self.store.stage_version(
                (task_id, version, code_hash, source, fn_bytes, options, utcnow())
            )
        self.versions[key] = version
        return version

    def deploy(self, fut: cf.Future[Any], tv: TaskVersion) -> None:
        """A task was defined: start its runs that were waiting for it."""
        self.waiting_tasks.discard(tv.task_id)
        started = 0
        for run in list(self.runs.values()):
            if run.task_id != tv.task_id:
                continue
            if run.status is S.WAITING_FOR_DEPLOY:
                self._apply_task_defaults(run, tv, None)
                self._transition(run, S.QUEUED, "deployed", version=tv.version,
                                 queued_at=utcnow())  # fmt: skip
                self._enter(run)
                started += 1
            elif run.status is S.DELAYED and run.task is None:
                self._apply_task_defaults(run, tv, None)
                self._update(run, "deployed", version=tv.version)
        self._top_up()
        self._pump()
        fut.set_result(started)

    def _adopt(self, rows: list[RunState]) -> None:
        """Take over DELAYED and WAITING_FOR_DEPLOY runs left by an earlier kernel."""
        for run in rows:
            run.owner = self.owner
            self.runs[run.id] = run
            self._update(run, "adopted")
            self._enter(run)
