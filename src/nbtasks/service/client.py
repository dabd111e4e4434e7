"""The client side: a connection to a store's server, started if none runs.

``connect(config)`` returns a ``RemoteEngine``: ``call(op, *args)`` sends a request and
returns a future of its reply. Listeners (``subscribe``, ``watch``) and the future a
trigger-and-wait resolves travel as numbers; the server's pushes come back to them on a
thread of their own, so a listener may itself make calls. When the server goes away,
every pending call fails at once with ``ServerLostError``; the next ``connect`` starts a
new server.

Finding and starting a server is ``starting.py``'s.
"""

from __future__ import annotations

import concurrent.futures as cf
import itertools
import os
import queue
import socket
import threading
from collections.abc import Callable
from typing import Any

from nbtasks.core.errors import NbtasksError
from nbtasks.service import finals, wire
from nbtasks.service.places import Place, lock_holder, place_of, places_of
from nbtasks.service.settings import Config
from nbtasks.service.starting import connected_any, start_server
from nbtasks.store.files import make_store_folder


class ServerLostError(NbtasksError):
    """The connection to the store's server broke: the server stopped or was killed."""


class ServerVersionError(NbtasksError):
    """The store's server runs other nbtasks code than this process."""


class RemoteStore:
    """The store's reads and writes that clients make, done by the server."""

    def __init__(self, engine: RemoteEngine) -> None:
        self._engine = engine

    def query(self, sql: str, params: Any = ()) -> list[tuple[Any, ...]]:
        rows: list[tuple[Any, ...]] = self._engine.request("query", sql, list(params))
        return rows

    def list_runs(self, where: str, params: list[Any], tests: list[Any],
                  limit: int) -> list[tuple[Any, ...]]:  # fmt: skip
        rows: list[tuple[Any, ...]] = self._engine.request("list_runs", where, params, tests, limit)
        return rows

    def select_rows(self, query: str, params: Any = None) -> Any:
        return self._engine.request("select", query, list(params) if params else None)

    def put_payloads(self, items: list[tuple[str, bytes]]) -> None:
        self._engine.request("put_payloads", items)


class RemoteEngine:
    """One connection to a store's server."""

    def __init__(self, sock: socket.socket, place: Place, max_payload: tuple[int, str],
                 name: str) -> None:  # fmt: skip
        self.sock = sock
        self.name = name  # as this client introduced itself: what its runs record as origin
        self.place = place
        self.store_path = place.store
        self.max_payload = max_payload
        self.store = RemoteStore(self)
        self.info: dict[str, Any] = {}
        self.closed = False
        self.lost: str | None = None  # why the connection broke
        self.farewell: str | None = None  # the server said it stops (not a crash)
        self.on_lost: Callable[[RemoteEngine], None] | None = None  # after a crash
        self._send_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._pending: dict[int, cf.Future[Any]] = {}
        self._finals: dict[int, cf.Future[Any]] = {}
        self._settled: dict[int, list[Any]] = {}  # a wait's final snapshots, as they come
        self._callbacks: dict[int, Callable[..., None]] = {}
        self._listening: dict[tuple[str, Any], int] = {}  # (run id, listener) -> number
        self._pushes: queue.SimpleQueue[tuple[Callable[..., None], tuple[Any, ...]] | None] = (
            queue.SimpleQueue()
        )
        threading.Thread(target=self._read, name="nbtasks-client", daemon=True).start()
        threading.Thread(target=self._run_pushes, name="nbtasks-listeners", daemon=True).start()

    # -- calls -------------------------------------------------------------------------

    def call(self, op: str, *args: Any) -> cf.Future[Any]:
        """Send a request; its reply resolves the returned future."""
        if op == "submit" and len(args) == 2 and args[1] is not None:
            specs, final = args
            token = next(self._ids)
            self._finals[token] = final
            self._settled[token] = [None] * len(specs)  # sent as the runs end
            args = (specs, token)
        elif op in ("subscribe", "watch"):
            target, listener = args
            number = next(self._ids)
            self._callbacks[number] = listener
            if op == "subscribe":
                self._listening[(target, listener)] = number
            args = (target, number)
        elif op == "unsubscribe":
            run_id, listener = args
            number_or_none = self._listening.pop((run_id, listener), None)
            self._callbacks.pop(number_or_none or 0, None)
            args = (number_or_none,)
        fut: cf.Future[Any] = cf.Future()
        request_id = next(self._ids)
        self._pending[request_id] = fut
        try:
            data = wire.encode((request_id, op, args))
        except Exception:
            self._pending.pop(request_id, None)
            raise
        if self.closed:
            self._pending.pop(request_id, None)
            raise self._lost_error()
        try:
            with self._send_lock:
                self.sock.sendall(data)
        except OSError as exc:
            self._lose(f"sending failed ({exc})")
        return fut

    def request(self, op: str, *args: Any) -> Any:
        """``call`` and wait for the reply."""
        return self.call(op, *args).result()

    def require_run(self, run_id: str) -> None:
        self.request("require_runs", [run_id])

    # -- the reading thread ------------------------------------------------------------

    def _read(self) -> None:
        frames = wire.Frames()
        reason = "the server closed the connection"
        try:
            while True:
                messages = wire.recv_into(self.sock, frames)
                if messages is None:
                    break
                for message in messages:
                    self._on_message(message)
        except OSError as exc:
            reason = f"the connection broke ({exc})"
        self._lose(reason)

    def _on_message(self, message: tuple[Any, ...]) -> None:
        request_id, a, b = message
        if request_id != wire.PUSH:
            fut = self._pending.pop(request_id, None)
            if fut is not None and not fut.done():
                fut.set_result(b) if a else fut.set_exception(b)
            return
        if a == "bye":
            (self.farewell,) = b
            return
        if a == "settled":
            token, data = b
            settled = self._settled.get(token)
            if settled is not None:
                for index, snapshot in finals.unpack(data):
                    settled[index] = snapshot
            return
        if a == "final":
            token, ok, value = b
            final = self._finals.pop(token, None)
            settled = self._settled.pop(token, None)
            if settled is not None and ok:
                for index, snapshot in finals.snapshots(value):
                    settled[index] = snapshot
                value = settled
            if final is not None and not final.done():
                final.set_result(value) if ok else final.set_exception(value)
            return
        number, *data = b
        callback = self._callbacks.get(number)
        if callback is not None:
            self._pushes.put((callback, tuple(data)))

    def _run_pushes(self) -> None:
        while True:
            item = self._pushes.get()
            if item is None:
                return
            callback, data = item
            try:
                callback(*data)
            except Exception:  # a listener's failure is its own
                pass

    def check(self) -> None:
        """Raise ``ServerLostError`` if the connection broke."""
        if self.closed:
            raise self._lost_error()

    def _lost_error(self) -> ServerLostError:
        pid = self.info.get("pid", "?")
        return ServerLostError(
            f"the nbtasks server of store {self.store_path!r} (pid {pid}) is gone: "
            f"{self.lost}. The next call starts a new server; runs it was executing end "
            "INTERRUPTED"
        )

    def _lose(self, reason: str) -> None:
        if self.closed:
            return
        self.lost = reason
        self.closed = True
        error = self._lost_error()
        for table in (self._pending, self._finals):
            while table:
                _, fut = table.popitem()
                if not fut.done():
                    fut.set_exception(error)
        self._settled.clear()
        self._pushes.put(None)
        try:
            self.sock.close()
        except OSError:
            pass
        if self.farewell is None and self.on_lost is not None:
            self.on_lost(self)

    def close(self) -> None:
        """Disconnect; the server and its runs go on."""
        self.on_lost = None
        if self.closed:
            return
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._lose("this process disconnected")


# -- connecting and starting --------------------------------------------------------------


def connect(config: Config, name: str, start: bool = True) -> RemoteEngine:
    """A connection to the server of ``config.store``, started with ``config`` if none
    runs (unless not ``start``: then ``NbtasksError``)."""
    if start:
        make_store_folder(os.path.dirname(config.store))
    place = place_of(config.store)
    sock = connected_any(config.store)
    if sock is None:
        if not start:
            raise NbtasksError(f"no nbtasks server runs for store {place.store!r}")
        sock = start_server(place, config)
    engine = RemoteEngine(sock, place, config.max_payload, name)
    try:
        info = engine.request("hello", {"pid": os.getpid(), "name": name, "build": wire.build()})
    except ServerLostError as exc:
        raise NbtasksError(f"the nbtasks server of store {place.store!r} refused: {exc}") from None
    engine.info = info
    if info["store"] != place.store:  # a socket name's hash shared by two stores
        engine.close()
        raise NbtasksError(f"the server reached for store {place.store!r} serves {info['store']!r}")
    if info["build"] != wire.build():
        engine.close()
        raise ServerVersionError(
            f"the nbtasks server of store {place.store!r} (pid {info['pid']}) runs nbtasks "
            f"{info['build']}, this process {wire.build()}: stop it with `nbtasks server "
            f"stop --store {place.store}` (its executing runs end INTERRUPTED) or let its "
            "runs finish; the next call then starts a server of this version"
        )
    return engine


def server_pid(store: str) -> int | None:
    """The pid of the live server of ``store``, if one holds its lock."""
    for place in places_of(store):
        pid = lock_holder(place)
        if pid is not None:
            return pid or None
    return None
