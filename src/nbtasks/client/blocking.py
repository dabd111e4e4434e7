"""Waiting for the engine's futures: interruptible, and in a notebook with widget messages
handled meanwhile; and ``run_in_thread`` for async callers of blocking calls."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from nbtasks.core import display
from nbtasks.core.errors import interrupted

if TYPE_CHECKING:
    import concurrent.futures as cf

T = TypeVar("T")
_POLL_S = 0.05  # a blocking wait wakes this often, to stay interruptible
_PUMP_POLL_S = 0.02  # ... and this often in a notebook, to handle widget messages


def block(fut: cf.Future[T], timeout: float | None = None) -> T:
    """Wait for ``fut``. Ctrl-C (or the notebook's stop button) raises a
    ``KeyboardInterrupt`` that a notebook shows in one line, not through the frames of
    ``concurrent.futures`` and ``threading``.

    In a notebook, widget messages keep being handled while the cell waits (the UI's
    pump, see ``core.display``)."""
    if fut.done():
        return fut.result()
    from concurrent.futures import TimeoutError as WaitTimeout  # loaded with the engine

    deadline = None if timeout is None else time.monotonic() + timeout
    pump = display.start_pump()
    poll = _POLL_S if pump is None else _PUMP_POLL_S
    try:
        while True:
            left = poll if deadline is None else min(poll, deadline - time.monotonic())
            if left <= 0:
                raise TimeoutError(f"the wait did not finish within {timeout:g}s")
            try:
                return fut.result(timeout=left)
            except WaitTimeout:
                if pump is not None:
                    pump()
    except KeyboardInterrupt:
        raise interrupted("the wait was interrupted") from None
    finally:
        if pump is not None:
            pump.release()


async def run_in_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    import asyncio  # about 35 ms to import: only for async callers

    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, functools.partial(fn, *args, **kwargs))
