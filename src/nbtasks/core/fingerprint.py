"""What dill's by-value pickle of a notebook function depends on, cheap to compare.

A task defined in a notebook travels by value with the globals it uses, so every trigger
serialises it again (about 0.1 ms) in case one of those globals changed. The fingerprint
lists what that serialisation reads: the function's code, defaults and closure, and each
global name its code uses, with the value bound to it. Modules, classes and functions that
dill writes by reference are compared by identity, immutable values by type and value,
and notebook functions by their own fingerprint. Anything else (a list, a dict, an
instance, a notebook class: things that can change in place) gives no fingerprint, and
the function is serialised every time.
"""

from __future__ import annotations

import types
from functools import lru_cache
from typing import Any

_MISSING = object()  # a global name not bound (yet)
_SCALARS = frozenset({type(None), bool, int, str, bytes, complex})
_MAX_DEPTH = 4  # notebook functions calling notebook functions, this deep at most

Fingerprint = tuple[Any, ...]


class _Same:
    """Compared by identity: ``_Same(a) == _Same(b)`` when ``a is b``."""

    __slots__ = ("obj",)

    def __init__(self, obj: object) -> None:
        self.obj = obj

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Same) and other.obj is self.obj

    def __hash__(self) -> int:
        return id(self.obj)


@lru_cache(maxsize=1024)
def _global_names(code: types.CodeType) -> tuple[str, ...]:
    """Names the code (and code nested in it) may look up as globals."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names.update(_global_names(const))
    return tuple(sorted(names))


def _value(obj: Any, depth: int) -> Any:
    """A comparable stand-in for ``obj``, or None if it may change in place."""
    t = type(obj)
    if t in _SCALARS:
        return (t, obj)
    if t is float:
        return (t, obj.hex())  # tells 0.0 from -0.0, and nan equals itself
    if t in (tuple, frozenset):
        parts = [_value(x, depth) for x in obj]
        return None if None in parts else (t, tuple(parts))
    if t is types.ModuleType or t is types.BuiltinFunctionType or obj is _MISSING:
        return _Same(obj)
    if getattr(obj, "__module__", "__main__") != "__main__" and (
        t is types.FunctionType or isinstance(obj, type)
    ):
        return _Same(obj)  # dill writes it by reference
    if t is types.FunctionType:
        return fingerprint(obj, depth + 1)
    return None


def fingerprint(fn: Any, depth: int = 0) -> Fingerprint | None:
    """The fingerprint of a notebook function, or None when there is none."""
    if type(fn) is not types.FunctionType or depth > _MAX_DEPTH or fn.__dict__:
        return None
    parts: list[Any] = [
        _Same(fn), _Same(fn.__code__), fn.__name__, fn.__qualname__, fn.__doc__, fn.__module__,
    ]  # fmt: skip
    values = [fn.__defaults__, tuple(sorted((fn.__kwdefaults__ or {}).items()))]
    values += [_cell(cell) for cell in fn.__closure__ or ()]
    for name in _global_names(fn.__code__):
        parts.append(name)
        values.append(fn.__globals__.get(name, _MISSING))
    for value in values:
        stand_in = _value(value, depth)
        if stand_in is None:
            return None
        parts.append(stand_in)
    return tuple(parts)


def _cell(cell: Any) -> Any:
    try:
        return cell.cell_contents
    except ValueError:  # not bound yet
        return _MISSING
