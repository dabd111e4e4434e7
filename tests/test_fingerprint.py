"""Fingerprints of notebook functions: equal while what dill would write stays the same."""

from __future__ import annotations

from typing import Any

import pytest

from nbtasks.core.fingerprint import fingerprint

NOTEBOOK = """
import math
LIMIT = 3
NAME = "a"
SCALE = 1.0
PAIR = (1, "x")
CONFIG = {"k": 1}

def helper(x):
    return x + LIMIT

def f(x):
    return helper(x) * SCALE + math.pi + len(NAME) + PAIR[0]

def uses_config(x):
    return CONFIG["k"]

class Model:
    pass

def uses_class(x):
    return Model()
"""


def notebook() -> dict[str, Any]:
    ns: dict[str, Any] = {"__name__": "__main__"}
    exec(NOTEBOOK, ns)
    return ns


def test_a_fingerprint_is_stable_while_nothing_it_uses_changes() -> None:
    ns = notebook()
    assert fingerprint(ns["f"]) is not None
    assert fingerprint(ns["f"]) == fingerprint(ns["f"])
    before = fingerprint(ns["f"])
    ns["UNRELATED"] = [6]  # a global it does not use
    assert fingerprint(ns["f"]) == before


@pytest.mark.parametrize(
    "name, value",
    [
        ("LIMIT", 4),  # a global of a notebook function it calls
        ("SCALE", -1.0),
        ("SCALE", 1),  # same value, other type: dill would write something else
        ("NAME", "b"),
        ("PAIR", (2, "x")),
        ("helper", lambda x: x),  # redefined
        ("math", __import__("cmath")),  # another module under the same name
    ],
)
def test_a_fingerprint_changes_with_what_the_function_uses(name: str, value: Any) -> None:
    ns = notebook()
    before = fingerprint(ns["f"])
    ns[name] = value
    assert fingerprint(ns["f"]) != before


def test_zero_and_minus_zero_differ() -> None:
    ns = notebook()
    ns["SCALE"] = 0.0
    before = fingerprint(ns["f"])
    ns["SCALE"] = -0.0
    assert fingerprint(ns["f"]) != before


def test_what_can_change_in_place_gives_no_fingerprint() -> None:
    ns = notebook()
    assert fingerprint(ns["uses_config"]) is None  # a dict
    assert fingerprint(ns["uses_class"]) is None  # a notebook class
    ns["LIMIT"] = [3]
    assert fingerprint(ns["f"]) is None  # through the helper
    assert fingerprint(len) is None  # not a Python function


def test_closures_and_defaults_count() -> None:
    def make(n: Any) -> Any:
        def g(x: Any, y: Any = n) -> Any:
            return x + n + y

        return g

    assert fingerprint(make(1)) != fingerprint(make(2))
    assert fingerprint(make([1])) is None
