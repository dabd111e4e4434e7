"""nbtasks.executor.local.proctree with real processes: finding, measuring, freezing, killing
and reaping process trees, and the RLIMIT_DATA memory backstop.

Every process a test starts carries a tag in its environment (inherited across fork and
exec), so the ``procs`` fixture can find and kill whatever is left, wherever it went.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from nbtasks.executor.local import proctree, treekill

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")

TAG_VAR = "NBTASKS_PROCTREE_TEST_TAG"
MiB = 1 << 20
T = TypeVar("T")

# Put in front of every script: helpers to report, and to double fork.
PRELUDE = """\
import json, os, subprocess, sys, threading, time
from nbtasks.executor.local import memlimit, proctree, treekill

OUT = sys.argv[1]

def report(**values):
    with open(OUT + ".tmp", "w") as f:
        json.dump(values, f)
    os.replace(OUT + ".tmp", OUT)  # the test never reads half a file

def double_fork(argv):
    \"\"\"Daemon-style: a child that calls setsid() and forks the grandchild that runs argv,
    then exits (and is reaped here). Returns (child pid, grandchild pid).\"\"\"
    r, w = os.pipe()
    mid = os.fork()
    if mid == 0:
        try:
            os.close(r)
            os.setsid()
            grandchild = os.fork()
            if grandchild == 0:
                os.execvp(argv[0], argv)
            os.write(w, str(grandchild).encode())
        finally:
            os._exit(0)
    os.close(w)
    grandchild = int(os.read(r, 64))
    os.close(r)
    os.waitpid(mid, 0)
    return mid, grandchild
"""


# ----------------------------------------------------------------------------- helpers


def wait_for(predicate: Callable[[], T], timeout: float = 20.0, what: str = "condition") -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def stat_fields(pid: int) -> list[str] | None:
    """/proc/<pid>/stat fields after the command name: [state, ppid, pgrp, session, ...]."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return data[data.rindex(")") + 2 :].split()


def is_dead(pid: int) -> bool:
    """Gone, or a zombie."""
    fields = stat_fields(pid)
    return fields is None or fields[0] in ("Z", "X")


def ppid(pid: int) -> int | None:
    fields = stat_fields(pid)
    return int(fields[1]) if fields else None


class Proc:
    """A pid plus its start time, so that a reused pid is not taken for the process."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        fields = stat_fields(pid)
        assert fields is not None, f"process {pid} is already gone"
        self.start = fields[19]

    def dead(self) -> bool:
        """Gone, a zombie, or its pid now belongs to another process."""
        fields = stat_fields(self.pid)
        return fields is None or fields[0] in ("Z", "X") or fields[19] != self.start

    def state(self) -> str:
        fields = stat_fields(self.pid)
        return fields[0] if fields else "gone"


def thread_states(pid: int) -> list[str]:
    states = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        data = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        states.append(data[data.rindex(")") + 2])
    return states


class Procs:
    """Starts tagged scripts (each in a new session, like a worker); cleans up after."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.tag = uuid.uuid4().hex
        self.started: list[subprocess.Popen[bytes]] = []

    def spawn(self, code: str, **popen: Any) -> tuple[subprocess.Popen[bytes], Path]:
        """Run PRELUDE + code as ``python script OUT``; returns the process and OUT."""
        n = len(self.started)
        script = self.tmp_path / f"script{n}.py"
        script.write_text(PRELUDE + textwrap.dedent(code))
        out = self.tmp_path / f"out{n}.json"
        proc = subprocess.Popen(
            [sys.executable, str(script), str(out)],
            env={**os.environ, TAG_VAR: self.tag},
            start_new_session=True,
            **popen,
        )
        self.started.append(proc)
        return proc, out

    def read_report(self, out: Path, timeout: float = 20.0) -> dict[str, Any]:
        """What a script reported; fails at once if it exited without reporting."""
        proc = self.started[int(out.stem.removeprefix("out"))]
        wait_for(lambda: out.exists() or proc.poll() is not None, timeout, what=out.name)
        assert out.exists(), f"the test script exited with {proc.returncode} without reporting"
        result: dict[str, Any] = json.loads(out.read_text())
        return result

    def tagged_alive(self) -> list[int]:
        """Live processes started by this test, wherever they are in the process tree."""
        needle = f"{TAG_VAR}={self.tag}".encode()
        found = []
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                environ = Path(f"/proc/{name}/environ").read_bytes()
            except OSError:
                continue
            if needle in environ and not is_dead(int(name)):
                found.append(int(name))
        return found

    def cleanup(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                try:
                    treekill.kill_tree(proc.pid)
                finally:
                    proc.kill()
            proc.wait(timeout=30)
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
        # The safety net, independent of the code under test.
        deadline = time.monotonic() + 30
        ours: set[int] = set()  # any re-parented to this process, to reap
        while left := self.tagged_alive():
            ours.update(p for p in left if ppid(p) == os.getpid())
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            if time.monotonic() > deadline:
                raise AssertionError(f"could not kill test processes {left}")
            time.sleep(0.01)
        for pid in ours:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    p = Procs(tmp_path)
    try:
        yield p
    finally:
        p.cleanup()


# A parent with (a) a child in its own session, (b) a double-forked setsid grandchild,
# (c) a plain child, (d) a child started from a thread that stays alive.
ESCAPERS = """\
subreaper = proctree.become_subreaper() if MODE == "subreaper" else False
a = subprocess.Popen(["sleep", "300"], start_new_session=True)
mid, b = double_fork(["sleep", "300"])
c = subprocess.Popen(["sleep", "300"])
started = threading.Event()
d = []
def in_thread():
    d.append(subprocess.Popen(["sleep", "300"]).pid)
    started.set()
    time.sleep(300)
threading.Thread(target=in_thread, daemon=True).start()
started.wait()
report(subreaper=subreaper, is_subreaper=proctree.is_subreaper(), a=a.pid, b=b, mid=mid,
       c=c.pid, d=d[0], tid=[t.native_id for t in threading.enumerate()
                             if t is not threading.main_thread()][0])
time.sleep(300)
"""


def spawn_escapers(procs: Procs, mode: str) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    proc, out = procs.spawn(f"MODE = {mode!r}\n" + ESCAPERS)
    return proc, procs.read_report(out)


# ----------------------------------------------------------------------------- tree


def test_subreaper_keeps_escapers_in_the_tree_and_kill_tree_kills_them_all(
    procs: Procs,
) -> None:
    parent, r = spawn_escapers(procs, "subreaper")
    assert r["subreaper"] is True and r["is_subreaper"] is True
    kids = {r["a"], r["b"], r["c"], r["d"]}
    tracked = [Proc(pid) for pid in kids]
    assert is_dead(r["mid"])  # the double fork's middle process exited and was reaped

    # The orphaned grandchild was re-parented to the subreaper, not to init.
    assert ppid(r["b"]) == parent.pid
    assert stat_fields(r["a"])[3] != stat_fields(parent.pid)[3]  # type: ignore[index]
    assert set(proctree.children(parent.pid)) == kids
    assert set(proctree.descendants(parent.pid)) == kids
    assert set(proctree.descendants(parent.pid, live_only=True)) == kids
    # The fallback for kernels without the children files (scanning the ppid of every
    # /proc/<p>/stat) agrees.
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(proctree, "_HAVE_CHILDREN_FILES", False)
        assert set(proctree.children(parent.pid)) == kids
        assert set(proctree.descendants(parent.pid, live_only=True)) == kids
        assert proctree.tree_rss(parent.pid) >= sum(proctree.rss(p) for p in kids)
    # (d) belongs to the thread that started it: the main thread's file does not list it,
    # which is why children() reads every thread's file.
    main_file = Path(f"/proc/{parent.pid}/task/{parent.pid}/children").read_text().split()
    thread_file = Path(f"/proc/{parent.pid}/task/{r['tid']}/children").read_text().split()
    assert str(r["d"]) not in main_file and str(r["d"]) in thread_file

    assert treekill.kill_tree(parent.pid) == 5
    # The descendants are dead when kill_tree returns; the root is left to its parent.
    assert [p.pid for p in tracked if not p.dead()] == []
    assert parent.wait(timeout=20) == -signal.SIGKILL
    assert procs.tagged_alive() == []


def test_without_subreaper_a_double_forked_grandchild_escapes(procs: Procs) -> None:
    """Why the worker must be a subreaper: otherwise the orphan goes to init (or to some
    subreaper further up), out of the worker's tree, and survives kill_tree."""
    parent, r = spawn_escapers(procs, "plain")
    assert r["subreaper"] is False and r["is_subreaper"] is False
    escaped, others = Proc(r["b"]), [Proc(r[k]) for k in "acd"]
    assert ppid(r["b"]) != parent.pid
    found = set(proctree.descendants(parent.pid))
    assert found == {r["a"], r["c"], r["d"]}
    assert r["b"] not in found

    assert treekill.kill_tree(parent.pid) == 4
    assert [p.pid for p in others if not p.dead()] == []
    assert not escaped.dead()  # still running: only the fixture's clean-up will get it


def test_kill_tree_can_spare_the_root(procs: Procs) -> None:
    parent, r = spawn_escapers(procs, "subreaper")
    tracked = [Proc(r[k]) for k in "abcd"]
    assert treekill.kill_tree(parent.pid, include_root=False) == 4
    assert [p.pid for p in tracked if not p.dead()] == []
    # The root lives on, and is not left stopped by the freeze.
    assert parent.poll() is None
    assert wait_for(lambda: Proc(parent.pid).state() in ("S", "R"), what="root running")
    # Its dead children are zombies it has not reaped: none of them counts as live.
    assert proctree.descendants(parent.pid, live_only=True) == []
    assert set(proctree.descendants(parent.pid)) == {r[k] for k in "abcd"}


def test_kill_tree_kills_a_tree_that_keeps_forking(procs: Procs) -> None:
    # A child of the subreaper forks every couple of milliseconds; each of its children
    # double forks into a new session, where the grandchild forks a few more times.
    parent, out = procs.spawn(
        """\
        proctree.become_subreaper()
        bomb = os.fork()
        if bomb == 0:
            try:
                for _ in range(150):
                    if os.fork() == 0:
                        if os.fork() == 0:
                            os.setsid()
                            for _ in range(3):
                                time.sleep(0.005)
                                if os.fork() == 0:
                                    break
                            time.sleep(300)
                        os._exit(0)
                    time.sleep(0.002)
                time.sleep(300)
            finally:
                os._exit(0)
        report(bomb=bomb)
        time.sleep(300)
        """
    )
    procs.read_report(out)
    wait_for(
        lambda: len(proctree.descendants(parent.pid, live_only=True)) >= 60,
        what="the tree to grow",
    )
    signalled = treekill.kill_tree(parent.pid)
    assert signalled >= 60
    assert proctree.descendants(parent.pid, live_only=True) == []
    assert parent.wait(timeout=20) == -signal.SIGKILL
    # Every process that carries this test's tag, wherever it was re-parented, is dead.
    assert procs.tagged_alive() == []


def test_kill_tree_freezes_first_so_a_forking_tree_cannot_escape(procs: Procs) -> None:
    # No subreaper here: a process killed right after it forked would leave its new child
    # to init, out of reach (each leaf is in a session of its own, so no killpg reaches it
    # either). Freezing first stops every process before any dies.
    parent, out = procs.spawn(
        """\
        def forker(n, then):
            for _ in range(n):
                if os.fork() == 0:
                    then()
                    os._exit(0)
                time.sleep(0.002)
            time.sleep(300)

        def leaf():
            os.setsid()
            time.sleep(300)

        bomb = os.fork()
        if bomb == 0:
            try:
                forker(40, lambda: forker(25, leaf))
            finally:
                os._exit(0)
        report(bomb=bomb)
        time.sleep(300)
        """
    )
    procs.read_report(out)
    wait_for(
        lambda: len(proctree.descendants(parent.pid, live_only=True)) >= 60,
        what="the tree to grow",
    )
    assert treekill.kill_tree(parent.pid) >= 60
    assert parent.wait(timeout=20) == -signal.SIGKILL
    assert procs.tagged_alive() == []


def test_descendants_of_a_gone_process_is_empty(procs: Procs) -> None:
    proc, _ = procs.spawn("report()\n")
    proc.wait(timeout=20)
    assert proctree.children(proc.pid) == []
    assert proctree.descendants(proc.pid) == []
    assert proctree.tree_rss(proc.pid) == 0
    assert treekill.kill_tree(proc.pid) == 0


# ----------------------------------------------------------------------------- memory


def test_tree_rss_counts_a_child_in_its_own_session(procs: Procs, tmp_path: Path) -> None:
    go, ready, done = tmp_path / "go", tmp_path / "ready", tmp_path / "done"
    hog = f"""
import os, time
open({str(ready)!r}, "w").close()
while not os.path.exists({str(go)!r}):
    time.sleep(0.005)
block = b"x" * (200 << 20)  # written to, so resident
open({str(done)!r}, "w").close()
time.sleep(300)
"""
    parent, out = procs.spawn(
        f"""\
        child = subprocess.Popen([sys.executable, "-c", {hog!r}], start_new_session=True)
        report(child=child.pid)
        time.sleep(300)
        """
    )
    child = procs.read_report(out)["child"]
    assert proctree.descendants(parent.pid) == [child]
    assert stat_fields(child)[3] != stat_fields(parent.pid)[3]  # type: ignore[index]
    wait_for(ready.exists, what="the child to start")
    with proctree.TreeMeter(parent.pid) as meter:
        before, meter_before = proctree.tree_rss(parent.pid), meter.rss()
        go.touch()
        wait_for(done.exists, what="the child's allocation")
        after, meter_after = proctree.tree_rss(parent.pid), meter.rss()
    assert after - before >= 190 * MiB
    assert meter_after - meter_before >= 190 * MiB
    assert proctree.rss(child) >= 200 * MiB
    assert proctree.rss(parent.pid) < 100 * MiB  # the parent itself did not grow


def test_tree_meter_after_the_root_is_gone(procs: Procs) -> None:
    proc, out = procs.spawn("report()\ntime.sleep(300)\n")
    procs.read_report(out)
    meter = proctree.TreeMeter(proc.pid)
    try:
        assert meter.rss() > 0
        proc.kill()
        proc.wait(timeout=20)
        assert meter.rss() == 0
    finally:
        meter.close()


def test_limit_data_turns_big_allocations_into_memory_error(procs: Procs) -> None:
    proc, out = procs.spawn(
        """\
        import resource

        def peak():
            for line in open("/proc/self/status"):
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024

        before = resource.getrlimit(resource.RLIMIT_DATA)
        base_rss, base_data = proctree.rss_self(), proctree.vm_data()
        restore = memlimit.limit_data(300 << 20)
        limited = resource.getrlimit(resource.RLIMIT_DATA)
        results = {}
        try:
            b"x" * (1 << 30)
            results["one_block"] = "allocated"
        except MemoryError:
            results["one_block"] = "MemoryError"
        try:
            hoard = [b"x" * (100 << 20) for _ in range(30)]
            results["many_blocks"] = f"allocated {len(hoard)}"
        except MemoryError:
            results["many_blocks"] = "MemoryError"
        peak_rss = peak()
        restore()
        restore()  # harmless
        restored = resource.getrlimit(resource.RLIMIT_DATA)
        big = b"x" * (500 << 20)
        with memlimit.limit_data(50 << 20) as limit:
            try:
                b"x" * (100 << 20)
                results["with_block"] = "allocated"
            except MemoryError:
                results["with_block"] = "MemoryError"
        report(
            before=before, limited=limited, restored=restored,
            after_with=resource.getrlimit(resource.RLIMIT_DATA), base_rss=base_rss,
            base_data=base_data, peak_rss=peak_rss, after_restore=len(big), limit=limit.limit,
            **results,
        )
        """
    )
    assert proc.wait(timeout=60) == 0
    r = procs.read_report(out)
    assert r["one_block"] == "MemoryError"
    assert r["many_blocks"] == "MemoryError"
    # Stopped before resident memory reached the allowance over the baseline.
    assert r["peak_rss"] < r["base_rss"] + 300 * MiB
    assert r["limited"][0] - r["base_data"] in range(300 * MiB, 310 * MiB)
    assert r["limited"][1] == r["before"][1]  # the hard limit is kept
    assert r["restored"] == r["before"]
    assert r["after_restore"] == 500 * MiB
    assert r["with_block"] == "MemoryError"
    assert r["after_with"] == r["before"]


# ----------------------------------------------------------------------------- signals


def test_stop_wait_stopped_resume(procs: Procs) -> None:
    # Two busy threads; the main one reports progress on stdout.
    proc, _ = procs.spawn(
        """\
        def spin():
            while True:
                pass
        threading.Thread(target=spin, daemon=True).start()
        i = 0
        while True:
            i += 1
            if i % 100_000 == 0:
                os.write(1, b".")
        """,
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    fd = proc.stdout.fileno()

    def drain() -> None:
        while select.select([fd], [], [], 0)[0]:
            os.read(fd, 1 << 16)

    def progresses() -> bool:
        drain()
        return bool(select.select([fd], [], [], 20)[0])

    assert progresses()
    wait_for(lambda: len(os.listdir(f"/proc/{proc.pid}/task")) == 2, what="the second thread")
    # Nobody stops a busy process: wait_stopped gives up.
    assert treekill.wait_stopped(proc.pid, 0.05) is False

    assert treekill.stop(proc.pid) is True
    assert treekill.wait_stopped(proc.pid, 20) is True
    assert thread_states(proc.pid) == ["T", "T"]
    drain()
    assert not select.select([fd], [], [], 0.2)[0]  # a stopped process writes nothing
    assert treekill.wait_stopped(proc.pid, 0) is True

    assert treekill.resume(proc.pid) is True
    assert progresses()
    assert "T" not in thread_states(proc.pid)

    proc.kill()
    wait_for(lambda: is_dead(proc.pid), what="the zombie")
    # a zombie is not running, once its last thread has exited too
    wait_for(lambda: treekill.wait_stopped(proc.pid, 0), what="every thread to have exited")
    proc.wait(timeout=20)
    assert treekill.wait_stopped(proc.pid, 0) is True  # nor is a gone process
    assert treekill.stop(proc.pid) is False
    assert treekill.resume(proc.pid) is False


def test_terminate_tree_reaches_stopped_processes(procs: Procs) -> None:
    parent, r = spawn_escapers(procs, "subreaper")
    tracked = [Proc(r[k]) for k in "abcd"]
    assert treekill.stop(r["a"])
    assert treekill.wait_stopped(r["a"], 20)
    assert treekill.terminate_tree(parent.pid, include_root=False) == 4
    # sleep(1) dies of SIGTERM; the stopped one too, because it was continued.
    wait_for(lambda: all(p.dead() for p in tracked), what="the descendants to exit")
    assert parent.poll() is None
    assert treekill.terminate_tree(parent.pid) == 1
    assert parent.wait(timeout=20) == -signal.SIGTERM


COUNTER = """\
import os, signal, sys
count, probe = signal.SIGRTMIN, signal.SIGRTMIN + 1
signal.pthread_sigmask(signal.SIG_BLOCK, {count, probe})
open(sys.argv[1] + ".ready", "w").close()
n = 0
while signal.sigwaitinfo({count, probe}).si_signo == count:
    n += 1
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(str(n))
os.replace(sys.argv[1] + ".tmp", sys.argv[1])
"""


def test_kill_tree_with_another_signal_sends_it_once_to_each(procs: Procs) -> None:
    # Two processes in one process group (led by the first) count the SIGRTMIN they get:
    # real-time signals queue, so a second copy would be counted. They block the signals
    # and take them with sigwaitinfo, lowest number first: the SIGRTMIN+1 we send after
    # kill_tree returns comes out after every SIGRTMIN it sent.
    proc, out = procs.spawn(
        f"""\
        counter = {COUNTER!r}
        leader = subprocess.Popen([sys.executable, "-c", counter, OUT + ".0"],
                                  preexec_fn=lambda: os.setpgid(0, 0))
        member = subprocess.Popen([sys.executable, "-c", counter, OUT + ".1"],
                                  preexec_fn=lambda: os.setpgid(0, leader.pid))
        report(leader=leader.pid, member=member.pid)
        time.sleep(300)
        """
    )
    r = procs.read_report(out)
    pids = [r["leader"], r["member"]]
    counts = [Path(f"{out}.{i}") for i in (0, 1)]
    wait_for(lambda: all(Path(f"{c}.ready").exists() for c in counts), what="the counters to start")
    assert os.getpgid(r["member"]) == r["leader"] == os.getpgid(r["leader"])

    assert treekill.kill_tree(proc.pid, signal.SIGRTMIN, include_root=False) == 2
    for pid in pids:
        os.kill(pid, signal.SIGRTMIN + 1)
    wait_for(lambda: all(c.exists() for c in counts), what="the counts")
    assert [c.read_text() for c in counts] == ["1", "1"]
    assert proc.poll() is None  # the root was spared


def test_reap_children_collects_zombies_of_adopted_orphans(procs: Procs) -> None:
    proc, out = procs.spawn(
        """\
        proctree.become_subreaper()
        me = os.getpid()
        orphans = [double_fork(["true"])[1] for _ in range(3)]

        def state(pid):
            try:
                data = open(f"/proc/{pid}/stat").read()
            except OSError:
                return None
            return data[data.rindex(")") + 2]

        deadline = time.monotonic() + 20
        while any(state(p) != "Z" for p in orphans) and time.monotonic() < deadline:
            time.sleep(0.005)
        zombies = [state(p) for p in orphans]
        listed = sorted(proctree.children(me))
        live = proctree.descendants(me, live_only=True)
        reaped = treekill.reap_children()
        report(orphans=sorted(orphans), zombies=zombies, listed=listed, live=live,
               reaped=reaped, after=[state(p) for p in orphans],
               again=treekill.reap_children())
        """
    )
    assert proc.wait(timeout=60) == 0
    r = procs.read_report(out)
    assert r["zombies"] == ["Z", "Z", "Z"]  # adopted by the subreaper, then exited
    assert r["listed"] == r["orphans"]  # zombies are listed as children...
    assert r["live"] == []  # ...but not as live descendants
    assert r["reaped"] == 3
    assert r["after"] == [None, None, None]
    assert r["again"] == 0
