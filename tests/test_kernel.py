"""The notebook surface in a real Jupyter kernel (jupyter_client): widgets stay interactive
while a cell blocks, the stop button cancels what the wait started, magics work."""

from __future__ import annotations

import contextlib
import os
import queue
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jupyter_client.manager import KernelManager

from conftest import PYTHONPATH

DEADLINE_S = 30.0

SETUP = """
%load_ext nbtasks
import time
from nbtasks import task, runs

@task
def slow(s):
    time.sleep(s)
    return s
"""


class Kernel:
    def __init__(self, tmp_path: Path, env: dict[str, str] | None = None) -> None:
        """A kernel started in ``tmp_path`` with a store there, unless ``env`` says else."""
        env = {**os.environ, "NBTASKS_STORE": str(tmp_path / "k.duckdb"),
               "NBTASKS_WORKERS": "2", "PYTHONPATH": PYTHONPATH, **(env or {})}  # fmt: skip
        self.km = KernelManager(kernel_name="python3")
        self.km.start_kernel(env=env, cwd=str(tmp_path))
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=DEADLINE_S)

    def execute(self, code: str) -> str:
        return str(self.kc.execute(code))

    def outputs(self, msg_id: str, timeout: float = DEADLINE_S) -> list[dict[str, Any]]:
        """IOPub messages of one request, until the kernel is idle again."""
        out = []
        deadline = time.monotonic() + timeout
        while True:
            msg = self.kc.get_iopub_msg(timeout=max(0.1, deadline - time.monotonic()))
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            out.append(msg)
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                return out

    def run(self, code: str) -> list[dict[str, Any]]:
        return self.outputs(self.execute(code))

    def value(self, expression: str) -> str:
        for msg in self.run(expression):
            if msg["msg_type"] == "execute_result":
                return str(msg["content"]["data"]["text/plain"])
            if msg["msg_type"] == "error":
                raise AssertionError("\n".join(msg["content"]["traceback"]))
        raise AssertionError(f"no value for {expression!r}")

    def wait_for_widget(self, msg_id: str) -> str:
        """The model id of the first widget a request displays."""
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:
            try:
                msg = self.kc.get_iopub_msg(timeout=1)
            except queue.Empty:
                continue
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            data = msg["content"].get("data", {})
            view = data.get("application/vnd.jupyter.widget-view+json")
            if msg["msg_type"] == "display_data" and view:
                return str(view["model_id"])
        raise AssertionError("the cell displayed no widget")

    def click(self, model_id: str, content: dict[str, Any]) -> None:
        """What a front-end sends when a widget's button calls model.send(content)."""
        msg = self.kc.session.msg(
            "comm_msg", {"comm_id": model_id, "data": {"method": "custom", "content": content}}
        )
        self.kc.shell_channel.send(msg)

    def close(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=False)


def _stdout(msgs: list[dict[str, Any]]) -> str:
    return "".join(m["content"].get("text", "") for m in msgs if m["msg_type"] == "stream")


@contextlib.contextmanager
def set_up_kernel(tmp_path: Path) -> Iterator[Kernel]:
    """A kernel in ``tmp_path`` that has run ``SETUP``; shut down afterwards."""
    k = Kernel(tmp_path)
    try:
        errors = [m for m in k.run(SETUP) if m["msg_type"] == "error"]
        assert not errors, errors
        yield k
    finally:
        k.close()


@pytest.fixture
def kernel(tmp_path: Path) -> Iterator[Kernel]:
    with set_up_kernel(tmp_path) as k:
        yield k


def test_cancel_button_works_while_the_cell_waits(kernel: Kernel) -> None:
    msg_id = kernel.execute("r = slow.trigger_and_wait(60)\nr.status.value")
    model_id = kernel.wait_for_widget(msg_id)
    kernel.click(model_id, {"action": "cancel"})
    results = [m for m in kernel.outputs(msg_id) if m["msg_type"] == "execute_result"]
    assert results and results[0]["content"]["data"]["text/plain"] == "'CANCELED'"
    assert kernel.value("str(r.error)") == "'CANCELED: by the Cancel button of its run widget'"


def test_a_cell_sent_during_the_wait_runs_after_it(kernel: Kernel) -> None:
    waiting = kernel.execute("r = slow.trigger_and_wait(1.0)\nr.output")
    model_id = kernel.wait_for_widget(waiting)
    queued = kernel.execute("'after: ' + str(r.output)")
    kernel.click(model_id, {"action": "noop"})  # handled during the wait, ignored
    first = [m for m in kernel.outputs(waiting) if m["msg_type"] == "execute_result"]
    second = [m for m in kernel.outputs(queued) if m["msg_type"] == "execute_result"]
    assert first[0]["content"]["data"]["text/plain"] == "1.0"
    assert second[0]["content"]["data"]["text/plain"] == "'after: 1.0'"
    assert second[0]["content"]["execution_count"] == first[0]["content"]["execution_count"] + 1


def test_cells_queued_during_a_wait_run_in_order(kernel: Kernel) -> None:
    cells = ["r = slow.trigger_and_wait(0.5)", "'B'", "'C'", "h = slow.trigger(0)", "'E'"]
    ids = [kernel.execute(cell) for cell in cells]  # sent back to back, as "Run all" does
    counts = []
    for msg_id in ids:
        inputs = [m for m in kernel.outputs(msg_id) if m["msg_type"] == "execute_input"]
        counts.append(inputs[0]["content"]["execution_count"])
    assert counts == sorted(counts) and len(set(counts)) == len(cells)


def test_stop_button_cancels_the_runs_the_wait_started(kernel: Kernel) -> None:
    msg_id = kernel.execute("b = slow.batch_trigger_and_wait([60, 60])")
    kernel.wait_for_widget(msg_id)
    kernel.km.interrupt_kernel()
    errors = [m for m in kernel.outputs(msg_id) if m["msg_type"] == "error"]
    assert errors and errors[0]["content"]["ename"] == "KeyboardInterrupt"
    assert errors[0]["content"]["traceback"] == [  # one line, not the frames of the wait
        "KeyboardInterrupt: the wait was interrupted, so its runs not yet final were canceled"
    ]
    statuses = kernel.value("sorted(r.status.value for r in runs.list(task='slow'))")
    assert statuses == "['CANCELED', 'CANCELED']"
    causes = kernel.value("{r.error.message for r in runs.list(task='slow')}")
    assert causes == "{'by an interrupt of the wait that started it (the stop button, Ctrl-C)'}"


def test_task_magic_assigns_outputs_and_reports_inputs(kernel: Kernel, tmp_path: Path) -> None:
    kernel.run("n = 6")
    msgs = kernel.run("%%task squares\nsq = [i * i for i in range(n)]\ntotal = sum(sq)")
    text = "".join(m["content"].get("text", "") for m in msgs if m["msg_type"] == "stream")
    assert "inputs: n (" in text and "assigned: sq, total" in text
    assert kernel.value("total") == "55"
    kernel.run("%%task bg_job --bg\nanswer = n * 7")
    # the cell's output (displayed as the live widget, so read through repr)
    assert kernel.value("bg = _\nrepr(bg)") == "\"RunHandle(task='bg_job')\""
    assert kernel.value("'kept'") == "'kept'"
    # assigned back when the run completes, with no cell running (and not _)
    deadline = time.monotonic() + DEADLINE_S
    while "True" not in _stdout(kernel.run("print('answer' in globals())")):  # sets no _
        assert time.monotonic() < deadline, "the --bg run's output was never assigned"
        time.sleep(0.05)
    assert kernel.value("answer, _") == "(42, 'kept')"
    # a cell after the run's end sees its outputs, whichever thread notices the end first
    kernel.run("%%task bg_job --bg\nanswer = n * 8")
    kernel.run("runs.wait(_.id, timeout=20)")
    assert kernel.value("answer") == "48"
    # an older run of the task that ends after a newer one does not overwrite its outputs
    go = tmp_path / "go"
    wait = f"import os\nwhile not os.path.exists({str(go)!r}):\n    time.sleep(0.01)\n"
    kernel.run(f"%%task bg_job --bg\n{wait}answer = 1")
    kernel.run("older = _")
    kernel.run("%%task bg_job --bg\nanswer = 2")
    kernel.run("runs.wait(_.id, timeout=20)")
    go.touch()
    kernel.run("runs.wait(older.id, timeout=20)")
    assert kernel.value("answer, older.wait().output['answer']") == "(2, 1)"


def test_a_bg_cell_left_waiting_starts_no_server_once_it_was_stopped(
    kernel: Kernel, tmp_path: Path
) -> None:
    """``nbtasks server stop`` while a ``%%task --bg`` run executes: the run ends, and
    neither the thread waiting to assign its outputs nor the hook before the next cells
    brings a server back."""
    go = tmp_path / "go"
    kernel.run(f"%%task stuck --bg\nimport os, time\nwhile not os.path.exists({str(go)!r}):\n"
               "    time.sleep(0.01)\nanswer = 1")  # fmt: skip
    kernel.run("from nbtasks.client import config\nfrom nbtasks.ui import magics\n"
               "from nbtasks.service.client import server_pid\n"
               "store = config.store_path()\nconfig.shutdown(stop_server=True)")  # fmt: skip
    deadline = time.monotonic() + DEADLINE_S
    while kernel.value("len(magics.BACKGROUND.pending)") != "0":  # each cell runs the hook
        assert time.monotonic() < deadline, "the --bg run was never settled"
        time.sleep(0.05)
    for _ in range(3):
        assert kernel.value("repr(server_pid(store))") == "'None'"
    assert kernel.value("'answer' in globals()") == "False"


def test_each_trigger_ships_the_globals_the_task_uses_as_they_are_now(kernel: Kernel) -> None:
    kernel.run(
        "RATE = 2\nCONFIG = {'offset': 1}\n"
        "def scale(x):\n    return x * RATE\n"
        "@task\ndef priced(x):\n    return scale(x) + CONFIG['offset']"
    )
    assert kernel.value("priced.trigger_and_wait(10).unwrap()") == "21"
    assert kernel.value("priced.trigger_and_wait(10).unwrap()") == "21"
    kernel.run("RATE = 3")  # a global of a notebook function the task calls
    assert kernel.value("priced.trigger_and_wait(10).unwrap()") == "31"
    kernel.run("CONFIG['offset'] = 5")  # changed in place
    assert kernel.value("priced.trigger_and_wait(10).unwrap()") == "35"
    kernel.run("def scale(x):\n    return x * RATE * 10")  # redefined
    assert kernel.value("priced.trigger_and_wait(1).unwrap()") == "35"


def test_task_magic_names_an_input_it_cannot_capture(kernel: Kernel) -> None:
    kernel.run("import sqlite3\ndb = sqlite3.connect(':memory:')")
    msgs = kernel.run("%%task uses_db\nrows = db.execute('select 1').fetchall()")
    text = "".join(m["content"].get("text", "") for m in msgs if m["msg_type"] == "stream")
    assert text.startswith(
        "UsageError: %%task uses_db: the input db cannot be serialised with dill: "
        "sqlite3.Connection <sqlite3.Connection object> (TypeError: "
    ), text  # the same text each time: no object address, so re-run notebooks match
    assert "0x" not in text
    assert kernel.value("len(runs.list(task='uses_db'))") == "0"


def test_task_magic_does_not_assign_back_what_the_cell_imports(kernel: Kernel) -> None:
    kernel.run("n = 2.25")
    msgs = kernel.run(
        "%%task with_import\nimport colorsys\nimport importlib\n"
        "hls = colorsys.rgb_to_hls(n, 0, 0)\ncs = colorsys\nxml = importlib.import_module('xml')"
    )
    text = "".join(m["content"].get("text", "") for m in msgs if m["msg_type"] == "stream")
    assert "assigned: hls\n" in text, text  # modules bound otherwise are not outputs either
    assert kernel.value("[n for n in ('colorsys', 'cs', 'xml') if n in globals()]") == "[]"
    assert kernel.value("hls[0]") == "0.0"


def test_magic_mistakes_are_one_line_usage_errors(kernel: Kernel) -> None:
    cells = {
        "%%task bad --retries x\nx = 1": "--retries",
        "%%task bad --max-duration 5x\nx = 1": "max_duration='5x'",
        "%%task bad --in nothere\nx = 1": "nothere",
        "%runs --status NOPE": "status='NOPE'",
    }
    for cell, named in cells.items():
        msgs = kernel.run(cell)
        text = "".join(m["content"].get("text", "") for m in msgs if m["msg_type"] == "stream")
        assert text.startswith("UsageError: "), (cell, text)
        assert len(text.strip().splitlines()) == 1 and named in text, (cell, text)
    assert kernel.value("len(runs.list(task='bad'))") == "0"


def test_autoload_gives_every_new_kernel_the_magics(tmp_path: Path) -> None:
    """``python -m nbtasks.autoload enable`` / ``disable``, with real kernels."""
    import subprocess
    import sys

    def cli(action: str) -> str:
        done = subprocess.run([sys.executable, "-m", "nbtasks.autoload", action],
                              capture_output=True, text=True, check=True)  # fmt: skip
        return done.stdout

    assert cli("status").startswith("disabled")
    try:
        assert cli("enable").startswith("enabled: ")
        k = Kernel(tmp_path)
        try:
            msgs = k.run("%%task auto_t\ny = 40 + 2")
            assert not [m for m in msgs if m["msg_type"] == "error"], msgs
            assert k.value("y") == "42"
        finally:
            k.close()
    finally:
        assert cli("disable").startswith("disabled: removed")
    k = Kernel(tmp_path)
    try:
        msgs = k.run("%%task auto_t\ny = 1")
        streams = "".join(m["content"].get("text", "") for m in msgs if m["msg_type"] == "stream")
        assert streams.startswith("UsageError: Cell magic `%%task` not found"), streams
    finally:
        k.close()


def test_display_in_tasks_is_captured_as_mime_bundles(kernel: Kernel, tmp_path: Path) -> None:
    """``IPython.display.display`` in a ``@task`` (imported in the notebook or in the task)
    and in a ``%%task`` cell: bundles on the attempt, live while it runs; not text."""
    go = tmp_path / "go"
    kernel.run(
        "import os\nfrom IPython.display import display, HTML\n"
        "class Card:\n    def _repr_markdown_(self):\n        return '**card**'\n"
        "@task\ndef shows(path):\n    display(HTML('<b>one</b>'), Card())\n"
        "    while not os.path.exists(path):\n        time.sleep(0.01)\n"
        "@task\ndef shows_inside(_):\n    from IPython.display import Markdown\n"
        "    display(Markdown('*two*'))"
    )
    kernel.run(f"h = shows.trigger({str(go)!r})")
    deadline = time.monotonic() + DEADLINE_S
    live = "[d.get('text/html') for d in runs.retrieve(h.id).attempts[-1].displays]"
    while kernel.value(f"runs.retrieve(h.id).attempts and {live}") != "['<b>one</b>', None]":
        assert time.monotonic() < deadline, "the displays did not arrive while the run ran"
        time.sleep(0.05)
    assert kernel.value("runs.retrieve(h.id).status.value") == "'EXECUTING'"
    go.touch()
    assert kernel.value("h.wait().run.attempts[-1].displays[1]['text/markdown']") == "'**card**'"
    kernel.run("r = shows_inside.trigger_and_wait(None)")
    assert kernel.value("r.run.attempts[-1].displays[0]['text/markdown']") == "'*two*'"
    kernel.run("%%task cell_shows\ndisplay(HTML('<i>three</i>'))\nx = 1")
    attempt = "runs.list(task='cell_shows')[0].attempts[-1]"
    assert kernel.value(f"{attempt}.displays[0]['text/html']") == "'<i>three</i>'"
    outputs = "[runs.retrieve(i).attempts[-1].stdout for i in (h.id, r.id)] + [" + attempt
    assert kernel.value(outputs + ".stdout]") == "['', '', '']"  # nothing printed instead


def test_task_errors_show_the_users_code_not_nbtasks(kernel: Kernel) -> None:
    """The worker's traceback, shown as the error itself: the user's frames with their
    source lines, cell line numbers for ``%%task``, and no nbtasks or IPython frames."""
    kernel.run("def helper(x):\n    return 1 / x\n")
    kernel.run("@task\ndef breaks(x):\n    y = x - x\n    return helper(y)")
    (error,) = [m for m in kernel.run("breaks.trigger_and_wait(3).unwrap()")
                if m["msg_type"] == "error"]  # fmt: skip
    lines = error["content"]["traceback"]
    assert error["content"]["ename"] == "ZeroDivisionError"
    assert lines[0] == "Traceback (most recent call last):", lines
    named = [re.sub(r"In\[\d+\]", "In[n]", line) for line in lines if "Cell In[" in line]
    assert named == ["  Cell In[n], line 4, in breaks", "  Cell In[n], line 2, in helper"], lines
    source = [line.strip() for line in lines if line.startswith("    ") and line.strip(" ^~")]
    assert source == [
        "return helper(y)", "return 1 / x",
    ], lines  # fmt: skip
    assert lines[-1] == "ZeroDivisionError: division by zero"
    assert len(lines) <= 10 and not any("nbtasks" in line for line in lines), lines
    (error,) = [m for m in kernel.run("%%task cell_breaks\nimport math\nz = math.sqrt(-1)\n")
                if m["msg_type"] == "error"]  # fmt: skip
    lines = error["content"]["traceback"]
    assert lines[1:3] == ['  File "<%%task cell_breaks>", line 3, in <module>',
                          "    z = math.sqrt(-1)"], lines  # fmt: skip
    assert lines[-1] == "ValueError: math domain error"
    assert not any("run_cell_magic" in line or "nbtasks" in line for line in lines), lines
