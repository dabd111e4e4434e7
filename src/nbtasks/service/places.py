"""Where a store's server is found: its socket, the lock it holds while it lives, the lock
that serializes starting one, and its log.

Only the user may reach a server: its files live in a folder that is the user's and
0700, and the server checks the uid of every peer. Nothing listens on TCP.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from typing import NamedTuple

from nbtasks.core.errors import NbtasksError

SOCKET_PATH_MAX = 100  # sockaddr_un holds 108 bytes, with the terminating zero


class Place(NamedTuple):  # not a dataclass: cheaper to import on an attaching client's path
    store: str  # the store file, absolute
    socket: str
    lock: str  # flock'ed by the live server; holds its pid and build as JSON
    start_lock: str  # flock'ed by a process starting a server
    log: str  # the server's stderr


def place_of(store: str) -> Place:
    """Where a new server of ``store`` puts its files: beside the store when its folder
    is private (0700, the user's; a folder nbtasks makes is) and the socket's path is
    short enough; else in the user's private runtime folder, named by a hash of the
    store's path."""
    beside, hashed = _places(store)
    if beside is not None and _is_private(os.path.dirname(beside.store)):
        return beside
    return hashed()


def places_of(store: str) -> Iterator[Place]:
    """Every place a live server of ``store`` may be found: where a new one would go
    first, then the other (the folder's mode may have changed since it started). Lazy:
    the other place is worked out only if the first does not do."""
    first = place_of(store)
    yield first
    beside, hashed = _places(store)
    if first != beside and beside is not None:
        yield beside
    elif first == beside:
        yield hashed()


def _places(store: str) -> tuple[Place | None, Callable[[], Place]]:
    store = os.path.abspath(store)
    beside = None
    if len(os.fsencode(store + ".sock")) <= SOCKET_PATH_MAX:
        beside = _files(store, store)

    def hashed() -> Place:
        import hashlib

        name = hashlib.blake2b(os.fsencode(store), digest_size=10).hexdigest()
        return _files(store, os.path.join(private_folder(_runtime_root()), name))

    return beside, hashed


def _files(store: str, at: str) -> Place:
    return Place(store, at + ".sock", at + ".server", at + ".starting", at + ".server.log")


def _is_private(folder: str) -> bool:
    try:
        check_private(folder)
    except (OSError, NbtasksError):
        return False
    return True


def _runtime_root() -> str:
    import tempfile

    return os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()


def private_folder(parent: str) -> str:
    """``parent/nbtasks-<uid>``, made 0700 if new; refused unless it is the user's own and
    private (another user could otherwise plant a socket there)."""
    path = os.path.join(parent, f"nbtasks-{os.getuid()}")
    os.makedirs(path, mode=0o700, exist_ok=True)
    check_private(path)
    return path


def check_private(path: str) -> None:
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise NbtasksError(
            f"{path!r} must be a folder of user {os.getuid()} that only it can use (mode "
            f"0700); it is mode {stat.S_IMODE(info.st_mode):04o}, owner {info.st_uid}"
        )


def lock_holder(place: Place) -> int | None:
    """The pid of the server that holds ``place``'s lock (0 if it has not written it
    yet), or None if no process holds it."""
    import fcntl
    import json

    try:
        fd = os.open(place.lock, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:  # held: a server lives
            try:
                return int(json.loads(os.pread(fd, 4096, 0))["pid"])
            except (ValueError, KeyError, TypeError):
                return 0
        return None
    finally:
        os.close(fd)
