"""The notebook widgets in a real browser: JupyterLab served from a private, throw-away
set-up, driven by Debian's headless chromium through Playwright's sync API.

What a user does and sees: run all cells (they must run in order) and watch a run widget
reach COMPLETED; click Cancel on a running run; click Cancel while a cell is still blocked in
``trigger_and_wait`` (the cell then ends with CANCELED); filter the run table by status. What
the page shows is checked again from a second channel, a kernel client on the kernel's
connection file. ``notebooks/quickstart.ipynb``, when present, must run all in order too.
Jupyter Notebook 7 gets the same server set-up: the quickstart (its stored outputs removed)
runs all in order and shows a COMPLETED run, and a running run's Cancel button works.

Screenshots go to the test's ``tmp_path``; when the widget test passes, its overview is
copied to ``docs/widgets.png`` for the README. Needs ``/usr/bin/chromium`` (``apt-get
install chromium``; ``.ci/run`` installs it). Recipe and pitfalls: the browser notes.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import psutil
import pytest
from jupyter_client import BlockingKernelClient
from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright

from nbtasks.service.client import server_pid

from conftest import PYTHONPATH, wait_for

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-extensions",
    "--disable-background-networking", "--disable-component-update", "--no-first-run",
    "--disable-sync", "--disable-quic",
]  # fmt: skip
QUICKSTART = ROOT / "notebooks" / "quickstart.ipynb"
DOCS_SCREENSHOT = ROOT / "docs" / "widgets.png"
QUICKSTART_WIDGETS = 6  # outputs of the quickstart that hold an nbtasks widget

SERVER_START_S = 60
KERNEL_READY_MS = 60_000
RUN_MS = 30_000  # a short run or a cancel shows up in the page within this
UI_MS = 10_000  # a widget reacts to a click within this

NOTEBOOK = "widgets.ipynb"
CELLS = [
    # 0: set-up
    """\
%load_ext nbtasks
import time
import nbtasks
from nbtasks import task

@task
def add(payload):
    import time
    time.sleep(0.3)
    return payload["a"] + payload["b"]

@task
def slow(seconds):
    import time
    time.sleep(seconds)
    return seconds""",
    # 1: a short run; the handle is the cell's result, so its live widget is shown
    'quick = add.trigger({"a": 1, "b": 2})\nquick',
    # 2: a small batch
    'batch = add.batch_trigger([{"a": i, "b": i} for i in range(6)])\nbatch',
    # 3: a long run, not waited for
    "long = slow.trigger(60)\nlong",
    # 4: a long blocking wait: its live widget's Cancel must work while the cell runs
    """\
t0 = time.monotonic()
blocked = slow.trigger_and_wait(60)
elapsed = time.monotonic() - t0
print(f"blocking wait returned {blocked.status.value}, early={elapsed < 45}")""",
    # 5: the run table
    "%runs",
]
QUICK, BATCH, LONG, BLOCKED, TABLE = 1, 2, 3, 4, 5
N_COMPLETED, N_CANCELED = 1 + 6, 2  # quick + the batch; long + blocked
STATUS_SQL = "'SELECT status FROM runs WHERE id = ?'"  # as Python source, for the kernel

# Records every status a run widget's root takes, per cell, from the moment it is installed.
WATCH_STATUSES = """() => {
  window.__nbtSeen = {};
  const cells = () => [...document.querySelectorAll('.jp-Notebook .jp-Cell')];
  new MutationObserver((mutations) => {
    for (const m of mutations) {
      const el = m.target;
      if (!(el instanceof Element) || !el.matches('.nbt-run[data-status]')) continue;
      const i = cells().indexOf(el.closest('.jp-Cell'));
      const seen = (window.__nbtSeen[i] = window.__nbtSeen[i] || []);
      if (el.dataset.status && seen[seen.length - 1] !== el.dataset.status) {
        seen.push(el.dataset.status);
      }
    }
  }).observe(document.body, { subtree: true, attributes: true, attributeFilter: ['data-status'] });
}"""


# -- the server ------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class JupyterServer:
    """An isolated Jupyter server: its own HOME, config, data, runtime and root dirs. A
    subclass names the application (``jupyter lab`` or ``jupyter notebook``) and its pages."""

    name = ""  # the ``jupyter`` sub-command
    module = ""  # its ``python -m`` module
    app_args: tuple[str, ...] = ()

    def __init__(self, base: Path) -> None:
        self.base = base
        self.root = base / "root"
        self.runtime = base / "runtime"
        self.store = base / "store" / "runs.duckdb"
        self.port = _free_port()
        self.token = secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.port}"
        config = base / "config"
        for d in (self.root, self.runtime, config, base / "home", base / "data", base / "ipython"):
            d.mkdir(parents=True, exist_ok=True)
        settings = config / "lab" / "user-settings" / "@jupyterlab"
        self._setting(settings / "apputils-extension" / "notification.jupyterlab-settings",
                      {"fetchNews": "false", "checkForUpdates": False})  # fmt: skip
        # Every cell stays in the DOM, so locators never meet a virtualised-away cell.
        self._setting(settings / "notebook-extension" / "tracker.jupyterlab-settings",
                      {"windowingMode": "none"})  # fmt: skip
        env = {
            **os.environ,
            "HOME": str(base / "home"),
            "JUPYTER_CONFIG_DIR": str(config),
            "JUPYTER_DATA_DIR": str(base / "data"),
            "JUPYTER_RUNTIME_DIR": str(self.runtime),
            "IPYTHONDIR": str(base / "ipython"),
            "NBTASKS_STORE": str(self.store),
            "NBTASKS_WORKERS": "2",
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": PYTHONPATH,  # its kernels import the nbtasks under test
        }
        env.pop("JUPYTER_PATH", None)
        log = base / f"{self.name}.log"
        self.log = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", self.module, "--no-browser", "--ip=127.0.0.1",
             f"--port={self.port}", "--ServerApp.port_retries=0",
             f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={self.root}",
             *self.app_args, "--allow-root"],
            env=env, cwd=self.root, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip

        def up() -> bool:
            try:
                self.api("GET", "status")
                return True
            except (OSError, urllib.error.URLError):
                if self.proc.poll() is not None:
                    raise RuntimeError(f"jupyter {self.name} exited: see {log}") from None
                return False

        try:
            wait_for(up, f"jupyter {self.name} to start (see {log})", SERVER_START_S, 0.1)
        except BaseException:
            self.stop()
            raise

    @staticmethod
    def _setting(path: Path, value: dict[str, Any]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value))

    def api(self, method: str, path: str, body: Any = None) -> Any:
        request = urllib.request.Request(
            f"{self.url}/api/{path}", method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"token {self.token}"},
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=10) as response:
            data = response.read()
        return json.loads(data) if data else None

    def page_url(self, notebook: str) -> str:
        raise NotImplementedError

    def fresh_kernels(self) -> None:
        """No kernel left from an earlier notebook (the store file has one writer), and an
        empty store."""
        for session in self.api("GET", "sessions"):
            self.api("DELETE", f"sessions/{session['id']}")
        wait_for(lambda: not self.api("GET", "kernels"), "the kernels to shut down", 30, 0.1)
        self.stop_nbtasks_server()
        for leftover in self.store.parent.glob(self.store.name + "*"):
            leftover.unlink()

    def kernel_client(self, notebook: str) -> BlockingKernelClient:
        """A second client of the notebook's kernel, on its connection file."""
        (session,) = [s for s in self.api("GET", "sessions") if s["path"] == notebook]
        client = BlockingKernelClient()
        client.load_connection_file(str(self.runtime / f"kernel-{session['kernel']['id']}.json"))
        client.start_channels()
        client.wait_for_ready(timeout=30)
        return client

    def stop_nbtasks_server(self) -> None:
        """Stop the store's nbtasks server, as ``nbtasks server stop`` does: it outlives the
        kernels by design, and stays while it has runs to drive (e.g. a test that failed
        before cancelling its delayed run)."""
        env = {**os.environ, "PYTHONPATH": PYTHONPATH}
        done = subprocess.run(
            [sys.executable, "-m", "nbtasks.cli", "--store", str(self.store), "server", "stop"],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, (done.stdout, done.stderr)

    def descendants(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def stop(self) -> list[psutil.Process]:
        """Shut down (kernels first, through the API), then kill what is left. Returns the
        processes the server had started that are still alive afterwards."""
        started = self.descendants()
        self.stop_nbtasks_server()
        if self.proc.poll() is None:
            try:
                self.api("POST", "shutdown")
            except (OSError, urllib.error.URLError):
                pass
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)  # the server's own process group
                self.proc.wait(timeout=10)
        _, alive = psutil.wait_procs(started, timeout=15)
        for p in alive:
            try:
                p.kill()
            except psutil.Error:
                pass
        self.log.close()
        # A server of the store started after the stop above (e.g. by a background refresh)
        # would drive its delayed runs, alone, for ever.
        pid = server_pid(str(self.store))
        if pid is not None:
            leaked = psutil.Process(pid)
            self.stop_nbtasks_server()
            alive.append(leaked)
        return alive


class Lab(JupyterServer):
    name, module = "lab", "jupyterlab"
    app_args = ("--LabApp.expose_app_in_browser=True", "--LabApp.news_url=None")

    def page_url(self, notebook: str) -> str:
        # A fresh workspace per page: no tab (and no kernel) of an earlier page comes back.
        workspace = notebook.replace(".", "-")
        return f"{self.url}/lab/workspaces/{workspace}/tree/{notebook}?reset&token={self.token}"


class Notebook7(JupyterServer):
    """Jupyter Notebook 7: one notebook per page, on JupyterLab's components."""

    name, module = "notebook", "notebook"
    app_args = ("--JupyterNotebookApp.expose_app_in_browser=True",)

    def page_url(self, notebook: str) -> str:
        return f"{self.url}/notebooks/{notebook}?token={self.token}"


def serve(kind: type[JupyterServer], factory: pytest.TempPathFactory) -> Iterator[Any]:
    def terminated(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)  # so the clean-up below still runs

    previous = signal.signal(signal.SIGTERM, terminated)
    try:
        server = kind(factory.mktemp(kind.name))
        try:
            yield server
        finally:
            left = server.stop()
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert not left, f"processes of the Jupyter server left alive after shutdown: {left}"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    yield from serve(Lab, tmp_path_factory)


@pytest.fixture(scope="module")
def notebook7(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Notebook7]:
    yield from serve(Notebook7, tmp_path_factory)


@pytest.fixture(autouse=True)
def no_leftover_workers() -> Iterator[None]:
    """Overrides conftest's check: here the workers belong to the notebook's kernel, a child
    of the module's Jupyter servers, and their fixtures check that none outlives them."""
    yield


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    yield from launch_chromium()


def launch_chromium() -> Iterator[Browser]:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (see .ci/run)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        try:
            yield b
        finally:
            b.close()


# -- driving the page ------------------------------------------------------------------------


def open_notebook(server: JupyterServer, browser: Browser, notebook: str,
                  page: Page | None = None) -> Page:  # fmt: skip
    page = page or browser.new_page(viewport={"width": 1280, "height": 1000})
    page.goto(server.page_url(notebook))
    panel = page.locator(".jp-NotebookPanel")
    expect(panel).to_be_visible(timeout=KERNEL_READY_MS)
    # A really ready kernel: the name is there *and* the indicator says idle (the indicator
    # is idle for a moment while the name still reads "No Kernel"; cells run then are lost).
    expect(panel.locator('[data-jp-item-name="kernelName"]')).to_contain_text(
        "ipykernel", timeout=KERNEL_READY_MS
    )
    expect(panel.locator(".jp-Notebook-ExecutionIndicator")).to_have_attribute(
        "data-status", "idle", timeout=KERNEL_READY_MS
    )
    page.evaluate("() => { window.jupyterapp.shell.collapseLeft(); }")
    return page


def run_all(page: Page) -> None:
    # Not awaited: the command's promise has no timeout; the DOM says when cells are done.
    page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")


def cells(page: Page) -> Locator:
    return page.locator(".jp-NotebookPanel .jp-Notebook .jp-Cell")


def prompt(cell: Locator) -> Locator:
    return cell.locator(".jp-InputArea-prompt")


def expect_done(cell: Locator, timeout: float) -> None:
    expect(prompt(cell)).to_have_text(re.compile(r"^\[\d+\]:$"), timeout=timeout)


def prompts(page: Page) -> list[str]:
    return [t.strip() for t in prompt(cells(page)).all_inner_texts()]


def expect_ran_in_order(page: Page, last: int, timeout: float) -> None:
    """Cells 0..last are done, and ran in their order ("run all" sent them in order)."""
    try:
        expect_done(cells(page).nth(last), timeout=timeout)
    except AssertionError as exc:
        raise AssertionError(f"cell {last} did not finish; prompts: {prompts(page)}") from exc
    shown = prompts(page)[: last + 1]
    counts = [int(m.group(1)) if (m := re.fullmatch(r"\[(\d+)\]:", t)) else -1 for t in shown]
    assert -1 not in counts and counts == sorted(set(counts)), (
        f"cells 0..{last} did not run in order after 'run all': prompts {shown}"
    )


def run_widget(cell: Locator) -> Locator:
    return cell.locator(".nbt-run[data-status]")


def kernel_value(client: BlockingKernelClient, expression: str) -> str:
    """Evaluate ``expression`` in the kernel (no output, no history); its repr."""
    msg_id = client.execute("", silent=True, store_history=False,
                            user_expressions={"v": expression})  # fmt: skip
    while True:
        reply = client.get_shell_msg(timeout=15)
        if reply["parent_header"].get("msg_id") == msg_id:
            break
    value = reply["content"]["user_expressions"]["v"]
    assert value["status"] == "ok", f"{expression}: {value}"
    return str(value["data"]["text/plain"])


def kernel_status_becomes(client: BlockingKernelClient, expression: str, expected: str,
                          timeout: float = 15) -> None:  # fmt: skip
    """Bounded retry: the store commits the final state a moment after the page shows it."""
    wait_for(lambda: kernel_value(client, expression) == repr(expected),
             f"{expression} to be {expected!r}", timeout, 0.2)  # fmt: skip


def shot(page: Page, path: Path) -> Path:
    """What the notebook panel shows now."""
    page.locator(".jp-NotebookPanel").screenshot(path=path)
    return path


def overview(page: Page, first: Locator, last: Locator, path: Path) -> Path:
    """Cells ``first`` to ``last``, whole, on a page tall enough to show them all."""
    page.set_viewport_size({"width": 1100, "height": 2000})
    page.evaluate("() => { window.jupyterapp.shell.currentWidget.content.activeCellIndex = 0; }")
    page.mouse.move(0, 0)
    first.evaluate("el => el.scrollIntoView({block: 'start'})")
    top, bottom = first.bounding_box(), last.bounding_box()
    assert top is not None and bottom is not None
    height = bottom["y"] + bottom["height"] - top["y"]
    page.screenshot(path=path, clip={"x": top["x"], "y": top["y"], "width": top["width"],
                                     "height": height})  # fmt: skip
    return path


def write_notebook(path: Path, sources: list[str]) -> None:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in sources])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)",
                                 "language": "python"}  # fmt: skip
    nbformat.write(nb, path)


def copy_unrun(source: Path, path: Path) -> None:
    """``source`` without its stored outputs, prompts and widget state: a stored ``[3]:``
    or a restored widget must not pass for one that this run made."""
    nb = nbformat.read(source, as_version=4)
    for c in nb.cells:
        if c.cell_type == "code":
            c.outputs, c.execution_count = [], None
    nb.metadata.pop("widgets", None)
    nbformat.write(nb, path)


# -- the tests -------------------------------------------------------------------------------


def test_run_widgets_and_table_in_jupyterlab(lab: Lab, browser: Browser, tmp_path: Path) -> None:
    lab.fresh_kernels()
    write_notebook(lab.root / NOTEBOOK, CELLS)
    page = open_notebook(lab, browser, NOTEBOOK)
    try:
        expect(cells(page)).to_have_count(len(CELLS))
        page.evaluate(WATCH_STATUSES)
        run_all(page)
        cell = cells(page).nth

        expect_ran_in_order(page, LONG, timeout=RUN_MS)

        # (1) A short run's widget reaches COMPLETED, and the batch's widget counts 6 done.
        expect(run_widget(cell(QUICK))).to_have_attribute("data-status", "COMPLETED",
                                                          timeout=RUN_MS)  # fmt: skip
        timeline = run_widget(cell(QUICK)).locator(".nbt-timeline .nbt-badge")
        expect(timeline.first).to_have_attribute("data-status", "QUEUED")
        expect(timeline.last).to_have_attribute("data-status", "COMPLETED")
        expect(cell(QUICK).locator(".nbt-attempts")).to_contain_text("output: 3")
        done = cell(BATCH).locator(".nbt-batch .nbt-done")
        expect(done).to_have_text("6/6 finished", timeout=RUN_MS)
        expect(cell(BATCH).locator('.nbt-counts .nbt-badge[data-status="COMPLETED"]')).to_have_text(
            "COMPLETED 6"
        )

        # (3) Cancel a run while its cell still blocks in trigger_and_wait: the widget's
        # message must be handled during the wait, and the cell then ends with CANCELED.
        blocked = run_widget(cell(BLOCKED))
        expect(blocked).to_have_attribute("data-status", "EXECUTING", timeout=RUN_MS)
        expect(prompt(cell(BLOCKED))).to_have_text("[*]:")
        cell(BLOCKED).screenshot(path=tmp_path / "1-blocking-cell-running.png")
        blocked.locator("button.nbt-cancel").click()
        expect(blocked).to_have_attribute("data-status", "CANCELED", timeout=UI_MS)
        expect_done(cell(BLOCKED), timeout=UI_MS)
        expect(cell(BLOCKED).locator(".jp-OutputArea-output").last).to_have_text(
            "blocking wait returned CANCELED, early=True"
        )
        expect(blocked.locator(".nbt-cancel")).to_be_disabled()

        # The table cell was held while the wait blocked, and runs after it.
        table = cell(TABLE).locator(".nbt-table-widget")
        expect(table).to_be_visible(timeout=UI_MS)
        expect_ran_in_order(page, TABLE, timeout=UI_MS)

        # (2) Cancel a running run from its widget, with the kernel idle.
        long = run_widget(cell(LONG))
        expect(long).to_have_attribute("data-status", "EXECUTING", timeout=RUN_MS)
        expect(page.locator(".jp-NotebookPanel .jp-Notebook-ExecutionIndicator")).to_have_attribute(
            "data-status", "idle", timeout=UI_MS
        )
        cell(LONG).screenshot(path=tmp_path / "2-long-run-executing.png")
        elapsed = long.locator(".nbt-head .nbt-elapsed")  # counts on while it executes
        expect(elapsed).to_have_text(re.compile(r"^running \d"))
        expect(elapsed).not_to_have_text(elapsed.inner_text(), timeout=UI_MS)
        long.locator("button.nbt-cancel").click()
        expect(long).to_have_attribute("data-status", "CANCELED", timeout=UI_MS)
        expect(long.locator('.nbt-head .nbt-badge[data-status="CANCELED"]')).to_be_visible()
        expect(long.locator(".nbt-feedback")).to_have_text("canceled", timeout=UI_MS)
        expect(long.locator(".nbt-cancel")).to_be_disabled()

        # The same, seen by a second client of the kernel: the runs are CANCELED in the store.
        client = lab.kernel_client(NOTEBOOK)
        try:
            for name in ("long", "blocked"):
                stored = f"nbtasks.runs.sql({STATUS_SQL}, [{name}.id]).fetchall()[0][0]"
                kernel_status_becomes(client, stored, "CANCELED")
                live = f"nbtasks.runs.retrieve({name}.id).status.value"
                kernel_status_becomes(client, live, "CANCELED")
            assert kernel_value(client, "quick.retrieve().status.value") == "'COMPLETED'"
        finally:
            client.stop_channels()

        # (4) The run table: pick a status in its filter, see only rows of that status.
        rows = table.locator("tbody tr[data-status]")
        expect(rows).to_have_count(N_COMPLETED + N_CANCELED, timeout=UI_MS)
        # The table refreshes itself while it shows a live run: long is CANCELED there too.
        canceled_rows = table.locator('tbody tr[data-status="CANCELED"]')
        expect(canceled_rows).to_have_count(N_CANCELED, timeout=UI_MS)
        status_filter = table.locator("select.nbt-filter-status")
        for status, count in (("CANCELED", N_CANCELED), ("COMPLETED", N_COMPLETED),
                              ("EXECUTING", 0)):  # fmt: skip
            status_filter.select_option(status)
            expect(rows).to_have_count(count, timeout=UI_MS)
            expect(table.locator(f'tbody tr:not([data-status="{status}"])')).to_have_count(0)
            expect(status_filter).to_have_value(status)
            cell(TABLE).screenshot(path=tmp_path / f"3-table-{status}.png")
        status_filter.select_option("")
        expect(rows).to_have_count(N_COMPLETED + N_CANCELED, timeout=UI_MS)

        picture = overview(page, cell(QUICK), cell(TABLE), tmp_path / "4-overview.png")
        if os.environ.get("NBTASKS_UPDATE_SCREENSHOT"):  # refresh the README's picture
            DOCS_SCREENSHOT.parent.mkdir(exist_ok=True)
            shutil.copyfile(picture, DOCS_SCREENSHOT)
        seen = page.evaluate("() => window.__nbtSeen")
        print(f"statuses seen in the page, per cell: {seen}; screenshots in {tmp_path}")
    except BaseException:
        shot(page, tmp_path / "failure.png")
        raise
    finally:
        page.close()


def test_quickstart_notebook_in_jupyterlab(lab: Lab, browser: Browser, tmp_path: Path) -> None:
    lab.fresh_kernels()
    copy_unrun(QUICKSTART, lab.root / QUICKSTART.name)
    page = open_notebook(lab, browser, QUICKSTART.name)
    try:
        code = page.locator(".jp-NotebookPanel .jp-Notebook .jp-CodeCell")
        expect(code.first).to_be_visible()
        run_all(page)
        for i in range(code.count()):  # an exception would stop "run all": cells stay unrun
            expect_done(code.nth(i), timeout=60_000)
        shown = [t.strip() for t in prompt(code).all_inner_texts()]
        counts = [int(t[1:-2]) for t in shown]
        assert counts == sorted(set(counts)), f"cells did not run in order: prompts {shown}"
        expect(page.locator('.nbt-run[data-status="COMPLETED"]').first).to_be_visible(
            timeout=RUN_MS
        )
        shot(page, tmp_path / "quickstart.png")
    except BaseException:
        shot(page, tmp_path / "failure.png")
        raise
    finally:
        page.close()


def test_quickstart_and_cancel_in_notebook7(
    notebook7: Notebook7, browser: Browser, tmp_path: Path
) -> None:
    """The same widgets in Jupyter Notebook 7 (one notebook per page, its own shell)."""
    notebook7.fresh_kernels()
    name = f"unrun-{QUICKSTART.name}"
    copy_unrun(QUICKSTART, notebook7.root / name)
    page = open_notebook(notebook7, browser, name)
    try:
        code = page.locator(".jp-NotebookPanel .jp-Notebook .jp-CodeCell")
        expect(code.first).to_be_visible()
        expect(prompt(code)).to_have_text([re.compile(r"^\[ \]:$")] * code.count())
        run_all(page)
        for i in range(code.count()):  # an exception would stop "run all": cells stay unrun
            try:
                expect_done(code.nth(i), timeout=60_000)
            except AssertionError as exc:
                shown = [t.strip() for t in prompt(code).all_inner_texts()]
                raise AssertionError(f"code cell {i} did not finish; prompts: {shown}") from exc
        shown = [t.strip() for t in prompt(code).all_inner_texts()]
        assert shown == [f"[{n}]:" for n in range(1, code.count() + 1)], (
            f"cells did not run in order: prompts {shown}"
        )
        expect(page.locator('.nbt-run[data-status="COMPLETED"]').first).to_be_visible(
            timeout=RUN_MS
        )
        # The notebook scrolls inside its panel, so each widget's output gets its own picture.
        widgets = page.locator(".jp-OutputArea-output:has(.nbt)")
        expect(widgets).to_have_count(QUICKSTART_WIDGETS)
        for i in range(QUICKSTART_WIDGETS):
            widgets.nth(i).screenshot(path=tmp_path / f"notebook7-quickstart-widget-{i}.png")
    except BaseException:
        page.screenshot(path=tmp_path / "notebook7-quickstart-failure.png")
        raise
    finally:
        page.close()

    # Cancel a running run from its widget, with the kernel idle.
    notebook7.fresh_kernels()
    name = "cancel.ipynb"
    write_notebook(notebook7.root / name, [CELLS[0], CELLS[LONG]])
    page = open_notebook(notebook7, browser, name)
    try:
        expect(cells(page)).to_have_count(2)
        run_all(page)
        expect_ran_in_order(page, 1, timeout=RUN_MS)
        long = run_widget(cells(page).nth(1))
        expect(long).to_have_attribute("data-status", "EXECUTING", timeout=RUN_MS)
        expect(page.locator(".jp-NotebookPanel .jp-Notebook-ExecutionIndicator")).to_have_attribute(
            "data-status", "idle", timeout=UI_MS
        )
        page.screenshot(path=tmp_path / "notebook7-long-executing.png")
        long.locator("button.nbt-cancel").click()
        expect(long).to_have_attribute("data-status", "CANCELED", timeout=UI_MS)
        expect(long.locator('.nbt-head .nbt-badge[data-status="CANCELED"]')).to_be_visible()
        expect(long.locator(".nbt-feedback")).to_have_text("canceled", timeout=UI_MS)
        expect(long.locator(".nbt-cancel")).to_be_disabled()
        page.screenshot(path=tmp_path / "notebook7-long-canceled.png")
        client = notebook7.kernel_client(name)
        try:
            stored = f"nbtasks.runs.sql({STATUS_SQL}, [long.id]).fetchall()[0][0]"
            kernel_status_becomes(client, stored, "CANCELED")
        finally:
            client.stop_channels()
        print(f"screenshots in {tmp_path}")
    except BaseException:
        page.screenshot(path=tmp_path / "notebook7-cancel-failure.png")
        raise
    finally:
        page.close()


FEATURES = "features.ipynb"
FEATURE_CELLS = [
    CELLS[0]
    + """

@task
def item(i):
    if i % 100 == 7:
        raise ValueError(f"item {i}")
    return i""",
    'later = add.trigger({"a": 1, "b": 1}, delay="1h")\nlater',
    "big = item.batch_trigger_and_wait(list(range(2000)))",  # its live view shows
    "%runs --task ad",
    "%runs --id {later.id[:12]}",
    "stopped = slow.batch_trigger_and_wait([0, 0, 30, 30, 30, 30])",  # stopped midway
]
LATER, BIG, FILTERED, BY_ID, STOPPED = 1, 2, 3, 4, 5


def test_reschedule_big_batch_table_filters_and_copied_ids(
    lab: Lab, browser: Browser, tmp_path: Path
) -> None:
    """Issue 14: Reschedule +1m from when the run is due, shown in one clock format; every
    item of a 2,000-run batch reachable, its status badges filtering the grid; the table's
    text filters shown, applied on Enter and while typing, by substring and id prefix; a
    run id copied from the run widget and from the table."""
    lab.fresh_kernels()
    write_notebook(lab.root / FEATURES, FEATURE_CELLS)
    context = browser.new_context(viewport={"width": 1400, "height": 1000},
                                  permissions=["clipboard-read", "clipboard-write"])  # fmt: skip
    page = open_notebook(lab, browser, FEATURES, context.new_page())
    client = None
    try:
        run_all(page)
        expect_ran_in_order(page, BY_ID, timeout=RUN_MS)
        cell = cells(page).nth

        # A batch stopped with the stop button: its count and its bar agree, and it says
        # what was canceled.
        stopped = cell(STOPPED).locator(".nbt-batch")
        expect(stopped.locator(".nbt-done")).to_have_text("2/6 finished", timeout=RUN_MS)
        page.evaluate("() => { window.jupyterapp.commands.execute('notebook:interrupt-kernel'); }")
        expect(stopped.locator(".nbt-done")).to_have_text("6/6 finished (4 canceled)",
                                                          timeout=UI_MS)  # fmt: skip
        expect_done(cell(STOPPED), timeout=UI_MS)
        bar = stopped.locator(".nbt-stacked")
        widths = bar.evaluate(
            "b => [b.clientWidth, ...[...b.children].map(s => s.getBoundingClientRect().width)]"
        )
        assert abs(sum(widths[1:]) - widths[0]) < 1, widths  # full, in two colours
        assert len(widths) == 3, widths

        client = lab.kernel_client(FEATURES)
        later_id = kernel_value(client, "later.id").strip("'")
        clipboard = "() => navigator.clipboard.readText()"

        # Reschedule +1m: one minute after it was due (not after now), in the view's clock.
        later = run_widget(cell(LATER))
        expect(later).to_have_attribute("data-status", "DELAYED", timeout=RUN_MS)
        due = "later.retrieve().delay_until"
        before = kernel_value(client, f"{due}.isoformat()").strip("'")
        later.locator("button.nbt-reschedule").click()
        moved = f"({due} - __import__('datetime').datetime.fromisoformat({before!r}))"
        moved += ".total_seconds()"
        wait_for(lambda: kernel_value(client, moved) == "60.0", "the run to move by 60 s", 15, 0.2)
        after = kernel_value(client, f"{due}.isoformat()").strip("'")
        shown = page.evaluate("iso => new Date(iso).toLocaleTimeString()", after)
        expect(later.locator(".nbt-until")).to_have_text(f"until {shown}", timeout=UI_MS)
        expect(later.locator(".nbt-feedback")).to_have_text(f"rescheduled to {shown}")

        # Its id, copied from the widget.
        expect(later.locator(".nbt-head .nbt-id code")).to_have_text(later_id)
        later.locator(".nbt-head button.nbt-copy").click()
        expect(later.locator(".nbt-head button.nbt-copy")).to_have_text("copied")
        assert page.evaluate(clipboard) == later_id

        # The batch: 2,000 items, 20 FAILED; every one reachable.
        big = cell(BIG).locator(".nbt-batch")
        expect(big.locator(".nbt-done")).to_have_text("2000/2000 finished (20 failed)",
                                                      timeout=RUN_MS)  # fmt: skip
        grid = big.locator(".nbt-grid span")
        expect(grid).to_have_count(200)
        expect(big.locator(".nbt-grid-range")).to_have_text("items 1\u2013200 of 2000")
        big.locator(".nbt-grid-next").click()
        expect(grid.first).to_have_attribute("data-index", "200", timeout=UI_MS)
        expect(grid.last).to_have_attribute("data-index", "399")
        big.locator('.nbt-counts .nbt-badge[data-status="FAILED"]').click()
        expect(big.locator(".nbt-grid-range")).to_have_text(
            "FAILED: items 1\u201320 of 20 (#7\u2013#1907)", timeout=UI_MS
        )
        expect(grid).to_have_count(20)
        expect(big.locator('.nbt-grid span:not([data-status="FAILED"])')).to_have_count(0)
        grid.last.click()
        expect(big.locator(".nbt-detail")).to_contain_text("ValueError: item 1907",
                                                           timeout=UI_MS)  # fmt: skip
        big.locator('.nbt-counts .nbt-badge[data-status="FAILED"]').click()  # again: all
        expect(grid).to_have_count(200, timeout=UI_MS)
        cell(BIG).screenshot(path=tmp_path / "batch.png")

        # The table of %runs --task ad: the filter is in its box; text boxes match by
        # substring, on Enter and while typing; the id box by prefix.
        table = cell(FILTERED).locator(".nbt-table-widget")
        rows = table.locator("tbody tr[data-status]")
        task_box = table.locator("input.nbt-filter-task")
        expect(task_box).to_have_value("ad", timeout=UI_MS)
        expect(rows).to_have_count(1)
        expect(table.locator(".nbt-total")).to_have_text("1 run")
        task_box.fill("ITE")
        task_box.press("Enter")
        expect(table.locator(".nbt-total")).to_have_text("2000 runs", timeout=UI_MS)
        expect(rows).to_have_count(25)
        task_box.fill("")
        id_box = table.locator("input.nbt-filter-id")
        id_box.press_sequentially(later_id[4:12])  # applied while typing, after a pause
        expect(rows).to_have_count(1, timeout=UI_MS)
        expect(table.locator(".nbt-total")).to_have_text("1 run")
        expect(rows.first).to_have_attribute("data-id", later_id)
        rows.first.locator("button.nbt-copy").click()
        expect(rows.first.locator("button.nbt-copy")).to_have_text("copied")
        assert page.evaluate(clipboard) == later_id

        # Replay selected: the new run is named, and the row is no longer ticked.
        ticked = rows.first.locator("input[type=checkbox]")
        ticked.check()
        table.locator("button.nbt-replay-selected").click()
        expect(table.locator(".nbt-feedback")).to_have_text(
            re.compile(r"^replayed 1 selected run as run_\w+$"), timeout=UI_MS
        )
        expect(ticked).not_to_be_checked()
        expect(table.locator("button.nbt-replay-selected")).to_be_disabled()

        # Bulk cancel by the filter, once confirmed with its count; a filter typed but not
        # yet applied is applied first: the question names what the box holds.
        id_box.press("End")
        id_box.press_sequentially(later_id[12:16])
        table.locator("button.nbt-bulk-cancel").click()
        confirm = table.locator(".nbt-confirm")
        expect(confirm).to_contain_text(
            f'Cancel the 1 unfinished run matching id starts with "{later_id[4:16]}"?'
        )
        confirm.locator("button.nbt-confirm-yes").click()
        expect(table.locator(".nbt-feedback")).to_have_text("canceled 1 matching run",
                                                            timeout=UI_MS)  # fmt: skip
        expect(rows.first).to_have_attribute("data-status", "CANCELED", timeout=UI_MS)
        expect(later).to_have_attribute("data-status", "CANCELED", timeout=UI_MS)
        cell(FILTERED).screenshot(path=tmp_path / "table.png")

        # %runs --id PREFIX.
        by_id = cell(BY_ID).locator(".nbt-table-widget")
        expect(by_id.locator("input.nbt-filter-id")).to_have_value(later_id[:12])
        expect(by_id.locator("tbody tr[data-status]")).to_have_count(1)
        expect(by_id.locator("tbody tr").first).to_have_attribute("data-id", later_id)

        # Replay from the run widget: a button opens the new run below it, live.
        later.locator("button.nbt-replay").click()
        opener = later.locator("button.nbt-open-replay")
        expect(opener).to_have_count(1, timeout=UI_MS)
        opener.click()
        replayed = later.locator(".nbt-detail")
        expect(replayed).to_have_attribute("data-detail-status", "COMPLETED", timeout=RUN_MS)
        expect(replayed.locator(".nbt-id code")).to_have_text(
            (opener.get_attribute("data-id") or "").strip()
        )
    except BaseException:
        shot(page, tmp_path / "failure.png")
        raise
    finally:
        if client is not None:
            client.stop_channels()
        page.close()
        context.close()
