"""How client and server talk: length-prefixed pickles over a Unix socket.

A request is ``(request_id, op, args)``; its reply ``(request_id, ok, value)``, where
``value`` is the result or the exception. The server also pushes ``(0, kind, data)``:
snapshots and statuses of subscribed runs, and the final snapshots a trigger-and-wait
awaits. Pickle is safe here because both ends are processes of the same user (the server
checks the peer's uid); it carries what dill already made of payloads and functions.

``build()`` names the code at both ends: the package version and a hash of its files. A
client and a server of different builds refuse each other by name at the hello, so no
message is ever read by code that does not expect it.
"""

from __future__ import annotations

import os
import pickle
import socket
import struct
from typing import Any

from nbtasks.core.version import VERSION

PROTOCOL = 1
HEADER = struct.Struct("!Q")
PUSH = 0


def _build() -> str:
    """The version, and a hash of the package's Python files: names, sizes and times of
    last change (a stat each: a new install, an edit or another checkout changes it)."""
    import zlib  # about 0.1 ms to import, where hashlib loads OpenSSL (several ms)

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    parts = []
    for folder, dirs, files in sorted(os.walk(root)):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            if name.endswith(".py"):
                info = os.stat(os.path.join(folder, name))
                parts.append(f"{os.path.relpath(folder, root)}/{name}:{info.st_size}:"
                             f"{info.st_mtime_ns};")  # fmt: skip
    data = "".join(parts).encode()
    return f"{VERSION}+{PROTOCOL}.{zlib.crc32(data):08x}{zlib.adler32(data):08x}"


_BUILD: list[str] = []


def build() -> str:
    """This code's build (computed once, on first use: about 1 ms)."""
    if not _BUILD:
        _BUILD.append(_build())
    return _BUILD[0]


def encode(message: Any) -> bytes:
    body = pickle.dumps(message, protocol=5)
    return HEADER.pack(len(body)) + body


class Frames:
    """Splits received bytes into messages."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Any]:
        buf = self._buf
        buf += data
        out = []
        start = 0
        while len(buf) - start >= HEADER.size:
            (size,) = HEADER.unpack_from(buf, start)
            end = start + HEADER.size + size
            if len(buf) < end:
                break
            out.append(pickle.loads(buf[start + HEADER.size : end]))
            start = end
        if start:
            del buf[:start]
        return out


def recv_into(sock: socket.socket, frames: Frames) -> list[Any] | None:
    """The messages of the next chunk received; None once the peer has closed."""
    data = sock.recv(1 << 20)
    if not data:
        return None
    return frames.feed(data)


def peer_uid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)
