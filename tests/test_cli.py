"""The ``nbtasks`` command, end to end: each command runs as ``python -m nbtasks.cli`` in a
process of its own, against a real store and its real server, beside the processes that
use the store as a notebook does (this test process, or a script started with
``start_script``).

What a user relies on is checked from outside: exit codes (0 done, 1 an error with its
message on stderr, 2 a usage error, 3 ``server status`` with no server), JSON that is one
strict document on stdout, the runs the store holds afterwards, and the server processes
left on the machine (none: every test stops the servers it made, and ``reap`` kills and
reports any left behind).
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import psutil
import pytest

import nbtasks
from nbtasks.client import config
from nbtasks.service.client import server_pid

from conftest import PYTHONPATH, has_status, start_script, wait_for

TESTS = Path(__file__).resolve().parent
# CLI processes and the servers they start can import the tests' task modules.
CLI_PATH = os.pathsep.join([PYTHONPATH, str(TESTS)])
DEADLINE_S = 30.0


def cli(*args: str, cwd: Path, store: str | None = None, env: dict[str, str] | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """Run ``nbtasks [--store STORE] ARGS`` in ``cwd`` and return what it did."""
    return subprocess.run(
        cli_command(*args, store=store),
        cwd=cwd,
        env=cli_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def cli_all(*commands: list[str], cwd: Path,
            store: str | None = None) -> list[subprocess.CompletedProcess[str]]:  # fmt: skip
    """Run several ``nbtasks`` commands at once; what each did, in order."""
    procs = [start_cli(*args, cwd=cwd, store=store) for args in commands]
    done = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return done


def start_cli(*args: str, cwd: Path, store: str | None = None,
              env: dict[str, str] | None = None) -> subprocess.Popen[str]:  # fmt: skip
    return subprocess.Popen(
        cli_command(*args, store=store),
        cwd=cwd,
        env=cli_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def cli_command(*args: str, store: str | None) -> list[str]:
    return [sys.executable, "-m", "nbtasks.cli", *(["--store", store] if store else []), *args]


def cli_env(env: dict[str, str] | None) -> dict[str, str]:
    # No NBTASKS_STORE unless a test gives one: the store comes from --store or the folder.
    base = {k: v for k, v in os.environ.items() if k != "NBTASKS_STORE"}
    return {**base, "PYTHONPATH": CLI_PATH, **(env or {})}


def ok(done: subprocess.CompletedProcess[str]) -> str:
    """The stdout of a command that must succeed."""
    assert done.returncode == 0, (done.args, done.returncode, done.stdout, done.stderr)
    return done.stdout


def strict_json(text: str) -> Any:
    """``text`` as exactly one JSON document (no NaN or Infinity, nothing around it)."""

    def refuse(name: str) -> None:
        raise AssertionError(f"{name} is not JSON, in: {text}")

    return json.loads(text, parse_constant=refuse)


class Lines:
    """The lines a process writes to one of its pipes, read as they come."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: list[str] = []
        self._queue: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_line(self, test: Callable[[str], bool], what: str) -> str:
        """The next line that passes ``test`` (lines before it are kept too)."""
        deadline = time.monotonic() + DEADLINE_S
        while True:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"timed out waiting for {what}; lines so far: {self.lines}")
            if line is None:
                pytest.fail(f"the stream ended before {what}; lines: {self.lines}")
            self.lines.append(line)
            if test(line):
                return line

    def rest(self) -> list[str]:
        """Every line, once the stream has ended."""
        self._thread.join(DEADLINE_S)
        assert not self._thread.is_alive(), "the stream did not end"
        while (line := self._queue.get()) is not None:
            self.lines.append(line)
        return self.lines


def ended(pid: int) -> bool:
    """Process ``pid`` has ended: gone, or a zombie its parent has yet to reap (a server a
    CLI process started, once that process ended, has init as its parent)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def finish(proc: subprocess.Popen[str], timeout: float = DEADLINE_S) -> int:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"{proc.args} did not end within {timeout:g}s")


def foreground_server(
    store: str, cwd: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    """``nbtasks server start ARGS`` for ``store``, once it says it serves."""
    proc = start_cli("server", "start", *args, cwd=cwd, store=store, env=env)
    assert proc.stderr is not None
    said = Lines(proc.stderr)
    said.wait_line(lambda line: "serving" in line, "the foreground server to serve")
    return proc


@pytest.fixture
def reap() -> Iterator[list[str]]:
    """Stores whose server must be gone when the test ends: one left is killed, and the
    test fails."""
    stores: list[str] = []
    yield stores
    left = []
    for store in stores:
        pid = server_pid(store)
        if pid is not None:
            left.append((store, pid))
            try:
                os.kill(pid, signal.SIGTERM)
                psutil.Process(pid).wait(30)
            except psutil.NoSuchProcess:
                pass
    assert not left, f"servers left running: {left}"


# -- no server ----------------------------------------------------------------------------


def test_status_and_stop_never_start_a_server_and_the_store_is_chosen_as_documented(
    reap: list[str], tmp_path: Path
) -> None:
    here = tmp_path / "here"
    here.mkdir()
    default = str(here / ".nbtasks" / "runs.duckdb")
    from_env = str(tmp_path / "env" / "runs.duckdb")
    from_flag = str(tmp_path / "flag" / "runs.duckdb")
    reap += [default, from_env, from_flag]

    # No --store, no NBTASKS_STORE: the folder's .nbtasks/runs.duckdb.
    done = cli("server", "status", "--json", cwd=here)
    assert done.returncode == 3, done.stderr
    assert strict_json(done.stdout) == {"running": False, "store": default}
    # NBTASKS_STORE, unless --store is given.
    done = cli("server", "status", "--json", cwd=here, env={"NBTASKS_STORE": from_env})
    assert (done.returncode, strict_json(done.stdout)["store"]) == (3, from_env)
    done = cli("server", "status", "--json", cwd=here, store=from_flag,
               env={"NBTASKS_STORE": from_env})  # fmt: skip
    assert (done.returncode, strict_json(done.stdout)["store"]) == (3, from_flag)

    done = cli("server", "status", cwd=here)
    assert done.returncode == 3
    assert f"no nbtasks server runs for store {default}" in done.stdout

    done = cli("server", "stop", cwd=here)
    assert f"no nbtasks server runs for store {default}" in ok(done)

    # Neither command made a store or started a server.
    assert not (here / ".nbtasks").exists()
    assert server_pid(default) is None


def test_a_store_that_cannot_be_served_is_an_error_with_a_message(
    reap: list[str], tmp_path: Path
) -> None:
    not_a_store = tmp_path / "notes.duckdb"
    not_a_store.write_text("not a DuckDB file")
    reap.append(str(not_a_store))
    done = cli("runs", "list", cwd=tmp_path, store=str(not_a_store))
    assert done.returncode == 1
    assert done.stderr.startswith("Error: ") and "did not start" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr

    # A store path under a file: no folder can hold it.
    under_a_file = str(not_a_store / "runs.duckdb")
    done = cli("runs", "list", cwd=tmp_path, store=under_a_file)
    assert done.returncode == 1
    assert done.stderr.startswith("Error: "), done.stderr
    assert "Traceback" not in done.stderr and "notes.duckdb" in done.stderr
    assert done.stdout == ""


# -- runs ---------------------------------------------------------------------------------


def test_runs_list_show_logs_and_replay_read_the_store_a_notebook_writes(
    reap: list[str], nb: Any, store_path: str, tmp_path: Path
) -> None:
    from tasks import add, chatty, fail

    reap.append(store_path)
    first = add.trigger_and_wait({"a": 1, "b": 2}, tags=["nightly"])
    second = add.trigger_and_wait({"a": 2, "b": 3})
    said = chatty.trigger_and_wait("hello", tags=["nightly"])
    failed = fail.trigger_and_wait(7)
    newest_first = [failed.id, said.id, second.id, first.id]
    here = config.engine().name  # where this process's runs come from (test_origin.py)
    assert here and " " not in here

    # Reads that do not depend on each other run at once, as several terminals would.
    lists = {
        "all": [],
        "failed": ["--status", "failed"],
        "final": ["--status", "FAILED", "--status", "completed"],
        "add": ["--task", "add"],
        "nightly": ["--tag", "nightly"],
        "nightly add": ["--tag", "nightly", "--task", "add"],
        "two": ["--limit", "2"],
    }
    done = cli_all(
        *(["runs", "list", *args, "--json"] for args in lists.values()),
        ["runs", "list"],
        ["runs", "show", failed.id, "--json"],
        ["runs", "show", failed.id],
        ["runs", "logs", said.id],
        cwd=tmp_path, store=store_path,
    )  # fmt: skip
    pages: dict[str, Any] = {
        name: strict_json(ok(d)) for name, d in zip(lists, done[: len(lists)], strict=True)
    }
    table, shown_json, shown, logs = done[len(lists) :]

    assert all(set(page) == {"runs", "next"} for page in pages.values())
    ids = {name: [r["id"] for r in page["runs"]] for name, page in pages.items()}
    assert ids["all"] == newest_first and pages["all"]["next"] is None
    by_id = {r["id"]: r for r in pages["all"]["runs"]}
    assert (by_id[first.id]["status"], by_id[first.id]["tags"]) == ("COMPLETED", ["nightly"])
    assert by_id[failed.id]["status"] == "FAILED"
    assert by_id[failed.id]["error"]["message"] == "custom failure 7"
    assert {r["origin"] for r in pages["all"]["runs"]} == {here}
    assert ids["failed"] == [failed.id]
    assert ids["final"] == newest_first
    assert ids["add"] == [second.id, first.id]
    assert ids["nightly"] == [said.id, first.id]
    assert ids["nightly add"] == [first.id]
    assert ids["two"] == [failed.id, said.id] and pages["two"]["next"] == said.id

    # The table: a header, then one row per run, newest first.
    rows = ok(table).splitlines()
    assert rows[0].split() == ["ID", "TASK", "STATUS", "ATTEMPTS", "CREATED", "DURATION",
                               "ORIGIN"]  # fmt: skip
    assert [row.split()[:4] + row.split()[-1:] for row in rows[1:]] == [
        [failed.id, "fail", "FAILED", "1", here],
        [said.id, "chatty", "COMPLETED", "1", here],
        [second.id, "add", "COMPLETED", "1", here],
        [first.id, "add", "COMPLETED", "1", here],
    ]
    assert {row.index(here) for row in rows[1:]} == {rows[0].index("ORIGIN")}  # a column

    run = strict_json(ok(shown_json))
    assert (run["id"], run["task_id"], run["status"]) == (failed.id, "fail", "FAILED")
    assert run["origin"] == here
    assert [(a["number"], a["status"]) for a in run["attempts"]] == [(1, "FAILED")]
    assert run["attempts"][0]["error"]["type"].endswith("CustomError")
    text = ok(shown)
    assert "status:          FAILED" in text
    assert f"origin:          {here}" in text
    assert "custom failure 7" in text
    assert "attempt 1: FAILED" in text

    # Logs: the attempt's stdout on stdout, its stderr on stderr.
    assert (ok(logs), logs.stderr) == ("out: hello\n", "err: hello\n")

    new_id = ok(cli("runs", "replay", first.id, cwd=tmp_path, store=store_path)).strip()
    assert new_id.startswith("run_") and new_id not in newest_first
    replay = nbtasks.runs.retrieve(new_id)
    assert (replay.task_id, replay.replayed_from, replay.tags) == ("add", first.id, ("nightly",))
    assert replay.origin == "nbtasks"  # whoever replays, not the original's origin
    by_cli = ok(cli("runs", "list", "--origin", "nbtasks", "--json", cwd=tmp_path,
                    store=store_path))  # fmt: skip
    assert [(r["id"], r["origin"]) for r in strict_json(by_cli)["runs"]] == [(new_id, "nbtasks")]
    assert replay.payload == {"a": 1, "b": 2}
    # The CLI has no definition of the task: the run starts once one is deployed (as when
    # the notebook runs the task's cell again), if it did not start at once.
    config.task_defined(add)
    replayed = nbtasks.runs.wait(new_id, timeout=DEADLINE_S)
    assert replayed.status is nbtasks.RunStatus.COMPLETED and replayed.output == 3

    # A run id the store does not hold: exit 1, named on stderr. Usage errors: exit 2.
    commands = ("show", "logs", "cancel", "replay")
    unknown = cli_all(*(["runs", c, "run_0nosuchrun"] for c in commands),
                      ["runs", "list", "--status", "bogus"], ["runs", "list", "--limit", "0"],
                      cwd=tmp_path, store=store_path)  # fmt: skip
    for command, done in zip(commands, unknown[:4], strict=True):
        assert done.returncode == 1, (command, done.stdout, done.stderr)
        assert "no run with id 'run_0nosuchrun'" in done.stderr, command
        assert done.stdout == ""
    for done in unknown[4:]:
        assert done.returncode == 2, done.stderr
        assert "Usage:" in done.stderr and done.stdout == ""
    assert "'bogus' is not one of" in unknown[4].stderr
    assert "0 is not in the range" in unknown[5].stderr

    config.shutdown(stop_server=True)


LONG_SCRIPT = """\
import json
import time

from nbtasks import task


@task
def long_task(seconds):
    time.sleep(seconds)
    return "slept"


result = long_task.trigger_and_wait(120)
print(json.dumps({"id": result.id, "status": result.status.value,
                  "error": str(result.error)}), flush=True)
"""


def test_the_cli_cancels_the_run_a_script_waits_for(reap: list[str], tmp_path: Path) -> None:
    """A script and the CLI, started in one folder, share its store and its server."""
    store = str(tmp_path / ".nbtasks" / "runs.duckdb")
    reap.append(store)
    script = start_script(LONG_SCRIPT, tmp_path, env={"NBTASKS_STORE": ""})
    try:

        def executing() -> list[dict[str, Any]]:
            done = cli("runs", "list", "--status", "executing", "--json", cwd=tmp_path)
            runs: list[dict[str, Any]] = strict_json(ok(done))["runs"]
            return runs

        (run,) = wait_for(executing, "the script's run to be EXECUTING in `runs list`")
        assert run["task_id"] == "long_task"
        row = ok(cli("runs", "list", cwd=tmp_path)).splitlines()[1].split()
        assert row[:3] == [run["id"], "long_task", "EXECUTING"]

        status = strict_json(ok(cli("server", "status", "--json", cwd=tmp_path)))
        assert status["running"] is True and status["store"] == store
        assert {"pid": script.pid, "name": "script.py"} in status["clients"]
        assert status["live_runs"] == {"EXECUTING": 1}
        assert status["pid"] == server_pid(store)
        text = ok(cli("server", "status", cwd=tmp_path))
        assert f"script.py (pid {script.pid})" in text and "1 EXECUTING" in text

        done = cli("runs", "cancel", run["id"], cwd=tmp_path)
        assert ok(done).strip() == f"{run['id']} CANCELED"
        out, err = script.communicate(timeout=DEADLINE_S)
        assert script.returncode == 0, err
        result = json.loads(out.splitlines()[-1])
        assert (result["id"], result["status"]) == (run["id"], "CANCELED")
        assert "by `nbtasks runs cancel`" in result["error"]

        shown = strict_json(ok(cli("runs", "show", run["id"], "--json", cwd=tmp_path)))
        assert shown["status"] == "CANCELED"
        assert shown["error"]["message"] == "by `nbtasks runs cancel`"
        assert [a["status"] for a in shown["attempts"]] == ["CANCELED"]
        # Canceling a final run leaves it as it is.
        done = cli("runs", "cancel", run["id"], cwd=tmp_path)
        assert ok(done).strip() == f"{run['id']} CANCELED"
        pid = server_pid(store)
        done = cli("server", "stop", cwd=tmp_path)
        assert ok(done).strip() == f"stopped the nbtasks server (pid {pid})"
        assert pid is not None and ended(pid)
    finally:
        if script.poll() is None:
            script.kill()
            script.wait()
        cli("server", "stop", cwd=tmp_path)


TICKER_SCRIPT = """\
import sys
import time
from pathlib import Path

from nbtasks import task


@task
def ticker(p):
    print("tick 0", flush=True)
    print("warming up", file=sys.stderr, flush=True)
    gate = Path(p["gate"])  # opened by the test
    deadline = time.monotonic() + 60
    while not gate.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    for burst in range(1, 11):  # about a second, and more output than the live log keeps
        for i in range(p["lines"]):
            print(f"tick {burst} {i:04d} " + "." * 100)
        sys.stdout.flush()
        time.sleep(0.1)
    print("done", file=sys.stderr, flush=True)
    return "ok"


print(ticker.trigger_and_wait({"gate": GATE, "lines": 300}).status.value, flush=True)
"""


def test_logs_follow_prints_output_as_it_appears_until_the_run_is_final(
    reap: list[str], tmp_path: Path
) -> None:
    store = str(tmp_path / "store" / "runs.duckdb")
    reap.append(store)
    gate = tmp_path / "gate"
    code = TICKER_SCRIPT.replace("GATE", repr(str(gate)))
    script = start_script(code, tmp_path, env={"NBTASKS_STORE": store})
    follow = None
    try:

        def ticker_run() -> str | None:
            done = cli("runs", "list", "--task", "ticker", "--json", cwd=tmp_path, store=store)
            runs = strict_json(ok(done))["runs"]
            return str(runs[0]["id"]) if runs else None

        run_id = wait_for(ticker_run, "the script's run in `runs list`")
        follow = start_cli("runs", "logs", "--follow", run_id, cwd=tmp_path, store=store)
        assert follow.stdout is not None and follow.stderr is not None
        out, err = Lines(follow.stdout), Lines(follow.stderr)
        # The run cannot end before the gate opens: this line came while it executed.
        out.wait_line(lambda line: line == "tick 0", "the first line, live")
        gate.touch()
        assert finish(follow) == 0
        expected = ["tick 0"] + [
            f"tick {burst} {i:04d} " + "." * 100 for burst in range(1, 11) for i in range(300)
        ]
        lines = out.rest()
        differ = [n for n, (a, b) in enumerate(zip(lines, expected, strict=False)) if a != b]
        assert lines == expected, (
            f"{len(lines)} lines, {len(expected)} expected; first difference at line {differ[:1]}"
        )
        assert err.rest() == ["warming up", "done", f"--- {run_id} COMPLETED ---"]
        out_text, script_err = script.communicate(timeout=DEADLINE_S)
        assert out_text.strip() == "COMPLETED", script_err

        # Following a final run prints its output and its status at once.
        done = cli("runs", "logs", "-f", run_id, cwd=tmp_path, store=store)
        assert ok(done).endswith("." * 100 + "\n")
        assert done.stderr.endswith(f"done\n--- {run_id} COMPLETED ---\n")
    finally:
        for proc in (follow, script):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        ok(cli("server", "stop", cwd=tmp_path, store=store))


# -- the server ---------------------------------------------------------------------------


def test_server_start_serves_in_the_foreground_once_and_server_stop_interrupts_its_runs(
    reap: list[str], tmp_path: Path
) -> None:
    from tasks import nap

    store = str(tmp_path / "store" / "runs.duckdb")
    reap.append(store)
    server = foreground_server(store, tmp_path, "--workers", "1")
    try:
        assert server_pid(store) == server.pid
        second = cli("server", "start", cwd=tmp_path, store=store)
        assert second.returncode == 1
        assert f"an nbtasks server already runs for store {store}" in second.stderr
        assert server.poll() is None

        nbtasks.configure(store=store, workers=1)  # this process, as a notebook: a client
        run_id = nap.trigger(60).id
        wait_for(has_status(run_id, nbtasks.RunStatus.EXECUTING), "the nap to execute")

        status = strict_json(ok(cli("server", "status", "--json", cwd=tmp_path, store=store)))
        assert (status["running"], status["pid"], status["store"]) == (True, server.pid, store)
        assert (status["executor"], status["workers"]) == ("local", 1)
        assert status["live_runs"] == {"EXECUTING": 1}
        assert [c["pid"] for c in status["clients"]] == [os.getpid()]  # not the CLI itself
        assert status["uptime_s"] >= 0
        assert status["idle_s"] is None  # --idle 0: never
        text = ok(cli("server", "status", cwd=tmp_path, store=store))
        assert f"pid:         {server.pid}" in text
        assert "stops after: never" in text  # started with --idle 0

        done = cli("server", "stop", cwd=tmp_path, store=store)
        assert ok(done).strip() == f"stopped the nbtasks server (pid {server.pid})"
        assert finish(server) == 0
        assert cli("server", "status", cwd=tmp_path, store=store).returncode == 3
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    # A new server (this process starts one) finds the run ended by the stop.
    run = nbtasks.runs.retrieve(run_id)
    assert run.status is nbtasks.RunStatus.INTERRUPTED
    assert "the nbtasks server stopped" in str(run.error)
    config.shutdown(stop_server=True)
    assert server_pid(store) is None


def test_server_start_ends_on_sigterm_or_after_its_idle_time(
    reap: list[str], tmp_path: Path
) -> None:
    store = str(tmp_path / "store" / "runs.duckdb")
    reap.append(store)
    server = foreground_server(store, tmp_path)
    server.send_signal(signal.SIGTERM)
    assert finish(server) == 0
    assert server_pid(store) is None

    server = foreground_server(store, tmp_path, "--idle", "1s", "--workers", "1")
    nbtasks.configure(store=store, workers=1)
    config.engine()  # this process connects: the server is not idle
    status = strict_json(ok(cli("server", "status", "--json", cwd=tmp_path, store=store)))
    assert status["idle_s"] == 1.0
    assert [c["pid"] for c in status["clients"]] == [os.getpid()]
    config.shutdown()  # disconnected, the server left running
    assert finish(server) == 0  # nobody connected: it stops by itself
    assert server_pid(store) is None

    done = cli("server", "start", "--idle", "soon", cwd=tmp_path, store=store)
    assert done.returncode == 2 and "--idle" in done.stderr
    done = cli("server", "start", "--workers", "0", cwd=tmp_path, store=store)
    assert done.returncode == 2 and "--workers" in done.stderr
    assert server_pid(store) is None


def test_a_server_of_another_build_is_reported_and_stopped(reap: list[str], tmp_path: Path) -> None:
    """After an upgrade, the old server still runs: the CLI's advice is ``server stop``."""
    other = tmp_path / "other"
    shutil.copytree(Path(nbtasks.__file__).parent, other / "nbtasks",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    with open(other / "nbtasks" / "core" / "version.py", "a") as f:
        f.write("# another build\n")
    store = str(tmp_path / "store" / "runs.duckdb")
    reap.append(store)
    server = foreground_server(store, tmp_path, env={"PYTHONPATH": str(other)})
    try:
        done = cli("server", "status", "--json", cwd=tmp_path, store=store)
        assert done.returncode == 1, (done.stdout, done.stderr)
        status = strict_json(done.stdout)
        assert (status["running"], status["pid"], status["store"]) == (True, server.pid, store)
        assert "runs nbtasks" in status["error"]
        assert "Error: " in done.stderr
        done = cli("server", "status", cwd=tmp_path, store=store)
        assert done.returncode == 1 and f"(pid {server.pid})" in done.stderr

        done = cli("server", "stop", cwd=tmp_path, store=store)
        assert ok(done).strip() == f"stopped the nbtasks server (pid {server.pid})"
        assert finish(server) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    assert cli("server", "status", cwd=tmp_path, store=store).returncode == 3
