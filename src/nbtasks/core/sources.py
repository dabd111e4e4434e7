"""Tracebacks from workers that read as the user's own.

A notebook's code has no file a worker could read: its cells live in the kernel's
``linecache`` under names like ``/tmp/ipykernel_1/123.py``. ``sources_of`` takes the text
of the cells a task function was defined in (and those of the notebook functions it
calls) so it travels with the function, and ``register`` puts it in the worker's
``linecache`` under the same names, so the worker's frames show their source lines.
``format_error`` then leaves nbtasks's own frames out of the traceback.
"""

from __future__ import annotations

import linecache
import os
import traceback
import types
from typing import Any

_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
_MAX_DEPTH = 4  # notebook functions calling notebook functions, this deep at most


def sources_of(fn: Any) -> dict[str, str]:
    """The text of the cells ``fn`` (a notebook function) and the notebook functions it
    uses were defined in, by file name: those no worker could read from a file."""
    found: dict[str, str] = {}
    _collect(fn, found, set(), 0)
    return found


def _collect(fn: Any, found: dict[str, str], seen: set[int], depth: int) -> None:
    if type(fn) is not types.FunctionType or id(fn) in seen or depth > _MAX_DEPTH:
        return
    seen.add(id(fn))
    for code in _codes(fn.__code__):
        name = code.co_filename
        if name not in found and not os.path.exists(name):
            lines = linecache.getlines(name)
            if lines:
                found[name] = "".join(lines)
    for name in fn.__code__.co_names:
        value = fn.__globals__.get(name)
        if getattr(value, "__module__", None) == "__main__":
            _collect(getattr(value, "__wrapped__", value), found, seen, depth + 1)


def _codes(code: types.CodeType) -> list[types.CodeType]:
    codes = [code]
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            codes.extend(_codes(const))
    return codes


def register(sources: dict[str, str]) -> None:
    """Make ``linecache`` (and so tracebacks) find these sources under their names."""
    for name, text in sources.items():
        lines = text.splitlines(keepends=True)
        if lines and not lines[-1].endswith("\n"):
            lines[-1] += "\n"
        # no modification time: linecache.checkcache never drops the entry
        linecache.cache[name] = (len(text), None, lines, name)


def _is_own(frame: traceback.FrameSummary) -> bool:
    return os.path.abspath(frame.filename).startswith(_PACKAGE)


def _prune(te: traceback.TracebackException, seen: set[int]) -> None:
    if id(te) in seen:
        return
    seen.add(id(te))
    kept = [f for f in te.stack if not _is_own(f)]
    if kept:  # an error in nbtasks itself keeps its frames
        te.stack = traceback.StackSummary.from_list(kept)
    for chained in (te.__cause__, te.__context__):
        if chained is not None:
            _prune(chained, seen)


def format_error(exc: BaseException) -> str:
    """``exc``'s traceback as Python formats it, without nbtasks's own frames."""
    te = traceback.TracebackException(type(exc), exc, exc.__traceback__)
    _prune(te, set())
    return "".join(te.format())
