"""The engine's event loop, run forever by a daemon thread of the kernel.

A plain ``asyncio`` loop on a thread: starting one costs under a millisecond, where a
blocking portal (anyio's) costs about 35 ms of imports and set-up on the way to a
notebook's first run. The engine needs no more than ``call`` to step onto the loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class LoopThread:
    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        self.ident: int = self._thread.ident  # type: ignore[assignment]

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            self.loop.close()

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the loop, wait, and return its result or raise its error."""
        if threading.get_ident() == self.ident:
            return fn(*args)
        fut: cf.Future[T] = cf.Future()

        def run() -> None:
            try:
                fut.set_result(fn(*args))
            except BaseException as exc:
                fut.set_exception(exc)

        self.loop.call_soon_threadsafe(run)
        return fut.result()

    def stop(self) -> None:
        """Stop the loop (callbacks still queued are dropped) and wait for the thread."""
        try:
            self.loop.call_soon_threadsafe(self.loop.stop)
        except RuntimeError:  # already closed
            return
        if threading.get_ident() != self.ident:
            self._thread.join()
