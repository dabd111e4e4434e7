"""The messages between the kernel and its local workers: one codec of typed messages.

A frame is a 4-byte big-endian length and a pickled message, one of the typed named tuples
below: code reads their fields by name, never by position. (``msgspec`` structs were
measured too: as fast to code and decode, but importing msgspec cost each worker's boot,
and the kernel's first trigger, about 20 ms.) Both ends are the same installation of
nbtasks, and a worker runs the user's own code: the pipe carries nothing from elsewhere.
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
import pickle
import struct
from typing import Any, NamedTuple

_HEADER = struct.Struct(">I")
# What one read of a pipe asks for: a pipe's capacity. Larger buffers are allocated with
# mmap and given back at every read; longer messages arrive over several reads.
READ_BYTES = 1 << 16


class Init(NamedTuple):
    sys_path: list[str]
    cwd: str
    preload: list[str]  # modules to import before the first attempt


class Run(NamedTuple):
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


class Drop(NamedTuple):
    attempt_id: str


class Reply(NamedTuple):
    request_id: int
    ok: bool
    value: bytes  # pickled


class Exit(NamedTuple):
    reason: str = "retire"


class Ready(NamedTuple):
    pid: int


class Started(NamedTuple):
    attempt_id: str


class Dropped(NamedTuple):
    attempt_id: str


class Done(NamedTuple):
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


class Log(NamedTuple):
    attempt_id: str
    stream: str
    text: str


class Show(NamedTuple):
    attempt_id: str
    bundle: dict[str, Any]


class Meta(NamedTuple):
    attempt_id: str
    op: str
    key: str
    value: Any  # JSON-like (the worker normalises it)


class Ask(NamedTuple):
    attempt_id: str
    request_id: int
    op: str
    args: bytes  # a pickled tuple


ToWorker = Init | Run | Drop | Reply | Exit
ToKernel = Ready | Started | Dropped | Done | Log | Show | Meta | Ask


# On the wire a message is (its kind's number, its fields as a plain tuple): pickle codes
# a plain tuple in C, where a named tuple would cost a Python-level reduce each way.
_KINDS: tuple[type[Any], ...] = (
    Init, Run, Drop, Reply, Exit, Ready, Started, Dropped, Done, Log, Show, Meta, Ask
)  # fmt: skip
_NUMBER = {kind: i for i, kind in enumerate(_KINDS)}


def encode(message: ToWorker | ToKernel) -> bytes:
    body = pickle.dumps((_NUMBER[type(message)], tuple(message)), pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(body)) + body


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


class FrameReader:
    """Accumulates bytes read from a pipe and yields the complete messages, decoded."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Any]:
        self._buf += data
        messages = []
        pos = 0
        buf = self._buf
        while len(buf) - pos >= 4:
            (size,) = _HEADER.unpack_from(buf, pos)
            if len(buf) - pos - 4 < size:
                break
            kind, fields = pickle.loads(buf[pos + 4 : pos + 4 + size])
            messages.append(tuple.__new__(_KINDS[kind], fields))
            pos += 4 + size
        if pos:
            del buf[:pos]
        return messages


def reader_for_kernel() -> FrameReader:
    """Reads ``ToKernel`` messages."""
    return FrameReader()


def reader_for_worker() -> FrameReader:
    """Reads ``ToWorker`` messages."""
    return FrameReader()
