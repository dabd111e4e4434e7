"""Which queued run starts next: FIFO per queue, oldest head first, within queue limits.

A run holds a slot of its queue only while it executes (a FROZEN run gives it back).
Lazy deletion: runs that left QUEUED (canceled, expired) are skipped when they surface.
"""

from __future__ import annotations

from collections import Counter, deque

from nbtasks.core.status import RunStatus
from nbtasks.engine.state import RunState


class Scheduler:
    def __init__(self) -> None:
        self._ready: dict[str | None, deque[RunState]] = {}
        self._limits: dict[str, int | None] = {}
        self.executing: Counter[str | None] = Counter()

    def set_limit(self, queue: str | None, limit: int | None) -> None:
        """The latest definition of a queue sets its limit (None: unlimited)."""
        if queue is not None:
            self._limits[queue] = limit

    def push(self, run: RunState) -> None:
        self._ready.setdefault(run.queue, deque()).append(run)

    def has_room(self, queue: str | None) -> bool:
        limit = self._limits.get(queue) if queue is not None else None
        return limit is None or self.executing[queue] < limit

    def push_front(self, run: RunState) -> None:
        """Put back a run that was taken but did not start: it keeps its turn."""
        self._ready.setdefault(run.queue, deque()).appendleft(run)

    def pop(self, unlimited_only: bool = False) -> RunState | None:
        """The oldest queued run whose queue has room (``unlimited_only``: whose queue has
        no limit at all), or None."""
        best: deque[RunState] | None = None
        for queue, ready in self._ready.items():
            while ready and (ready[0].status is not RunStatus.QUEUED or ready[0].prefetched):
                ready.popleft()
            if unlimited_only and queue is not None and self._limits.get(queue) is not None:
                continue
            if ready and self.has_room(queue) and (best is None or ready[0].id < best[0].id):
                best = ready
        return best.popleft() if best is not None else None

    def started(self, run: RunState) -> None:
        self.executing[run.queue] += 1

    def stopped(self, queue: str | None) -> None:
        """A run of ``queue`` stopped executing (its body is gone, or it is FROZEN)."""
        self.executing[queue] -= 1

    def queued(self) -> list[RunState]:
        return [r for ready in self._ready.values() for r in ready if r.status is RunStatus.QUEUED]

    def clear(self) -> None:
        self._ready.clear()
