"""Runs that outlive their kernel: delays, queued runs and replays across a restart.

Each "kernel" is a script run as ``python script.py`` with its tasks in ``__main__``; the
first one is killed with SIGKILL, a second one opens the same store.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import psutil

from nbtasks.service.client import server_pid

from conftest import run_script, start_script, wait_for

DEADLINE_S = 20.0

DEFINE = """
import json, sys, time
import nbtasks
from nbtasks import runs, task

@task
def add(p):
    return p["a"] + p["b"]

@task
def nap(s):
    time.sleep(s)
    return s
"""


def _first_line(proc, what: str) -> str:  # type: ignore[no-untyped-def]
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.kill()
        raise AssertionError(f"the script exited before printing {what}: {proc.stderr.read()}")
    return str(line.strip())


def _kill(proc) -> None:  # type: ignore[no-untyped-def]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=DEADLINE_S)


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _second_kernel(tmp_path: Path, body: str, env: dict[str, str]) -> dict:  # type: ignore[type-arg]
    done = run_script(DEFINE + body, tmp_path, env=env, timeout=DEADLINE_S * 2)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_delayed_run_survives_a_killed_kernel_and_runs_on_time(tmp_path: Path) -> None:
    env = {"NBTASKS_STORE": str(tmp_path / "store.duckdb")}
    first = start_script(
        DEFINE
        + """
h = add.trigger({"a": 20, "b": 22}, delay="1.5s")
print(h.id, h.retrieve().status.value, flush=True)
time.sleep(300)
""",
        tmp_path,
        env=env,
        name="first.py",
    )
    run_id, before = _first_line(first, "the run id").split()
    _kill(first)
    killed_at = time.time()
    # The store's server runs it when due, whether or not a kernel is there by then.
    out = _second_kernel(
        tmp_path,
        f"""
result = runs.wait({run_id!r}, timeout=15)
run = result.run
print(json.dumps({{"status": result.status.value, "output": result.output,
                  "on_time": run.started_at >= run.delay_until,
                  "started_at": run.started_at.timestamp()}}))
""",
        env,
    )
    assert before == "DELAYED"
    assert out["started_at"] > killed_at  # (it ran after its kernel died)
    del out["started_at"]
    assert out == {"status": "COMPLETED", "output": 42, "on_time": True}


def test_run_that_came_due_while_no_kernel_ran_starts_at_the_next_open(tmp_path: Path) -> None:
    env = {"NBTASKS_STORE": str(tmp_path / "store.duckdb")}
    first = start_script(
        DEFINE
        + """
h = add.trigger({"a": 1, "b": 2}, delay="1s")
run = h.retrieve()
print(h.id, run.delay_until.timestamp(), run.status.value, flush=True)
time.sleep(300)
""",
        tmp_path,
        env=env,
        name="first.py",
    )
    run_id, due, status = _first_line(first, "the run id").split()
    _kill(first)
    assert status == "DELAYED"
    while time.time() < float(due) + 0.2:  # no kernel runs while the run comes due
        time.sleep(0.05)
    out = _second_kernel(
        tmp_path,
        f"""
result = runs.wait({run_id!r}, timeout=15)
print(json.dumps({{"status": result.status.value, "output": result.output}}))
""",
        env,
    )
    assert out == {"status": "COMPLETED", "output": 3}


def test_queued_runs_wait_for_their_task_after_a_server_restart(tmp_path: Path) -> None:
    """The kernel and then the store's server are killed (SIGKILL); the next server
    interrupts what executed, and its queued run waits for a kernel to define its task."""
    env = {"NBTASKS_STORE": str(tmp_path / "store.duckdb"), "NBTASKS_WORKERS": "1"}
    first = start_script(
        DEFINE
        + """
busy = nap.trigger(300)
while busy.retrieve().status.value != "EXECUTING":
    time.sleep(0.01)
queued = add.trigger({"a": 2, "b": 2})
server = nbtasks.client.config.get_engine().info["pid"]
print(busy.id, queued.id, server, flush=True)
time.sleep(300)
""",
        tmp_path,
        env=env,
        name="first.py",
    )
    busy_id, queued_id, server = _first_line(first, "the run ids").split()
    _kill(first)  # first, or it would start the next server and define the task itself
    os.kill(int(server), signal.SIGKILL)
    wait_for(lambda: _gone(int(server)) and server_pid(env["NBTASKS_STORE"]) is None,
             "the killed server to be gone")  # fmt: skip
    out = run_script(
        f"""
import json
from nbtasks import runs, task
before = runs.retrieve({queued_id!r}).status.value
busy = runs.retrieve({busy_id!r}).status.value

@task
def add(p):
    return p["a"] + p["b"]

result = runs.wait({queued_id!r}, timeout=15)
print(json.dumps({{"before": before, "busy": busy, "after": result.status.value,
                  "output": result.output}}))
""",
        tmp_path,
        env=env,
        timeout=DEADLINE_S * 2,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {
        "before": "WAITING_FOR_DEPLOY",
        "busy": "INTERRUPTED",
        "after": "COMPLETED",
        "output": 4,
    }


def test_replay_after_a_restart(tmp_path: Path) -> None:
    env = {"NBTASKS_STORE": str(tmp_path / "store.duckdb")}
    done = run_script(DEFINE + 'print(add.trigger_and_wait({"a": 3, "b": 4}).id)', tmp_path,
                      env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    run_id = done.stdout.strip()
    out = _second_kernel(
        tmp_path,
        f"""
h = runs.replay({run_id!r})
r = h.wait(timeout=15)
print(json.dumps({{"output": r.output, "from": h.retrieve().replayed_from}}))
""",
        env,
    )
    assert out == {"output": 7, "from": run_id}
