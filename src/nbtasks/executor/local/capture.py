"""What an attempt writes and shows: its stdout/stderr (file descriptors 1 and 2, so the
output of subprocesses is caught too), streamed live and kept to a tail, and the MIME
bundles of what it ``display(...)``s.

``display`` in a worker is the worker's own builtin (``mime_bundle`` below) until IPython
is imported (by the task, or by loading a function that uses ``IPython.display``): then a
quiet IPython shell starts whose display publisher sends each bundle to the attempt, so
``IPython.display.display`` and the ``display`` of ``%%task`` cells are captured as they
are in a notebook, with IPython's own formatters. If IPython cannot be imported, the
builtin stays.
"""

from __future__ import annotations

import base64
import codecs
import io
import os
import sys
import tempfile
import threading
import time
import types
from collections.abc import Callable
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


Publish = Callable[[dict[str, Any]], None]


def on_ipython(publish: Publish) -> None:
    """Once IPython is imported in this process, route its displays to ``publish``."""
    if "IPython" in sys.modules:
        _start_shell(publish)
    else:
        sys.meta_path.insert(0, _AfterImport("IPython", lambda: _start_shell(publish)))


class _AfterImport:
    """A meta path finder that runs ``then`` right after package ``name`` is imported
    (its ``__init__`` executed in full), once; it finds nothing itself."""

    def __init__(self, name: str, then: Callable[[], None]) -> None:
        self.name = name
        self.then = then

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)
        import importlib.util

        spec = importlib.util.find_spec(fullname)
        loader = getattr(spec, "loader", None)
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        exec_module, then = loader.exec_module, self.then

        def exec_then(module: types.ModuleType) -> None:
            exec_module(module)
            then()

        loader.exec_module = exec_then
        return spec


def _start_shell(publish: Publish) -> None:
    """The worker's IPython shell: no history file, displays sent to ``publish``. Its
    ``user_ns`` is what ``%%task`` cells run in; ``__main__`` stays the worker's."""
    try:
        from IPython.core.displaypub import DisplayPublisher
        from IPython.core.history import HistoryManager
        from IPython.core.interactiveshell import InteractiveShell

        class TaskDisplayPublisher(DisplayPublisher):
            def publish(self, data: dict[str, Any], *args: Any, **kwargs: Any) -> None:
                publish(dict(data))

            def clear_output(self, wait: bool = False) -> None:
                pass  # nothing to clear: each bundle is kept on the attempt

        class TaskShell(InteractiveShell):
            def init_display_pub(self) -> None:
                self.display_pub = TaskDisplayPublisher(parent=self, shell=self)  # type: ignore[no-untyped-call]
                self.configurables.append(self.display_pub)  # type: ignore[arg-type]

            def init_history(self) -> None:  # no history file: a worker has no sessions
                self.history_manager = HistoryManager(shell=self, parent=self, enabled=False)
                self.configurables.append(self.history_manager)  # type: ignore[arg-type]

            def init_virtualenv(self) -> None:
                pass  # the worker runs the kernel's interpreter and path already

        if InteractiveShell.initialized():
            return  # a shell the task made itself: leave it be
        main = sys.modules.get("__main__")
        TaskShell.instance(user_module=types.ModuleType("__main__"))
        if main is not None:
            sys.modules["__main__"] = main
    except Exception:  # an IPython this code does not know: display() prints, as before
        pass
