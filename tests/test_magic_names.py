"""What ``%%task`` reads from the notebook and assigns back, found statically."""

from __future__ import annotations

from nbtasks.ui.magics import names_of


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
