"""The messages between the kernel and its local workers: one codec of typed messages.

A frame is a 4-byte big-endian length and a msgpack body decoded straight into one of the
``msgspec`` structs below (a tagged union per direction), never into positional tuples.
dill'd functions, payloads, outputs and exceptions ride inside as opaque ``bytes``, so the
kernel never unpickles a task's output unless asked to; values of calls from task code
(nested triggers, their replies) are pickled by the side that makes them.

kernel -> worker: ``Init``, ``Run``, ``Drop``, ``Reply``, ``Exit``
worker -> kernel: ``Ready``, ``Started``, ``Dropped``, ``Done``, ``Log``, ``Show``,
``Meta``, ``Ask``

An attempt sent ahead is answered by exactly one of ``Started`` or ``Dropped``: the worker
decides once, under one lock, when it takes the attempt up or when the drop arrives.
"""

from __future__ import annotations

import os
import struct
from typing import Any

import msgspec

_HEADER = struct.Struct(">I")
# What one read of a pipe asks for: a pipe's capacity. Larger buffers are allocated with
# mmap and given back at every read; longer messages arrive over several reads.
READ_BYTES = 1 << 16


class Init(msgspec.Struct, tag=True, array_like=True):
    sys_path: list[str]
    cwd: str
    preload: list[str]  # modules to import before the first attempt


class Run(msgspec.Struct, tag=True, array_like=True):
    attempt_id: str
    seq: int  # this worker's attempts are numbered 1, 2, ... in the order they are sent
    fn_key: str
    fn_bytes: bytes | None  # None: the worker has it already
    payload: bytes
    run_id: str
    task_id: str
    number: int
    version: str | None
    tags: list[str]
    metadata: dict[str, Any]
    memory_limit: int | None
    ahead: bool  # sent to a busy worker: it says Started (or Dropped) when it gets there


class Drop(msgspec.Struct, tag=True, array_like=True):
    attempt_id: str


class Reply(msgspec.Struct, tag=True, array_like=True):
    request_id: int
    ok: bool
    value: bytes  # pickled


class Exit(msgspec.Struct, tag=True, array_like=True):
    pass


class Ready(msgspec.Struct, tag=True, array_like=True):
    pid: int


class Started(msgspec.Struct, tag=True, array_like=True):
    attempt_id: str


class Dropped(msgspec.Struct, tag=True, array_like=True):
    attempt_id: str


class Done(msgspec.Struct, tag=True, array_like=True):
    attempt_id: str
    outcome: str  # "completed" | "failed" | "aborted" | "system_failure" | "oom"
    output: bytes | None
    output_preview: str
    error: dict[str, str] | None
    exc: bytes | None
    stdout: str
    stderr: str
    took: float
    rss: int | None = None


class Log(msgspec.Struct, tag=True, array_like=True):
    attempt_id: str
    stream: str
    text: str


class Show(msgspec.Struct, tag=True, array_like=True):
    attempt_id: str
    bundle: dict[str, Any]


class Meta(msgspec.Struct, tag=True, array_like=True):
    attempt_id: str
    op: str
    key: str
    value: Any  # JSON-like (the worker normalises it)


class Ask(msgspec.Struct, tag=True, array_like=True):
    attempt_id: str
    request_id: int
    op: str
    args: bytes  # a pickled tuple


ToWorker = Init | Run | Drop | Reply | Exit
ToKernel = Ready | Started | Dropped | Done | Log | Show | Meta | Ask

_encoder = msgspec.msgpack.Encoder()


def encode(message: ToWorker | ToKernel) -> bytes:
    body = _encoder.encode(message)
    return _HEADER.pack(len(body)) + body


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


class FrameReader:
    """Accumulates bytes read from a pipe and yields the complete messages, decoded."""

    def __init__(self, kind: Any) -> None:
        self._buf = bytearray()
        self._decoder: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(kind)

    def feed(self, data: bytes) -> list[Any]:
        self._buf += data
        messages = []
        pos = 0
        buf = self._buf
        view = memoryview(buf)
        try:
            while len(buf) - pos >= 4:
                (size,) = _HEADER.unpack_from(buf, pos)
                if len(buf) - pos - 4 < size:
                    break
                messages.append(self._decoder.decode(view[pos + 4 : pos + 4 + size]))
                pos += 4 + size
        finally:
            view.release()
        if pos:
            del buf[:pos]
        return messages


def reader_for_kernel() -> FrameReader:
    return FrameReader(ToKernel)


def reader_for_worker() -> FrameReader:
    return FrameReader(ToWorker)
