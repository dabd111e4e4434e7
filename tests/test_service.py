"""The engine as a service: runs outlive the processes that trigger them, several processes
share one store, and the server's own faults (killed, raced, stale files, another build,
another user) end in a clear state.

Every process here is real: scripts run as ``python script.py``, the server is the one
they start, and faults are real signals.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest

import nbtasks
from nbtasks import Queue, RunStatus
from nbtasks.client import config
from nbtasks.service import wire
from nbtasks.service.client import ServerLostError, ServerVersionError, server_pid
from nbtasks.service.places import place_of

from conftest import start_script, wait_for
from tasks import add

DEADLINE_S = 20.0

TASKS = """
import json, os, sys, time
import nbtasks
from nbtasks import runs, task

@task
def nap(s):
    time.sleep(s)
    return s

@task
def add(p):
    return p["a"] + p["b"]
"""


def _script(
    tmp_path: Path, store: str, body: str, name: str = "script.py"
) -> subprocess.Popen[str]:
    return start_script(TASKS + textwrap.dedent(body), tmp_path,
                        env={"NBTASKS_STORE": store}, name=name)  # fmt: skip


def _line(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.kill()
        raise AssertionError(f"the script ended without a word: {proc.stderr.read()}")  # type: ignore[union-attr]
    return line.strip()


def _server(store: str) -> psutil.Process:
    pid = wait_for(lambda: server_pid(store), "the server of the store")
    return psutil.Process(pid)


def _descendants(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return proc.children(recursive=True)
    except psutil.NoSuchProcess:
        return []


@pytest.fixture
def store(tmp_path: Path) -> str:
    path = str(tmp_path / "store" / "runs.duckdb")
    nbtasks.configure(store=path, workers=2)
    return path


def test_a_run_completes_after_the_process_that_triggered_it_exits(tmp_path: Path,
                                                                   store: str) -> None:  # fmt: skip
    """A script triggers and exits at once; another script triggers, prints the run id and
    is SIGKILLed: both runs complete, with their outputs, in the one server."""
    quits = _script(tmp_path, store, "print(nap.trigger(0.5).id, flush=True)\n", "quits.py")
    killed = _script(tmp_path, store, """
        print(nap.trigger(1.0).id, flush=True)
        time.sleep(300)
        """, "killed.py")  # fmt: skip
    first, second = _line(quits), _line(killed)
    assert quits.wait(DEADLINE_S) == 0
    server = _server(store)
    killed.kill()
    killed.wait(DEADLINE_S)
    assert nbtasks.runs.retrieve(second).status in (RunStatus.QUEUED, RunStatus.EXECUTING)
    results = [nbtasks.runs.wait(i, timeout=DEADLINE_S) for i in (first, second)]
    assert [(r.status, r.output) for r in results] == [(RunStatus.COMPLETED, 0.5),
                                                       (RunStatus.COMPLETED, 1.0)]  # fmt: skip
    assert server.pid == config.engine().info["pid"]  # the same server served all three


def test_two_processes_share_one_store_live(tmp_path: Path, store: str) -> None:
    """Two scripts trigger into one store at once; each sees the other's runs live, and
    this process cancels one of them while its script waits on it."""
    body = """
        h = nap.trigger(30, tags=[sys.argv[0]])
        print(h.id, flush=True)
        result = h.wait()
        print(result.status.value, result.run.error.message, flush=True)
        """
    a = _script(tmp_path, store, body, "a.py")
    b = _script(tmp_path, store, body, "b.py")
    run_a, run_b = _line(a), _line(b)
    listed = {r.id for r in nbtasks.runs.list(status=["QUEUED", "EXECUTING"])}
    assert {run_a, run_b} <= listed
    for run_id in (run_a, run_b):
        wait_for(lambda run_id=run_id: nbtasks.runs.retrieve(run_id).status.value == "EXECUTING",
                 f"run {run_id} to execute")  # fmt: skip
    info = config.engine().request("status")
    assert {"a.py", "b.py"} <= {c["name"] for c in info["clients"]}
    nbtasks.runs.cancel(run_a)
    assert _line(a) == "CANCELED by runs.cancel()"  # what a.py's own wait ended with
    assert nbtasks.runs.retrieve(run_b).status is RunStatus.EXECUTING  # the other run goes on
    nbtasks.runs.cancel(run_b)
    assert _line(b).startswith("CANCELED")
    for proc in (a, b):
        assert proc.wait(DEADLINE_S) == 0


def test_a_killed_server_fails_calls_at_once_and_the_next_one_recovers(
    tmp_path: Path, store: str
) -> None:
    """SIGKILL of the server while runs execute, wait in a queue and wait for their time:
    a blocked wait fails at once with ServerLostError; the server's workers and the
    processes their tasks started die; a new server starts, in which the executing runs
    are INTERRUPTED, the queued and delayed ones complete, and nothing acknowledged is
    lost."""
    from tasks import spawn_sleeper

    done = add.trigger_and_wait({"a": 2, "b": 2})
    assert done.output == 4
    executing = spawn_sleeper.trigger(str(tmp_path / "grandchild.pid"))
    solo = Queue("solo", concurrency_limit=1)
    other = spawn_sleeper.trigger(str(tmp_path / "other.pid"), queue=solo)
    queued = add.trigger({"a": 1, "b": 2}, queue=solo)  # waits for the queue
    delayed = add.trigger({"a": 3, "b": 4}, delay="2s")
    for path in ("grandchild.pid", "other.pid"):
        wait_for(lambda path=path: (tmp_path / path).exists(), "the tasks' own children")
    # (a body begins only once its start is committed: the next server never runs it again)
    assert nbtasks.runs.retrieve(queued.id).status is RunStatus.QUEUED
    grandchild = psutil.Process(int((tmp_path / "grandchild.pid").read_text()))
    server = psutil.Process(config.engine().info["pid"])
    workers = _descendants(server)
    assert grandchild in workers
    pending = config.engine().call("wait", executing.id)  # a wait the server holds
    server.send_signal(signal.SIGKILL)
    with pytest.raises(ServerLostError, match="is gone"):
        pending.result(timeout=5)  # at once, not a hang
    _, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive, f"left behind by the killed server: {alive}"
    # This process defines tasks: it starts a new server on its own and gives it their
    # definitions, so the queued and delayed runs resume with no call made here.
    wait_for(lambda: server_pid(store) not in (None, server.pid), "a new server")
    # The next call starts a new server, which settles what the old one left.
    after = nbtasks.runs.retrieve(executing.id)
    assert config.engine().info["pid"] != server.pid
    assert after.status is RunStatus.INTERRUPTED
    assert "server that owned the run stopped" in str(after.error)
    assert nbtasks.runs.wait(queued.id, timeout=DEADLINE_S).output == 3
    assert nbtasks.runs.wait(delayed.id, timeout=DEADLINE_S).output == 7
    assert nbtasks.runs.retrieve(done.id).status is RunStatus.COMPLETED
    assert nbtasks.runs.retrieve(other.id).status is RunStatus.INTERRUPTED


def test_no_body_runs_twice_across_server_kills(tmp_path: Path, store: str) -> None:
    """SIGKILL of the server at random moments while quick runs start one after another
    (on idle workers and sent ahead): every body begins at most once. A run whose body
    began before a kill ends INTERRUPTED if the kill cut it off, never queued again; the
    others complete on the next servers, each once."""
    from tasks import mark

    marks = tmp_path / "marks"
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    items = [{"path": str(marks), "nap": rng.choice((0.0, 0.001, 0.004))} for _ in range(300)]
    items[0]["nap"] = 60.0  # executing at the first kill, whenever it comes: one cut for sure
    batch = mark.batch_trigger(items)
    killed: list[int] = []
    for _ in range(4):
        pid = wait_for(lambda: server_pid(store) not in (None, *killed) and server_pid(store),
                       "the next server")  # fmt: skip
        server = psutil.Process(pid)
        begun = len(marks.read_text().split()) if marks.exists() else 0
        wait_for(lambda begun=begun: marks.exists() and len(marks.read_text().split()) > begun,
                 "bodies to begin")  # fmt: skip
        time.sleep(rng.uniform(0.0, 0.05))
        server.send_signal(signal.SIGKILL)
        server.wait(DEADLINE_S)
        killed.append(pid)
        # This process defines ``mark``: it starts the next server on its own.
    wait_for(lambda: server_pid(store) not in (None, *killed), "the last server")
    runs = [nbtasks.runs.wait(h.id, timeout=DEADLINE_S * 3).run for h in batch.runs]
    began = marks.read_text().split()
    twice = sorted(run_id for run_id, n in Counter(began).items() if n > 1)
    assert not twice, f"bodies that began twice (seed {seed}): {twice}"
    statuses = Counter(r.status for r in runs)
    assert set(statuses) <= {RunStatus.COMPLETED, RunStatus.INTERRUPTED}, (seed, statuses)
    assert runs[0].status is RunStatus.INTERRUPTED, (seed, runs[0])  # cut off by a kill
    for run in runs:
        assert (run.status is RunStatus.COMPLETED) <= (run.id in began), (seed, run)
        assert run.attempt_count == 1 and len(run.attempts) == 1, (seed, run, run.attempts)


def test_a_stop_gives_back_the_runs_workers_hold_ahead(tmp_path: Path, store: str) -> None:
    """``nbtasks server stop`` while two runs execute and the next two wait on their busy
    workers (sent ahead): the executing ones end INTERRUPTED; those held ahead are taken
    back, never began, and complete on the next server, as the queued one does."""
    from tasks import nap

    runs = [nap.trigger(60), nap.trigger(60)]
    for run in runs:
        wait_for(lambda run=run: nbtasks.runs.retrieve(run.id).status is RunStatus.EXECUTING,
                 "the long runs to execute")  # fmt: skip
    runs += [nap.trigger(0.1) for _ in range(3)]
    held = "SELECT count(*) FROM runs WHERE status = 'QUEUED' AND attempt_count = 1"
    wait_for(lambda: nbtasks.runs.sql(held).fetchall() == [(2,)], "two runs sent ahead")
    pid = server_pid(store)
    stop = subprocess.run([sys.executable, "-m", "nbtasks.cli", "--store", store, "server",
                           "stop"], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert stop.returncode == 0, stop.stderr
    assert f"(pid {pid})" in stop.stdout
    wait_for(lambda: server_pid(store) != pid, "the server to stop")
    ended = [nbtasks.runs.wait(r.id, timeout=DEADLINE_S).run for r in runs]  # a new server
    assert [r.status for r in ended] == [RunStatus.INTERRUPTED] * 2 + [RunStatus.COMPLETED] * 3
    assert [r.attempt_count for r in ended] == [1] * 5


def test_a_first_trigger_in_a_new_folder_starts_the_server_beside_the_store(
    tmp_path: Path,
) -> None:
    """The first trigger launches the server early, before the store's folder exists: it
    still goes beside the store (the folder nbtasks makes is private), where every later
    call looks first."""
    store = tmp_path / "new" / "deep" / "runs.duckdb"
    proc = _script(tmp_path, str(store), """
        print(add.batch_trigger_and_wait([{"a": 1, "b": 2}]).unwrap(), flush=True)
        from nbtasks.client import config
        config.shutdown(stop_server=False)
        """)  # fmt: skip
    assert _line(proc) == "[3]"
    assert proc.wait(DEADLINE_S) == 0
    assert os.path.exists(f"{store}.sock") and server_pid(str(store)) is not None
    assert place_of(str(store)).socket == f"{store}.sock"
    stop = subprocess.run([sys.executable, "-m", "nbtasks.cli", "--store", str(store), "server",
                           "stop"], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert stop.returncode == 0, stop.stderr


def test_racing_starters_end_with_one_server(tmp_path: Path) -> None:
    """Eight processes that start on a fresh store at the same moment share one server."""
    store = str(tmp_path / "race" / "runs.duckdb")
    go = tmp_path / "go"
    body = f"""
        from nbtasks.client import config
        while not os.path.exists({str(go)!r}):
            time.sleep(0.001)
        print(add.trigger_and_wait({{"a": 1, "b": 1}}).output, config.engine().info["pid"],
              flush=True)
        """
    procs = [_script(tmp_path, store, body, f"racer{i}.py") for i in range(8)]
    go.touch()
    pids = set()
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        output, pid = out.split()
        assert output == "2"
        pids.add(int(pid))
    assert len(pids) == 1
    assert server_pid(store) in pids
    racers = [p for p in psutil.process_iter(["cmdline"])
              if "nbtasks.service.server" in " ".join(p.info["cmdline"] or ())
              and place_of(store).store in _open_files(p)]  # fmt: skip
    assert [p.pid for p in racers] == list(pids)


def _open_files(p: psutil.Process) -> list[str]:
    try:
        return [f.path for f in p.open_files()]
    except psutil.Error:
        return []


def test_a_stale_socket_and_lock_are_replaced(tmp_path: Path, store: str) -> None:
    """A socket file nobody listens on and a lock file naming a dead pid (a server killed
    long ago) do not stop the next server from starting."""
    place = place_of(store)
    os.makedirs(os.path.dirname(store), mode=0o700, exist_ok=True)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(place.socket)
    stale.close()  # the file stays, with no listener
    Path(place.lock).write_text(json.dumps({"pid": 999_999_999, "build": "old"}))
    assert stat.S_ISSOCK(os.stat(place.socket).st_mode) and server_pid(store) is None
    assert add.trigger_and_wait({"a": 2, "b": 3}).output == 5
    assert server_pid(store) == config.engine().info["pid"]


def test_the_server_is_reached_by_a_private_socket_only(store: str) -> None:
    """The socket is 0600 in a 0700 folder, and the server listens on nothing else."""
    add.trigger_and_wait({"a": 1, "b": 1})
    place = place_of(store)
    assert stat.S_IMODE(os.stat(place.socket).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(place.socket)).st_mode) == 0o700
    server = psutil.Process(config.engine().info["pid"])
    assert not server.net_connections("inet")  # nothing on TCP or UDP


@pytest.mark.skipif(os.getuid() != 0, reason="acting as another user (setuid) needs root")
def test_another_user_is_refused_by_the_peer_check(store: str) -> None:
    """Even with the socket and its folders opened to everyone, a process of another user
    is disconnected by the server's peer check before it is served."""
    add.trigger_and_wait({"a": 1, "b": 1})
    place = place_of(store)
    folders = []
    folder = os.path.dirname(place.socket)
    while folder != "/":  # let "nobody" reach the socket file itself
        folders.append((folder, stat.S_IMODE(os.stat(folder).st_mode)))
        os.chmod(folder, folders[-1][1] | 0o005)
        folder = os.path.dirname(folder)
    os.chmod(place.socket, 0o666)
    try:
        probe = textwrap.dedent(f"""
            import os, pickle, socket, struct
            os.setgid(65534); os.setuid(65534)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect({place.socket!r})
            body = pickle.dumps((1, "status", ()))
            try:
                s.sendall(struct.pack("!Q", len(body)) + body)
                print("closed" if s.recv(100) == b"" else "served")
            except (BrokenPipeError, ConnectionResetError):
                print("closed")
            """)
        out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                             timeout=DEADLINE_S)  # fmt: skip
        assert out.stdout.strip() == "closed", out.stderr
    finally:
        os.chmod(place.socket, 0o600)
        for folder, mode in folders:
            os.chmod(folder, mode)


def test_a_server_of_another_build_is_refused_by_name(
    store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client whose code differs from the running server's says so, naming both builds
    and how to replace the server; it sends the server nothing but its hello."""
    add.trigger_and_wait({"a": 1, "b": 1})
    server = config.engine().info["pid"]
    nbtasks.shutdown()  # disconnect: the server goes on
    monkeypatch.setattr(wire, "_BUILD", ["0.0.1+1.other"])
    with pytest.raises(ServerVersionError) as caught:
        nbtasks.runs.list()
    text = str(caught.value)
    assert "0.0.1+1.other" in text and f"pid {server}" in text and "server stop" in text
    monkeypatch.undo()
    assert config.engine().info["pid"] == server  # the server was left alone


def test_an_idle_server_stops_but_not_while_a_run_waits(tmp_path: Path) -> None:
    """With NBTASKS_SERVER_IDLE=1s, a server whose last client left stops once its
    delayed run has run; its files are gone with it but the lock file."""
    store = str(tmp_path / "idle" / "runs.duckdb")
    proc = _script(tmp_path, store, """
        print(add.trigger({"a": 1, "b": 1}, delay="2s").id, flush=True)
        """)  # fmt: skip
    proc.env = None  # type: ignore[attr-defined]
    run_id = _line(proc)
    assert proc.wait(DEADLINE_S) == 0
    server = _server(store)
    assert server.is_running()
    server.wait(DEADLINE_S)  # the script's server has NBTASKS_SERVER_IDLE=3s (conftest)
    nbtasks.configure(store=store)
    run = nbtasks.runs.retrieve(run_id)
    assert run.status is RunStatus.COMPLETED and run.output == 2
    assert run.finished_at is not None


def test_a_server_is_found_after_its_folder_stopped_being_private(store: str) -> None:
    """A store folder opened to others (chmod 755) while its server runs: a new server
    would put its socket in the private runtime folder, yet clients still find the live
    one beside the store, and no second server starts."""
    add.trigger_and_wait({"a": 1, "b": 1})
    server = config.engine().info["pid"]
    nbtasks.shutdown()  # disconnect
    folder = os.path.dirname(store)
    os.chmod(folder, 0o755)
    try:
        assert place_of(store).socket != os.path.join(folder, "runs.duckdb.sock")
        assert add.trigger_and_wait({"a": 2, "b": 2}).output == 4
        assert config.engine().info["pid"] == server == server_pid(store)
    finally:
        os.chmod(folder, 0o700)


def test_a_run_triggered_by_id_uses_the_definition_another_client_sent(
    tmp_path: Path, store: str
) -> None:
    """A script that does not define ``add`` triggers it by id: the server runs the
    definition this process sent it, instead of waiting for a deploy."""
    add.trigger_and_wait({"a": 1, "b": 1})  # the server now knows add
    proc = start_script(
        """
        import nbtasks
        run = nbtasks.runs.trigger("add", {"a": 20, "b": 22}).wait(timeout=20)
        print(run.status.value, run.output, flush=True)
        """,
        tmp_path, env={"NBTASKS_STORE": store}, name="by_id.py",
    )  # fmt: skip
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert out.split() == ["COMPLETED", "42"]
