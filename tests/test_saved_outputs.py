"""A notebook executed in a real kernel and saved keeps a static copy of each finished run,
batch and table (``text/html`` beside the widget view), which shows without a kernel: read
back with nbformat, and exported by nbconvert as nbviewer and GitHub show it (no widget
state)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbconvert import HTMLExporter

VIEW = "application/vnd.jupyter.widget-view+json"
CELLS = [
    """\
%load_ext nbtasks
import os, time
from nbtasks import task

@task
def gated(payload):  # finishes once the gate file exists: after the cell that opens it
    while not os.path.exists(payload["gate"]):
        time.sleep(0.01)
    return payload["a"] + payload["b"]

@task
def boom(x):
    raise ValueError(f"boom {x}")""",
    "failed = boom.trigger_and_wait(7)",
    'handle = gated.trigger({"gate": "gate", "a": 1, "b": 2})\nhandle',
    'batch = gated.batch_trigger([{"gate": "gate", "a": i, "b": i} for i in range(5)])\nbatch',
    'open("gate", "w").close()\nhandle.wait(); batch.wait()\nprint("done")',
    "%runs",
]
FAILED, HANDLE, BATCH, TABLE = 1, 2, 3, 5


def _static(cell: nbformat.NotebookNode) -> str:
    (shown,) = [o for o in cell.outputs if VIEW in o.get("data", {})]
    html = shown.data["text/html"]
    assert isinstance(html, str) and html.startswith('<div class="nbt-static"')
    return html


def test_a_saved_notebook_shows_its_finished_runs_without_a_kernel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NBTASKS_STORE", str(tmp_path / "store" / "runs.duckdb"))
    monkeypatch.setenv("NBTASKS_WORKERS", "2")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in CELLS])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}  # fmt: skip
    NotebookClient(nb, timeout=60, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()  # fmt: skip
    path = tmp_path / "saved.ipynb"
    nbformat.write(nb, path)

    saved = nbformat.read(path, as_version=4)
    cells = saved.cells
    # Each was displayed while live: the copy saved is the final state all the same.
    handle = _static(cells[HANDLE])
    assert "COMPLETED" in handle and "output: <code>3</code>" in handle
    assert "payload: <code>{&#x27;a&#x27;: 1, &#x27;b&#x27;: 2" in handle
    for live in ("QUEUED", "EXECUTING", "DELAYED"):
        assert live not in handle
    batch = _static(cells[BATCH])
    assert "5/5 finished" in batch and "COMPLETED 5" in batch
    failed = _static(cells[FAILED])
    assert "FAILED" in failed and "ValueError: boom 7" in failed
    assert "Traceback" in failed and ", in boom" in failed  # the worker's, in a <details>
    table = _static(cells[TABLE])
    assert table.startswith('<div class="nbt-static"') and "7 runs" in table
    assert table.count("<tr>") == 1 + 7
    assert "Run(task='gated', live)" not in str(cells[HANDLE].outputs)  # the text is final too

    # The widget state saved beside them (what a trusted JupyterLab draws) is final too.
    state = saved.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]

    def widget_state(i: int) -> dict[str, object]:
        (shown,) = [o for o in cells[i].outputs if VIEW in o.get("data", {})]
        return dict(state[shown.data[VIEW]["model_id"]]["state"])

    assert widget_state(HANDLE)["run"]["status"] == "COMPLETED"  # type: ignore[index]
    assert widget_state(BATCH)["counts"] == {"COMPLETED": 5}

    # Without widget state (GitHub, nbviewer of a notebook saved without it), nbconvert
    # shows the static copies.
    saved.metadata.pop("widgets", None)
    page, _ = HTMLExporter().from_notebook_node(saved)
    assert page.count('class="nbt-static"') == 4
    assert "ValueError: boom 7" in page
