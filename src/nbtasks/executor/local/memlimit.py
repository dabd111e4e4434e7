"""A memory backstop inside the worker, enforced by the operating system: a soft
``RLIMIT_DATA`` makes an over-large allocation fail with ``MemoryError`` at once, even when
the allocating code holds the GIL."""

from __future__ import annotations

import resource
from types import TracebackType

from nbtasks.executor.local.proctree import vm_data

__all__ = ["DataLimit", "limit_data"]


class DataLimit:
    """A soft ``RLIMIT_DATA`` in force; call it (or leave its ``with`` block) to put back
    the soft limit that was there before. Restoring twice is harmless."""

    def __init__(self, limit: int, previous_soft: int) -> None:
        self.limit = limit  # the soft limit set, in bytes
        self.previous_soft = previous_soft
        self._restored = False

    def restore(self) -> None:
        if self._restored:
            return
        _soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
        soft = self.previous_soft
        if hard != resource.RLIM_INFINITY and (soft == resource.RLIM_INFINITY or soft > hard):
            soft = hard  # the hard limit was lowered meanwhile
        resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))
        self._restored = True

    __call__ = restore

    def __enter__(self) -> DataLimit:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.restore()


def limit_data(extra_bytes: int) -> DataLimit:
    """Let the calling process's data segment grow by at most ``extra_bytes`` from now:
    set the soft ``RLIMIT_DATA`` to the current :func:`vm_data` plus ``extra_bytes``
    (never above the hard limit or an already tighter soft limit; the hard limit is kept).
    Returns a :class:`DataLimit`; call it to restore the previous soft limit.

    The kernel then refuses any private writable mapping (``malloc``'s ``mmap`` of a large
    block, heap growth via ``brk``) past the limit, so Python raises ``MemoryError`` at the
    allocation, with no watcher thread involved. Caveats:

    * It limits *reserved* memory, not resident memory: memory reserved but never touched
      counts too, and memory freed by ``free()`` only counts down once returned to the OS.
    * A new thread's stack (8 MiB by default) counts: under a tight limit
      ``Thread.start()`` raises ``RuntimeError("can't start new thread")``.
    * Shared mappings (``mmap`` with ``MAP_SHARED``, ``multiprocessing`` shared memory)
      and file-backed read-only mappings do not count.
    * It is per process and inherited by children (forked or exec'd), each of which is
      then limited to this absolute size of its *own* data segment.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    limit = vm_data() + max(0, extra_bytes)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    if soft != resource.RLIM_INFINITY:
        limit = min(limit, soft)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))
    return DataLimit(limit, soft)
