"""A store that can be trusted: nothing beside it runs code when it is opened, its files
are private, and ``runs.sql`` can only read it."""

from __future__ import annotations

import json
import os
import pickle
import stat
import struct
import subprocess
import sys
import threading
import zlib
from pathlib import Path
from typing import Any

import duckdb
import msgspec
import pytest

from nbtasks import runs
from nbtasks.client import config
from nbtasks.core.errors import NbtasksError
from nbtasks.service.client import connect, server_pid
from nbtasks.service.settings import Config
from nbtasks.store.journal import JournalError
from nbtasks.store.schema import RUN_COLUMNS
from nbtasks.store.store import Store

from conftest import PYTHONPATH, run_script
from tasks import add

# --------------------------------------------------------------------------- runs.sql


def _event_count() -> int:
    ((n,),) = runs.sql("select count(*) from run_events").fetchall()
    return int(n)


def test_sql_result_is_a_detached_copy_that_cannot_reach_the_store(nb: object) -> None:
    add.batch_trigger_and_wait([{"a": i, "b": 1} for i in range(3)])
    events = _event_count()
    assert events > 0
    relation = runs.sql("select id, status from runs order by id")
    assert [status for _, status in relation.fetchall()] == ["COMPLETED"] * 3

    for statement in (  # on the relation's own connection: no store there
        "delete from run_events",
        "drop table runs",
        "update runs set status = 'X'",
        "insert into run_events select * from run_events",
    ):
        with pytest.raises(duckdb.CatalogException):
            relation.query("v", statement)
    relation.create("planted")  # a table in the relation's private database
    assert _event_count() == events
    tables = runs.sql("select table_name from information_schema.tables").fetchall()
    assert ("planted",) not in tables
    assert {("runs",), ("attempts",), ("run_events",)} <= set(tables)

    frame = relation.df()  # the usual ways out still work
    assert list(frame.columns) == ["id", "status"] and len(frame) == 3
    assert relation.arrow().read_all().num_rows == 3


@pytest.mark.parametrize(
    "query",
    [
        "select * from read_text('/etc/hostname')",
        "select * from read_csv('/etc/passwd')",
        "select * from glob('/etc/*')",
        "select * from 'https://example.com/data.csv'",
        "select * from read_parquet('s3://bucket/x.parquet')",
    ],
)
def test_sql_reads_no_file_or_url_but_the_store(nb: object, query: str) -> None:
    with pytest.raises(duckdb.PermissionException, match="disabled by configuration"):
        runs.sql(query)


@pytest.mark.parametrize(
    "statement",
    [
        "copy runs to 'copied.csv'",
        "attach 'other.duckdb' as other",
        "install httpfs",
        "load httpfs",
        "set enable_external_access = true",
        "export database 'dumped'",
        "create table planted as select 1",
        "select 1; delete from runs",
    ],
)
def test_sql_refuses_every_statement_but_one_select(
    nb: object, statement: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"runs\.sql"):
        runs.sql(statement)
    assert sorted(os.listdir(tmp_path)) == sorted(p.name for p in tmp_path.iterdir())
    assert not (tmp_path / "copied.csv").exists() and not (tmp_path / "dumped").exists()


@pytest.mark.parametrize(
    "escape",
    [
        lambda rel, d: rel.write_csv(str(d / "out.csv")),
        lambda rel, d: rel.to_parquet(str(d / "out.parquet")),
        lambda rel, d: rel.query("v", f"copy v to '{d / 'out.csv'}'"),
        lambda rel, d: rel.query("v", f"attach '{d / 'out.duckdb'}' as out"),
        lambda rel, d: rel.query("v", "select * from read_text('/etc/hostname')"),
        lambda rel, d: rel.query("v", "install httpfs"),
        lambda rel, d: rel.query("v", "set enable_external_access = true"),
    ],
    ids=["write_csv", "to_parquet", "copy", "attach", "read_text", "install", "set"],
)
def test_what_sql_returns_writes_and_reads_no_file(nb: object, tmp_path: Path, escape: Any) -> None:
    relation = runs.sql("select 1 as one")
    (tmp_path / "out").mkdir()
    with pytest.raises(duckdb.Error):
        escape(relation, tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


# --------------------------------------------------------------------------- journal frames

_FRAME = struct.Struct(">IIQ")  # length, CRC32 of the body, sequence number


class _Plant:
    """Creates the file named when unpickled: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


def _frame(seq: int, body: bytes) -> bytes:
    return _FRAME.pack(len(body), zlib.crc32(body), seq) + body


def _commit_run(store: Store, committed: threading.Event, run_id: str) -> None:
    """Stage a run, have it committed now, and wait until it is."""
    row: dict[str, Any] = dict.fromkeys(RUN_COLUMNS)
    row.update(id=run_id, task_id="t", status="QUEUED", attempt_count=0, depth=0,
               created_at=_now(), updated_at=_now(), tags=[])  # fmt: skip
    committed.clear()
    store.hurry(store.stage_run(tuple(row[c] for c in RUN_COLUMNS)))
    assert committed.wait(30)


def _store_with_runs(path: Path) -> int:
    """A closed store holding one run; the last journal frame it folded."""
    committed = threading.Event()
    store = Store(str(path), lambda ticket, error: committed.set())
    try:
        _commit_run(store, committed, "run_a")
        assert store.query("select count(*) from runs") == [(1,)]
        ((folded,),) = store.query("select folded_seq from journal_state")
    finally:
        store.close()
    return int(folded)


def _now() -> Any:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc)


def _runs_in(path: Path) -> list[tuple[str, ...]]:
    conn = duckdb.connect(str(path), read_only=True)
    try:
        return conn.execute("select id from runs order by id").fetchall()
    finally:
        conn.close()


@pytest.mark.parametrize("name", [".journal", ".journal.1"])
def test_a_planted_pickle_frame_runs_no_code_with_any_sequence_number(
    tmp_path: Path, name: str
) -> None:
    path = tmp_path / "store.duckdb"
    folded = _store_with_runs(path)
    marker = tmp_path / "code-ran"
    body = pickle.dumps(_Plant(marker))
    for seq in sorted({0, 1, folded, folded + 1, folded + 2, 2**32, 2**64 - 1}):
        Path(str(path) + name).write_bytes(_frame(seq, body) * 3)
        os.chmod(str(path) + name, 0o600)
        try:
            Store(str(path), lambda ticket, error: None).close()
        except JournalError as exc:  # a frame that follows on is refused, never decoded
            assert seq == folded + 1, seq
            assert f"frame {seq} of the journal" in str(exc) and "not nbtasks data" in str(exc)
        assert not marker.exists(), f"code ran from a frame numbered {seq}"
        assert _runs_in(path) == [("run_a",)]


@pytest.mark.parametrize(
    "body, message",
    [
        (msgspec.msgpack.encode([{}, {}, {}, {}, [], [[1, 2]]]), "not nbtasks data"),
        (msgspec.msgpack.encode([{"run_x": [1, 2, 3]}, {}, {}, {}, [], []]), "does not fit"),
        (msgspec.msgpack.encode({"__reduce__": "os.system"}), "not nbtasks data"),
        (b"\xc1" * 40, "not nbtasks data"),
    ],
    ids=["short event row", "short run row", "a map", "garbage"],
)
def test_a_frame_that_is_not_rows_of_the_store_is_refused_by_name(
    tmp_path: Path, body: bytes, message: str
) -> None:
    path = tmp_path / "store.duckdb"
    folded = _store_with_runs(path)
    Path(str(path) + ".journal").write_bytes(_frame(folded + 1, body))
    os.chmod(str(path) + ".journal", 0o600)
    with pytest.raises(JournalError, match=message):
        Store(str(path), lambda ticket, error: None)
    assert _runs_in(path) == [("run_a",)]  # the store is left as it was


def test_rows_the_tables_cannot_take_are_refused_and_nothing_of_them_is_written(
    tmp_path: Path,
) -> None:
    path = tmp_path / "store.duckdb"
    folded = _store_with_runs(path)
    row: dict[str, Any] = dict.fromkeys(RUN_COLUMNS)
    row.update(id="run_b", task_id="t", status="QUEUED", attempt_count="many", depth=0,
               created_at="not a time", updated_at="never", tags=[])  # fmt: skip
    body = msgspec.msgpack.encode([{"run_b": [row[c] for c in RUN_COLUMNS]}, {}, {}, {}, [], []])
    Path(str(path) + ".journal").write_bytes(_frame(folded + 1, body))
    os.chmod(str(path) + ".journal", 0o600)
    with pytest.raises(JournalError, match="holds rows this store cannot take"):
        Store(str(path), lambda ticket, error: None)
    assert _runs_in(path) == [("run_a",)]


def test_opening_a_store_with_a_planted_journal_from_a_notebook_runs_no_code(
    tmp_path: Path,
) -> None:
    """As reported: defining a task in ``__main__`` opens the folder's store (its server
    does), and a trigger starts that server."""
    path = tmp_path / ".nbtasks" / "runs.duckdb"
    folded = _store_with_runs(path)
    marker = tmp_path / "code-ran"
    journal = Path(str(path) + ".journal")
    journal.write_bytes(b"".join(_frame(s, pickle.dumps(_Plant(marker))) for s in range(50)))
    journal.chmod(0o600)
    done = run_script(
        """
        import nbtasks

        @nbtasks.task
        def inc(p):
            return p + 1

        try:
            print(inc.trigger_and_wait(1).output)
        except nbtasks.NbtasksError as exc:
            print("refused:", exc)
        """,
        tmp_path,
        env={"JPY_SESSION_NAME": ""},
    )
    assert done.returncode == 0, done.stderr
    assert not marker.exists()
    assert 0 <= folded < 50  # the planted frames include the one that follows on
    # the server refuses to open the store, and the trigger says why
    assert done.stdout.startswith("refused: "), done.stdout
    assert f"frame {folded + 1} of the journal" in done.stdout
    assert "not nbtasks data" in done.stdout
    assert str(journal) in done.stdout
    assert _runs_in(path) == [("run_a",)]  # the store is left as it was


def test_a_journal_that_is_not_yours_or_others_can_write_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "store.duckdb"
    _store_with_runs(path)
    journal = Path(str(path) + ".journal")
    journal.write_bytes(b"")
    journal.chmod(0o666)
    with pytest.raises(JournalError, match=r"others can write to it \(mode 666\)"):
        Store(str(path), lambda ticket, error: None)
    journal.unlink()
    journal.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(JournalError, match="cannot open the nbtasks journal"):
        Store(str(path), lambda ticket, error: None)
    journal.unlink()
    if os.getuid() == 0:  # only root can give a file away
        journal.write_bytes(b"")
        journal.chmod(0o600)
        os.chown(journal, 65534, 65534)
        with pytest.raises(JournalError, match="belongs to user id 65534"):
            Store(str(path), lambda ticket, error: None)
        journal.unlink()
    Store(str(path), lambda ticket, error: None).close()  # without it, the store opens


# --------------------------------------------------------------------------- private files


def _stop_server(store: Path) -> None:
    """Stop the server of ``store`` if one runs (it may have stopped, idle) and wait until
    it is gone."""
    try:
        engine = connect(Config(store=str(store)), "test", start=False)
    except NbtasksError:
        return
    try:
        config.stop(engine)
    finally:
        engine.close()
    assert server_pid(str(store)) is None


_MODES = """
import json, os, sys
os.umask(int(sys.argv[1], 8))  # the server this script starts inherits it
import nbtasks
from nbtasks.client import config
from nbtasks.service.places import place_of

@nbtasks.task
def inc(p):
    return p + 1

root = os.path.join(os.getcwd(), "made")
store = os.path.join(root, "deep", "store.duckdb")
nbtasks.configure(store=store, workers=1)
inc.batch_trigger_and_wait(list(range(50)))
nbtasks.runs.list()  # a fold: DuckDB's WAL is there now
place = place_of(store)  # where the server's own files are


def modes():
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            found[os.path.relpath(path, root)] = oct(os.lstat(path).st_mode & 0o777)
    for name in ("socket", "lock", "start_lock", "log"):
        path = getattr(place, name)
        if os.path.lexists(path):
            found[name] = oct(os.lstat(path).st_mode & 0o777)
    found["server folder"] = oct(os.lstat(os.path.dirname(place.socket)).st_mode & 0o777)
    return found


while_open = modes()
config.shutdown(stop_server=True)  # the server closes the store and is gone
print(json.dumps({"open": while_open, "closed": modes()}))
open("after", "w").close()
"""


@pytest.mark.parametrize("umask", ["000", "022", "277"])
def test_every_file_is_0600_and_every_folder_0700_whatever_the_umask(
    tmp_path: Path, umask: str
) -> None:
    script = tmp_path / "script.py"
    script.write_text(_MODES)
    done = subprocess.run(
        [sys.executable, str(script), umask],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "NBTASKS_WORKERS": "1", "PYTHONPATH": PYTHONPATH},
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert "deep/store.duckdb.wal" in seen["open"]  # DuckDB's own file, made by DuckDB
    assert "deep/store.duckdb.journal" in seen["open"]
    # the server's files: beside the store (its folder is private) unless the socket's
    # path would be too long, then in the user's private runtime folder
    short = len(os.fsencode(str(tmp_path / "made" / "deep" / "store.duckdb.sock"))) <= 100
    for name, beside in (("socket", "sock"), ("lock", "server"), ("start_lock", "starting"),
                         ("log", "server.log")):  # fmt: skip
        assert name in seen["open"], name
        assert (f"deep/store.duckdb.{beside}" in seen["open"]) == short, beside
    assert "socket" not in seen["closed"]  # a stopped server takes its socket away
    for name in ("lock", "start_lock", "log"):
        assert name in seen["closed"], name
    for when in ("open", "closed"):
        for name, mode in seen[when].items():
            wanted = "0o700" if name in ("deep", "server folder") else "0o600"
            assert mode == wanted, (when, name, mode)
    assert oct(os.stat(tmp_path / "made").st_mode & 0o777) == "0o700"
    assert (tmp_path / "made" / "deep" / ".gitignore").read_text().splitlines()[-1] == "*"
    # the kernel's own umask is untouched: only the store's thread has one of its own
    expected = 0o666 & ~int(umask, 8)
    assert stat.S_IMODE(os.stat(tmp_path / "after").st_mode) == expected


def test_the_default_store_folder_is_kept_out_of_git(tmp_path: Path) -> None:
    done = run_script(
        """
        import nbtasks

        @nbtasks.task
        def inc(p):
            return p + 1

        print(inc.trigger_and_wait(1).output)
        """,
        tmp_path,
        env={"JPY_SESSION_NAME": "", "NBTASKS_STORE": ""},
    )
    assert done.returncode == 0, done.stderr
    folder = tmp_path / ".nbtasks"
    assert (folder / ".gitignore").read_text().splitlines()[-1] == "*"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    _stop_server(folder / "runs.duckdb")  # an older nbtasks left no server behind
    (folder / ".gitignore").unlink()  # a folder made by an older nbtasks gets one too
    folder.chmod(0o755)
    done = run_script("import nbtasks\nnbtasks.runs.list()\n", tmp_path, env={"NBTASKS_STORE": ""})
    assert done.returncode == 0, done.stderr
    assert (folder / ".gitignore").exists()


def test_where_threads_cannot_have_a_umask_the_files_are_made_private_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("nbtasks.store.store.private_umask", lambda: False)
    old = os.umask(0o022)
    try:
        path = tmp_path / "store.duckdb"
        committed = threading.Event()
        store = Store(str(path), lambda ticket, error: committed.set())
        try:
            assert not store.private
            _commit_run(store, committed, "run_a")
            store.fold()
            for name in ("store.duckdb", "store.duckdb.wal", "store.duckdb.journal"):
                assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600, name
        finally:
            store.close()
    finally:
        os.umask(old)
