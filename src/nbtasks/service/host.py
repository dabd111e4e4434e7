"""What a server process runs: the engine of one store, and a session per client.

Connections are read on the engine's own loop, so a request reaches the engine with no
thread in between; store reads and writes that may take a while run on a small thread
pool. The server stops once it has been idle for ``idle_s`` (no client connected, no run
it must drive: only runs waiting for a deploy, which any next server takes over), on the
``stop`` op or on SIGTERM / SIGINT (``server.serve``). Stopping interrupts executing runs;
a server killed outright leaves them for the next one to settle (``engine.recovery``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import functools
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from nbtasks.core.errors import NbtasksError
from nbtasks.core.status import RunStatus
from nbtasks.service import wire
from nbtasks.service.finals import Finals
from nbtasks.service.places import Place
from nbtasks.service.settings import Config

if TYPE_CHECKING:
    from nbtasks.engine.engine import Engine
    from nbtasks.engine.state import RunSpec, TaskVersion

STOP_CAUSE = "the nbtasks server stopped"
IDLE_CHECK_S = 0.5
# Engine calls a client may make: ``engine.<op>(future, *args)``, on the engine's loop.
ENGINE_OPS = frozenset({"wait", "cancel", "snapshot", "reschedule", "register_version"})


class Session(asyncio.Protocol):
    """One connected client."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.frames = wire.Frames()
        self.transport: asyncio.Transport | None = None
        self.listeners: dict[int, tuple[str, Callable[[Any], None]]] = {}
        self.hello: dict[str, Any] = {}
        self.closed = False

    # -- transport -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is None or wire.peer_uid(sock) != os.getuid():
            transport.close()  # another user: refused before a byte is read
            self.closed = True
            return
        self.server.sessions.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.sessions.discard(self)
        self.server.last_active = time.monotonic()
        engine = self.server.engine
        for run_id, listener in self.listeners.values():
            engine.call(engine.unsubscribe, run_id, listener)
        self.listeners.clear()

    def data_received(self, data: bytes) -> None:
        try:
            messages = self.frames.feed(data)
        except Exception:  # not our protocol: drop the peer
            self.transport.close()  # type: ignore[union-attr]
            return
        for request_id, op, args in messages:
            self.server.handle(self, request_id, op, args)

    def send(self, message: Any) -> None:
        """Send from any thread (the loop's own writes directly)."""
        if self.closed:
            return
        if threading.get_ident() != self.server.loop_thread:
            self.server.engine.loop.call_soon_threadsafe(self.send, message)
            return
        try:
            data = wire.encode(message)
        except Exception as exc:  # e.g. an exception that does not pickle
            request_id = message[0]
            data = wire.encode((request_id, False, NbtasksError(f"{type(exc).__name__}: {exc}")))
        self.transport.write(data)  # type: ignore[union-attr]

    def reply(self, request_id: int, fut: cf.Future[Any]) -> None:
        error = fut.exception()
        self.send((request_id, error is None, error if error is not None else fut.result()))

    def push(self, kind: str, *data: Any) -> None:
        self.send((wire.PUSH, kind, data))


class Server:
    def __init__(self, config: Config, place: Place, sock: socket.socket,
                 launched: list[Any]) -> None:  # fmt: skip
        from nbtasks.engine.engine import Engine

        self.config = config
        self.place = place
        self.started = time.time()
        self.sessions: set[Session] = set()
        self.last_active = time.monotonic()
        self.stopping = threading.Event()
        self.latest: dict[str, TaskVersion] = {}  # the last definition clients sent, by task
        self.pool = cf.ThreadPoolExecutor(4, thread_name_prefix="nbtasks-server")
        executor = _make_executor(config, launched)
        size = config.workers or getattr(executor, "size_hint", None) or os.cpu_count() or 1
        self.engine: Engine = Engine(config.store, size, executor, config.spawn,
                                     resolve_task=self.latest.get)  # fmt: skip
        self.engine.max_payload = config.max_payload
        self.engine.stop_cause = STOP_CAUSE
        self.loop_thread = self.engine._loop_thread
        loop = self.engine.loop
        asyncio.run_coroutine_threadsafe(
            loop.create_unix_server(lambda: Session(self), sock=sock), loop
        ).result()
        loop.call_soon_threadsafe(self._check_idle)

    # -- requests ----------------------------------------------------------------------

    def handle(self, session: Session, request_id: int, op: str, args: tuple[Any, ...]) -> None:
        """On the loop: answer one request, now or when its future resolves."""
        engine = self.engine
        fut: cf.Future[Any] = cf.Future()
        fut.add_done_callback(functools.partial(session.reply, request_id))
        try:
            if op in ENGINE_OPS:
                getattr(engine, op)(fut, *args)
            elif op == "submit":
                self._submit(session, fut, *args)
            elif op == "deploy":
                (tv,) = args
                self.latest[tv.task_id] = tv
                engine.deploy(fut, tv)
            elif op == "subscribe":
                run_id, cb = args
                listener = functools.partial(session.push, "run", cb)
                session.listeners[cb] = (run_id, listener)
                engine.subscribe(fut, run_id, listener)
            elif op == "unsubscribe":
                entry = session.listeners.pop(args[0], None)
                if entry is None:
                    fut.set_result(None)
                else:
                    engine.unsubscribe(fut, *entry)
            elif op == "watch":
                run_ids, cb = args
                engine.watch(fut, run_ids, functools.partial(session.push, "status", cb))
            elif op == "is_waiting":
                fut.set_result(args[0] in self.waiting_tasks())
            elif op == "status":  # on the loop: it reads the live runs
                fut.set_result(self.info())
            elif op == "hello":
                if args[0].get("build") == wire.build():
                    session.hello = args[0]
                fut.set_result(self.info())  # the client compares builds and says why
            elif not session.hello:
                raise NbtasksError("no hello from this client, or of another nbtasks build")
            elif op in THREAD_OPS:
                self.pool.submit(_resolve, fut, THREAD_OPS[op], self, *args)
            else:
                raise NbtasksError(f"unknown server op {op!r}")
        except BaseException as exc:
            if not fut.done():
                fut.set_exception(exc)

    def _submit(self, session: Session, fut: cf.Future[Any], specs: list[RunSpec],
                token: int | None = None) -> None:  # fmt: skip
        for spec in specs:  # runs triggered by id, e.g. from the CLI, use the latest
            if spec.task is not None:
                self.latest[spec.task.task_id] = spec.task
        final: cf.Future[Any] | None = None
        stream: Finals | None = None
        if token is not None:  # a blocking wait: its final runs go out as they end
            final = cf.Future()
            stream = Finals(session.push, self.engine.loop.call_soon, token)
            final.add_done_callback(stream.end)
        self.engine.submit(fut, specs, final, stream.add if stream is not None else None)
        for task_id in {s.task_id for s in specs if s.task is None} & self.latest.keys():
            self.engine.deploy(cf.Future(), self.latest[task_id])  # a client defined it

    def waiting_tasks(self) -> set[str]:
        """Tasks with live runs that need a client's definition (waiting for a deploy, or
        delayed and taken over from an earlier server)."""
        return {r.task_id for r in self.engine.runs.values() if r.task is None}

    def info(self) -> dict[str, Any]:
        """What ``nbtasks server status`` shows."""
        live: dict[str, int] = {}
        for run in list(self.engine.runs.values()):
            live[run.status.value] = live.get(run.status.value, 0) + 1
        return {
            "pid": os.getpid(),
            "store": self.place.store,
            "socket": self.place.socket,
            "build": wire.build(),
            "started_at": self.started,
            "uptime_s": round(time.time() - self.started, 3),
            "clients": sorted(
                (
                    {"pid": s.hello.get("pid"), "name": s.hello.get("name")}
                    for s in list(self.sessions)
                    if s.hello
                ),
                key=lambda c: c["pid"] or 0,
            ),
            "executor": self.config.executor_name,
            "workers": self.engine.size,
            "live_runs": live,
            "idle_s": self.config.idle_s,
            "waiting_tasks": sorted(self.waiting_tasks()),
        }

    # -- stopping ----------------------------------------------------------------------

    def _check_idle(self) -> None:
        if self.stopping.is_set():
            return
        busy = self.sessions or any(
            run.status is not RunStatus.WAITING_FOR_DEPLOY for run in self.engine.runs.values()
        )
        now = time.monotonic()
        if busy:
            self.last_active = now
        elif now - self.last_active >= self.config.idle_s:
            self.stopping.set()
            return
        self.engine.loop.call_later(IDLE_CHECK_S, self._check_idle)

    def close(self) -> None:
        """Tell clients this is a stop, not a crash; interrupt what executes, commit, close
        the store. Clients then see the socket close."""

        def farewell() -> None:
            for session in list(self.sessions):
                session.push("bye", STOP_CAUSE)

        try:
            self.engine.loop.call_soon_threadsafe(farewell)
        except RuntimeError:
            pass
        try:
            self.engine.close()
        finally:
            self.pool.shutdown(wait=False)


# -- ops served on the thread pool (reads and writes of the store) ------------------------


def _resolve(fut: cf.Future[Any], fn: Callable[..., Any], *args: Any) -> None:
    try:
        fut.set_result(fn(*args))
    except BaseException as exc:
        fut.set_exception(exc)


def _query(server: Server, sql: str, params: list[Any]) -> Any:
    return server.engine.store.query(sql, params)


def _list_runs(server: Server, where: str, params: list[Any], tests: list[Any],
               limit: int) -> Any:  # fmt: skip
    def keep(row: Any) -> bool:
        return all(test(row) for test in tests)

    return server.engine.store.list_runs(where, params, keep, limit)


def _select(server: Server, query: str, params: list[Any] | None) -> Any:
    return server.engine.store.select_rows(query, params)


def _put_payloads(server: Server, items: list[tuple[str, bytes]]) -> None:
    server.engine.store.put_payloads(items)


def _require_runs(server: Server, ids: list[str]) -> None:
    """Raise ``UnknownRunError`` for the first of ``ids`` neither live nor stored."""
    engine = server.engine
    missing = [i for i in ids if i not in engine.runs]
    if not missing:
        return
    found = {
        r[0]
        for r in engine.store.query(
            "SELECT id FROM runs WHERE id IN (SELECT unnest(?::VARCHAR[]))", [missing]
        )
    }
    for run_id in missing:
        if run_id not in found:
            engine.require_run(run_id)  # live since, or unknown: raises naming it


def _stop(server: Server) -> int:
    server.stopping.set()
    return os.getpid()


THREAD_OPS: dict[str, Callable[..., Any]] = {
    "query": _query,
    "list_runs": _list_runs,
    "select": _select,
    "put_payloads": _put_payloads,
    "require_runs": _require_runs,
    "stop": _stop,
}


def _make_executor(config: Config, launched: list[Any]) -> Any:
    from nbtasks.executor.local.launch import WORKER_PRELOAD

    if config.executor is None:
        from nbtasks.executor.local.pool import LocalExecutor

        return LocalExecutor(launched, WORKER_PRELOAD)
    import dill

    return dill.loads(config.executor)()
