"""The server process: started by the first process that needs a store
(``client.start_server``), or in the foreground by ``nbtasks server start``.

It holds an exclusive lock (``Place.lock``) for its whole life, so two never serve one
store, and a lock the kernel drops when the process dies can never be stale. This module
is light on purpose: the lock, the socket and (for a trigger) a first worker are taken
before the engine's modules load (``host``), so the worker boots meanwhile.
"""

from __future__ import annotations

import fcntl
import hashlib
import itertools
import json
import os
import pickle
import signal
import socket
import sys
from collections.abc import Callable

from nbtasks.service import wire
from nbtasks.service.places import Place, lock_holder, place_of, places_of
from nbtasks.service.settings import Config
from nbtasks.store.files import make_store_folder

SCOPE_ENV = "NBTASKS_SERVER_SCOPE"


def sweep_orphans(place: Place) -> None:
    """Kill what a killed server of this store left running (workers, the processes
    their tasks started), then mark this server's own: every process it starts carries
    the store's scope in its environment."""
    from nbtasks.executor.local.pool import sweep_marked

    scope = hashlib.blake2b(os.fsencode(place.store), digest_size=8).hexdigest()
    sweep_marked(f"{SCOPE_ENV}={scope}")
    os.environ[SCOPE_ENV] = scope


def take_lock(place: Place) -> int | None:
    """The server lock's descriptor, or None if a live server holds it."""
    fd = os.open(place.lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # the umask may have taken more away than that
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def listen(place: Place) -> socket.socket:
    """Bind the socket (0600), replacing one a dead server left; only the lock holder
    calls this, so whatever is at the path is stale."""
    try:
        os.unlink(place.socket)
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(place.socket)
    finally:
        os.umask(old)
    os.chmod(place.socket, 0o600)
    sock.listen(128)
    sock.setblocking(False)
    return sock


def serve(config: Config, ready: Callable[[str], None] = lambda line: None) -> int:
    """Serve ``config.store`` until stopped; ``ready`` is told "ready", "taken" (another
    server holds the store: returns 1), "locked: {path, holder}" (a program other than
    nbtasks holds the store file) or "error: ..." once it is known."""
    make_store_folder(os.path.dirname(config.store))
    place = place_of(config.store)
    lock = take_lock(place)
    others = itertools.islice(places_of(config.store), 1, None)
    if lock is not None and any(lock_holder(p) is not None for p in others):
        os.close(lock)  # a server lives in the other place (the folder's mode changed)
        lock = None
    if lock is None:
        ready("taken")
        return 1
    sys.path[:] = config.sys_path
    try:
        os.chdir(config.cwd)
    except OSError:
        pass
    sweep_orphans(place)
    sock = listen(place)
    launched = []
    if config.spawn and config.executor is None:  # a first worker boots while the
        from nbtasks.executor.local.launch import WORKER_PRELOAD, launch  # engine loads
        from nbtasks.executor.started import path_for

        launched.append(launch(WORKER_PRELOAD, started_log=path_for(config.store)))
    from nbtasks.service.host import Server

    try:
        server = Server(config, place, sock, launched)
    except BaseException as exc:
        sock.close()
        _unlink(place.socket)
        from nbtasks.core.errors import StoreLockedError

        if isinstance(exc, StoreLockedError):  # the client raises it as it is
            ready("locked: " + json.dumps({"path": exc.path, "holder": exc.holder}))
        else:
            ready("error: " + (str(exc) or type(exc).__name__).replace("\n", " "))
        raise
    os.ftruncate(lock, 0)
    os.pwrite(lock, json.dumps({"pid": os.getpid(), "build": wire.build()}).encode(), 0)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, lambda *_: server.stopping.set())
    ready("ready")
    try:
        while not server.stopping.wait(1.0):
            pass
    finally:
        _unlink(place.socket)  # no new client finds it while the engine closes
        server.close()
        os.ftruncate(lock, 0)
        os.close(lock)
    return 0


def _unlink(path: str) -> None:
    """Remove ``path`` if it can be: one left behind (say the folder became read-only) is
    stale once this server is gone, and the next server replaces it."""
    try:
        os.unlink(path)
    except OSError:
        pass


def main() -> None:
    """``python -m nbtasks.service.server``: the config is a pickle on stdin; the first
    line on stdout says how the start went, then stdout is closed."""
    config: Config = pickle.load(sys.stdin.buffer)
    out = os.fdopen(os.dup(1), "w")
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)

    def ready(line: str) -> None:
        out.write(line + "\n")
        out.close()

    try:
        code = serve(config, ready)
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
