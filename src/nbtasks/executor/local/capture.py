"""What an attempt writes and shows: its stdout/stderr (file descriptors 1 and 2, so the
output of subprocesses is caught too), streamed live and kept to a tail, and the MIME
bundles of what it ``display(...)``s."""

from __future__ import annotations

import base64
import codecs
import io
import os
import sys
import tempfile
import threading
import time
from typing import Any

OUTPUT_CAP = 256 * 1024  # bytes of stdout / stderr kept per attempt (the tail)
LOG_EVERY_S = 0.1  # how often output written by a running attempt is streamed


class Capture:
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
                            send(self.attempt_id, name, text)


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
