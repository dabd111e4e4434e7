"""Framing of the messages between the kernel and its workers.

A frame is a 4-byte big-endian length and a pickled tuple whose first item names the
message. dill'd function, payload and output bytes ride inside as opaque ``bytes``, so the
kernel never unpickles a task's output unless asked to.

kernel -> worker
    ("init", sys_path, cwd)
    ("run", attempt_id, fn_key, fn_bytes | None, payload_bytes, context, memory_limit,
     sent_ahead)                          sent ahead: the worker says when it starts it
    ("drop", attempt_id)                  forget an attempt sent ahead, if not started
    ("reply", request_id, ok, value)      the answer to a call from task code
worker -> kernel
    ("ready", pid)
    ("done", attempt_id, outcome, output_bytes | None, output_preview, error | None,
     exc_bytes | None, stdout, stderr, seconds_taken)
        outcome: "completed" | "failed" | "aborted" | "system_failure"
    ("oom", attempt_id, rss_bytes)        sent just before the worker kills its group
    ("started", attempt_id) / ("dropped", attempt_id)     for attempts sent ahead
    ("log", attempt_id, stream, text), ("display", attempt_id, bundle),
    ("metadata", attempt_id, op, key, value), ("call", attempt_id, request_id, op, args)
"""

from __future__ import annotations

import os
import pickle
import struct
from typing import Any

_HEADER = struct.Struct(">I")
# What one read of a pipe asks for: a pipe's capacity. Larger buffers are allocated with
# mmap and given back at every read; longer messages arrive over several reads.
READ_BYTES = 1 << 16


def encode(message: tuple[Any, ...]) -> bytes:
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(body)) + body


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


class FrameReader:
    """Accumulates bytes read from a pipe and yields the complete messages."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[Any, ...]]:
        self._buf += data
        messages = []
        pos = 0
        buf = self._buf
        while len(buf) - pos >= 4:
            (size,) = _HEADER.unpack_from(buf, pos)
            if len(buf) - pos - 4 < size:
                break
            messages.append(pickle.loads(buf[pos + 4 : pos + 4 + size]))
            pos += 4 + size
        if pos:
            del buf[:pos]
        return messages
