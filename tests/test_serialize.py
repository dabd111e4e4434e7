"""How payloads and outputs are serialised: plain data by pickle, the rest by dill."""

from __future__ import annotations

import pickle
from typing import Any

import dill
import pytest

from nbtasks.core.serialize import dumps, loads

PLAIN = [None, True, 7, 2.5, 1j, "text", b"bytes", (1, "a"), [1, [2, 3]], {"k": [1, 2.0]}]


@pytest.mark.parametrize("value", PLAIN, ids=repr)
def test_plain_data_is_written_by_pickle_and_read_back_by_dill(value: Any) -> None:
    data = dumps(value)
    assert data == pickle.dumps(value, protocol=5)
    assert dill.loads(data) == value  # what every reader of stored payloads uses


class Point:
    def __init__(self, x: int) -> None:
        self.x = x


@pytest.mark.parametrize(
    "value",
    [
        {"p": Point(3)},  # an instance of an importable class
        list(range(100_000)),  # big data: pickle writes it in C, dill in Python
        [[[1]]],
        {1, 2},
    ],
    ids=["object", "big", "deep", "set"],
)
def test_whatever_pickle_can_write_alone_is_written_by_pickle(value: Any) -> None:
    data = dumps(value)
    assert data == pickle.dumps(value, protocol=5)
    back = loads(data)
    if isinstance(value, dict):
        assert back["p"].x == 3
    else:
        assert back == value


def test_what_pickle_cannot_write_or_would_point_to_main_goes_through_dill() -> None:
    def local(x: int) -> int:
        return x + 1

    value = [1, lambda: 1, local]  # a lambda and a local function: only dill writes them
    data = dumps(value)
    assert data == dill.dumps(value, recurse=True)
    back = loads(data)
    assert back[0] == 1 and back[1]() == 1 and back[2](1) == 2


def test_what_dill_must_read_is_read_by_dill() -> None:
    """A notebook class re-pointed to ``__main__`` on load, and dill's own reducers."""
    import __main__

    namespace: dict[str, Any] = {"__name__": "__main__"}
    exec("class Spot:\n    def __init__(self, x):\n        self.x = x\n", namespace)
    spot_class = namespace["Spot"]
    __main__.Spot = spot_class  # type: ignore[attr-defined]
    try:
        data = dumps(spot_class(5))
        assert b"__main__" in data
        back = loads(data)
        assert back.x == 5 and type(back) is spot_class  # the class the notebook has now
    finally:
        del __main__.Spot  # type: ignore[attr-defined]
    square = loads(dumps(lambda x: x * x))
    assert square(7) == 49


def test_a_notebook_function_travels_by_value_though_pickle_could_name_it() -> None:
    """pickle would write ``__main__.double`` by reference, which a worker cannot find."""
    import __main__

    namespace: dict[str, Any] = {"__name__": "__main__"}
    exec("def double(x):\n    return 2 * x\n", namespace)
    __main__.double = namespace["double"]  # type: ignore[attr-defined]
    try:
        data = dumps({"f": namespace["double"]})
    finally:
        del __main__.double  # type: ignore[attr-defined]
    assert loads(data)["f"](21) == 42  # rebuilt from the bytes, not looked up in __main__


@pytest.mark.parametrize("value", [*PLAIN, Point], ids=repr)
def test_everything_else_reads_back_equal(value: Any) -> None:
    assert loads(dumps(value)) == value


@pytest.mark.parametrize("value", [0, -5, 10**14, 10**20, 2.5, True, None, 1e300, "x" * 300])
def test_previews_of_scalars_read_as_reprlib_writes_them(value: Any) -> None:
    import reprlib

    from nbtasks.core.serialize import PREVIEW_CHARS, preview

    shortened = reprlib.Repr()
    shortened.maxstring = shortened.maxother = 80
    assert preview(value) == shortened.repr(value)[:PREVIEW_CHARS]
