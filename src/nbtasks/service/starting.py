"""Finding a store's server, and starting one: the part of the client a first trigger
uses before the rest of it loads.

Starting is race-free: a starter holds ``Place.start_lock`` while it looks for a server
and, finding none, starts one and waits for it to say it is ready; the server itself
holds ``Place.lock`` for life, so even two starters that miss each other end with one.
``begin`` does the first half and returns at once, so a first trigger can launch the
server before its own modules load (``client.config.prelaunch``); ``Starting.wait`` is
the second.
"""

from __future__ import annotations

import fcntl
import os
import pickle
import socket
import sys
import threading
import time
from typing import TYPE_CHECKING

from nbtasks.core.errors import NbtasksError
from nbtasks.service.places import Place, places_of
from nbtasks.service.settings import Config

if TYPE_CHECKING:  # imported on the way to a launch only: an attaching client needs none
    import subprocess

START_TIMEOUT_S = 60.0  # a server opening a big store, or a cluster, may take a while
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _connected(path: str) -> socket.socket | None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except (FileNotFoundError, ConnectionRefusedError):
        sock.close()
        return None
    return sock


def connected_any(store: str) -> socket.socket | None:
    """A connection to the live server of ``store``, wherever it put its socket."""
    for place in places_of(store):
        sock = _connected(place.socket)
        if sock is not None:
            return sock
    return None


def listening(store: str) -> bool:
    """Whether a server of ``store`` accepts connections."""
    sock = connected_any(store)
    if sock is None:
        return False
    sock.close()
    return True


class Starting:
    """A server launched, not yet ready; this process holds the start lock until
    ``wait`` returns."""

    def __init__(self, place: Place, lock_fd: int, proc: subprocess.Popen[bytes]) -> None:
        self.place, self._fd, self._proc = place, lock_fd, proc

    def wait(self) -> socket.socket:
        """Its connected socket, once it is ready; or why it did not start."""
        try:
            taken = _answer(self.place, self._proc)
            sock = connected_any(self.place.store)
            deadline = time.monotonic() + START_TIMEOUT_S
            while sock is None and taken and time.monotonic() < deadline and _held(self.place):
                time.sleep(0.01)  # another server holds the store and is still starting
                sock = connected_any(self.place.store)
            if sock is None:
                raise NbtasksError(
                    f"the nbtasks server of store {self.place.store!r} started but cannot be "
                    f"reached at {self.place.socket!r}"
                )
            return sock
        finally:
            os.close(self._fd)  # and its lock


def begin(place: Place, config: Config) -> socket.socket | Starting:
    """Launch the server of ``place``, unless one runs or starts meanwhile: then a
    connected socket. Returns at once; ``Starting.wait`` waits for the server. The
    store's folder must exist (``place_of`` depends on it)."""
    fd = _create(place.start_lock, os.O_RDWR, place)
    try:
        os.fchmod(fd, 0o600)  # the umask may have taken more away than that
        _lock(fd, place)
        sock = connected_any(place.store)
        if sock is not None:  # another process started it while this one waited
            os.close(fd)
            return sock
        return Starting(place, fd, _launch(place, config))
    except BaseException:
        os.close(fd)
        raise


def start_server(place: Place, config: Config) -> socket.socket:
    """Start the server of ``place`` unless one starts meanwhile; its connected socket."""
    found = begin(place, config)
    return found if isinstance(found, socket.socket) else found.wait()


def _create(path: str, flags: int, place: Place) -> int:
    """Open (creating it if new) one of the server's files, or say why it cannot start
    (e.g. the store's folder is read-only)."""
    try:
        return os.open(path, flags | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise NbtasksError(
            f"cannot start the nbtasks server of store {place.store!r}: cannot write "
            f"{path!r} ({exc.strerror or exc}); choose another store with "
            "nbtasks.configure(store=...) or NBTASKS_STORE"
        ) from None


def _lock(fd: int, place: Place) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise NbtasksError(
                    f"another process has been starting the nbtasks server of store "
                    f"{place.store!r} for over {START_TIMEOUT_S:g}s"
                ) from None
            time.sleep(0.005)


def _launch(place: Place, config: Config) -> subprocess.Popen[bytes]:
    """Launch the server process and give it ``config``; it says how its start went on
    its first line of stdout (``_answer``)."""
    import subprocess

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
    log = _create(place.log, os.O_WRONLY | os.O_APPEND, place)
    try:
        os.fchmod(log, 0o600)  # the umask may have taken more away than that
        proc = subprocess.Popen(
            [sys.executable, "-m", "nbtasks.service.server"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
            start_new_session=True, close_fds=True, env=env, cwd=config.cwd,
        )  # fmt: skip
    finally:
        os.close(log)
    assert proc.stdin is not None
    proc.stdin.write(pickle.dumps(config, protocol=5))
    proc.stdin.close()
    return proc


def _held(place: Place) -> bool:
    """Whether a server of ``place``'s store holds its lock, here or in its other place."""
    from nbtasks.service.places import lock_holder

    return any(lock_holder(p) is not None for p in places_of(place.store))


def _answer(place: Place, proc: subprocess.Popen[bytes]) -> bool:
    """Wait for the server's first line: return once it is ready (False) or another server
    took the store first (True: it may still be starting), else raise why it did not
    start."""
    assert proc.stdout is not None
    line = _first_line(proc.stdout.fileno())
    proc.stdout.close()
    threading.Thread(target=proc.wait, name="nbtasks-reaper", daemon=True).start()
    if line in ("ready", "taken"):
        return line == "taken"
    if line.startswith("locked: "):  # a program other than nbtasks holds the store file
        import json

        from nbtasks.core.errors import StoreLockedError

        held = json.loads(line[len("locked: ") :])
        raise StoreLockedError(held["path"], held["holder"])
    if not line:
        line = "it exited before it was ready; " + _log_tail(place.log)
    raise NbtasksError(f"the nbtasks server of store {place.store!r} did not start: {line}")


def _first_line(fd: int) -> str:
    import select

    deadline = time.monotonic() + START_TIMEOUT_S
    data = b""
    while b"\n" not in data:
        left = deadline - time.monotonic()
        if left <= 0:
            return f"no word from it within {START_TIMEOUT_S:g}s"
        readable, _, _ = select.select([fd], [], [], left)
        if readable:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            data += chunk
    return data.decode(errors="replace").split("\n", 1)[0].strip()


def _log_tail(path: str, lines: int = 5) -> str:
    try:
        with open(path, errors="replace") as f:
            tail = f.read().splitlines()[-lines:]
    except OSError:
        return "no log"
    return f"the end of its log {path!r}: " + " | ".join(tail)
