"""Runs triggered, awaited, read or canceled from inside a task.

A mixin of ``Engine``; every method runs on the engine's loop thread. Task code in a worker
sends ``("call", attempt_id, request_id, op, args)`` and blocks until the engine answers
``("reply", request_id, ok, value)``. A parent that waits on children is FROZEN: it gives
up its worker slot (a spare process takes it) and its queue slot, so nested waits never
deadlock. It is EXECUTING again only once its children are final and both a worker slot and
a slot in its queue are free.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from nbtasks.core.errors import UnknownRunError
from nbtasks.core.status import RunStatus
from nbtasks.engine.payloads import BIG_PAYLOAD, check_sizes, store_big
from nbtasks.engine.state import AttemptState, RunSpec, RunState
from nbtasks.executor.base import WorkerId

if TYPE_CHECKING:
    from nbtasks.core.models import Run
    from nbtasks.engine.engine import EngineBase as _Base
else:
    _Base = object

S = RunStatus


class NestingMixin(_Base):
    def _on_call(self, worker: WorkerId, attempt: AttemptState, request_id: int, op: str,
                 args: tuple[Any, ...]) -> None:  # fmt: skip
        run = self.runs[attempt.run_id]

        def reply(ok: bool, value: Any) -> None:
            self.executor.reply(worker, request_id, ok, value)

        try:
            if op == "submit":
                specs, wait = args
                check_sizes(specs, *self.max_payload)
                if any(len(spec.payload) > BIG_PAYLOAD for spec in specs):
                    # written by the store thread; the loop goes on meanwhile
                    stored = self.loop.run_in_executor(None, store_big, self.store, specs)
                    stored.add_done_callback(
                        lambda done: (
                            self._submit_from_task(run, attempt, specs, wait, reply)
                            if done.exception() is None
                            else reply(False, done.exception())
                        )
                    )
                else:
                    self._submit_from_task(run, attempt, specs, wait, reply)
            elif op == "wait":
                (ids,) = args
                for run_id in ids:
                    self.require_run(run_id)
                self._freeze(run, attempt, list(ids), reply)
            elif op == "retrieve":
                (run_id,) = args
                reply(True, self._run_now(run_id))
            elif op == "cancel":
                run_id, *cause = args  # a worker of an older nbtasks sends no cause
                target = self.runs.get(run_id)
                if target is not None:
                    self._cancel(target, *cause)
                    self.when_durable(lambda e: reply(e is None, e))
                else:
                    self.require_run(run_id)
                    reply(True, None)
            else:
                raise ValueError(f"unknown call {op!r} from a task")
        except Exception as exc:
            reply(False, exc)

    def _submit_from_task(self, run: RunState, attempt: AttemptState, specs: list[RunSpec],
                          wait: bool, reply: Callable[[bool, Any], None]) -> None:  # fmt: skip
        """Create the runs a task triggered; reply once they are durable, or (``wait``)
        freeze the parent until they are final."""
        try:
            for spec in specs:
                self._resolve_task(spec)
            created = self._create(specs, parent=run)
            if wait:
                self._freeze(run, attempt, [run_id for run_id, _ in created], reply)
            else:
                self.when_durable(lambda e: reply(e is None, e or created))
        except Exception as exc:
            reply(False, exc)

    def _resolve_task(self, spec: RunSpec) -> None:
        """Prefer the kernel's own definition of a task; else the one the worker sent."""
        own = self.resolve_task(spec.task_id)
        if own is not None:
            spec.task = own
        elif spec.task is not None:
            tv = spec.task
            version = self.version_for(tv.task_id, tv.fn_key, "", tv.fn_bytes, "{}")
            spec.task = dataclasses.replace(tv, version=version)

    def _run_now(self, run_id: str) -> Run:
        live = self.runs.get(run_id)
        if live is not None:
            return live.snapshot()
        from nbtasks.core.models import Attempt, run_from_row
        from nbtasks.store.schema import ATTEMPT_COLUMNS, RUN_SELECT

        rows = self.store.query(f"SELECT {RUN_SELECT} FROM runs WHERE id = ?",
                                [run_id])  # fmt: skip
        if not rows:
            raise UnknownRunError(run_id)
        attempts = self.store.query(
            f"SELECT {', '.join(ATTEMPT_COLUMNS)} FROM attempts WHERE run_id = ? ORDER BY number",
            [run_id],
        )
        return run_from_row(rows[0], None, tuple(Attempt.from_row(a) for a in attempts))

    def _freeze(self, run: RunState, attempt: AttemptState, ids: list[str],
                reply: Any) -> None:  # fmt: skip
        self._transition(run, S.FROZEN, f"waiting on {len(ids)} run(s)")
        self.release_slot(attempt)
        self.dispatch.freeze(attempt)  # its worker is blocked in this task: it gives its
        # capacity up, and what it was sent ahead goes back
        done: cf.Future[list[Run | None]] = cf.Future()

        def thawed(fut: cf.Future[list[Run | None]]) -> None:
            error = fut.exception()
            if error is not None:
                run.resume = (reply, False, error)
            else:
                snapshots = [s or self._run_now(i) for i, s in zip(ids, fut.result(), strict=True)]
                run.resume = (reply, True, snapshots)
            self._resumable.append(run)
            self._pump()

        done.add_done_callback(thawed)
        self._wait_all(done, [self._live_or_none(i) for i in ids])
        self._top_up()
        self._pump()

    def resume_ready(self) -> None:
        """Give thawed runs their slots back, oldest first, as slots allow."""
        for run in list(self._resumable):
            if run.status is not S.FROZEN:
                self._resumable.remove(run)  # canceled or timed out meanwhile
                continue
            if not self.dispatch.has_capacity() or not self.scheduler.has_room(run.queue):
                continue
            self._resumable.remove(run)
            attempt = run.attempt
            assert attempt is not None
            self._take_slot(run, attempt)
            self.dispatch.thaw(attempt)
            self._transition(run, S.EXECUTING, "children done")
            reply, ok, value = run.resume
            run.resume = None
            reply(ok, value)
        self.dispatch.retire_extra()
