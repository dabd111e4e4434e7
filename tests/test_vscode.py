"""The notebook surface as VS Code's Jupyter extension presents it, with the parts that run
here (a real VS Code window cannot: see the README's "VS Code" paragraph).

1. The store and the notebook's name. The extension starts the kernel itself (no Jupyter
   server, so no ``JPY_SESSION_NAME``) and, before the first cell, runs one start-up request
   that assigns the notebook's path to ``__vsc_ipynb_file__`` in the user namespace. A real
   kernel (jupyter_client) gets that same request; the first run then stores in the
   folder's ``.nbtasks/runs.duckdb`` (the kernel's working directory), and the store's
   server knows the kernel by the notebook's name.
2. The widgets outside JupyterLab. VS Code draws ipywidgets with its own renderer, which
   loads anywidget's front end; that front end imports a widget's ``_esm`` from a Blob URL,
   puts its ``_css`` in a ``<style>`` and calls ``render({model, el})`` with a model proxy
   (get, set, on, off, send, save_changes). A plain page in chromium does the same with the
   state Python produces for real runs, and the buttons' messages are checked. Each output's
   static ``text/html`` copy is drawn in a page with JavaScript off.
"""

from __future__ import annotations

import json
import os
import queue
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jupyter_client.manager import KernelManager
from playwright.sync_api import Browser as PlaywrightBrowser
from playwright.sync_api import Page, expect, sync_playwright

from nbtasks import runs
from nbtasks.service.client import connect
from nbtasks.service.settings import Config
from nbtasks.ui.table import RunTable
from nbtasks.ui.widgets import BatchWidget, RunWidget

from conftest import PYTHONPATH
from tasks import add, fail_some

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-extensions",
    "--disable-background-networking", "--disable-component-update", "--no-first-run",
    "--disable-sync", "--disable-quic",
]  # fmt: skip
KERNEL_S = 30.0
UI_MS = 5_000

# -- 1. the store and the notebook's name under VS Code ----------------------------------------

NOTEBOOK = "/some/dir/My Analysis.ipynb"
# What the extension runs once a Python kernel has started, before kernel_info and before any
# cell: first a request that reads the ipywidgets version, then one request holding all its
# start-up code, which begins with ``__vsc_ipynb_file__ = "<notebook path>"`` (backslashes
# doubled) and disables Jedi completions. Both go as execute_request with silent=False,
# store_history=False (so the user's first cell is still [1]), stop_on_error=False,
# allow_stdin=True. Source: microsoft/vscode-jupyter, src/kernels/kernel.ts
# (initializeAfterStart, determineVersionOfIPyWidgets, gatherInternalStartupCode) and
# src/kernels/helpers.ts (executeSilently). The extension's raw kernel launcher
# (src/kernels/raw/launcher/) sets no JPY_SESSION_NAME.
WIDGETS_VERSION_PREFIX = "e976ee50-99ed-4aba-9b6b-9dcd5634d07d:IPyWidgets:"
VSCODE_WIDGETS_VERSION = f"""\
try:
    import ipywidgets as _VSCODE_ipywidgets
    print("{WIDGETS_VERSION_PREFIX}" + _VSCODE_ipywidgets.__version__)
    del _VSCODE_ipywidgets
except:
    pass
"""
VSCODE_STARTUP = "\n".join([
    '__vsc_ipynb_file__ = "{}"'.format(NOTEBOOK.replace("\\", "\\\\")),
    "%config Completer.use_jedi = False",
])  # fmt: skip


class VSCodeKernel:
    """A kernel started the way the extension starts one: in the notebook's working
    directory, without JPY_SESSION_NAME or a chosen store, then its start-up requests."""

    def __init__(self, cwd: Path) -> None:
        dropped = ("JPY_SESSION_NAME", "NBTASKS_STORE", "NBTASKS_DASK_SCHEDULER")
        env = {k: v for k, v in os.environ.items() if k not in dropped}
        env.update(
            PYTHONPATH=PYTHONPATH, NBTASKS_WORKERS="1", PYDEVD_IPYTHON_COMPATIBLE_DEBUGGING="1"
        )
        self.km = KernelManager(kernel_name="python3")
        self.km.start_kernel(env=env, cwd=str(cwd))
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=KERNEL_S)

    def silently(self, code: str) -> list[dict[str, Any]]:
        """The extension's ``executeSilently``."""
        msg_id = self.kc.execute(code, silent=False, store_history=False, allow_stdin=True,
                                 stop_on_error=False)  # fmt: skip
        return self.outputs(msg_id)

    def cell(self, code: str) -> list[dict[str, Any]]:
        return self.outputs(self.kc.execute(code))

    def outputs(self, msg_id: str) -> list[dict[str, Any]]:
        out = []
        deadline = time.monotonic() + KERNEL_S
        while True:
            try:
                msg = self.kc.get_iopub_msg(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"the kernel did not finish a request within {KERNEL_S:g}s")
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            assert msg["msg_type"] != "error", "\n".join(msg["content"]["traceback"])
            out.append(msg)
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                return out

    def close(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=False)


def _stdout(msgs: list[dict[str, Any]]) -> str:
    return "".join(m["content"].get("text", "") for m in msgs if m["msg_type"] == "stream")


def test_runs_of_the_notebook_vscode_opened_land_in_its_folders_store(tmp_path: Path) -> None:
    kernel = VSCodeKernel(tmp_path)
    try:
        version = _stdout(kernel.silently(VSCODE_WIDGETS_VERSION))
        assert version.startswith(WIDGETS_VERSION_PREFIX + "8.")  # the extension picks ipywidgets 8
        kernel.silently(VSCODE_STARTUP)
        first = kernel.cell(
            "import os\nfrom nbtasks import task, runs\n"
            "@task\ndef double(x):\n    return 2 * x\n"
            "print(double.trigger_and_wait(21).output, os.environ.get('JPY_SESSION_NAME'))\n"
            "print(runs.sql('select count(*) from runs').fetchall()[0][0])"
        )
        inputs = [m for m in first if m["msg_type"] == "execute_input"]
        assert inputs[0]["content"]["execution_count"] == 1  # start-up code took no number
        assert _stdout(first).split() == ["42", "None", "1"]
        store = tmp_path / ".nbtasks" / "runs.duckdb"
        where = _stdout(kernel.cell("import nbtasks.client.config as c\nprint(c.store_path())"))
        assert where.strip() == str(store)
        assert store.exists()
        assert [p.name for p in (tmp_path / ".nbtasks").glob("*.duckdb")] == ["runs.duckdb"]
        # the store's server knows the kernel by the notebook VS Code opened
        engine = connect(Config(store=str(store)), "test", start=False)
        try:
            clients = engine.request("status")["clients"]
        finally:
            engine.close()
        kernel_pid = kernel.km.provisioner.pid
        assert {"pid": kernel_pid, "name": "My Analysis.ipynb"} in clients
    finally:
        kernel.close()


# -- 2. the widgets in a bare anywidget host -------------------------------------------------

ORIGIN = "http://vscode-webview.test"
# A stand-in for anywidget's front end as VS Code's renderer runs it: the model is a proxy
# with get/set/on/off/send/save_changes over the state the kernel sent (comm_open), the ESM
# is imported from a Blob URL, the CSS goes in a <style> in the head, and render() gets the
# element. What the widget sends is recorded in window.sent; window.kernelUpdate(patch) is a
# comm_msg "update" from the kernel (set, then one change:NAME event per key and "change").
HOST = """<!doctype html><html><head><meta charset="utf-8"></head><body>
<div id="output"></div>
<script type="module">
window.sent = [];
window.saved = [];
window.mount = async (state) => {
  const data = { ...state };
  let handlers = [];  // [event, callback, context]
  const fire = (event) => {
    for (const [e, cb, ctx] of [...handlers]) if (e === event) cb.call(ctx, model);
  };
  const changed = (patch) => {
    Object.assign(data, patch);
    for (const key of Object.keys(patch)) fire(`change:${key}`);
    fire("change");
  };
  const pending = {};
  const model = {
    get: (name) => data[name],
    set: (name, value) => { pending[name] = value; changed({ [name]: value }); },
    save_changes: () => { window.saved.push({ ...pending }); },
    send: (content, callbacks, buffers) => { window.sent.push(content); },
    on: (event, callback, context) => { handlers.push([event, callback, context]); },
    off: (event, callback, context) => {
      handlers = handlers.filter(([e, cb, ctx]) =>
        !((event == null || e === event) && (callback == null || cb === callback)
          && (context == null || ctx === context)));
    },
  };
  window.kernelUpdate = changed;
  const style = document.createElement("style");
  style.id = state._anywidget_id;
  style.textContent = state._css;
  document.head.append(style);
  const url = URL.createObjectURL(new Blob([state._esm], { type: "text/javascript" }));
  const mod = await import(url);
  URL.revokeObjectURL(url);
  const widget = typeof mod.default === "function" ? await mod.default() : mod.default;
  const experimental = { invoke: async () => { throw new Error("no invoke here"); } };
  if (widget.initialize) await widget.initialize({ model, experimental });
  const el = document.createElement("div");
  document.getElementById("output").append(el);
  await widget.render({ model, el, experimental });
  return true;
};
window.hostReady = true;
</script></body></html>"""


class Browser:
    """Debian's chromium: a context for the live views (a fresh page each), and one page
    that runs no script, for the static copies."""

    def __init__(self, browser: PlaywrightBrowser) -> None:
        self.live = browser.new_context()
        self.live.route(f"{ORIGIN}/**", lambda route: route.fulfill(content_type="text/html",
                                                                     body=HOST))  # fmt: skip
        self.static = browser.new_context(java_script_enabled=False).new_page()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (see .ci/run)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        try:
            yield Browser(b)
        finally:
            b.close()


def _state(widget: Any) -> dict[str, Any]:
    """What the kernel sends the front end when the widget is displayed (comm_open)."""
    state: dict[str, Any] = json.loads(json.dumps(widget.get_state()))
    assert state["_esm"] and state["_css"] and state["_anywidget_id"]
    return state


def _host(browser: Browser, widget: Any) -> tuple[Page, list[str]]:
    """A page that mounts ``widget``'s state; with the errors the page raised."""
    page = browser.live.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(f"{ORIGIN}/output.html")
    page.wait_for_function("window.hostReady === true", timeout=UI_MS)
    assert page.evaluate("(state) => window.mount(state)", _state(widget)) is True
    return page, errors


def _sent(page: Page, count: int) -> list[dict[str, Any]]:
    """The messages the widget sent, once there are ``count`` of them."""
    page.wait_for_function(f"window.sent.length >= {count}", timeout=UI_MS)
    sent: list[dict[str, Any]] = page.evaluate("window.sent")
    return sent


def _static(browser: Browser, widget: Any) -> Page:
    """The output's static text/html copy, in a page that runs no script."""
    html = widget._repr_mimebundle_()[0]["text/html"]
    assert "<script" not in html.lower()
    page = browser.static
    page.set_content(html)
    expect(page.locator(".nbt-static")).to_be_visible()
    return page


def test_run_widget_renders_and_its_buttons_send(nb: object, browser: Browser) -> None:
    done = add.trigger_and_wait({"a": 1, "b": 2})
    widget = RunWidget(done.id)
    page, errors = _host(browser, widget)
    root = page.locator(".nbt-run").first
    expect(root).to_have_attribute("data-status", "COMPLETED")
    expect(root.locator(".nbt-head .nbt-badge").first).to_have_text("COMPLETED")
    expect(root.locator(".nbt-head .nbt-task")).to_have_text("add")
    expect(root.locator(".nbt-id code")).to_have_text(done.id)
    expect(root.locator(".nbt-output")).to_have_text("output: 3")
    expect(root.locator(".nbt-cancel")).to_be_disabled()  # a finished run
    expect(root.locator(".nbt-reschedule")).to_be_disabled()
    root.locator(".nbt-replay").click()
    assert _sent(page, 1) == [{"action": "replay"}]
    # the kernel answers with the new run's id: the front end offers to open it
    widget._handle_custom_msg({"action": "replay"}, [])
    (replay_id,) = widget.replays
    page.evaluate("(patch) => window.kernelUpdate(patch)",
                  {"replays": widget.replays, "feedback": widget.feedback})  # fmt: skip
    expect(root.locator(".nbt-feedback")).to_have_text(f"replayed as {replay_id}")
    root.locator(".nbt-open-replay").click()
    assert _sent(page, 2)[1] == {"action": "open", "id": replay_id}
    runs.wait(replay_id, timeout=10)
    assert page.locator(".nbt-static").count() == 0
    assert not errors, errors

    static = _static(browser, widget)
    expect(static.locator(".nbt-static")).to_contain_text("COMPLETED")
    expect(static.locator(".nbt-static")).to_contain_text(done.id)
    expect(static.locator(".nbt-static")).to_contain_text("output: 3")


def test_a_delayed_run_can_be_rescheduled_and_canceled(nb: object, browser: Browser) -> None:
    handle = add.trigger({"a": 1, "b": 1}, delay="1h")
    widget = RunWidget(handle.id)
    page, errors = _host(browser, widget)
    root = page.locator(".nbt-run").first
    expect(root).to_have_attribute("data-status", "DELAYED")
    expect(root.locator(".nbt-until")).to_be_visible()
    root.locator(".nbt-reschedule").click()
    root.locator(".nbt-cancel").click()
    assert _sent(page, 2) == [{"action": "reschedule", "by_s": 60}, {"action": "cancel"}]
    # the kernel acts on them as ipywidgets delivers them, and its new state is drawn
    for content in _sent(page, 2):
        widget._handle_custom_msg(content, [])
    assert handle.retrieve().status.value == "CANCELED"
    final = RunWidget(handle.id, follow=False)
    page.evaluate("(patch) => window.kernelUpdate(patch)",
                  {"run": final.run, "timeline": final.timeline})  # fmt: skip
    expect(root).to_have_attribute("data-status", "CANCELED")
    expect(root.locator(".nbt-cancel")).to_be_disabled()
    expect(root.locator(".nbt-timeline .nbt-badge").last).to_have_text("CANCELED")
    assert not errors, errors

    static = _static(browser, final)
    expect(static.locator(".nbt-static")).to_contain_text("CANCELED")
    expect(static.locator(".nbt-static")).to_contain_text(handle.id)


def test_batch_widget_renders_and_its_badges_and_cells_send(nb: object, browser: Browser) -> None:
    batch = fail_some.batch_trigger_and_wait(list(range(20)))  # items 7 and 17 fail
    ids = [r.id for r in batch.runs]
    widget = BatchWidget(ids, "fail_some")
    assert widget.counts == {"COMPLETED": 18, "FAILED": 2}
    page, errors = _host(browser, widget)
    root = page.locator(".nbt-batch")
    expect(root.locator(".nbt-done")).to_have_text("20/20 finished (2 failed)")
    expect(root.locator(".nbt-counts .nbt-badge")).to_have_text(["COMPLETED 18", "FAILED 2"])
    expect(root.locator(".nbt-grid span")).to_have_count(20)
    expect(root.locator(".nbt-grid span[data-status=FAILED]")).to_have_count(2)
    expect(root.locator(".nbt-head .nbt-cancel")).to_be_disabled()  # nothing left to cancel
    root.locator(".nbt-counts .nbt-badge[data-status=FAILED]").click()
    root.locator(".nbt-grid span[data-index='17']").click()
    assert _sent(page, 2) == [
        {"action": "grid", "status": "FAILED"},
        {"action": "select", "run_id": ids[17]},
    ]
    for content in _sent(page, 2):
        widget._handle_custom_msg(content, [])
    patch = {"grid": widget.grid, "sample": widget.sample, "selected": widget.selected}
    page.evaluate("(patch) => window.kernelUpdate(patch)", patch)
    expect(root.locator(".nbt-grid span")).to_have_count(2)
    expect(root.locator(".nbt-grid-range")).to_have_text(
        "FAILED: items 1\u20132 of 2 (#7\u2013#17)"
    )
    expect(root.locator(".nbt-detail")).to_have_attribute("data-detail-status", "FAILED")
    expect(root.locator(".nbt-detail .nbt-id code")).to_have_text(ids[17])
    origin = runs.retrieve(ids[17]).origin  # a run opened in another view says where from
    expect(root.locator(".nbt-detail .nbt-origin")).to_have_text(f"from {origin}")
    assert not errors, errors

    static = _static(browser, widget)
    expect(static.locator(".nbt-static")).to_contain_text("20/20 finished")
    expect(static.locator(".nbt-static")).to_contain_text("FAILED 2")
    expect(static.locator(".nbt-static")).to_contain_text("COMPLETED 18")


def test_run_table_renders_and_its_filters_and_actions_send(nb: object, browser: Browser) -> None:
    fail_some.batch_trigger_and_wait(list(range(10)))  # item 7 fails
    held = add.trigger({"a": 0, "b": 0}, delay="1h")
    table = RunTable(limit=25)
    page, errors = _host(browser, table)
    root = page.locator(".nbt-table-widget")
    expect(root.locator(".nbt-total")).to_have_text("11 runs")
    expect(root.locator("tbody tr")).to_have_count(11)
    expect(root.locator(f"tr[data-id='{held.id}'] .nbt-badge")).to_have_text("DELAYED")
    expect(root.locator(f"tr[data-id='{held.id}'] .nbt-id code")).to_have_text(held.id)
    origin = held.retrieve().origin  # this process's: where the run was triggered from
    assert origin
    expect(root.locator(f"tr[data-id='{held.id}'] td.nbt-origin")).to_have_text(origin)
    expect(root.locator("th[data-col=origin]")).to_have_text("origin")
    expect(root.locator("tbody tr[data-status=FAILED]")).to_have_count(1)
    root.locator(".nbt-filter-status").select_option("FAILED")
    root.locator(".nbt-filter-task").fill("fail")
    root.locator(".nbt-filter-task").press("Enter")
    root.locator(f"tr[data-id='{held.id}'] input[type=checkbox]").check()
    root.locator(".nbt-cancel-selected").click()
    root.locator(".nbt-bulk-replay").click()
    root.locator(".nbt-confirm-yes").click()
    everything = {"status": "", "task": "", "tag": "", "id": ""}
    assert _sent(page, 4) == [
        {"action": "filter", "status": "FAILED", "task": "", "tag": "", "id": ""},
        {"action": "filter", "status": "FAILED", "task": "fail", "tag": "", "id": ""},
        {"action": "cancel", "ids": [held.id]},
        {"action": "bulk", "op": "replay", "filters": everything},  # the filter it was given
    ]
    for content in _sent(page, 4)[:3]:
        table._handle_custom_msg(content, [])
    assert table.feedback == "canceled 1 selected run"
    page.evaluate("(patch) => window.kernelUpdate(patch)",
                  {"rows": table.rows, "total": table.total, "filters": table.filters,
                   "feedback": table.feedback})  # fmt: skip
    expect(root.locator("tbody tr")).to_have_count(1)
    expect(root.locator("tbody tr .nbt-badge")).to_have_text("FAILED")
    expect(root.locator(".nbt-total")).to_have_text("1 run")
    expect(root.locator(".nbt-feedback")).to_have_text("canceled 1 selected run")
    assert not errors, errors

    static = _static(browser, table)
    expect(static.locator(".nbt-static")).to_contain_text("1 runs matching status='FAILED'")
    expect(static.locator(".nbt-static tr")).to_have_count(2)  # the head and the FAILED run
