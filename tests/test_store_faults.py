"""Faults around the store's files: a journal deleted or replaced while in use, a full
disk, a read-only folder, a store held by another process; and what reaches the disk.

A full disk and a read-only folder are real: a small tmpfs, mounted in a mount namespace
of the test's own (``unshare``), so no privilege is needed beyond user namespaces."""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
import psutil
import pytest

import nbtasks
from nbtasks.service.client import server_pid
from nbtasks.service.places import place_of
from nbtasks.store.store import Store
from test_startup import spy_env

from conftest import PYTHONPATH, wait_for

TIMEOUT = 120.0  # upper bound for a subprocess; never part of an assertion


def _script(tmp_path: Path, code: str) -> Path:
    path = tmp_path / "script.py"
    path.write_text(textwrap.dedent(code))
    return path


def _env() -> dict[str, str]:
    return {**os.environ, "NBTASKS_WORKERS": "1", "JPY_SESSION_NAME": "", "PYTHONPATH": PYTHONPATH}


def _in_small_fs(tmp_path: Path, code: str, size: str = "8m") -> subprocess.CompletedProcess[str]:
    """Run ``code`` with ``argv[1]`` a fresh tmpfs of ``size``, in a mount namespace."""
    script = _script(tmp_path, code)
    mount = tmp_path / "fs"
    mount.mkdir()
    shell = (
        f"mount -t tmpfs -o size={size},mode=0700 nbtasks-test {mount} && "
        f"exec {sys.executable} {script} {mount}"
    )
    return subprocess.run(
        ["unshare", "--map-root-user", "--mount", "sh", "-c", shell],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def _ids_in(path: Path) -> set[str]:
    """The run ids in a store, after nbtasks opened it (and folded its journal)."""
    Store(str(path), lambda ticket, error: None).close()
    conn = duckdb.connect(str(path), read_only=True)
    try:
        return {r[0] for r in conn.execute("select id from runs").fetchall()}
    finally:
        conn.close()


def test_a_journal_deleted_or_replaced_while_running_is_put_back_and_nothing_is_lost(
    tmp_path: Path,
) -> None:
    store = tmp_path / "s" / "store.duckdb"
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "store.duckdb.journal.moved").write_bytes(b"")  # kept out of the way
    # The server keeps rows in the journal (it folds them into the store after 600 s).
    env = {**_env(), **spy_env(tmp_path), "NBTASKS_TEST_FOLD_S": "600"}
    done = subprocess.run(
        [sys.executable, _script(tmp_path, JOURNAL_TAMPERED), str(store)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert done.returncode == -9, done.stderr  # it ended by SIGKILL
    *ids, server = done.stdout.split()
    # The store's server, which owns the journal, is killed too: a crash of the store.
    os.kill(int(server), signal.SIGKILL)
    wait_for(lambda: _unheld(store), "the killed server to let go of the store")
    acknowledged = set(ids)
    assert len(acknowledged) == 800
    log = Path(place_of(str(store)).log).read_text()  # the server's stderr
    assert "was deleted while its store was open" in log
    assert "was replaced while its store was open" in log  # (a warning says it once)
    assert _ids_in(store) == acknowledged


def _unheld(store: Path) -> bool:
    try:
        Store(str(store), lambda ticket, error: None).close()
    except nbtasks.StoreLockedError:
        return False
    return True


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


JOURNAL_TAMPERED = """
import os, signal, sys
import nbtasks

@nbtasks.task
def noop(p):
    return p

path = sys.argv[1]
nbtasks.configure(store=path, workers=1)

def burst(n):
    for i in range(n):
        print(noop.trigger(i, delay="1h").id, flush=True)  # acknowledged: durable

burst(200)
os.unlink(path + ".journal")
burst(200)
with open(path + ".planted", "wb") as f:
    f.write(b"\\0" * 4096)
os.replace(path + ".planted", path + ".journal")
burst(200)
os.rename(path + ".journal", path + ".journal.moved")
burst(200)
print(nbtasks.client.config.get_engine().info["pid"], flush=True)  # the store's server
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_after_a_full_disk_everything_works_again_once_space_returns(tmp_path: Path) -> None:
    done = _in_small_fs(tmp_path, DISK_FULL)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert "filled" in lines
    failed = [line for line in lines if line.startswith("trigger failed")]
    assert failed, lines  # the disk was full: some write failed
    for line in failed:
        assert "StoreWriteError: cannot write to the nbtasks store" in line, line
        assert "No space left on device" in line
    after = lines[lines.index("freed") + 1 :]
    assert after[:3] == ["11", "11", "11"], after  # triggers and reads work again
    # Every run that was made, its trigger answered or not, is in the store once
    # space returned, with its final state: what the engine did, the store says.
    statuses = after[3].split(",")
    assert set(statuses) == {"COMPLETED"} and len(statuses) == int(after[4])
    assert "Traceback" not in done.stderr


DISK_FULL = """
import os, sys
import nbtasks
from nbtasks import runs

@nbtasks.task
def inc(p):
    return p + 1

root = sys.argv[1]
nbtasks.configure(store=os.path.join(root, "s", "store.duckdb"), workers=1)
inc.trigger_and_wait(1)
made = 1
with open(os.path.join(root, "filler"), "wb") as f:
    try:
        while True:
            f.write(b"\\0" * 65536)
            f.flush()
    except OSError:
        print("filled")
for i in range(5000):  # the journal has room ahead of it: fill that too
    made += 1
    try:
        inc.trigger(i)
    except nbtasks.NbtasksError as exc:
        print(f"trigger failed: {type(exc).__name__}: {exc}")
        break
try:
    runs.list()
except nbtasks.NbtasksError as exc:
    print(f"list failed: {type(exc).__name__}: {exc}")
os.unlink(os.path.join(root, "filler"))
print("freed")
for _ in range(3):
    print(inc.trigger_and_wait(10).output)
    made += 1
for run in runs.list(limit=1000):
    if not run.is_final:
        runs.wait(run.id, timeout=60)
found = runs.list(limit=1000)
print(",".join(r.status.value for r in found))
print(made)
nbtasks.shutdown()
"""


def test_a_read_only_folder_gives_a_clear_error_and_never_a_traceback(tmp_path: Path) -> None:
    done = _in_small_fs(tmp_path, READ_ONLY)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "2"
    assert lines[1] == "read-only now"
    # The store's server stopped (quietly, though it could not tidy the folder); a new one
    # cannot start there, and this process says why.
    assert lines[2].startswith("refused: cannot start the nbtasks server of store"), lines[2]
    assert "store.duckdb.starting' (Read-only file system)" in lines[2], lines
    assert "Traceback" not in done.stderr, done.stderr
    assert lines[3] == "writable again: ['COMPLETED', 'COMPLETED']"
    assert lines[4] == "server log: no traceback", lines


READ_ONLY = """
import os, subprocess, sys
import nbtasks
from nbtasks import runs

@nbtasks.task
def inc(p):
    return p + 1

root = sys.argv[1]
first = os.path.join(root, "a", "store.duckdb")
nbtasks.configure(store=first, workers=1)
print(inc.trigger_and_wait(1).output)
inc.trigger_and_wait(2)
folder = os.path.dirname(first)
subprocess.run(["mount", "--bind", folder, folder], check=True)
subprocess.run(["mount", "-o", "remount,bind,ro", folder], check=True)
print("read-only now")
# The server stops: the journal cannot be removed, nor the WAL checkpointed: quietly.
nbtasks.client.config.shutdown(stop_server=True)
nbtasks.configure(store=first)
try:
    runs.list()
except nbtasks.NbtasksError as exc:
    print("refused:", exc)
subprocess.run(["umount", folder], check=True)
nbtasks.configure(store=first)
print("writable again:", [r.status.value for r in runs.list()])
nbtasks.client.config.shutdown(stop_server=True)
with open(os.path.join(folder, "store.duckdb.server.log")) as log:  # the servers' stderr
    print("server log:", "traceback" if "Traceback" in log.read() else "no traceback")
"""


def test_a_trigger_that_fails_on_a_held_store_leaks_nothing(tmp_path: Path) -> None:
    store = tmp_path / "held.duckdb"
    Store(str(store), lambda ticket, error: None).close()
    with _held(store):
        done = subprocess.run(
            [sys.executable, _script(tmp_path, HELD), str(store)],
            cwd=tmp_path,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
    assert done.returncode == 0, done.stderr
    before, after, refused, message = done.stdout.splitlines()
    # Each trigger started a server, which could not open the store and said why.
    assert refused == "refused 30"
    assert message.startswith(
        f"StoreLockedError: the nbtasks store {str(store)!r} is in use by process"
    ), message
    assert after == before  # the same open files, and no child process, zombie or not
    assert server_pid(str(store)) is None
    wait_for(lambda: not _processes_of_store(str(store)), "the failed servers' workers to end")


def _processes_of_store(store: str) -> list[int]:
    """The processes a server of ``store`` started (they carry its scope)."""
    import hashlib

    from nbtasks.service.server import SCOPE_ENV

    scope = hashlib.blake2b(os.fsencode(store), digest_size=8).hexdigest()
    mark = f"{SCOPE_ENV}={scope}".encode()
    found = []
    for p in psutil.process_iter():
        try:
            with open(f"/proc/{p.pid}/environ", "rb") as f:
                if mark in f.read().split(b"\0") and not _gone(p.pid):
                    found.append(p.pid)
        except OSError:
            continue
    return found


HOLD = "import sys, time, duckdb\nc = duckdb.connect(sys.argv[1])\nprint('held', flush=True)\n"
HOLD += "time.sleep(120)\n"


@contextmanager
def _held(store: Path) -> Iterator[None]:
    """Another process holds ``store`` open meanwhile."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(store)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        yield
    finally:
        holder.kill()
        holder.wait()


HELD = """
import os, sys, time
import psutil
import nbtasks

@nbtasks.task
def inc(p):
    return p + 1

nbtasks.configure(store=sys.argv[1], workers=1)

def state():
    me = psutil.Process()
    return sorted(os.listdir("/proc/self/fd")), [(c.pid, c.status()) for c in me.children()]

before = state()
refused = 0
messages = set()
for _ in range(30):
    try:
        inc.trigger(1)
    except nbtasks.StoreLockedError as exc:
        refused += 1
        messages.add(f"{type(exc).__name__}: {exc}".split(" (")[0])  # (the holder's command)
time.sleep(0.2)
print(before)
print(state())
print("refused", refused)
print(*messages, sep="\\n")
"""


def test_defining_a_task_while_the_store_is_held_says_so(tmp_path: Path) -> None:
    store = tmp_path / ".nbtasks" / "runs.duckdb"  # the folder's store
    Store(str(store), lambda ticket, error: None).close()
    code = "import nbtasks\n\n@nbtasks.task\ndef inc(p):\n    return p + 1\n"
    with _held(store):
        done = subprocess.run(
            [sys.executable, _script(tmp_path, code)],
            cwd=tmp_path,
            env={**_env(), "NBTASKS_STORE": ""},
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
    assert done.returncode == 0, done.stderr
    assert "NbtasksWarning: runs of 'inc' left waiting in the store" in done.stderr
    assert "is in use by process" in done.stderr


def test_the_folder_is_fsynced_after_a_file_is_created_in_it(tmp_path: Path) -> None:
    """Traced: each file nbtasks creates beside the store (``O_CREAT|O_EXCL``) is followed
    by an fsync of the folder holding it, before the store is used."""
    strace = shutil.which("strace")
    assert strace, "the test command installs strace"
    trace = tmp_path / "trace.txt"
    code = """
    import sys
    import nbtasks

    @nbtasks.task
    def inc(p):
        return p + 1

    nbtasks.configure(store=sys.argv[1], workers=1)
    print(inc.trigger_and_wait(1).output)
    """
    store = tmp_path / "new" / "store.duckdb"
    done = subprocess.run(
        [strace, "-f", "-qq", "-e", "trace=openat,fsync,close", "-o", str(trace),
         sys.executable, _script(tmp_path, code), str(store)],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=TIMEOUT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = trace.read_text().splitlines()
    created = [
        (i, m["path"])
        for i, line in enumerate(lines)
        if (m := re.search(r'openat\(AT_FDCWD, "(?P<path>[^"]+)", [^)]*O_CREAT\|O_EXCL', line))
        and "/new/" in m["path"]
    ]
    names = {os.path.basename(path) for _, path in created}
    assert {"store.duckdb.journal", "store.duckdb.journal.1", ".gitignore"} <= names

    def folder_synced_after(index: int, folder: str) -> bool:
        fds = set()
        for line in lines[index + 1 :]:
            opened = re.search(
                rf'openat\(AT_FDCWD, "{re.escape(folder)}", .*O_DIRECTORY.*= (\d+)', line
            )
            if opened:
                fds.add(opened[1])
            synced = re.search(r"fsync\((\d+)\)\s+= 0", line)
            if synced and synced[1] in fds:
                return True
        return False

    for index, path in created:
        assert folder_synced_after(index, os.path.dirname(path)), path
    assert folder_synced_after(0, str(tmp_path))  # "new" was made in it


def _commit_one(store: Store, committed: list[BaseException | None], run_id: str) -> None:
    from nbtasks.store.schema import RUN_COLUMNS
    from test_trust import _now

    row = dict.fromkeys(RUN_COLUMNS)
    row.update(id=run_id, task_id="t", status="QUEUED", attempt_count=0, depth=0,
               created_at=_now(), updated_at=_now(), tags=[])  # fmt: skip
    store.hurry(store.stage_run(tuple(row[c] for c in RUN_COLUMNS)))


def test_a_store_that_cannot_be_written_does_not_hold_its_close(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    errors: list[BaseException | None] = []
    store = Store(str(tmp_path / "full.duckdb"), lambda ticket, error: errors.append(error))

    def full(seq: int, body: bytes) -> None:  # the disk, full for good
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store._journal, "append", full)
    monkeypatch.setattr(store._spare, "append", full)
    _commit_one(store, errors, "run_a")
    closing = threading.Thread(target=store.close, daemon=True)
    closing.start()
    closing.join(TIMEOUT)
    assert not closing.is_alive(), "close() kept retrying a commit that cannot succeed"
    assert errors and all(isinstance(e, nbtasks.StoreWriteError) for e in errors)


def test_a_journal_restore_that_failed_is_tried_again_and_numbers_still_follow_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The journal is deleted; putting it back fails once (say the disk is full): the
    commit fails, and its retry puts the file back, with every frame once, in order."""
    from nbtasks.store import journal as journal_module
    from nbtasks.store.journal import JournalFile

    errors: list[BaseException | None] = []
    path = tmp_path / "store.duckdb"
    store = Store(str(path), lambda ticket, error: errors.append(error))
    real = journal_module.create_private
    fails = [OSError(errno.ENOSPC, "No space left on device")]

    def create_once_failing(name: str) -> int:
        if fails and name.endswith(".new"):
            raise fails.pop()
        return real(name)

    try:
        monkeypatch.setattr("nbtasks.store.folding.FOLD_IDLE_S", 600.0)
        monkeypatch.setattr("nbtasks.store.folding.FOLD_MAX_AGE_S", 600.0)
        _commit_one(store, errors, "run_a")
        wait_for(lambda: len(errors) == 1, "the first commit")
        os.unlink(str(path) + ".journal")
        monkeypatch.setattr(journal_module, "create_private", create_once_failing)
        with pytest.warns(nbtasks.NbtasksWarning, match="was deleted"):
            _commit_one(store, errors, "run_b")  # the restore fails, then works on retry
            wait_for(lambda: errors and errors[-1] is None and len(errors) >= 3, "the retry")
        assert isinstance(errors[1], nbtasks.StoreWriteError)
        frames = JournalFile(str(path) + ".journal").read()
        seqs = [seq for seq, _ in frames]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))) and len(seqs) == 2
        assert not list(tmp_path.glob("*.new"))
    finally:
        store.close()
    assert _ids_in(path) == {"run_a", "run_b"}
