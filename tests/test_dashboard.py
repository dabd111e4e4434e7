"""The dashboard, in a real browser: ``nbtasks dashboard`` (localhost, a token) and the
Jupyter server extension at ``/nbtasks/`` (Jupyter's own auth).

Runs come from real scripts (each its own process, a client of the store's server); the
page is driven in Debian's chromium, as in ``test_browser``.
"""

from __future__ import annotations

import http.cookiejar
import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from playwright.sync_api import Browser, Page, expect

from test_browser import RUN_MS, UI_MS, Lab, Notebook7, launch_chromium, serve

from conftest import PYTHONPATH, run_script

TASKS = """
    import sys
    from nbtasks import task

    @task
    def greet(name: str) -> str:
        print("hello", name)
        return f"hi {name}"

    @task
    def later(x: int) -> int:
        return x
"""


def _env(**extra: str) -> dict[str, str]:
    # The store comes from the folder (or what a test gives), as for a user.
    base = {k: v for k, v in os.environ.items() if k != "NBTASKS_STORE"}
    return {**base, "PYTHONPATH": PYTHONPATH, "NBTASKS_WORKERS": "2", **extra}


def cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> Any:
    done = subprocess.run(
        [sys.executable, "-m", "nbtasks.cli", *args], cwd=cwd, env=env or _env(),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done.stdout


def trigger(folder: Path, code: str, env: dict[str, str] | None = None) -> list[str]:
    """Run a script of ``TASKS`` + ``code`` in ``folder``; the lines it printed."""
    done = run_script(textwrap.dedent(TASKS) + textwrap.dedent(code), folder, env=env or _env())
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


class Dashboard:
    """``nbtasks dashboard`` in its own process, in a project folder."""

    def __init__(self, folder: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nbtasks.cli", "dashboard", "--no-browser"],
            cwd=folder, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        self.heading = self.proc.stdout.readline()
        self.url = self.proc.stdout.readline().strip()
        assert self.url.startswith("http://127.0.0.1:"), (self.heading, self.proc.stderr)
        self.base = self.url.split("?")[0]

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=30)


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Path]:
    """A folder whose store (``.nbtasks/runs.duckdb``, the default) the test fills; its
    server is stopped at the end."""
    folder = tmp_path / "project"
    folder.mkdir()
    yield folder
    cli("server", "stop", cwd=folder)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    yield from launch_chromium()


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """JupyterLab, whose server loads the nbtasks extension as installed (its
    ``jupyter_server_config.d`` file in the environment)."""
    yield from serve(Lab, tmp_path_factory)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any) -> None:
        return None  # the redirect itself is the answer


@pytest.fixture(scope="module")
def notebook7(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Notebook7]:
    yield from serve(Notebook7, tmp_path_factory)


def answer(url: str, *, data: bytes | None = None, jar: Any = None) -> tuple[int, str]:
    """The status of a request (not following a redirect) and where it redirects."""
    handlers: list[Any] = [_NoRedirect()]
    if jar is not None:
        handlers.append(urllib.request.HTTPCookieProcessor(jar))
    request = urllib.request.Request(url, data=data, method="POST" if data else "GET")
    try:
        with urllib.request.build_opener(*handlers).open(request, timeout=10) as response:
            return int(response.status), ""
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Location", "")


def table_rows(page: Page) -> Any:
    return page.locator(".nbt-table-widget tbody tr[data-status]")


def row_of(page: Page, run_id: str) -> Any:
    return page.locator(f'.nbt-table-widget tbody tr[data-id="{run_id}"]')


def test_the_dashboard_shows_every_process_s_runs_live_and_its_buttons_act(
    project: Path,
    browser: Browser,
) -> None:
    first = trigger(project, """
        greet.trigger_and_wait("ada")
        print(later.trigger(1, delay="10m").id)
    """)  # fmt: skip
    (later_id,) = first
    dash = Dashboard(project)
    try:
        assert str(project / ".nbtasks" / "runs.duckdb") in dash.heading  # the folder's store
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(dash.url)
        expect(table_rows(page)).to_have_count(2, timeout=RUN_MS)
        expect(row_of(page, later_id)).to_have_attribute("data-status", "DELAYED")
        expect(page.locator(".nbt-dash-clients li")).to_contain_text(["nbtasks dashboard"],
                                                                     timeout=UI_MS)  # fmt: skip

        # Another process connects: the page lists it among the server's clients while it
        # is there, and shows its runs without a reload.
        script = project / "watcher.py"
        script.write_text(textwrap.dedent(TASKS) + textwrap.dedent("""
            print(greet.trigger_and_wait("bob").output, flush=True)
            sys.stdin.readline()  # connected until the test closes its stdin
        """))  # fmt: skip
        watcher = subprocess.Popen(
            [sys.executable, str(script)], cwd=project, env=_env(), text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            assert watcher.stdout is not None
            assert watcher.stdout.readline().strip() == "hi bob"
            expect(table_rows(page)).to_have_count(3, timeout=RUN_MS)
            expect(page.locator(".nbt-dash-clients li", has_text="watcher.py")).to_have_count(
                1, timeout=UI_MS
            )
        finally:
            watcher.communicate("\n", timeout=30)
        expect(page.locator(".nbt-dash-clients li", has_text="watcher.py")).to_have_count(
            0, timeout=UI_MS
        )

        # The table's filter works here as in a notebook.
        page.locator("input.nbt-filter-task").fill("gre")
        page.locator("input.nbt-filter-task").press("Enter")
        expect(table_rows(page)).to_have_count(2, timeout=UI_MS)
        page.locator("input.nbt-filter-task").fill("")
        page.locator("input.nbt-filter-task").press("Enter")
        expect(table_rows(page)).to_have_count(3, timeout=UI_MS)

        # A run opened in the table links to its own page; its Cancel button cancels it.
        row_of(page, later_id).locator("td").nth(4).click()
        link = page.locator("a.nbt-dash-run-link")
        expect(link).to_have_text(f"Open the page of {later_id}", timeout=UI_MS)
        link.click()
        expect(page).to_have_url(re.compile(f"/nbtasks/runs/{later_id}$"))
        run = page.locator(".nbt-run[data-status]")
        expect(run).to_have_attribute("data-status", "DELAYED", timeout=RUN_MS)
        run.locator("button.nbt-cancel").click()
        expect(run).to_have_attribute("data-status", "CANCELED", timeout=RUN_MS)
        shown = json.loads(cli("runs", "show", later_id, "--json", cwd=project))
        assert shown["status"] == "CANCELED"

        # A run page of an unknown run says so.
        page.goto(dash.base + "runs/run_nosuchrun")
        expect(page.locator(".nbt-dash-error")).to_contain_text("run_nosuchrun", timeout=UI_MS)

        # A server stopped on purpose stays stopped while the page refreshes: it says so.
        page.goto(dash.base)
        expect(table_rows(page)).to_have_count(3, timeout=RUN_MS)
        cli("server", "stop", cwd=project)
        expect(page.locator(".nbt-dash-server")).to_contain_text(
            "no nbtasks server runs", timeout=UI_MS
        )
        stopped = subprocess.run(
            [sys.executable, "-m", "nbtasks.cli", "server", "status"], cwd=project, env=_env(),
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert stopped.returncode == 3, stopped.stdout  # no server
        page.reload()  # opening a page is asking: it starts the server
        expect(table_rows(page)).to_have_count(3, timeout=RUN_MS)
        page.close()
    finally:
        code = dash.stop()
    assert code == 0, dash.proc.stderr.read() if dash.proc.stderr else ""
    # The dashboard was a client: the server goes on without it.
    assert "pid" in json.loads(cli("server", "status", "--json", cwd=project))


def test_the_dashboard_wants_its_token_and_an_xsrf_token(project: Path) -> None:
    dash = Dashboard(project)
    try:
        assert answer(dash.base)[0] == 403
        assert answer(dash.base + "?token=wrong")[0] == 403
        assert answer(dash.base + "events?view=table")[0] == 403
        assert answer(dash.base + "static/dashboard.js")[0] == 403
        # With the token: a cookie for what follows; a POST needs the XSRF token too.
        jar = http.cookiejar.CookieJar()
        assert answer(dash.url, jar=jar)[0] == 200
        assert answer(dash.base + "static/dashboard.js", jar=jar)[0] == 200
        assert answer(dash.base + "send?page=x", data=b"{}", jar=jar)[0] == 403
        # Only on localhost.
        port = int(dash.base.split(":")[2].split("/")[0])
        connections = psutil.Process(dash.proc.pid).net_connections()
        listening = {tuple(c.laddr) for c in connections if c.status == psutil.CONN_LISTEN}
        assert listening == {("127.0.0.1", port)}
    finally:
        assert dash.stop() == 0


def test_a_taken_port_is_a_clear_error(project: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "nbtasks.cli", "dashboard", "--no-browser", "--port",
             str(port)], cwd=project, env=_env(), capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert done.returncode == 1
    assert f"the dashboard cannot listen on 127.0.0.1:{port}" in done.stderr
    assert "Traceback" not in done.stderr


def test_jupyter_serves_the_dashboard_at_nbtasks_behind_its_own_auth(
    lab: Lab,
    browser: Browser,
) -> None:
    lab.fresh_kernels()
    store_env = _env(NBTASKS_STORE=str(lab.store))
    (run_id,) = trigger(lab.base, 'print(greet.trigger_and_wait("lab").id)', store_env)

    # Jupyter's auth: no token, no page (its login page instead), and no event stream.
    code, where = answer(f"{lab.url}/nbtasks/events?view=table")
    assert (code, where.split("?")[0]) == (302, "/login")
    anonymous = browser.new_page()
    anonymous.goto(f"{lab.url}/nbtasks/")
    expect(anonymous).to_have_url(re.compile(r"/login\?next=%2Fnbtasks%2F"))
    anonymous.close()

    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(f"{lab.url}/nbtasks/?token={lab.token}")
    expect(page.locator(".nbt-dash-store")).to_have_text(str(lab.store))
    expect(row_of(page, run_id)).to_have_attribute("data-status", "COMPLETED", timeout=RUN_MS)
    expect(page.locator(".nbt-dash-clients li")).to_contain_text(
        ["Jupyter server (dashboard)"], timeout=UI_MS
    )
    # The same store from a notebook's side: a run the dashboard replays is a new run.
    page.locator(f'.nbt-table-widget tbody tr[data-id="{run_id}"] input[type=checkbox]').check()
    page.locator("button.nbt-replay-selected").click()
    expect(table_rows(page)).to_have_count(2, timeout=RUN_MS)
    expect(page.locator('.nbt-table-widget tbody tr[data-status="COMPLETED"]')).to_have_count(
        2, timeout=RUN_MS
    )
    page.close()
    lab.stop_nbtasks_server()


def test_notebook_7_serves_the_dashboard_too(notebook7: Notebook7) -> None:
    """The extension belongs to Jupyter Server, which Notebook 7 runs as JupyterLab does."""
    jar = http.cookiejar.CookieJar()
    assert answer(f"{notebook7.url}/nbtasks/?token={notebook7.token}", jar=jar)[0] == 200
    page = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar)).open(
        f"{notebook7.url}/nbtasks/", timeout=10
    )
    text = page.read().decode()
    assert f"<code class='nbt-dash-store'>{notebook7.store}</code>" in text
    code, where = answer(f"{notebook7.url}/nbtasks/")
    assert (code, where.split("?")[0]) == (302, "/login")


def test_a_user_can_turn_the_extension_off(tmp_path: Path) -> None:
    """The README's switch, in the user's Jupyter config: no ``/nbtasks/`` then."""
    switch = tmp_path / "config" / "jupyter_server_config.json"
    switch.parent.mkdir(parents=True)
    off = {"ServerApp": {"jpserver_extensions": {"nbtasks.dashboard": False}}}
    switch.write_text(json.dumps(off))
    server = Lab(tmp_path)
    try:
        jar = http.cookiejar.CookieJar()
        assert answer(f"{server.url}/lab?token={server.token}", jar=jar)[0] == 200  # logged in
        assert answer(f"{server.url}/nbtasks", jar=jar)[0] == 404
        assert answer(f"{server.url}/nbtasks/events?view=table", jar=jar)[0] == 404
    finally:
        assert not server.stop()
