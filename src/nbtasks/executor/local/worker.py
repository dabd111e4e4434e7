"""A worker process: executes one attempt at a time for the kernel that spawned it.

Started by the pool (``executor/local/pool.py``) with CMD_FD EVENT_FD PARENT_PID in a new
session, so the worker is the leader of a process group holding everything its tasks start;
the kernel kills that group to cancel or time out an attempt. The worker kills its own group
when the kernel goes away (the command pipe reaches end of file, or the parent-death signal fires).
"""

from __future__ import annotations

import base64
import builtins
import codecs
import ctypes
import io
import itertools
import json
import os
import queue
import signal
import sys
import tempfile
import threading
import time
import traceback
from typing import Any

from nbtasks.core import context as _context
from nbtasks.core.errors import AbortRun
from nbtasks.executor.local import protocol as _protocol

OUTPUT_CAP = 256 * 1024  # bytes of stdout / stderr kept per attempt (the tail)
LOG_EVERY_S = 0.1  # how often output written by a running attempt is streamed
DISPLAY_CAP = 1 << 20  # bytes of one display(...) bundle
_PR_SET_PDEATHSIG = 1


def _kill_group(*_: object) -> None:
    os.killpg(os.getpgrp(), signal.SIGKILL)


def _die_with_parent(parent_pid: int) -> None:
    signal.signal(signal.SIGUSR2, _kill_group)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGUSR2, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the pipe watch below still applies
        pass
    if os.getppid() != parent_pid:
        _kill_group()


class _Capture:
    """Redirects file descriptors 1 and 2 (so subprocess output is caught too) to files,
    and streams what an attempt writes to the kernel while it runs."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.attempt_id: str | None = None
        self.offsets = [0, 0]
        self.decoders = [codecs.getincrementaldecoder("utf-8")("replace") for _ in range(2)]
        self.files = []
        for fd in (1, 2):
            f = tempfile.TemporaryFile()
            os.dup2(f.fileno(), fd)
            self.files.append(f)
        sys.stdout = io.TextIOWrapper(
            os.fdopen(1, "wb", closefd=False), line_buffering=True, errors="backslashreplace"
        )
        sys.stderr = io.TextIOWrapper(
            os.fdopen(2, "wb", closefd=False), line_buffering=True, errors="backslashreplace"
        )

    def reset(self, attempt_id: str) -> None:
        with self.lock:
            for fd in (1, 2):
                if os.lseek(fd, 0, os.SEEK_CUR):  # something was written since the last reset
                    os.ftruncate(fd, 0)
                    os.lseek(fd, 0, os.SEEK_SET)
            self.attempt_id = attempt_id
            self.offsets = [0, 0]
            for decoder in self.decoders:
                decoder.reset()

    def collect(self) -> tuple[str, str]:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        with self.lock:
            self.attempt_id = None
            return _tail(1), _tail(2)

    def stream(self, send: Any) -> None:
        """Forever: every LOG_EVERY_S, send what the running attempt wrote since."""
        while True:
            time.sleep(LOG_EVERY_S)
            with self.lock:
                if self.attempt_id is None:
                    continue
                for i, (fd, name) in enumerate(((1, "stdout"), (2, "stderr"))):
                    size = os.fstat(fd).st_size
                    start = max(self.offsets[i], size - OUTPUT_CAP)
                    if size > start:
                        data = os.pread(fd, size - start, start)
                        self.offsets[i] = size
                        text = self.decoders[i].decode(data)
                        if text:
                            send(("log", self.attempt_id, name, text))


def _tail(fd: int) -> str:
    # Writes to fd 1 and 2 (this process's, and its children's: they share the open file)
    # move its offset; an attempt that wrote nothing costs one lseek.
    if not os.lseek(fd, 0, os.SEEK_CUR):
        return ""
    size = os.fstat(fd).st_size
    start = max(0, size - OUTPUT_CAP)
    data = os.pread(fd, size - start, start)
    text = data.decode("utf-8", errors="replace")
    if start:
        text = f"[... {start} earlier bytes not kept ...]\n" + text
    return text


class _MemoryWatch(threading.Thread):
    """Kills the worker's process group when its tree's resident memory passes a limit."""

    def __init__(self, limit: int, attempt_id: str, send: Any) -> None:
        super().__init__(daemon=True, name="nbtasks-memory-watch")
        self.limit = limit
        self.attempt_id = attempt_id
        self.send = send
        self.stopped = threading.Event()

    def run(self) -> None:
        import psutil

        me = psutil.Process()
        while not self.stopped.wait(0.02):
            try:
                rss = me.memory_info().rss
                for child in me.children(recursive=True):
                    try:
                        rss += child.memory_info().rss
                    except psutil.Error:
                        pass
            except psutil.Error:
                continue
            if rss > self.limit:
                self.send(("oom", self.attempt_id, rss))
                _kill_group()


def _error_info(exc: BaseException) -> dict[str, str]:
    tb = exc.__traceback__
    if tb is not None and tb.tb_next is not None:
        tb = tb.tb_next  # drop the worker's own frame
    t = type(exc)
    name = (
        t.__qualname__
        if t.__module__ in ("builtins", "__main__")
        else f"{t.__module__}.{t.__qualname__}"
    )
    return {
        "type": name,
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(t, exc, tb)),
    }


def _exc_bytes(exc: BaseException) -> bytes | None:
    from nbtasks.core.serialize import dumps, loads

    try:
        data = dumps(exc)
        loads(data)  # only ship what can be rebuilt
        return data
    except Exception:
        return None


_MIME_METHODS = (
    ("text/html", "_repr_html_"),
    ("text/markdown", "_repr_markdown_"),
    ("image/svg+xml", "_repr_svg_"),
    ("image/png", "_repr_png_"),
    ("image/jpeg", "_repr_jpeg_"),
    ("application/json", "_repr_json_"),
    ("text/latex", "_repr_latex_"),
)


def mime_bundle(obj: object) -> dict[str, Any]:
    """The MIME bundle of an object, the way Jupyter's formatters build one."""
    bundle: dict[str, Any] = {}
    method = getattr(obj, "_repr_mimebundle_", None)
    if callable(method):
        try:
            data = method()
            bundle.update(data[0] if isinstance(data, tuple) else data or {})
        except Exception:
            pass
    for mime, name in _MIME_METHODS:
        method = getattr(obj, name, None)
        if mime in bundle or not callable(method) or isinstance(obj, type):
            continue
        try:
            value = method()
        except Exception:
            continue
        if isinstance(value, bytes):
            value = base64.b64encode(value).decode("ascii")
        if value is not None:
            bundle[mime] = value
    bundle["text/plain"] = repr(obj)
    return bundle


class Worker:
    def __init__(self, cmd_fd: int, event_fd: int) -> None:
        self.cmd_fd = cmd_fd
        self.event_fd = event_fd
        self.write_lock = threading.Lock()
        self.functions: dict[str, Any] = {}
        self.inbox: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        self.replies: dict[int, tuple[bool, Any]] = {}
        self.replies_cv = threading.Condition()
        self.request_ids = itertools.count(1)
        self.dropped: set[str] = set()  # attempts sent ahead that the kernel took back
        self.capture = _Capture()
        builtins.display = self.display  # type: ignore[attr-defined]

    def display(self, *objs: object, **_: object) -> None:
        """``display(obj)`` in task code: the object's MIME bundle goes to the attempt."""
        current = _context._current
        for obj in objs:
            if current is None:
                print(repr(obj))
                continue
            bundle = mime_bundle(obj)
            if len(json.dumps(bundle, default=str)) > DISPLAY_CAP:
                bundle = {"text/plain": bundle["text/plain"][:DISPLAY_CAP]}
            self.send(("display", current.ctx.attempt_id, bundle))

    def call(self, op: str, args: tuple[Any, ...]) -> Any:
        """Send a call to the kernel's engine and block until its reply."""
        current = _context._current
        assert current is not None
        request_id = next(self.request_ids)
        self.send(("call", current.ctx.attempt_id, request_id, op, args))
        with self.replies_cv:
            while request_id not in self.replies:
                self.replies_cv.wait()
            ok, value = self.replies.pop(request_id)
        if not ok:
            raise value
        return value

    def send(self, message: tuple[Any, ...]) -> None:
        self.send_all([message])

    def send_all(self, messages: list[tuple[Any, ...]]) -> None:
        """Send messages in one write (the kernel reads them in one wake-up)."""
        data = b"".join(_protocol.encode(m) for m in messages)
        with self.write_lock:
            _protocol.write_all(self.event_fd, data)

    def _read_commands(self) -> None:
        reader = _protocol.FrameReader()
        try:
            while data := os.read(self.cmd_fd, _protocol.READ_BYTES):
                for message in reader.feed(data):  # the kernel writes several at once
                    if message[0] == "reply":
                        with self.replies_cv:
                            self.replies[message[1]] = (message[2], message[3])
                            self.replies_cv.notify_all()
                    elif message[0] == "drop":
                        self.dropped.add(message[1])
                    else:
                        self.inbox.put(message)
        except OSError:
            pass
        _kill_group()  # the kernel is gone: take every process of this worker with us

    def serve(self) -> None:
        threading.Thread(target=self._read_commands, daemon=True, name="nbtasks-cmd").start()
        threading.Thread(
            target=self.capture.stream, args=(self.send,), daemon=True, name="nbtasks-logs"
        ).start()
        self.send(("ready", os.getpid()))
        taken: tuple[Any, ...] | None = None  # a message taken early, to handle next
        announced = ""  # the attempt sent ahead whose start was already reported
        while (message := taken or self.inbox.get()) is not None:
            taken = None
            kind = message[0]
            if kind == "run":
                attempt_id, sent_ahead = message[1], message[7]
                if attempt_id in self.dropped:
                    self.dropped.discard(attempt_id)
                    try:  # the kernel counts on this worker knowing the function now
                        self.learn_function(message[2], message[3])
                    except Exception:
                        pass  # the next attempt of it reports the failure
                    self.send(("dropped", attempt_id))
                    continue
                if sent_ahead and attempt_id != announced:
                    self.send(("started", attempt_id))
                result = self.run_attempt(*message[1:7])
                # The next attempt is often here already (sent ahead): report this one's
                # end and that one's start in one write, so the kernel wakes once.
                try:
                    taken = self.inbox.get_nowait()
                except queue.Empty:
                    taken = None
                if (taken is not None and taken[0] == "run" and taken[7]
                        and taken[1] not in self.dropped):  # fmt: skip
                    announced = taken[1]
                    self.send_all([result, ("started", announced)])
                else:
                    self.send(result)
            elif kind == "init":
                sys.path[:] = message[1]
                os.chdir(message[2])
            elif kind == "exit":
                return

    def learn_function(self, fn_key: str, fn_bytes: bytes | None) -> None:
        """Keep a task function sent with an attempt; later attempts come without it."""
        if fn_bytes is not None:
            from nbtasks.core.serialize import loads

            self.functions[fn_key] = loads(fn_bytes)

    def run_attempt(
        self,
        attempt_id: str,
        fn_key: str,
        fn_bytes: bytes | None,
        payload_bytes: bytes,
        ctx: dict[str, Any],
        memory_limit: int | None,
    ) -> tuple[Any, ...]:
        """Execute one attempt; return its ``done`` message (the caller sends it)."""
        from nbtasks.core.serialize import dumps, loads, preview

        def done(
            outcome: str,
            output: bytes | None = None,
            out_preview: str = "",
            error: dict[str, str] | None = None,
            exc: bytes | None = None,
        ) -> tuple[Any, ...]:
            stdout, stderr = self.capture.collect()
            took = time.perf_counter() - began
            return ("done", attempt_id, outcome, output, out_preview, error, exc, stdout, stderr,
                    took)  # fmt: skip

        began = time.perf_counter()  # reset once the function and payload are loaded
        self.capture.reset(attempt_id)
        try:
            self.learn_function(fn_key, fn_bytes)
            fn = self.functions[fn_key]
        except BaseException as exc:
            info = _error_info(exc)
            info["message"] = f"the worker could not load the task function: {info['message']}"
            return done("system_failure", error=info)
        try:
            payload = loads(payload_bytes)
        except BaseException as exc:
            info = _error_info(exc)
            info["message"] = f"the worker could not load the payload: {info['message']}"
            return done("system_failure", error=info)

        began = time.perf_counter()
        task_ctx = _context.TaskContext(
            run_id=ctx["run_id"],
            task_id=ctx["task_id"],
            attempt_number=ctx["attempt_number"],
            version=ctx["version"],
            tags=tuple(ctx.get("tags") or ()),
            attempt_id=attempt_id,
        )
        _context._install(
            _context._Current(task_ctx, dict(ctx.get("metadata") or {}), self.send, self.call)
        )
        watch = _MemoryWatch(memory_limit, attempt_id, self.send) if memory_limit else None
        if watch:
            watch.start()
        try:
            result = fn(payload)
        except AbortRun as exc:
            return done("aborted", error=_error_info(exc), exc=_exc_bytes(exc))
        except BaseException as exc:
            return done("failed", error=_error_info(exc), exc=_exc_bytes(exc))
        finally:
            if watch:
                watch.stopped.set()
            _context._install(None)
        try:
            output = dumps(result)
        except Exception as exc:
            info = _error_info(exc)
            info["message"] = (
                f"the task returned {type(result).__qualname__}, which dill cannot "
                f"serialise: {info['message']}"
            )
            return done("failed", error=info)
        return done("completed", output, preview(result))


def main(argv: list[str]) -> None:
    cmd_fd, event_fd, parent_pid = (int(a) for a in argv[1:4])
    os.set_inheritable(cmd_fd, False)
    os.set_inheritable(event_fd, False)
    _die_with_parent(parent_pid)
    _context.IN_WORKER = True
    from nbtasks.client import task as _task  # noqa: F401  (what loading a task needs)
    from nbtasks.core import serialize as _serialize  # noqa: F401

    Worker(cmd_fd, event_fd).serve()


if __name__ == "__main__":
    main(sys.argv)
