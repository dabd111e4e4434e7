"""Runs outlive their kernel, in real Jupyter kernels: a restart during a wait is not a
cancel, a new kernel's widget follows a run the old one started, and ``%%task --bg``
assigns its outputs only into the kernel that is there to receive them."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import nbtasks
from nbtasks import RunStatus
from test_kernel import DEADLINE_S, SETUP, Kernel, set_up_kernel

from conftest import wait_for


@pytest.fixture
def kernel(tmp_path: Path) -> Iterator[Kernel]:
    """A kernel on the store ``tmp_path/k.duckdb``, which this process reads too."""
    nbtasks.configure(store=str(tmp_path / "k.duckdb"))
    with set_up_kernel(tmp_path) as k:
        yield k


def _executing(task_id: str) -> nbtasks.Run | None:
    found = nbtasks.runs.list(task=task_id, status="EXECUTING")
    return found[0] if found else None


def test_a_kernel_restart_during_a_wait_leaves_the_run_running(kernel: Kernel) -> None:
    """Kernel ▸ Restart while a cell blocks in trigger_and_wait: Jupyter interrupts the
    kernel, then asks it to shut down. The interrupt is no stop button: the run goes on
    to COMPLETED, with no cancel recorded."""
    kernel.execute("slow.trigger_and_wait(2)")
    run = wait_for(lambda: _executing("slow"), "the run to execute")
    kernel.km.restart_kernel(now=False)
    kernel.kc.wait_for_ready(timeout=DEADLINE_S)
    done = nbtasks.runs.wait(run.id, timeout=DEADLINE_S)
    assert done.status is RunStatus.COMPLETED and done.output == 2
    statuses = [status for status, *_ in nbtasks.runs.sql(
        "SELECT status FROM run_events WHERE run_id = ?", [run.id]).fetchall()]  # fmt: skip
    assert "CANCELED" not in statuses


def _widget_states(kernel: Kernel, until: str,
                   on: Callable[[str], None] = lambda status: None) -> list[str]:  # fmt: skip
    """The statuses the next run widget shows, as a front-end gets them (comm messages),
    until one is ``until``; ``on(status)`` is called at each."""
    seen: list[str] = []
    comm: str | None = None  # the run widget's
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        try:
            msg = kernel.kc.get_iopub_msg(timeout=1)
        except Exception:
            continue
        content: dict[str, Any] = msg["content"]
        state = content.get("data", {}).get("state", {})
        if msg["msg_type"] == "comm_open" and state.get("_anywidget_id", "").endswith(".RunWidget"):
            comm = content["comm_id"]
        elif msg["msg_type"] != "comm_msg" or content.get("comm_id") != comm:
            continue
        if state.get("run", {}).get("status"):
            seen.append(state["run"]["status"])
            on(seen[-1])
        if seen and seen[-1] == until:
            return seen
    raise AssertionError(f"the widget never showed {until}; it showed {seen}")


def test_a_new_kernels_widget_follows_a_run_the_old_kernel_started(
    tmp_path: Path, kernel: Kernel
) -> None:
    """The first kernel triggers a run and is killed; a second kernel's run widget opens
    on the run EXECUTING and shows it COMPLETED, live."""
    go = tmp_path / "go"
    kernel.run(
        "@task\n"
        "def gated(_):\n"
        f"    while not __import__('os').path.exists({str(go)!r}):\n"
        "        time.sleep(0.01)\n"
        "    return 'done'\n"
        "h = gated.trigger(None)"
    )
    run = wait_for(lambda: _executing("gated"), "the run to execute")
    kernel.km.signal_kernel(signal.SIGKILL)  # no goodbye
    wait_for(lambda: not kernel.km.is_alive(), "the first kernel to die")
    second = Kernel(tmp_path)
    try:
        second.run(SETUP)
        second.execute(f"runs.retrieve({run.id!r})")

        def release(status: str) -> None:
            if status == "EXECUTING":
                go.touch()

        seen = _widget_states(second, "COMPLETED", release)
        assert seen[0] == "EXECUTING" and seen[-1] == "COMPLETED"
        assert second.value(f"runs.retrieve({run.id!r}).output") == "'done'"
    finally:
        second.close()


def test_task_bg_assigns_only_into_the_kernel_that_is_there(tmp_path: Path, kernel: Kernel) -> None:
    """``%%task --bg`` whose kernel restarts before it ends: the run completes in the
    server, its outputs stay in the run, and the new kernel is not written to."""
    go = tmp_path / "go"
    kernel.run(
        f"%%task late --bg\nimport os, time\nwhile not os.path.exists({str(go)!r}):\n"
        "    time.sleep(0.01)\nanswer = 42"
    )
    run = wait_for(lambda: _executing("late"), "the --bg run to execute")
    kernel.km.restart_kernel(now=False)
    kernel.kc.wait_for_ready(timeout=DEADLINE_S)
    kernel.run(SETUP)
    go.touch()
    done = nbtasks.runs.wait(run.id, timeout=DEADLINE_S)
    assert done.status is RunStatus.COMPLETED and done.output == {"answer": 42}
    kernel.run("pass")  # a cell runs: the pre-cell hook would assign here
    assert kernel.value("'answer' in globals()") == "False"
