"""Round trips for payloads, outputs and task functions, and safe previews.

``dumps`` tries plain ``pickle`` (protocol 5, in C) first and falls back to dill only when
pickle cannot write the value or writes a reference to ``__main__`` (a notebook's
functions and classes, which must travel by value): a 9 MiB list takes some 30 ms with
pickle against seconds with dill's pure-Python pickler.
"""

from __future__ import annotations

import pickle
import re
import reprlib
from typing import Any

import dill

from nbtasks.core.errors import PayloadError

_PREVIEW = reprlib.Repr()
_PREVIEW.maxstring = 80
_PREVIEW.maxother = 80
_PREVIEW.maxlist = _PREVIEW.maxtuple = _PREVIEW.maxdict = _PREVIEW.maxset = 8
_PREVIEW.maxlevel = 3
PREVIEW_CHARS = 200


_SCALARS = frozenset({type(None), bool, int, float, complex, str, bytes})


def _plain(obj: object, depth: int = 0) -> bool:
    """Scalars, and small lists, tuples and dicts of them: what pickle and dill write the
    same way, pickle (in C) some 30 times faster."""
    t = type(obj)
    if t in _SCALARS:
        return True
    if depth >= 2 or t not in (list, tuple, dict) or len(obj) > 32:  # type: ignore[arg-type]
        return False
    if t is dict:
        return all(
            type(k) in _SCALARS and _plain(v, depth + 1)
            for k, v in obj.items()  # type: ignore[attr-defined]
        )
    return all(_plain(x, depth + 1) for x in obj)  # type: ignore[attr-defined]


PICKLE_PROTOCOL = 5
_MAIN = b"__main__"  # what pickle writes for a reference to a notebook's function or class


def dumps(obj: object) -> bytes:
    """Serialise with pickle when it can do it alone, else with dill; functions and
    classes from ``__main__`` travel by value (dill)."""
    if _plain(obj):
        return pickle.dumps(obj, protocol=PICKLE_PROTOCOL)
    try:
        data = pickle.dumps(obj, protocol=PICKLE_PROTOCOL)
    except Exception:  # a lambda, a local function, something only dill knows how to write
        pass
    else:
        if _MAIN not in data:  # a reference to __main__ would not resolve in a worker
            return data
    return dill.dumps(obj, recurse=True)  # type: ignore[no-any-return]


# What a pickle holds when dill's own unpickler matters: dill's reducers, or a class it
# re-points to ``__main__``, or names it maps (``__builtin__``).
_DILL_MARKS = (b"dill", b"__main__", b"__builtin__")


def loads(data: bytes) -> Any:
    if any(mark in data for mark in _DILL_MARKS):
        return dill.loads(data)
    return pickle.loads(data)  # what pickle wrote, or dill wrote the way pickle does


def preview(obj: object) -> str:
    """A short repr, computed once at write time so listing never unpickles."""
    t = type(obj)
    if t is float or t is bool or obj is None or (t is int and -(10**15) < obj < 10**15):  # type: ignore[operator]
        return repr(obj)  # what reprlib gives them, sooner
    try:
        text = _PREVIEW.repr(obj)
    except Exception as exc:  # a broken __repr__ must not break a trigger
        text = f"<{type(obj).__qualname__} (repr failed: {type(exc).__name__})>"
    return text if len(text) <= PREVIEW_CHARS else text[: PREVIEW_CHARS - 3] + "..."


_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")  # in default reprs: <... object at 0x7f...>


def type_name(obj: object) -> str:
    t = type(obj)
    return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


def dumps_checked(what: str, obj: object) -> bytes:
    """``dumps`` that fails with a ``PayloadError`` naming the object that cannot travel."""
    try:
        return dumps(obj)
    except Exception as exc:
        path, culprit, cause = _find_culprit(what, obj, exc)
        shown = _ADDRESS.sub("", preview(culprit))  # the same text every time it happens
        raise PayloadError(
            f"{path} cannot be serialised with dill: {type_name(culprit)} "
            f"{shown} ({type(cause).__name__}: {cause})"
        ) from exc


def _children(obj: object) -> list[tuple[str, object]]:
    if isinstance(obj, dict):
        return [(f"[{k!r}]", v) for k, v in obj.items()]
    if isinstance(obj, (list, tuple)):
        return [(f"[{i}]", v) for i, v in enumerate(obj)]
    if isinstance(obj, (set, frozenset)):
        return [(f"{{{preview(v)}}}", v) for v in obj]
    code = getattr(obj, "__code__", None)
    fn_globals = getattr(obj, "__globals__", None)
    if code is not None and isinstance(fn_globals, dict):
        found = [(f" global {n}", fn_globals[n]) for n in code.co_names if n in fn_globals]
        cells = getattr(obj, "__closure__", None) or ()
        for name, cell in zip(code.co_freevars, cells, strict=False):
            try:
                found.append((f" closure {name}", cell.cell_contents))
            except ValueError:
                pass
        return found
    task_fn = getattr(obj, "fn", None)
    if callable(task_fn) and type(obj).__name__ == "Task":
        return [("", task_fn)]
    attrs = getattr(obj, "__dict__", None)
    if isinstance(attrs, dict) and not isinstance(obj, type):
        return [(f".{k}", v) for k, v in attrs.items()]
    return []


def _find_culprit(
    path: str, obj: object, exc: Exception, depth: int = 0
) -> tuple[str, object, Exception]:
    """Walk containers and attributes down to the innermost value that fails alone."""
    if depth < 20:
        for suffix, child in _children(obj):
            try:
                dumps(child)
            except Exception as child_exc:
                return _find_culprit(path + suffix, child, child_exc, depth + 1)
    return path, obj, exc
