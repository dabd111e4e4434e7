"""End-to-end tests with real scripts: tasks, helpers and classes defined in ``__main__``.

Each test writes a script, runs it as ``python script.py`` in its own process (the "kernel"),
and checks what a user would see: the script's printed results, the processes left on the
machine (psutil), and what a fresh process finds in the same store file afterwards.
Scripts and tasks talk to the test through small JSON files written atomically and through
lines printed on stdout. Every wait has a deadline: conditions are polled with
``conftest.wait_for``, and printed lines are read as they come (``Script.wait_line``).
"""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from conftest import run_script, start_script, wait_for

DEADLINE_S = 15.0  # generous: every condition below normally holds within well under a second

# Prepended to every script: a publish() helper (atomic JSON file in the script's folder),
# and the script's own wait_for()/wait_for_file(). A script runs as ``python script.py`` in
# a process of its own, where the tests' conftest is neither importable (tests/ is not on
# its path) nor wanted (it imports pytest and sets up fixtures), so it carries a copy of
# conftest.wait_for that fails by exiting instead of failing a test.
PRELUDE = """\
import json
import os
import sys
import time
from pathlib import Path

HERE = Path.cwd()


def publish(name, data):
    tmp = HERE / (name + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, HERE / name)


def wait_for(condition, what, timeout=20.0, interval=0.02):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            sys.exit(f"script: timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def wait_for_file(name):
    wait_for(lambda: (HERE / name).exists(), name + " to appear")


def emit(tag, data):
    print(tag + " " + json.dumps(data), flush=True)
"""

# A fresh process opening the store: every run with its attempts, as plain JSON.
INSPECT_STORE = """\
import json

from nbtasks import runs

out = {}
for listed in runs.list(limit=10000):
    run = runs.retrieve(listed.id)
    out[run.id] = {
        "task": run.task_id,
        "status": run.status.value,
        "attempt_count": run.attempt_count,
        "output": run.output if run.status.value == "COMPLETED" else None,
        "error_type": run.error.type if run.error else None,
        "error_message": run.error.message if run.error else None,
        "attempts": [
            {"status": a.status.value, "pid": a.pid, "exit_code": a.exit_code,
             "signal": a.signal, "oom": a.oom}
            for a in run.attempts
        ],
    }
print("STORE " + json.dumps(out))
"""


def script(body: str) -> str:
    return PRELUDE + "\n" + textwrap.dedent(body)


# --------------------------------------------------------------------------- helpers


def tagged(stdout: str, tag: str) -> Any:
    """The JSON printed by a script after ``tag``, on a line of its own."""
    for line in stdout.splitlines():
        if line.startswith(tag + " "):
            return json.loads(line[len(tag) + 1 :])
    raise AssertionError(f"the script printed no {tag} line; stdout:\n{stdout}")


def completed(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, (
        f"script exited with {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    )
    return proc.stdout


def is_gone(p: psutil.Process) -> bool:
    """True once the process has exited (a zombie waiting for its reaper counts as gone)."""
    try:
        return not p.is_running() or p.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def process(pid: int) -> psutil.Process:
    try:
        return psutil.Process(pid)
    except psutil.NoSuchProcess:
        pytest.fail(f"process {pid} recorded by the script was already gone when read")


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


class Script:
    """A running script whose stdout lines are collected by a thread as they come."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self.seen: list[str] = []
        self.stderr: list[str | None] = []
        threading.Thread(target=self._read, args=(proc.stdout, self.lines.put), daemon=True).start()
        threading.Thread(target=self._read, args=(proc.stderr, self.stderr.append),
                         daemon=True).start()  # fmt: skip

    @staticmethod
    def _read(stream: Any, sink: Callable[[str | None], None]) -> None:
        for line in stream:
            sink(line.rstrip("\n"))
        sink(None)  # end of file: the script closed its output (it exited)

    def output(self) -> str:
        err = [line for line in self.stderr if line is not None]
        return "stdout:\n" + "\n".join(self.seen) + "\nstderr:\n" + "\n".join(err)

    def wait_line(self, tag: str, timeout: float = DEADLINE_S) -> Any:
        """Wait for a line ``TAG <json>`` printed by the script, and return the JSON."""
        deadline = time.monotonic() + timeout
        for line in self.seen:
            if line.startswith(tag + " "):
                return json.loads(line[len(tag) + 1 :])
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(
                    f"the script printed no {tag} line within {timeout:g}s\n{self.output()}"
                )
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                self.proc.wait(DEADLINE_S)
                pytest.fail(
                    f"the script exited ({self.proc.returncode}) without printing a {tag} line"
                    f"\n{self.output()}"
                )
            self.seen.append(line)
            if line.startswith(tag + " "):
                return json.loads(line[len(tag) + 1 :])

    def wait_exit(self, timeout: float = DEADLINE_S) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the script did not exit within {timeout:g}s\n{self.output()}")


@pytest.fixture
def reaper() -> Iterator[list[psutil.Process]]:
    """Processes a test started (scripts, and what they record); killed if a test fails early."""
    started: list[psutil.Process] = []
    yield started
    for p in started:
        try:
            if p.is_running():
                p.kill()
        except psutil.Error:
            pass


def start(code: str, tmp_path: Path, reaper: list[psutil.Process],
          env: dict[str, str]) -> Script:  # fmt: skip
    proc = start_script(code, tmp_path, env=env)
    reaper.append(psutil.Process(proc.pid))
    return Script(proc)


def inspect_store(tmp_path: Path, store: str) -> dict[str, Any]:
    """Open the store in a new process and return every run it holds."""
    folder = tmp_path / "inspect"
    folder.mkdir(exist_ok=True)
    out = completed(run_script(INSPECT_STORE, folder, env={"NBTASKS_STORE": store}))
    runs: dict[str, Any] = tagged(out, "STORE")
    return runs


def worker_processes_of(server_pid: int) -> list[psutil.Process]:
    """Live nbtasks workers whose parent is (or was, before it died) ``server_pid``."""
    found = []
    for p in psutil.process_iter(["cmdline", "ppid"]):
        cmdline = p.info["cmdline"] or []
        if "nbtasks.executor.local.worker" not in " ".join(cmdline) or is_gone(p):
            continue
        # The worker's next-to-last argument is the pid of the server that spawned it.
        if p.info["ppid"] == server_pid or cmdline[-2:-1] == [str(server_pid)]:
            found.append(p)
    return found


# --------------------------------------------------------------------------- 1. __main__ code


MAIN_CODE = """
import time

from nbtasks import task

SCALE = 10
OFFSET = lambda v: v + 0.5  # noqa: E731


class Point:
    def __init__(self, x, y):
        self.x = x
        self.y = y

    def label(self):
        return f"Point({self.x}, {self.y})"


class ThresholdError(Exception):
    pass


def scaled(v):
    return v * SCALE


@task
def make_point(p):
    return Point(scaled(p["x"]), scaled(p["y"]))


@task
def square(n):
    if n % 7 == 0:
        time.sleep(0.003)  # some items finish later than the ones after them
    return n * n


@task
def transform(values):
    return sorted(map(OFFSET, values), key=lambda v: -v)


double = task(id="double")(lambda p: p * 2)


@task
def check(limit):
    raise ThresholdError(f"value 12 is over the limit {limit} (ünïcode kept)")


out = {}
point = make_point.trigger_and_wait({"x": 1, "y": 2}).unwrap()
out["point"] = {
    "type": type(point).__name__,
    "is_point": isinstance(point, Point),
    "x": point.x,
    "y": point.y,
    "label": point.label(),
}
batch = square.batch_trigger_and_wait(list(range(200)))
out["batch_ok"] = batch.ok
out["batch_len"] = len(batch)
out["batch_outputs"] = [r.unwrap() for r in batch.runs]
out["batch_payloads"] = [r.run.payload for r in batch.runs]
out["transform"] = transform.trigger_and_wait([1, 3, 2]).unwrap()
out["double"] = double.trigger_and_wait(21).unwrap()
result = check.trigger_and_wait(10)
out["check_status"] = result.status.value
try:
    result.unwrap()
    out["raised"] = None
except Exception as exc:
    out["raised"] = {
        "type": type(exc).__name__,
        "is_threshold_error": isinstance(exc, ThresholdError),
        "message": str(exc),
    }
emit("RESULT", out)
"""


def test_main_defined_classes_helpers_lambdas_and_exceptions(tmp_path: Path,
                                                             store_path: str) -> None:  # fmt: skip
    out = tagged(
        completed(run_script(script(MAIN_CODE), tmp_path, env={"NBTASKS_STORE": store_path})),
        "RESULT",
    )
    assert out["point"] == {
        "type": "Point",
        "is_point": True,
        "x": 10,
        "y": 20,
        "label": "Point(10, 20)",
    }
    assert out["batch_ok"] is True
    assert out["batch_len"] == 200
    assert out["batch_outputs"] == [n * n for n in range(200)]
    assert out["batch_payloads"] == list(range(200))
    assert out["transform"] == [3.5, 2.5, 1.5]
    assert out["double"] == 42
    assert out["check_status"] == "FAILED"
    assert out["raised"] == {
        "type": "ThresholdError",
        "is_threshold_error": True,
        "message": "value 12 is over the limit 10 (ünïcode kept)",
    }


# --------------------------------------------------------------------------- 2. kill mid-run


KILLED_KERNEL = """
import subprocess

from nbtasks import runs, task
from nbtasks.client import config


@task
def quick(n):
    return n * 2


@task
def long_one(_):
    child = subprocess.Popen(["sleep", "300"])
    publish("task.json", {"worker": os.getpid(), "grandchild": child.pid})
    wait_for(lambda: (HERE / "release").exists(), "the test to release the task", 120)
    child.kill()
    return "released"


done = [quick.trigger_and_wait(n) for n in range(3)]
handle = long_one.trigger(None)
emit("RUN", {"run": handle.id, "completed": {r.id: r.output for r in done},
             "server": config.get_engine().info["pid"]})
wait_for_file("task.json")
# Hand over only once the store says EXECUTING, so the kill cannot land before that commit.
wait_for(lambda: handle.id in [r.id for r in runs.list(status="EXECUTING")],
         "the run to show EXECUTING in the store")
emit("EXECUTING", {})
time.sleep(300)
"""


def start_killed_kernel(
    tmp_path: Path, store_path: str, reaper: list[psutil.Process]
) -> tuple[Script, Any, list[psutil.Process]]:
    """The script above, its run executing: the script, what it printed, and the server's
    workers (the run's first)."""
    kernel = start(script(KILLED_KERNEL), tmp_path, reaper, {"NBTASKS_STORE": store_path})
    started = kernel.wait_line("RUN")
    kernel.wait_line("EXECUTING")
    task_info = read_json(tmp_path / "task.json")
    server = process(started["server"])
    workers = worker_processes_of(server.pid)
    assert task_info["worker"] in [p.pid for p in workers]
    worker = process(task_info["worker"])
    reaper.extend([process(task_info["grandchild"]), *workers, server])
    return kernel, started, [worker, *(p for p in workers if p.pid != worker.pid)]


def test_sigkilled_kernel_leaves_its_run_running_to_completion(
    tmp_path: Path, store_path: str, reaper: list[psutil.Process]
) -> None:
    kernel, started, workers = start_killed_kernel(tmp_path, store_path, reaper)
    kernel.proc.send_signal(signal.SIGKILL)
    kernel.wait_exit()

    # The run and its worker (the server's) go on without the kernel.
    assert not is_gone(workers[0]) and not is_gone(process(started["server"]))
    runs = inspect_store(tmp_path, store_path)
    assert runs[started["run"]]["status"] == "EXECUTING"
    (tmp_path / "release").touch()
    wait_for(lambda: inspect_store(tmp_path, store_path)[started["run"]]["status"] != "EXECUTING",
             "the released run to end", 30, 0.2)  # fmt: skip
    runs = inspect_store(tmp_path, store_path)
    run = runs[started["run"]]
    assert (run["status"], run["output"]) == ("COMPLETED", "released")
    assert [a["status"] for a in run["attempts"]] == ["COMPLETED"]
    assert run["attempts"][0]["pid"] == workers[0].pid
    assert_the_others_completed(runs, started)


def assert_the_others_completed(runs: dict[str, Any], started: dict[str, Any]) -> None:
    """The runs the killed kernel had completed are in the store as they were, and the
    store holds nothing else but the one it left executing."""
    for run_id, output in started["completed"].items():
        assert runs[run_id]["status"] == "COMPLETED"
        assert runs[run_id]["output"] == output
    assert len(runs) == 4


def test_sigkilled_server_takes_its_workers_and_leaves_the_run_interrupted(
    tmp_path: Path, store_path: str, reaper: list[psutil.Process]
) -> None:
    kernel, started, workers = start_killed_kernel(tmp_path, store_path, reaper)
    grandchild = process(read_json(tmp_path / "task.json")["grandchild"])
    kernel.proc.send_signal(signal.SIGKILL)  # (else it would start the next server itself)
    kernel.wait_exit()
    server = process(started["server"])
    server.send_signal(signal.SIGKILL)

    for p in workers:
        wait_for(lambda p=p: is_gone(p), f"worker {p.pid} to exit after its server was killed")
    wait_for(lambda: is_gone(grandchild), "the task's grandchild `sleep` to be killed")
    wait_for(lambda: is_gone(server), "the killed server to be gone")
    left = worker_processes_of(server.pid)
    assert not left, f"workers of the killed server still alive: {left}"

    runs = inspect_store(tmp_path, store_path)  # starts the next server, which settles it
    run = runs[started["run"]]
    assert run["status"] == "INTERRUPTED"
    assert run["error_message"] == "the nbtasks server that owned the run stopped"
    assert [a["status"] for a in run["attempts"]] == ["INTERRUPTED"]
    assert run["attempts"][0]["pid"] == workers[0].pid
    assert_the_others_completed(runs, started)


# --------------------------------------------------------------------------- 3. clean exit


CLEAN_EXIT = """
import subprocess

from nbtasks import task
from nbtasks.client import config


@task
def long_one(_):
    child = subprocess.Popen(["sleep", "300"])
    publish("task.json", {"worker": os.getpid(), "grandchild": child.pid})
    wait_for(lambda: (HERE / "release").exists(), "the test to release the task", 120)
    child.kill()
    return "released"


handle = long_one.trigger(None)
wait_for_file("task.json")
emit("RUN", {"run": handle.id, "server": config.get_engine().info["pid"]})
# the end of the script: no shutdown call, the interpreter exits
"""


def test_script_ending_normally_leaves_its_run_to_complete_then_the_idle_server_stops(
    tmp_path: Path, store_path: str, reaper: list[psutil.Process]
) -> None:
    proc = run_script(script(CLEAN_EXIT), tmp_path, env={"NBTASKS_STORE": store_path},
                      timeout=DEADLINE_S)  # fmt: skip
    started = tagged(completed(proc), "RUN")
    task_info = read_json(tmp_path / "task.json")
    server = process(started["server"])
    workers = worker_processes_of(server.pid)
    assert task_info["worker"] in [p.pid for p in workers]
    reaper.extend([server, *workers, process(task_info["grandchild"])])

    # The script is gone; its run executes on.
    runs = inspect_store(tmp_path, store_path)
    assert runs[started["run"]]["status"] == "EXECUTING"
    assert not any(is_gone(p) for p in [server, *workers])
    (tmp_path / "release").touch()
    wait_for(lambda: inspect_store(tmp_path, store_path)[started["run"]]["status"] != "EXECUTING",
             "the released run to end", 30, 0.2)  # fmt: skip
    run = inspect_store(tmp_path, store_path)[started["run"]]
    assert (run["status"], run["output"]) == ("COMPLETED", "released")
    assert [a["status"] for a in run["attempts"]] == ["COMPLETED"]
    assert run["attempts"][0]["pid"] == task_info["worker"]
    # With no client and no run left, the server stops once idle (3 s here), its workers
    # with it.
    for p in [server, *workers]:
        wait_for(lambda p=p: is_gone(p), f"process {p.pid} of the idle server to exit", 30)


# --------------------------------------------------------------------------- 4. Ctrl-C


INTERRUPTED_WAIT = """
from nbtasks import runs, task


@task
def long_one(i):
    publish(f"task-{i}.json", {"worker": os.getpid()})
    time.sleep(300)


try:
    if os.environ["MODE"] == "batch":
        long_one.batch_trigger_and_wait([0, 1, 2])
    else:
        long_one.trigger_and_wait(0)
    emit("STATUS", "the wait returned without KeyboardInterrupt")
except KeyboardInterrupt:
    emit("STATUS", [
        {"status": r.status.value, "attempts": [a.status.value for a in r.attempts]}
        for r in runs.list(task="long_one")
    ])
wait_for_file("release")
"""


@pytest.mark.parametrize("mode", ["single", "batch"])
def test_ctrl_c_during_a_blocking_wait_cancels_its_runs(
    tmp_path: Path, store_path: str, reaper: list[psutil.Process], mode: str
) -> None:
    count = 3 if mode == "batch" else 1
    env = {"NBTASKS_STORE": store_path, "MODE": mode, "NBTASKS_WORKERS": str(max(2, count))}
    kernel = start(script(INTERRUPTED_WAIT), tmp_path, reaper, env)
    files = [tmp_path / f"task-{i}.json" for i in range(count)]
    wait_for(lambda: all(f.exists() for f in files) or kernel.proc.poll() is not None,
               f"{count} task(s) to start")  # fmt: skip
    assert kernel.proc.poll() is None, f"the script ended early\n{kernel.output()}"
    workers = [process(read_json(f)["worker"]) for f in files]
    reaper.extend(workers)

    kernel.proc.send_signal(signal.SIGINT)
    statuses = kernel.wait_line("STATUS")

    assert statuses == [{"status": "CANCELED", "attempts": ["CANCELED"]}] * count
    for p in workers:  # the kernel is still alive: its engine killed the worker, not atexit
        wait_for(lambda p=p: is_gone(p), f"worker {p.pid} of a canceled run to be killed")
    (tmp_path / "release").touch()
    assert kernel.wait_exit() == 0, kernel.output()


# --------------------------------------------------------------------------- 5. bad payloads


BAD_PAYLOADS = """
import socket

import nbtasks
from nbtasks import runs, task


@task
def echo(p):
    return p


def numbers():
    yield 1
    yield 2


def outcome(call):
    try:
        call()
    except Exception as exc:
        return {
            "type": type(exc).__name__,
            "payload_error": isinstance(exc, nbtasks.PayloadError),
            "type_error": isinstance(exc, TypeError),
            "message": str(exc),
        }
    return None


open_generator = numbers()
next(open_generator)
sock = socket.socket()
out = {
    "generator": outcome(lambda: echo.trigger({"n": 1, "values": [1, open_generator]})),
    "socket": outcome(lambda: echo.trigger_and_wait({"n": 1, "sock": sock})),
    "batch": outcome(lambda: echo.batch_trigger([{"n": 0}, {"n": 1}, {"gen": numbers()}, 3])),
    "batch_wait": outcome(lambda: echo.batch_trigger_and_wait([0, 1, sock, 3])),
    "runs": [r.id for r in runs.list()],
}
emit("RESULT", out)
"""


def test_unserialisable_payload_fails_at_trigger_naming_the_object(
    tmp_path: Path, store_path: str
) -> None:
    proc = run_script(script(BAD_PAYLOADS), tmp_path, env={"NBTASKS_STORE": store_path})
    out = tagged(completed(proc), "RESULT")
    for case, path, type_name in [
        ("generator", "payload['values'][1]", "generator"),
        ("socket", "payload['sock']", "socket.socket"),
        ("batch", "items[2]['gen']", "generator"),
        ("batch_wait", "items[2]", "socket.socket"),
    ]:
        error = out[case]
        assert error is not None, f"{case}: the trigger did not raise"
        assert (error["type"], error["payload_error"], error["type_error"]) == (
            "PayloadError",
            True,
            True,
        ), error
        assert error["message"].startswith(f"{path} cannot be serialised"), error["message"]
        assert type_name in error["message"], error["message"]
    assert out["runs"] == []
    assert inspect_store(tmp_path, store_path) == {}


# --------------------------------------------------------------------------- 6. bad endings


BAD_ENDINGS = """
from nbtasks import task


@task
def plain(n):
    return n + 1


@task
def boom(n):
    raise ValueError(f"boom {n}")


@task
def crash(n):
    os._exit(3)


@task(max_duration=0.5)
def hang(n):
    time.sleep(60)


handles = {
    "plain": plain.trigger(1),
    "boom": boom.trigger(2),
    "crash": crash.trigger(3),
    "hang": hang.trigger(4),
}
out = {}
for name, handle in handles.items():
    result = handle.wait(timeout=20)
    out[name] = {
        "id": handle.id,
        "status": result.status.value,
        "output": result.output,
        "error_type": result.error.type if result.error else None,
        "attempts": [
            {"status": a.status.value, "exit_code": a.exit_code} for a in result.run.attempts
        ],
    }
after = plain.trigger_and_wait(41)
out["after"] = {"id": after.id, "output": after.unwrap()}
emit("RESULT", out)
"""


def test_failed_crashed_and_timed_out_runs_next_to_a_good_one(
    tmp_path: Path, store_path: str
) -> None:
    proc = run_script(script(BAD_ENDINGS), tmp_path, env={"NBTASKS_STORE": store_path})
    out = tagged(completed(proc), "RESULT")
    assert out["plain"]["status"] == "COMPLETED"
    assert out["plain"]["output"] == 2
    assert out["boom"]["status"] == "FAILED"
    assert out["boom"]["error_type"] == "ValueError"
    assert out["crash"]["status"] == "CRASHED"
    assert out["crash"]["attempts"] == [{"status": "CRASHED", "exit_code": 3}]
    assert out["hang"]["status"] == "TIMED_OUT"
    assert [a["status"] for a in out["hang"]["attempts"]] == ["TIMED_OUT"]
    assert out["after"]["output"] == 42

    runs = inspect_store(tmp_path, store_path)
    assert len(runs) == 5
    expected = {"plain": "COMPLETED", "boom": "FAILED", "crash": "CRASHED", "hang": "TIMED_OUT"}
    for name, status in expected.items():
        assert runs[out[name]["id"]]["status"] == status, runs[out[name]["id"]]
    assert runs[out["crash"]["id"]]["attempts"][0]["exit_code"] == 3
    assert runs[out["after"]["id"]]["status"] == "COMPLETED"
    assert runs[out["after"]["id"]]["output"] == 42


# --------------------------------------------------------------------------- 7. no retry


NOT_RETRIED = """
from nbtasks import Retry, task

FAST_RETRY = Retry(max_attempts=3, min_delay=0.01, max_delay=0.02, randomize=False)


@task(memory_limit="150MiB", retry=FAST_RETRY)
def hog(step_mib):
    hoard = []
    for _ in range(200):  # up to 1000 MiB: far past the limit
        hoard.append(bytearray(b"x" * (step_mib << 20)))
        time.sleep(0.01)
    return len(hoard)


@task(max_duration=0.5, retry=FAST_RETRY)
def slow(_):
    time.sleep(60)


out = {}
for name, t, payload in (("hog", hog, 5), ("slow", slow, None)):
    run = t.trigger_and_wait(payload).run
    out[name] = {
        "status": run.status.value,
        "attempt_count": run.attempt_count,
        "error_type": run.error.type if run.error else None,
        "error_message": run.error.message if run.error else None,
        "attempts": [{"status": a.status.value, "oom": a.oom} for a in run.attempts],
    }
emit("RESULT", out)
"""


def test_out_of_memory_and_timeout_are_not_retried(tmp_path: Path, store_path: str) -> None:
    proc = run_script(script(NOT_RETRIED), tmp_path, env={"NBTASKS_STORE": store_path})
    out = tagged(completed(proc), "RESULT")
    assert out["hog"]["status"] == "CRASHED", out["hog"]
    assert out["hog"]["attempt_count"] == 1
    assert out["hog"]["attempts"] == [{"status": "CRASHED", "oom": True}]
    assert out["slow"]["status"] == "TIMED_OUT", out["slow"]
    assert out["slow"]["attempt_count"] == 1
    assert out["slow"]["attempts"] == [{"status": "TIMED_OUT", "oom": False}]


# --------------------------------------------------------------------------- 8. cancel


CANCEL_TREE = """
import subprocess

from nbtasks import runs, task


@task
def tree(_):
    child = subprocess.Popen(["sleep", "300"])
    publish("task.json", {"worker": os.getpid(), "grandchild": child.pid})
    time.sleep(300)


@task
def plain(n):
    return {"n": n + 1, "worker": os.getpid()}


handle = tree.trigger(None)
wait_for_file("task.json")
wait_for_file("cancel")  # the test has recorded the task's processes
run = runs.cancel(handle.id)
emit("CANCELED", {"status": run.status.value, "attempts": [a.status.value for a in run.attempts]})
wait_for_file("release")
after = plain.trigger_and_wait(1)
emit("AFTER", {
    "status": after.status.value,
    "output": after.output,
    "canceled_run_now": runs.retrieve(handle.id).status.value,
})
"""


def test_cancel_kills_the_process_tree_and_the_pool_recovers(
    tmp_path: Path, store_path: str, reaper: list[psutil.Process]
) -> None:
    env = {"NBTASKS_STORE": store_path, "NBTASKS_WORKERS": "1"}
    kernel = start(script(CANCEL_TREE), tmp_path, reaper, env)
    wait_for(lambda: (tmp_path / "task.json").exists() or kernel.proc.poll() is not None,
               "the task to start")  # fmt: skip
    assert kernel.proc.poll() is None, f"the script ended early\n{kernel.output()}"
    task_info = read_json(tmp_path / "task.json")
    worker = process(task_info["worker"])
    grandchild = process(task_info["grandchild"])
    reaper.extend([worker, grandchild])

    (tmp_path / "cancel").touch()
    canceled = kernel.wait_line("CANCELED")
    assert canceled == {"status": "CANCELED", "attempts": ["CANCELED"]}
    wait_for(lambda: is_gone(grandchild), "the canceled task's grandchild `sleep` to be killed")
    wait_for(lambda: is_gone(worker), "the canceled run's worker to be killed")

    (tmp_path / "release").touch()
    after = kernel.wait_line("AFTER")
    assert after["status"] == "COMPLETED"
    assert after["output"]["n"] == 2
    assert after["output"]["worker"] != task_info["worker"]  # one worker: a replacement ran it
    assert after["canceled_run_now"] == "CANCELED"
    assert kernel.wait_exit() == 0, kernel.output()
