"""The exceptions nbtasks raises, in one place.

    NbtasksError                  base of everything nbtasks raises on its own
    ├── StoreLockedError          the store file is held by another process
    ├── StoreWriteError           the store's files cannot be written (disk full, read-only)
    ├── UnknownRunError           a run id that is not in the store (also a KeyError)
    ├── PayloadError              a payload/output dill cannot serialise (also a TypeError)
    ├── EngineStoppedError        a call after the engine was shut down
    └── RunError                  a run ended without output; carries the remote error
    AbortRun                      raised by task code to fail a run without retrying it
    NbtasksWarning                something nbtasks repaired or could not do, said once

User mistakes in options raise the built-in ``ValueError`` naming the option and the value.
"""

from __future__ import annotations

import re
from typing import Any


class NbtasksError(Exception):
    """Base class of the errors nbtasks raises itself."""


class StoreLockedError(NbtasksError):
    """The store file is open in another process."""

    def __init__(self, path: str, holder: str) -> None:
        self.path = path
        self.holder = holder
        super().__init__(
            f"the nbtasks store {path!r} is in use by {holder}. Close that kernel or process, "
            "or choose another store with nbtasks.configure(store='other.duckdb') or the "
            "NBTASKS_STORE environment variable."
        )


class StoreWriteError(NbtasksError, OSError):
    """The store's files could not be written (a full disk, a read-only folder). What was
    not written is kept and written once the store can be written again."""

    def __init__(self, path: str, reason: object) -> None:
        self.path = path
        self.reason = reason
        super().__init__(
            getattr(reason, "errno", None),
            f"cannot write to the nbtasks store {path!r}: "
            f"{getattr(reason, 'strerror', None) or reason}. What was not written is kept "
            "and written once the store can be written again",
        )

    def __str__(self) -> str:
        return str(self.args[1])

    def __reduce__(self) -> tuple[Any, ...]:  # to a task, through the worker's pipe
        return (StoreWriteError, (self.path, self.reason))


class UnknownRunError(NbtasksError, KeyError):
    """No run with this id exists in the store."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        super().__init__(run_id)

    def __str__(self) -> str:
        return f"no run with id {self.run_id!r} in this store"


class PayloadError(NbtasksError, TypeError):
    """A value cannot be serialised with dill."""


class EngineStoppedError(NbtasksError):
    """The engine has been shut down in this process."""


class RemoteTraceback(Exception):
    """Carries a worker's formatted traceback as the ``__cause__`` of a re-raised error."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return f'\n"""\n{self.tb.rstrip()}\n"""'


class ShownAs:
    """Set as an exception's ``_render_traceback_``: the lines IPython shows for it instead
    of its traceback. A task's exception re-raised in the kernel shows the worker's
    traceback (the task's own frames), as ipyparallel's ``RemoteError`` does; an
    interrupted wait shows one line, not the frames of the wait."""

    def __init__(self, text: str) -> None:
        self.lines = text.rstrip().splitlines()

    def __call__(self) -> list[str]:
        """The lines, with the kernel's cells named as IPython names them (``Cell In[3]``
        rather than the file name ``/tmp/ipykernel_1/123.py`` they are compiled under)."""
        try:
            from IPython import get_ipython

            cells: dict[str, int] = get_ipython().compile._filename_map
        except Exception:
            return self.lines
        return [_CELL_FILE.sub(lambda m: _cell_name(m, cells), line) for line in self.lines]


_CELL_FILE = re.compile(r'^(\s*)File "([^"]+)", line (\d+)')


def _cell_name(match: re.Match[str], cells: dict[str, int]) -> str:
    count = cells.get(match[2])
    if count is None:
        return match[0]
    return f"{match[1]}Cell In[{count}], line {match[3]}"


def interrupted(message: str) -> KeyboardInterrupt:
    """A ``KeyboardInterrupt`` that IPython shows as its one-line ``message``."""
    exc = KeyboardInterrupt(message)
    exc._render_traceback_ = ShownAs(f"KeyboardInterrupt: {message}")  # type: ignore[attr-defined]
    return exc


class RunError(NbtasksError):
    """A run did not produce output: the error it ended with, as recorded.

    ``type`` and ``message`` describe the task's exception (or the crash / timeout / cancel),
    ``traceback`` is the worker's formatted traceback, ``status`` the run's final status.
    """

    def __init__(
        self,
        status: str,
        type: str,
        message: str,
        traceback: str = "",
        *,
        run_id: str | None = None,
        exc_bytes: bytes | None = None,
    ) -> None:
        self.status = status
        self.type = type
        self.message = message
        self.traceback = traceback
        self.run_id = run_id
        self.exc_bytes = exc_bytes
        super().__init__(_summary(status, type, message))

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_run_error, (self.status, self.type, self.message, self.traceback,
                                     self.run_id, self.exc_bytes))  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "type": self.type,
            "message": self.message,
            "traceback": self.traceback,
        }

    def _render_traceback_(self) -> list[str]:
        """How IPython shows this error: the worker's traceback, then the summary."""
        lines = self.traceback.rstrip().splitlines() if self.traceback else []
        return [*lines, f"nbtasks.RunError: {self}"]


def _summary(status: str, type_: str, message: str) -> str:
    """``CANCELED: by runs.cancel()``, ``FAILED: ValueError: bad``: the type is left out
    where it only repeats the status."""
    if not message:
        return f"{status}: {type_}"
    if type_.lower() == status.replace("_", "").lower():
        return f"{status}: {message}"
    return f"{status}: {type_}: {message}"


def _rebuild_run_error(status: str, type_: str, message: str, tb: str, run_id: str | None,
                       exc_bytes: bytes | None) -> RunError:  # fmt: skip
    return RunError(status, type_, message, tb, run_id=run_id, exc_bytes=exc_bytes)


class NbtasksWarning(UserWarning):
    """Something nbtasks noticed and repaired, or could not do, that a user should hear of."""


class AbortRun(Exception):
    """Raise inside a task to fail the run at once, without further attempts."""


for _cls in (NbtasksError, StoreLockedError, StoreWriteError, UnknownRunError, PayloadError,
             EngineStoppedError, RunError, AbortRun, NbtasksWarning):  # fmt: skip
    _cls.__module__ = "nbtasks"  # shown and pickled under their public name
