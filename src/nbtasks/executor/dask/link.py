"""The pool's link to the Dask scheduler: the client's connection, the subscription to the
runners' events topic (proved by a probe), subscribing again on a new connection after the
scheduler went away (and connecting anew when the pool's own client gave up), and the
cluster's workers and their resources, read on the client's loop, for placing runners.

A mixin of ``DaskPool`` (``pool.py``).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from nbtasks.core.errors import NbtasksError
from nbtasks.executor.dask.runner import PROBE, event_topic

if TYPE_CHECKING:
    from nbtasks.executor.dask.pool import PoolBase as _Base
else:
    _Base = object

SUBSCRIBE_TIMEOUT_S = 10.0
WATCH_EVERY_S = 0.25  # how often a pool whose scheduler went away tries it again
WORKERS_EVERY_S = 1.0  # how often the cluster's workers (and their resources) are read


class LinkMixin(_Base):
    # -- the connection ------------------------------------------------------------------------

    async def _read_workers(self) -> None:
        """On the Dask client's loop, while the pool is open: the cluster's workers, for
        placing runners (``room_for``, ``_plain_workers``) without a call on the engine's
        loop."""
        import asyncio

        while not self._closed:
            try:
                info = await self.client.scheduler.identity(n_workers=-1)
                self.cluster = dict(info["workers"])
            except Exception:  # away for now: the last known stays
                pass
            await asyncio.sleep(WORKERS_EVERY_S)

    def _subscribe(self) -> None:
        """Subscribe to the runners' events on the client's present connection, and wait
        until a probe comes back: from then on, nothing a runner says is missed."""
        client, loop = self.client, self.loop
        comm = client.scheduler_comm
        got = threading.Event()

        def on_event(event: tuple[float, Any]) -> None:  # on the Dask client's loop
            msg = event[1]
            if msg == PROBE:
                got.set()
            elif not self._closed:
                loop.call_soon_threadsafe(self._deliver, msg[0], msg[1])

        topic = event_topic(self.session)
        client.subscribe_topic(topic, on_event)
        waited = 0.0
        while not got.wait(0.02):
            waited += 0.02
            if waited > SUBSCRIBE_TIMEOUT_S:
                raise self._unreachable("it does not answer")
            client.log_event(topic, PROBE)
        try:  # Dask must never run a runner again by itself (it would run its attempt twice)
            client.run_on_scheduler(_no_silent_retries)
        except Exception:  # a scheduler that refuses: lost runners are seen anyway
            pass
        self.connection = comm

    def _connected(self) -> bool:
        client = self.client
        comm = client.scheduler_comm
        inner = getattr(comm, "comm", None)
        return (client.status == "running" and comm is self.connection and inner is not None
                and not inner.closed())  # fmt: skip

    def _unreachable(self, why: str = "") -> NbtasksError:
        why = why or f"the client is {self.client.status}"
        return NbtasksError(f"the Dask scheduler at {self.address} cannot be reached ({why})")

    def check(self) -> None:
        if not self._connected():
            self._watch()
            raise NbtasksError(f"{self._unreachable()}: no run was made")

    def _watch(self) -> None:
        """While the scheduler is away: connect again (a client of the pool's own is made
        anew once Dask gave up on it), subscribe again, then submit the runners the engine
        asked for meanwhile. Runs wait QUEUED until then."""
        if self._closed or self._watching:
            return
        if self._connected():
            for runner in list(self.runners.values()):
                if runner.future is None and not runner.lost:
                    self._submit(runner)
            return
        self._watching = True

        def reconnect() -> None:
            try:
                if self.owned and self.client.status in ("closing", "closed", "failed"):
                    from distributed import Client

                    client = Client(self.address, timeout=2, set_as_default=False)
                    if self._closed:  # the engine closed meanwhile: nobody would close it
                        client.close()
                        return
                    self.client = client
                    self.client.loop.add_callback(self._read_workers)
                if self.client.status == "running":
                    self._subscribe()
            except Exception:  # still away: try again in a while
                pass
            finally:
                self._watching = False
                try:
                    if not self._closed:
                        self.loop.call_soon_threadsafe(self.loop.call_later, WATCH_EVERY_S,
                                                       self._watch)  # fmt: skip
                except RuntimeError:  # the engine's loop closed meanwhile
                    pass

        threading.Thread(target=reconnect, name="nbtasks-dask-reconnect", daemon=True).start()

    # -- placing runners -----------------------------------------------------------------------

    def note_starts(self, path: str) -> bool:
        """Runners' workers are on other machines: they cannot note in a local file."""
        return False

    def boot_slots(self) -> int:
        return max(1, self.size_hint)  # runners boot on the cluster's machines, in parallel

    def _plain_workers(self) -> list[str] | None:
        """Where a runner that needs no resources goes: to Dask workers that declare none,
        while there are any, so that it never holds the thread of a worker a run that
        needs its resources waits for; else anywhere."""
        workers = self.cluster
        plain = [address for address, w in workers.items() if not w.get("resources")]
        return plain if plain and len(plain) < len(workers) else None

    def room_for(self, resources: dict[str, float]) -> int:
        """How many runners needing ``resources`` the cluster's workers hold at once, as
        the client last heard (a runner holds its resources while it lives)."""
        room = 0
        for w in self.cluster.values():
            has = w.get("resources") or {}
            room += min(int(has.get(name, 0) // amount) for name, amount in resources.items())
        return room


def _no_silent_retries(dask_scheduler: Any) -> None:
    dask_scheduler.allowed_failures = 0
