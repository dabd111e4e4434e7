"""The kernel's side of the Dask executor: each nbtasks worker is a runner (``runner.py``),
a long-lived Dask task that hosts a local worker process on a Dask worker's machine.

The engine decides everything (what runs, where, when, queues and concurrency limits across
the whole cluster, retries, idempotency, delays, TTL); Dask only places runners on its
workers. Requests go to a runner as one message per step of the engine's loop, sent in
order from the Dask client's loop; events come back on one topic, and are handed to the
engine's loop.

A runner is lost when its Dask future ends without the runner saying so itself: its Dask
worker died (``KilledWorker``: the scheduler's ``allowed-failures`` is set to 0 so that Dask
never runs a runner again behind the engine's back), or the scheduler went away. Either way
the engine hears ``WorkerLost`` with the cause, and the attempt ends CRASHED by the usual
rules. A runner that shows up a second time (a scheduler that re-ran it anyway) is lost
too, and told to stop.

The ``DaskPool`` class is split by what its code does, each part a mixin: ``link`` keeps
the link to the Dask scheduler (the client's connection, the subscription to the runners'
events, connecting and subscribing again after the scheduler went away, the cluster's
workers and resources for placing runners); ``protocol`` speaks to the runners (starting
them as Dask futures, requests as topic messages, big payloads and outputs as Dask data,
their events back in order, a lost runner). This module holds the state they share
(``PoolBase``), opening and closing.
"""

from __future__ import annotations

import itertools
import os
import sys
from typing import TYPE_CHECKING, Any

from nbtasks.executor import base as E
from nbtasks.executor.dask.link import LinkMixin
from nbtasks.executor.dask.protocol import ProtocolMixin, Runner

if TYPE_CHECKING:
    import asyncio


class PoolBase:
    """The state of a pool, shared by its parts (see the module docstring)."""

    if TYPE_CHECKING:  # provided by the mixins below

        def _connected(self) -> bool: ...
        def _watch(self) -> None: ...
        def _plain_workers(self) -> list[str] | None: ...
        def _submit(self, runner: Runner) -> None: ...
        def _deliver(self, wid: E.WorkerId, blob: bytes) -> None: ...

    def __init__(self, client: Any, owned: bool, preload: tuple[str, ...] = (),
                 size_hint: int = 1) -> None:  # fmt: skip
        self.client = client
        self.owned = owned  # made from an address: closed with the pool
        self.address = str(client.scheduler.address)
        self.preload = preload
        self.path, self.cwd = list(sys.path), os.getcwd()
        self.size_hint = size_hint
        self.session = os.urandom(6).hex()
        self.runners: dict[E.WorkerId, Runner] = {}
        self._ids = itertools.count(1)
        self._flushing = False
        self._closed = False
        self._watching = False  # connecting again in a thread
        self.connection: Any = None  # the scheduler comm the subscription is on
        # the cluster's workers as last read (address -> info), refreshed on the client's loop
        self.cluster: dict[str, Any] = dict(client.scheduler_info()["workers"])
        # the client loop's: messages to send, and the big payloads held until read
        self._wire: dict[E.WorkerId, list[tuple[bytes, dict[str, bytes], str | None]]] = {}
        self._scattered: dict[str, Any] = {}
        self._sending: set[E.WorkerId] = set()
        self.loop: asyncio.AbstractEventLoop
        self.sink: E.Sink


class DaskPool(LinkMixin, ProtocolMixin, PoolBase):
    """Runs attempts in runners on a Dask cluster (one per engine)."""

    # reported by the local worker on the Dask worker's machine (the pid is of that machine)
    capabilities = frozenset({"pid", "exit_code", "signal"})
    accepts_resources = True  # Dask places a runner on a worker with its resources
    # Through the scheduler both ways: a few ms, but stalls of 35-180 ms on a loaded machine
    # left runners idle with 20 ms of runs ahead of them (W3: a gap of 0.03-0.1 s per
    # worker); with 50 ms, their gaps between attempts add up as a local worker's do.
    round_trip_s = 0.05

    def open(self, loop: asyncio.AbstractEventLoop, sink: E.Sink) -> list[E.WorkerId]:
        self.loop, self.sink = loop, sink
        if self.client.status != "running":
            raise self._unreachable()
        self._subscribe()
        self.client.loop.add_callback(self._read_workers)
        return []

    def close(self) -> None:
        """Stop every runner (each kills its worker's tree) and let go of their futures."""
        runners = list(self.runners.values())
        for runner in runners:
            runner.outbox = [("stop",)]
            self._flush_one(runner)
        self._closed = True
        self.runners.clear()
        try:
            self.client.cancel([r.future for r in runners if r.future is not None])
        except Exception:
            pass
        if self.owned:
            try:
                self.client.close(timeout=2)
            except Exception:
                pass
