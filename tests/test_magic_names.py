"""What ``%%task`` reads from the notebook and assigns back, found statically."""

from __future__ import annotations

import traceback

import pytest

from nbtasks.ui.magics import CellBody, names_of


def test_names_a_cell_imports_are_not_outputs_unless_it_binds_them_otherwise() -> None:
    read, assigned = names_of(
        "import math\nfrom os import path as p\nimport xml.dom\n"
        "root = math.sqrt(n) + len(p.sep)\nimport json\njson = json.dumps(root)\n"
    )
    assert read == ["n"]  # math, p, xml and json are the cell's own
    assert assigned == ["root", "json"]


def test_names_read_assigned_and_defined() -> None:
    read, assigned = names_of("def f(x):\n    return x + k\ntotal = f(base)\n_hidden = 1\n")
    assert read == ["k", "base"]
    assert assigned == ["f", "total"]


def test_a_cell_body_runs_numbered_as_its_cell_and_returns_no_module() -> None:
    """Line 1 is the ``%%task`` line, so the body's second line is the cell's line 3; a
    module bound by any name is not an output."""
    body = CellBody("import math\nm = math\nx = n + 1\n", ["m", "x"], False, "t", "%%task t")
    assert body({"n": 1}) == {"x": 2}
    with pytest.raises(TypeError) as info:
        body({"n": "one"})
    frame = traceback.extract_tb(info.value.__traceback__)[-1]
    assert (frame.filename, frame.lineno, frame.line) == ("<%%task t>", 4, "x = n + 1")
