"""The DuckDB store: file, schema, durability, sharing and locking, location and task
versions."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import dill
import duckdb
import pytest

import nbtasks
from nbtasks import Task, runs
from nbtasks.client import config
from nbtasks.client.config import default_store_path
from nbtasks.client.config import store_path as effective_store_path
from nbtasks.core.errors import NbtasksError
from nbtasks.service.client import connect, server_pid
from nbtasks.service.settings import Config
from nbtasks.store.journal import Batch, JournalFile
from nbtasks.store.schema import ATTEMPT_COLUMNS, RUN_COLUMNS, RUN_UPDATE_COLUMNS, SCHEMA_VERSION
from nbtasks.store.store import Store

from conftest import PYTHONPATH, run_script, start_script, wait_for
from tasks import add, succeed_on_third

TESTS = Path(__file__).resolve().parent
TIMEOUT = 30.0  # upper bound for a subprocess; never part of an assertion


@contextmanager
def open_store(path: str | Path) -> Iterator[duckdb.DuckDBPyConnection]:
    """The store file opened read-only with plain duckdb (after its server stopped)."""
    conn = duckdb.connect(str(path), read_only=True)
    try:
        conn.execute("SET TimeZone = 'UTC'")
        yield conn
    finally:
        conn.close()


def columns(conn: duckdb.DuckDBPyConnection, table: str) -> tuple[str, ...]:
    rows = conn.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = ? "
        "ORDER BY ordinal_position",
        [table],
    ).fetchall()
    return tuple(r[0] for r in rows)


def events(conn: duckdb.DuckDBPyConnection, run_id: str) -> list[str]:
    rows = conn.execute(
        'SELECT status FROM run_events WHERE run_id = ? ORDER BY "at", rowid', [run_id]
    ).fetchall()
    return [r[0] for r in rows]


def today_utc() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%d")


def real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def stop_server(store: str | Path) -> None:
    """Stop the server of ``store`` if one runs, and wait until it is gone: it committed
    and closed the store, so the file alone holds everything."""
    try:
        engine = connect(Config(store=str(store)), "test", start=False)
    except NbtasksError:
        return  # none runs (it stopped when idle, and closed the store then)
    try:
        config.stop(engine)
    finally:
        engine.close()
    assert server_pid(str(store)) is None


# --------------------------------------------------------------------------- file and schema


def test_store_file_and_schema(nb: object, store_path: str) -> None:
    assert add.trigger_and_wait({"a": 1, "b": 2}).output == 3
    config.shutdown(stop_server=True)  # the server commits and closes the store

    assert os.path.isfile(store_path)
    with open_store(store_path) as conn:
        found = conn.execute("SELECT table_name FROM information_schema.tables").fetchall()
        tables = {r[0] for r in found}
        assert {"runs", "attempts", "run_events", "task_versions", "schema_version"} <= tables
        assert columns(conn, "runs") == RUN_COLUMNS
        assert columns(conn, "attempts") == ATTEMPT_COLUMNS
        assert conn.execute("SELECT max(version) FROM schema_version").fetchone() == (
            SCHEMA_VERSION,
        )
        assert conn.execute("SELECT count(*) FROM runs").fetchone() == (1,)


# --------------------------------------------------------------------------- durability


def test_a_triggered_run_is_stored_at_once_and_in_the_file_once_its_server_stops(
    nb: object, store_path: str
) -> None:
    handle = add.trigger({"a": 4, "b": 5}, tags=["durable"])
    # stored before trigger returned: the store, read through its server, has it
    ((task_id, tags),) = runs.sql(
        "SELECT task_id, tags FROM runs WHERE id = ?", [handle.id]
    ).fetchall()
    assert (task_id, tags) == ("add", ["durable"])
    config.shutdown(stop_server=True)  # without waiting for the run

    with open_store(store_path) as conn:
        row = conn.execute(
            "SELECT task_id, status, payload, tags FROM runs WHERE id = ?", [handle.id]
        ).fetchone()
        assert row is not None
        task_id, status, payload, tags = row
        assert task_id == "add"
        assert dill.loads(payload) == {"a": 4, "b": 5}
        assert tags == ["durable"]
        # shut down before, during or after its attempt; never left EXECUTING
        assert status in ("QUEUED", "INTERRUPTED", "COMPLETED")
        assert events(conn, handle.id)[0] == "QUEUED"


def test_trigger_and_wait_leaves_the_final_state_in_the_file(nb: object, store_path: str) -> None:
    simple = add.trigger_and_wait({"a": 1, "b": 1})
    retried = succeed_on_third.trigger_and_wait(None)
    assert simple.ok and retried.ok
    config.shutdown(stop_server=True)

    with open_store(store_path) as conn:
        status, count, output = conn.execute(
            "SELECT status, attempt_count, output FROM runs WHERE id = ?", [simple.id]
        ).fetchone()
        assert (status, count, dill.loads(output)) == ("COMPLETED", 1, 2)
        assert events(conn, simple.id) == ["QUEUED", "EXECUTING", "COMPLETED"]

        status, count, output = conn.execute(
            "SELECT status, attempt_count, output FROM runs WHERE id = ?", [retried.id]
        ).fetchone()
        assert (status, count, dill.loads(output)) == ("COMPLETED", 3, 3)
        assert events(conn, retried.id) == [
            "QUEUED",
            "EXECUTING", "REATTEMPTING", "QUEUED",
            "EXECUTING", "REATTEMPTING", "QUEUED",
            "EXECUTING", "COMPLETED",
        ]  # fmt: skip

        attempts = conn.execute(
            "SELECT number, status, pid, started_at, finished_at, error FROM attempts "
            "WHERE run_id = ? ORDER BY number",
            [retried.id],
        ).fetchall()
        assert [(a[0], a[1]) for a in attempts] == [(1, "FAILED"), (2, "FAILED"), (3, "COMPLETED")]
        for _, _, pid, started, finished, _ in attempts:
            assert isinstance(pid, int) and pid != os.getpid()
            assert started is not None and finished is not None and started <= finished
        assert json.loads(attempts[0][5])["message"] == "attempt 1 fails"
        assert attempts[2][5] is None

        (simple_attempt,) = conn.execute(
            "SELECT number, status FROM attempts WHERE run_id = ?", [simple.id]
        ).fetchall()
        assert simple_attempt == (1, "COMPLETED")


SERVER_THAT_NEVER_FOLDS = """
import sys
import nbtasks.store.folding as folding
from nbtasks.cli import main

folding.FOLD_IDLE_S = folding.FOLD_MAX_AGE_S = 600  # commits stay in the journal
main(["--store", sys.argv[1], "server", "start", "--workers", "2"])
"""


def test_what_trigger_returned_survives_a_hard_kill_of_the_kernel_and_the_server(
    tmp_path: Path,
) -> None:
    """``trigger`` returns once the run is committed: a kernel dying right after, and its
    store's server SIGKILLed, lose nothing of it."""
    store = tmp_path / "hard.duckdb"
    env = {**os.environ, "PYTHONPATH": PYTHONPATH}
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER_THAT_NEVER_FOLDS, str(store)],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for(lambda: server_pid(str(store)) == server.pid, "the server to serve the store")
        proc = run_script(
            """
            import os
            from nbtasks import task
            from nbtasks.client import config

            @task
            def slow(p):
                import time
                time.sleep(p)

            @task
            def quick(p):
                return p * 10

            done = quick.trigger_and_wait(4)
            pending = slow.trigger(60)
            print(done.id, pending.id, config.engine().info["pid"], flush=True)
            os._exit(0)  # no shutdown, no atexit: the kernel is killed
            """,
            tmp_path,
            env={"JPY_SESSION_NAME": "", "NBTASKS_STORE": str(store)},
            timeout=TIMEOUT,
        )
        assert proc.returncode == 0, proc.stderr
        done_id, pending_id, served_by = proc.stdout.split()
        assert int(served_by) == server.pid  # the script used the server started here
    finally:
        server.kill()  # SIGKILL: no stop, no commit, no close
        server.wait(TIMEOUT)
    journal = tmp_path / "hard.duckdb.journal"  # what the dead server left there
    assert journal.stat().st_size > 0
    with open_store(store) as conn:
        found = conn.execute("SELECT count(*) FROM runs WHERE id = ?", [pending_id]).fetchone()
        assert found == (0,)  # not folded into the tables yet
    Store(str(store), lambda ticket, error: None).close()  # folds it
    assert not journal.exists()
    with open_store(store) as conn:
        status, output = conn.execute(
            "SELECT status, output FROM runs WHERE id = ?", [done_id]
        ).fetchone()
        assert status == "COMPLETED" and dill.loads(output) == 40
        assert events(conn, done_id) == ["QUEUED", "EXECUTING", "COMPLETED"]
        row = conn.execute("SELECT task_id, status FROM runs WHERE id = ?", [pending_id]).fetchone()
        assert row is not None and row[0] == "slow"
        assert row[1] in ("QUEUED", "EXECUTING")
        assert events(conn, pending_id)[0] == "QUEUED"


# --------------------------------------------------------------------------- locking


def test_two_processes_on_one_store_share_its_server(nb: object, store_path: str) -> None:
    mine = add.trigger_and_wait({"a": 1, "b": 1})
    assert mine.ok  # this process's server serves the store now
    served_by = config.engine().info["pid"]
    code = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(TESTS)!r})
        from nbtasks import runs
        from nbtasks.client import config
        from tasks import add
        theirs = add.trigger_and_wait({{"a": 1, "b": 2}})
        print(theirs.id, theirs.output, config.engine().info["pid"])
        print(runs.retrieve({mine.id!r}).output)  # this process's run, seen from there
        """
    )
    proc = _run_on_store(code, store_path)
    assert proc.returncode == 0, proc.stderr
    assert "StoreLockedError" not in proc.stderr and "NbtasksWarning" not in proc.stderr
    (their_id, their_output, their_server), (seen_output,) = (
        line.split() for line in proc.stdout.splitlines()
    )
    assert (their_output, int(their_server), seen_output) == ("3", served_by, "2")
    assert runs.retrieve(their_id).output == 3  # their run, seen from here: one store
    assert {r.id for r in runs.list()} == {mine.id, their_id}

    # this process is unaffected
    assert add.trigger_and_wait({"a": 2, "b": 2}).output == 4
    assert config.engine().info["pid"] == served_by


def _run_on_store(code: str, store_path: str) -> subprocess.CompletedProcess[str]:
    """``python -c code`` in a process of its own, on ``store_path`` with two workers."""
    env = {**os.environ, "NBTASKS_STORE": store_path, "NBTASKS_WORKERS": "2",
           "PYTHONPATH": PYTHONPATH}  # fmt: skip
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=TIMEOUT)  # fmt: skip


HOLDER = """
import sys
import duckdb

conn = duckdb.connect(sys.argv[1])  # a program other than nbtasks holds the store file
print("held", flush=True)
sys.stdin.readline()
conn.close()
"""


def test_a_store_held_by_another_program_raises_store_locked_error_naming_it(
    nb: object, store_path: str, tmp_path: Path
) -> None:
    assert add.trigger_and_wait({"a": 1, "b": 1}).ok
    config.shutdown(stop_server=True)  # the store exists, no server holds it
    (tmp_path / "holder.py").write_text(HOLDER)
    holder = subprocess.Popen(
        [sys.executable, str(tmp_path / "holder.py"), store_path],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": PYTHONPATH},
    )  # fmt: skip
    try:
        assert _readline(holder, TIMEOUT) == "held\n"
        code = textwrap.dedent(
            f"""
            import sys
            sys.path.insert(0, {str(TESTS)!r})
            from tasks import add
            add.trigger({{"a": 1, "b": 2}})
            """
        )
        proc = _run_on_store(code, store_path)
        assert proc.returncode == 1
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith("nbtasks.StoreLockedError: "), proc.stderr
        assert store_path in last
        assert f"process {holder.pid} " in last and "holder.py" in last  # by pid and command
        assert "NBTASKS_STORE" in last
        assert "configure(store=" in last
        # one clean error: no DuckDB exception, chained or not
        assert "IOException" not in proc.stderr
        assert "During handling of the above exception" not in proc.stderr
        assert "The above exception was the direct cause" not in proc.stderr

        with pytest.raises(nbtasks.StoreLockedError, match=f"process {holder.pid} "):
            add.trigger({"a": 1, "b": 2})  # in this process too
        assert server_pid(store_path) is None  # no server was left behind
    finally:
        assert holder.stdin is not None
        holder.stdin.write("done\n")
        holder.stdin.flush()
        holder.wait(TIMEOUT)

    # once the other program let go, the store opens
    assert add.trigger_and_wait({"a": 2, "b": 2}).output == 4


# --------------------------------------------------------------------------- location and config


@pytest.fixture
def fresh_config(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """This process's settings as in a new kernel: no store or workers configured yet."""
    monkeypatch.setitem(nbtasks.client.config._settings, "store", None)
    monkeypatch.setitem(nbtasks.client.config._settings, "workers", None)
    monkeypatch.delenv("NBTASKS_STORE", raising=False)
    monkeypatch.delenv("NBTASKS_WORKERS", raising=False)
    return monkeypatch


def test_default_store_is_one_per_folder_whatever_the_notebook(
    fresh_config: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fresh_config.chdir(tmp_path)
    fresh_config.setenv("JPY_SESSION_NAME", "/some/dir/analysis.ipynb")
    expected = str(real(tmp_path) / ".nbtasks" / "runs.duckdb")
    assert default_store_path() == expected
    assert effective_store_path() == expected

    fresh_config.setenv("JPY_SESSION_NAME", "/else/where/My Report (v2).ipynb")
    assert default_store_path() == expected  # another notebook, the same folder
    fresh_config.delenv("JPY_SESSION_NAME")
    assert default_store_path() == expected  # a script

    (tmp_path / "elsewhere").mkdir()
    fresh_config.chdir(tmp_path / "elsewhere")
    assert default_store_path() == str(real(tmp_path) / "elsewhere" / ".nbtasks" / "runs.duckdb")


def test_a_per_notebook_store_of_earlier_versions_opens_with_configure(
    fresh_config: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fresh_config.chdir(tmp_path)
    old = real(tmp_path) / ".nbtasks" / "analysis.duckdb"  # as earlier versions named it
    nbtasks.configure(store=old, workers=2)
    earlier = add.trigger_and_wait({"a": 20, "b": 1})
    config.shutdown(stop_server=True)

    fresh_config.setitem(nbtasks.client.config._settings, "store", None)
    fresh_config.setenv("JPY_SESSION_NAME", "/some/dir/analysis.ipynb")
    assert [r.id for r in runs.list()] == []  # the folder's store is another one
    config.shutdown(stop_server=True)
    nbtasks.configure(store=".nbtasks/analysis.duckdb")  # chosen, it opens as it is
    assert effective_store_path() == str(old)
    assert runs.retrieve(earlier.id).output == 21
    later = add.trigger_and_wait({"a": 1, "b": 1})  # and takes new runs
    assert later.output == 2
    assert sorted(r.id for r in runs.list()) == sorted([earlier.id, later.id])
    config.shutdown(stop_server=True)
    assert sorted(p.name for p in old.parent.glob("*.duckdb")) == [
        "analysis.duckdb",
        "runs.duckdb",
    ]


def test_default_store_for_scripts_is_their_folders(
    fresh_config: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fresh_config.delenv("JPY_SESSION_NAME", raising=False)
    proc = run_script(
        """
        from nbtasks import task
        from nbtasks.client.config import default_store_path

        @task
        def inc(p):
            return p + 1

        done = inc.trigger_and_wait(1)
        print(default_store_path(), done.output, done.id)
        """,
        tmp_path,
        timeout=TIMEOUT,
    )
    assert proc.returncode == 0, proc.stderr
    expected = real(tmp_path) / ".nbtasks" / "runs.duckdb"
    where, output, first_id = proc.stdout.split()
    assert (where, output) == (str(expected), "2")
    assert expected.is_file()

    other = start_script(  # another script in the folder: the same store
        """
        from nbtasks import runs
        from nbtasks.client.config import default_store_path

        print(default_store_path(), *(r.id for r in runs.list()))
        """,
        tmp_path,
        name="other.py",
    )
    out, err = other.communicate(timeout=TIMEOUT)
    assert other.returncode == 0, err
    assert out.split() == [str(expected), first_id]
    assert sorted(p.name for p in expected.parent.glob("*.duckdb")) == ["runs.duckdb"]


def test_configure_and_environment_override_the_default(
    fresh_config: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fresh_config.chdir(tmp_path)
    fresh_config.setenv("JPY_SESSION_NAME", "/some/dir/analysis.ipynb")
    from_env = tmp_path / "env" / "from-env.duckdb"
    fresh_config.setenv("NBTASKS_STORE", str(from_env))
    assert effective_store_path() == str(from_env)

    chosen = tmp_path / "chosen" / "mine.duckdb"
    nbtasks.configure(store=chosen, workers=2)
    assert effective_store_path() == str(chosen)  # configure wins over the environment
    assert add.trigger_and_wait({"a": 3, "b": 4}).output == 7
    nbtasks.shutdown()
    assert chosen.is_file()
    assert not from_env.exists()
    assert not (tmp_path / ".nbtasks").exists()


def test_store_from_the_environment_is_used(
    fresh_config: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fresh_config.chdir(tmp_path)
    from_env = tmp_path / "env" / "from-env.duckdb"
    fresh_config.setenv("NBTASKS_STORE", str(from_env))
    nbtasks.configure(workers=2)
    result = add.trigger_and_wait({"a": 1, "b": 1})
    config.shutdown(stop_server=True)
    with open_store(from_env) as conn:
        assert conn.execute("SELECT id FROM runs").fetchall() == [(result.id,)]
    assert not (tmp_path / ".nbtasks").exists()


@pytest.mark.parametrize(
    ("options", "text"),
    [
        ({"workers": 0}, "workers=0"),
        ({"workers": -2}, "workers=-2"),
        ({"workers": "x"}, "workers='x'"),
        ({"workers": 1.5}, "workers=1.5"),
        ({"workers": True}, "workers=True"),
        ({"executor": "dask"}, "executor='dask'"),
        ({"store": 42}, "store=42"),
    ],
)
def test_configure_rejects_bad_values(options: dict[str, Any], text: str) -> None:
    with pytest.raises(ValueError) as info:
        nbtasks.configure(**options)
    assert text in str(info.value)


def test_bad_workers_in_the_environment_fail_at_first_use(
    fresh_config: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = tmp_path / "s.duckdb"
    fresh_config.setenv("NBTASKS_WORKERS", "abc")
    nbtasks.configure(store=path)  # not read yet
    with pytest.raises(ValueError) as info:
        add.trigger({"a": 1, "b": 2})
    assert "NBTASKS_WORKERS" in str(info.value)
    assert "'abc'" in str(info.value)
    assert not path.exists()  # nothing was opened

    fresh_config.setenv("NBTASKS_WORKERS", "2")
    assert add.trigger_and_wait({"a": 1, "b": 2}).output == 3


# --------------------------------------------------------------------------- two notebooks


NOTEBOOK = """
import json, sys
from nbtasks import runs, task
from nbtasks.client import config

@task
def square(p):
    return p * p

first = square.trigger(1)  # reaches the folder's store, through its server
print("open", flush=True)
sys.stdin.readline()  # the test says go once both notebooks reached it
batch = square.batch_trigger_and_wait([2, 3, 4])
print(json.dumps({
    "outputs": [first.wait(timeout=30).output, *batch.outputs],
    "mine": sorted([first.id, *(r.id for r in batch)]),
    "listed": sorted(r.id for r in runs.list(limit=100)),
    "server": config.engine().info["pid"],
}), flush=True)
"""


def _readline(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "no output in time"
    return proc.stdout.readline()


def test_two_notebooks_in_one_folder_share_its_store_at_once(tmp_path: Path) -> None:
    script = tmp_path / "notebook.py"
    script.write_text(NOTEBOOK)
    env = {k: v for k, v in os.environ.items() if k != "NBTASKS_STORE"}
    env["PYTHONPATH"] = PYTHONPATH
    procs = [
        subprocess.Popen(
            [sys.executable, str(script)],
            cwd=tmp_path,
            env={**env, "NBTASKS_WORKERS": "2", "JPY_SESSION_NAME": f"/home/u/{name}.ipynb"},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("first_nb", "second_nb")
    ]
    try:
        for proc in procs:
            line = _readline(proc, TIMEOUT)
            assert line == "open\n", proc.stderr.read() if proc.stderr else line
        for proc in procs:  # both reached the store: now run both at once
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        outs = [proc.communicate(timeout=TIMEOUT) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    reports = []
    for proc, (out, err) in zip(procs, outs, strict=True):
        assert proc.returncode == 0, err
        reports.append(json.loads(out))
    first, second = reports
    for report in reports:
        assert report["outputs"] == [1, 4, 9, 16]
        assert set(report["mine"]) <= set(report["listed"])  # one store holds both's runs
    assert first["server"] == second["server"]  # served by one server
    both = sorted([*first["mine"], *second["mine"]])
    assert len(set(both)) == 8  # each notebook's own runs, none shared
    assert first["listed"] == both or second["listed"] == both  # the later one saw all
    stores = real(tmp_path) / ".nbtasks"
    assert sorted(p.name for p in stores.glob("*.duckdb")) == ["runs.duckdb"]
    stop_server(stores / "runs.duckdb")
    with open_store(stores / "runs.duckdb") as conn:
        stored = sorted(r[0] for r in conn.execute("SELECT id FROM runs").fetchall())
    assert stored == both


# --------------------------------------------------------------------------- versions


SOURCE_ONE = "def versioned(p):\n    return p + 1\n"
SOURCE_TWO = "def versioned(p):\n    return p + 100\n"


def _versioned_one(p: int) -> int:
    return p + 1


def _versioned_two(p: int) -> int:
    return p + 100


def test_task_versions(nb: object, store_path: str) -> None:
    before = today_utc()
    first = Task(_versioned_one, id="store-versioned", source=SOURCE_ONE)
    r1 = first.trigger_and_wait(1)
    after = today_utc()
    assert r1.output == 2
    v1 = r1.run.version
    assert v1 in (f"{before}.1", f"{after}.1")
    day = v1.split(".")[0]

    r2 = first.trigger_and_wait(2)  # the same definition keeps its version
    assert r2.run.version == v1
    again = Task(_versioned_one, id="store-versioned", source=SOURCE_ONE)  # cell re-run as is
    r3 = again.trigger_and_wait(3)
    assert r3.run.version == v1

    changed = Task(_versioned_two, id="store-versioned", source=SOURCE_TWO)
    r4 = changed.trigger_and_wait(4)
    assert r4.output == 104
    assert r4.run.version == f"{day}.2"

    assert {r.id for r in runs.list(version=v1)} == {r1.id, r2.id, r3.id}
    assert [r.id for r in runs.list(version=f"{day}.2")] == [r4.id]
    assert [r.id for r in runs.list(version=v1, task="other")] == []
    config.shutdown(stop_server=True)

    with open_store(store_path) as conn:
        rows = conn.execute(
            "SELECT version, source, fn FROM task_versions WHERE task_id = 'store-versioned' "
            "ORDER BY version"
        ).fetchall()
        assert [(v, s) for v, s, _ in rows] == [(v1, SOURCE_ONE), (f"{day}.2", SOURCE_TWO)]
        for (_, _, fn), payload, expected in zip(rows, (5, 5), (6, 105), strict=True):
            assert fn  # the function as shipped to workers
            assert dill.loads(fn)(payload) == expected
        run_versions = conn.execute(
            "SELECT id, version FROM runs WHERE task_id = 'store-versioned'"
        ).fetchall()
        assert dict(run_versions) == {r1.id: v1, r2.id: v1, r3.id: v1, r4.id: f"{day}.2"}


def test_a_new_store_records_the_versions_of_its_runs(tmp_path: Path) -> None:
    """Switching stores with configure: every run's version is in its own store."""
    defined = Task(_versioned_one, id="store-switching", source=SOURCE_ONE)
    one, two = tmp_path / "one.duckdb", tmp_path / "two.duckdb"
    nbtasks.configure(store=one, workers=2)
    first = defined.trigger_and_wait(1)
    nbtasks.configure(store=two, workers=2)  # the server of one goes on
    second = defined.trigger_and_wait(1)
    config.shutdown(stop_server=True)
    stop_server(one)

    for path, result in ((one, first), (two, second)):
        with open_store(path) as conn:
            versions = conn.execute(
                "SELECT version, source FROM task_versions WHERE task_id = 'store-switching'"
            ).fetchall()
        assert versions == [(result.run.version, SOURCE_ONE)], path.name


def test_a_run_left_queued_by_a_dead_kernel_is_not_waited_on_as_final(tmp_path: Path) -> None:
    """``runs.wait`` returns only final runs, also for a run its (dead) kernel never started."""
    path = tmp_path / "orphans.duckdb"
    proc = run_script(
        """
        import os
        from nbtasks import task

        @task
        def slow(p):
            import time
            time.sleep(p)

        slow.trigger(60)  # takes the only worker
        waiting = slow.trigger(60)  # can only be QUEUED when the kernel dies
        print(waiting.id, flush=True)
        os._exit(0)
        """,
        tmp_path,
        env={"JPY_SESSION_NAME": "", "NBTASKS_STORE": str(path), "NBTASKS_WORKERS": "1"},
        timeout=TIMEOUT,
    )
    assert proc.returncode == 0, proc.stderr
    waiting_id = proc.stdout.strip()

    nbtasks.configure(store=path, workers=1)  # a new kernel reaches the store's server
    run = runs.retrieve(waiting_id)
    assert run.attempt_count == 0
    assert not run.is_final  # it never executed: nothing ended it
    with pytest.raises(TimeoutError):
        runs.wait(waiting_id, timeout=0.3)


# --------------------------------------------------------------------------- the journal


def _run_row(run_id: str, status: str, at: datetime, **changes: Any) -> tuple[Any, ...]:
    values: dict[str, Any] = dict.fromkeys(RUN_COLUMNS)
    values.update(id=run_id, task_id="t", status=status, created_at=at, updated_at=at,
                  attempt_count=0, depth=0, tags=[])  # fmt: skip
    values.update(changes)
    return tuple(values[c] for c in RUN_COLUMNS)


def _update(row: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(row[RUN_COLUMNS.index(c)] for c in RUN_UPDATE_COLUMNS)


def _attempt_row(attempt_id: str, run_id: str, status: str, at: datetime) -> tuple[Any, ...]:
    values: dict[str, Any] = dict.fromkeys(ATTEMPT_COLUMNS)
    values.update(id=attempt_id, run_id=run_id, number=1, status=status, started_at=at,
                  oom=False)  # fmt: skip
    return tuple(values[c] for c in ATTEMPT_COLUMNS)


def test_the_journal_folds_into_the_tables_as_the_commits_wrote_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batches committed to the journal, folded at once by a read, leave the tables as
    writing each batch in turn would: a run created and finished in between is one row with
    its final state, a run folded earlier gets its update, events keep their order."""
    monkeypatch.setattr("nbtasks.store.folding.FOLD_IDLE_S", 600.0)  # only the reads below fold
    monkeypatch.setattr("nbtasks.store.folding.FOLD_MAX_AGE_S", 600.0)
    committed: dict[int, BaseException | None] = {}
    done = threading.Condition()

    def on_commit(ticket: int, error: BaseException | None) -> None:
        with done:
            committed[ticket] = error
            done.notify_all()

    def commit(ticket: int) -> None:
        with done:
            assert done.wait_for(lambda: ticket in committed, TIMEOUT)
        assert committed[ticket] is None

    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    t1, t2 = t0.replace(second=1), t0.replace(second=2)
    store = Store(str(tmp_path / "journal.duckdb"), on_commit)
    try:
        early = _run_row("run_early", "QUEUED", t0)
        store.stage_run(early)
        store.stage_event(("run_early", t0, "QUEUED", None, None))
        commit(store.stage_run(_run_row("run_both", "QUEUED", t0, payload=b"p")))
        assert store.query("SELECT id, status FROM runs ORDER BY id") == [
            ("run_both", "QUEUED"), ("run_early", "QUEUED"),
        ]  # fmt: skip

        running = _run_row("run_both", "EXECUTING", t1, payload=b"p", attempt_count=1)
        store.stage_run(running, _update(running))
        store.stage_attempt(_attempt_row("att_1", "run_both", "EXECUTING", t1), new=True)
        store.stage_event(("run_both", t1, "EXECUTING", 1, None))
        commit(store.stage_event(("run_early", t1, "EXPIRED", None, "ttl")))

        finished = _run_row("run_both", "COMPLETED", t2, payload=b"p", output=b"o",
                            attempt_count=1, finished_at=t2)  # fmt: skip
        store.stage_run(finished, _update(finished))
        ended = _run_row("run_early", "EXPIRED", t2, expired_at=t2)
        store.stage_run(ended, _update(ended))
        store.stage_attempt(_attempt_row("att_1", "run_both", "COMPLETED", t1))
        commit(store.stage_event(("run_both", t2, "COMPLETED", 1, None)))

        (folded,) = store._conn.execute("SELECT folded_seq FROM journal_state").fetchone()
        unfolded = [seq for seq, _ in store._journal.read() if seq > folded]
        # a frame per commit since the read above folded, numbered on from the folded one
        assert unfolded and unfolded == list(range(folded + 1, folded + 1 + len(unfolded)))
        rows = store.query(
            "SELECT id, status, payload, output, created_at, updated_at, finished_at, "
            "expired_at, attempt_count FROM runs ORDER BY id"
        )
        assert rows == [
            ("run_both", "COMPLETED", b"p", b"o", t0, t2, t2, None, 1),
            ("run_early", "EXPIRED", None, None, t0, t2, None, t2, 0),
        ]
        assert store.query("SELECT id, status FROM attempts") == [("att_1", "COMPLETED")]
        assert store.query('SELECT run_id, status FROM run_events ORDER BY "at", rowid') == [
            ("run_early", "QUEUED"), ("run_both", "EXECUTING"), ("run_early", "EXPIRED"),
            ("run_both", "COMPLETED"),
        ]  # fmt: skip
        assert store.query("SELECT folded_seq FROM journal_state") == [(unfolded[-1],)]
    finally:
        store.close()


class _Commits:
    """The tickets a store reported committed, to wait on."""

    def __init__(self) -> None:
        self.done: dict[int, BaseException | None] = {}
        self.cv = threading.Condition()

    def __call__(self, ticket: int, error: BaseException | None) -> None:
        with self.cv:
            self.done[ticket] = error
            self.cv.notify_all()

    def wait_past(self, ticket: int) -> None:
        with self.cv:
            assert self.cv.wait_for(lambda: max(self.done, default=-1) >= ticket, TIMEOUT)


def test_rows_of_one_step_are_sealed_together_and_commit_after_it(tmp_path: Path) -> None:
    steps: list[Any] = []  # what the store asked to run once the current step is over
    commits = _Commits()
    store = Store(str(tmp_path / "steps.duckdb"), commits, steps.append)
    try:
        at = datetime(2026, 1, 1, tzinfo=timezone.utc)
        ticket = store.stage_run(_run_row("run_a", "QUEUED", at))
        assert store.stage_event(("run_a", at, "QUEUED", None, None)) == ticket
        assert len(steps) == 1  # one seal per step, however many rows
        assert store.barrier() == ticket
        assert store.query("SELECT count(*) FROM runs") == [(0,)]  # not sealed: not written

        steps.pop()()  # the step is over
        commits.wait_past(ticket)
        assert commits.done[max(commits.done)] is None
        assert store.query("SELECT id FROM runs") == [("run_a",)]
        assert store.query("SELECT status FROM run_events") == [("QUEUED",)]
        assert store.stage_run(_run_row("run_b", "QUEUED", at)) == ticket + 1
    finally:
        store.close()
    with open_store(tmp_path / "steps.duckdb") as conn:  # close committed the open step
        assert conn.execute("SELECT id FROM runs ORDER BY id").fetchall() == [
            ("run_a",), ("run_b",),
        ]  # fmt: skip


def test_rows_nobody_hurries_commit_on_their_own(tmp_path: Path) -> None:
    commits = _Commits()
    store = Store(str(tmp_path / "deferred.duckdb"), commits)
    try:
        ticket = store.stage_run(_run_row("run_d", "QUEUED", datetime.now(timezone.utc)))
        commits.wait_past(ticket)  # within DEFER_MAX_S, with nothing else staged
        assert store.query("SELECT id FROM runs") == [("run_d",)]
    finally:
        store.close()


def test_rows_nobody_hurries_commit_while_sealing_goes_on_and_once_it_paused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While batches keep being sealed the committer looks on its own every DEFER_MAX_S
    (a deferred batch does not wake it); once sealing paused for SEALING_S it sleeps until
    woken, and the next deferred batch wakes it."""
    monkeypatch.setattr("nbtasks.store.commits.SEALING_S", 0.2)
    commits = _Commits()
    store = Store(str(tmp_path / "deferred.duckdb"), commits)
    try:
        at = datetime.now(timezone.utc)
        for i in range(5):  # sealing goes on: deferred, the committer not woken for them
            ticket = store.stage_run(_run_row(f"run_{i}", "QUEUED", at))
            commits.wait_past(ticket)
        deadline = time.monotonic() + TIMEOUT
        while True:  # sealing paused: the committer comes to sleep until woken
            with store._cv:
                if store._committer_wakes == float("inf"):
                    break
            assert time.monotonic() < deadline, "the committer never slept until woken"
            time.sleep(0.01)
        ticket = store.stage_run(_run_row("run_late", "QUEUED", at))
        commits.wait_past(ticket)
        assert len(store.query("SELECT id FROM runs")) == 6
    finally:
        store.close()


def test_a_store_from_a_newer_nbtasks_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "newer.duckdb"
    Store(str(path), lambda ticket, error: None).close()
    conn = duckdb.connect(str(path))
    conn.execute("INSERT INTO schema_version VALUES (99)")
    conn.close()
    with pytest.raises(
        NbtasksError, match=rf"schema version 99, newer than .* \({SCHEMA_VERSION}\)"
    ):
        Store(str(path), lambda ticket, error: None)
    with open_store(path) as conn:
        assert conn.execute("SELECT version FROM schema_version ORDER BY version").fetchall() == [
            (SCHEMA_VERSION,), (99,),
        ]  # fmt: skip


def test_a_store_of_schema_1_gains_the_journal_state_and_payloads_tables(tmp_path: Path) -> None:
    path = tmp_path / "old.duckdb"
    Store(str(path), lambda ticket, error: None).close()
    conn = duckdb.connect(str(path))
    conn.execute("DROP TABLE journal_state")
    conn.execute("DROP TABLE payloads")
    conn.execute("DELETE FROM schema_version")
    conn.execute("INSERT INTO schema_version VALUES (1)")
    conn.close()
    Store(str(path), lambda ticket, error: None).close()
    with open_store(path) as conn:
        assert conn.execute("SELECT max(version) FROM schema_version").fetchone() == (
            SCHEMA_VERSION,
        )
        assert conn.execute("SELECT count(*) FROM journal_state").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM payloads").fetchone() == (0,)


_FRAME_BYTES = 16  # a journal frame's header: length, CRC32, sequence number


def _batch_with_event(name: str) -> Batch:
    batch = Batch()
    batch.events.append((name, datetime(2026, 1, 1, tzinfo=timezone.utc), "QUEUED", None, None))
    return batch


def _names(frames: list[tuple[int, bytes]]) -> list[tuple[int, str]]:
    return [(seq, Batch.loads(body).events[0][0]) for seq, body in frames]


def test_the_journal_file_reads_back_only_whole_frames_that_follow_on(tmp_path: Path) -> None:
    path = str(tmp_path / "j.journal")
    journal = JournalFile(path)
    try:
        for seq, name in enumerate(["a-long-name-to-leave-bytes-behind", "b", "c"]):
            journal.append(seq, _batch_with_event(name).dumps())
        assert _names(JournalFile(path).read()) == [
            (0, "a-long-name-to-leave-bytes-behind"), (1, "b"), (2, "c"),
        ]  # fmt: skip

        journal.clear()  # folded: new frames overwrite the old ones from the start
        d, e = _batch_with_event("d").dumps(), _batch_with_event("e").dumps()
        journal.append(3, d)
        assert _names(JournalFile(path).read()) == [(3, "d")]  # "b" and "c" do not follow

        journal.append(4, e)
        assert _names(JournalFile(path).read()) == [(3, "d"), (4, "e")]
        with open(path, "r+b") as f:  # tear the last frame, as a crash mid-write would
            f.seek(2 * _FRAME_BYTES + len(d) + len(e) - 1)
            f.write(b"X")
        assert _names(JournalFile(path).read()) == [(3, "d")]
    finally:
        journal.close()


def test_a_hurried_step_commits_on_the_staging_thread_when_the_writer_is_idle(
    tmp_path: Path,
) -> None:
    steps: list[Any] = []
    commits = _Commits()
    store = Store(str(tmp_path / "hurried.duckdb"), commits, steps.append)
    try:
        at = datetime(2026, 1, 1, tzinfo=timezone.utc)
        ticket = store.stage_run(_run_row("run_h", "QUEUED", at))
        store.hurry(ticket)
        assert ticket not in commits.done
        steps.pop()()  # the step ends: sealed and committed before this returns
        assert ticket in commits.done and commits.done[ticket] is None
        assert store.query("SELECT id FROM runs") == [("run_h",)]
    finally:
        store.close()


def test_the_journal_is_folded_while_commits_never_pause(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("nbtasks.store.folding.FOLD_IDLE_S", 600.0)  # never idle long enough
    monkeypatch.setattr("nbtasks.store.folding.FOLD_MAX_AGE_S", 0.05)
    steps: list[Any] = []
    commits = _Commits()
    store = Store(str(tmp_path / "busy.duckdb"), commits, steps.append)
    try:
        at = datetime(2026, 1, 1, tzinfo=timezone.utc)
        folded = None
        for i in range(2000):
            ticket = store.stage_run(_run_row(f"run_{i:04d}", "QUEUED", at))
            store.hurry(ticket)
            steps.pop()()
            row = store._conn.execute("SELECT max(folded_seq) FROM journal_state").fetchone()
            if row and row[0] is not None:
                folded = row[0]
                break
            time.sleep(0.001)
        assert folded is not None, "the writer never folded the journal"
        commits.wait_past(ticket)  # committed by the writer if it was busy folding
        assert store.query("SELECT count(*) FROM runs") == [(i + 1,)]
    finally:
        store.close()


def _folded_seq(store: Store) -> int | None:
    row = store._conn.execute("SELECT max(folded_seq) FROM journal_state").fetchone()
    return row[0] if row else None


def test_the_journal_is_folded_once_its_frames_hold_fold_max_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Few rows but big ones (outputs): the bytes waiting bound what the journal (and the
    memory behind it) holds, as the rows do."""
    monkeypatch.setattr("nbtasks.store.folding.FOLD_IDLE_S", 600.0)  # never idle long enough
    monkeypatch.setattr("nbtasks.store.folding.FOLD_MAX_AGE_S", 600.0)
    monkeypatch.setattr("nbtasks.store.folding.FOLD_MAX_BYTES", 1 << 20)
    commits = _Commits()
    store = Store(str(tmp_path / "big.duckdb"), commits)
    try:
        at = datetime(2026, 1, 1, tzinfo=timezone.utc)
        for i in range(3):  # 3 x 200 KB: under the bound
            _commit_big(store, commits, f"run_{i}", at)
        time.sleep(0.2)
        assert _folded_seq(store) is None
        for i in range(3, 6):  # 1.2 MB
            _commit_big(store, commits, f"run_{i}", at)
        deadline = time.monotonic() + TIMEOUT
        while _folded_seq(store) is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _folded_seq(store) is not None, "the journal was not folded at FOLD_MAX_BYTES"
        assert store._conn.execute("SELECT count(*) FROM runs").fetchone() == (6,)
    finally:
        store.close()


def _commit_big(store: Store, commits: _Commits, run_id: str, at: datetime) -> None:
    output = bytes(range(256)) * 800  # 200 KB
    ticket = store.stage_run(_run_row(run_id, "COMPLETED", at, output=output))
    store.hurry(ticket)
    commits.wait_past(ticket)
    assert commits.done[ticket] is None


def _commit_run(store: Store, commits: _Commits, run_id: str) -> None:
    ticket = store.stage_run(_run_row(run_id, "QUEUED", datetime(2026, 1, 1, tzinfo=timezone.utc)))
    store.hurry(ticket)
    commits.wait_past(ticket)
    assert commits.done[ticket] is None


def test_commits_go_on_while_a_fold_writes_the_tables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("nbtasks.store.folding.FOLD_IDLE_S", 600.0)  # only the calls below fold
    monkeypatch.setattr("nbtasks.store.folding.FOLD_MAX_AGE_S", 600.0)
    commits = _Commits()
    store = Store(str(tmp_path / "fold.duckdb"), commits)
    inside, release = threading.Event(), threading.Event()
    write_tables = store._write_tables

    def slow_write(*args: Any) -> None:  # a fold that takes until the test says so
        inside.set()
        assert release.wait(TIMEOUT)
        write_tables(*args)

    try:
        _commit_run(store, commits, "run_a")
        monkeypatch.setattr(store, "_write_tables", slow_write)
        folding = threading.Thread(target=store.fold)
        folding.start()
        assert inside.wait(TIMEOUT)
        _commit_run(store, commits, "run_b")  # while run_a is being folded
        _commit_run(store, commits, "run_c")
        release.set()
        folding.join(TIMEOUT)
        assert store._conn.execute("SELECT id FROM runs").fetchall() == [("run_a",)]
        assert [seq for seq, _ in store._journal.read()] == [1, 2]  # b and c, in the other file
        assert store.query("SELECT id FROM runs ORDER BY id") == [
            ("run_a",), ("run_b",), ("run_c",),
        ]  # fmt: skip
    finally:
        release.set()
        store.close()


FAILED_FOLD_THEN_EXIT = """
import os, sys
from datetime import datetime, timezone
from nbtasks.store.store import Store
from test_store import _Commits, _commit_run

commits = _Commits()
store = Store(sys.argv[1], commits)
_commit_run(store, commits, "run_a")

def broken(*args):
    raise OSError("disk full")

real = store._write_tables
store._write_tables = broken
try:
    store.fold()
except OSError:
    pass
_commit_run(store, commits, "run_b")  # into the other file: both hold frames now
store._write_tables = real
store.fold()  # the next fold takes both files' frames
_commit_run(store, commits, "run_c")
store._write_tables = broken
try:
    store.fold()
except OSError:
    pass
_commit_run(store, commits, "run_d")
os._exit(0)  # no close: run_c and run_d are in the journal files only
"""


def test_a_failed_fold_loses_nothing_and_the_next_store_folds_both_files(
    tmp_path: Path,
) -> None:
    path = tmp_path / "failed.duckdb"
    script = tmp_path / "failed_fold.py"
    script.write_text(FAILED_FOLD_THEN_EXIT)
    here = str(Path(__file__).parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([here, PYTHONPATH])}
    done = subprocess.run([sys.executable, str(script), str(path)], env=env,
                          capture_output=True, text=True, timeout=TIMEOUT)  # fmt: skip
    assert done.returncode == 0, done.stderr
    with open_store(path) as conn:  # what the process folded before it died
        assert conn.execute("SELECT id FROM runs ORDER BY id").fetchall() == [
            ("run_a",), ("run_b",),
        ]  # fmt: skip
    store = Store(str(path), lambda ticket, error: None)
    try:
        assert store.query("SELECT id FROM runs ORDER BY id") == [
            ("run_a",), ("run_b",), ("run_c",), ("run_d",),
        ]  # fmt: skip
    finally:
        store.close()
    assert not os.path.exists(str(path) + ".journal")
    assert not os.path.exists(str(path) + ".journal.1")


def test_a_store_of_schema_3_gains_the_resources_and_origin_columns(tmp_path: Path) -> None:
    path = tmp_path / "old.duckdb"
    Store(str(path), lambda ticket, error: None).close()
    conn = duckdb.connect(str(path))
    conn.execute("ALTER TABLE runs DROP COLUMN origin")
    conn.execute("ALTER TABLE runs DROP COLUMN resources")
    conn.execute("DELETE FROM schema_version")
    conn.execute("INSERT INTO schema_version VALUES (3)")
    conn.close()
    Store(str(path), lambda ticket, error: None).close()
    with open_store(path) as conn:
        assert conn.execute("SELECT max(version) FROM schema_version").fetchone() == (5,)
        assert columns(conn, "runs") == RUN_COLUMNS
        assert RUN_COLUMNS[-2:] == ("resources", "origin")


def test_a_store_of_schema_4_opens_with_its_runs_of_no_origin(
    fresh_config: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A store the previous version wrote (no runs.origin): its runs read as of no origin,
    new ones record theirs, and the listing filters on it."""
    path = tmp_path / "old" / "runs.duckdb"
    proc = run_script(
        """
        from nbtasks import task

        @task
        def inc(p):
            return p + 1

        print(inc.trigger_and_wait(1).id, inc.trigger_and_wait(2).id)
        """,
        tmp_path,
        env={"JPY_SESSION_NAME": "", "NBTASKS_STORE": str(path)},
        timeout=TIMEOUT,
    )
    assert proc.returncode == 0, proc.stderr
    old_ids = proc.stdout.split()
    stop_server(path)
    conn = duckdb.connect(str(path))  # as the previous version left it
    conn.execute("ALTER TABLE runs DROP COLUMN origin")
    conn.execute("DELETE FROM schema_version WHERE version = 5")
    conn.close()

    nbtasks.configure(store=path, workers=1)
    try:
        assert [runs.retrieve(i).origin for i in old_ids] == [None, None]
        assert [(r.id, r.origin) for r in runs.list()] == [(i, None) for i in reversed(old_ids)]
        new = add.trigger_and_wait({"a": 1, "b": 1})
        here = config.engine().name  # this process's origin
        assert here and runs.retrieve(new.id).origin == here
        assert [r.id for r in runs.list(origin=here)] == [new.id]
        assert runs.sql("SELECT count(*) FROM runs WHERE origin IS NULL").fetchall() == [(2,)]
    finally:
        config.shutdown(stop_server=True)
    with open_store(path) as conn:
        assert conn.execute("SELECT max(version) FROM schema_version").fetchone() == (5,)
        assert columns(conn, "runs") == RUN_COLUMNS


def test_a_journal_frame_of_an_earlier_schema_is_read_with_the_later_columns_null() -> None:
    row = tuple(["run_1", "t", *([None] * (len(RUN_COLUMNS) - 3)), "notebook.ipynb"])
    batch = Batch()
    batch.new_runs["run_1"] = row[:-1]  # schema 4: no origin
    assert Batch.loads(batch.dumps()).new_runs["run_1"] == (*row[:-1], None)
    batch.new_runs["run_1"] = row[:-2]  # schema 3: no resources either
    assert Batch.loads(batch.dumps()).new_runs["run_1"] == (*row[:-2], None, None)
    batch.new_runs["run_1"] = row  # this schema: as written
    assert Batch.loads(batch.dumps()).new_runs["run_1"] == row
    batch.new_runs["run_1"] = row[:-3]  # three fewer: not a row of this store
    with pytest.raises(ValueError, match="does not fit"):
        Batch.loads(batch.dumps())
