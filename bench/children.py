"""Running one measurement in a fresh process, and reading back its ``RESULT`` line."""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from bench.systems.common import RESULT_PREFIX

REPO = Path(__file__).resolve().parent.parent
# In the environment of every child, so of every nbtasks server a child starts: the run's
# temp home. A server lives in a session of its own and outlives the child that started it.
RUN_MARKER = "NBTASKS_BENCH_RUN"
SERVER_MARKER = "nbtasks.service.server"


def child_env(home: Path) -> dict[str, str]:
    """The environment of every child: this repo importable (its ``bench``, and its ``src``
    first, so the work tree's nbtasks whatever the venv's install points at), systems kept
    local and quiet."""
    env = dict(os.environ)
    for name in ("PREFECT_API_URL", "PREFECT_API_KEY", "NBTASKS_STORE", "NBTASKS_WORKERS"):
        env.pop(name, None)
    paths = [str(REPO / "src"), str(REPO), env.get("PYTHONPATH")]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, paths))
    env.update(
        {
            RUN_MARKER: str(home),
            "PREFECT_HOME": str(home / "prefect"),  # a throwaway ephemeral server database
            "PREFECT_LOGGING_LEVEL": "WARNING",  # no log line per task run
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",  # no telemetry: no outside host
            # Its ephemeral server (migrating a fresh database) can take longer than the
            # default 20 s to start on a loaded 2-CPU machine.
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
            "DO_NOT_TRACK": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def _kill_group(proc: subprocess.Popen[str]) -> None:
    """End what the child left behind in its process group (clusters, consumers)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def end_servers(env: dict[str, str], timeout: float = 10.0) -> int:
    """Stop the nbtasks servers started by this run's children (``RUN_MARKER`` in their
    environment, as in ``env``): SIGTERM, then SIGKILL of the server's process group (its
    workers) if it has not ended within ``timeout``. How many there were."""
    servers = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if SERVER_MARKER in " ".join(proc.info["cmdline"] or ()) and (
                proc.environ().get(RUN_MARKER) == env[RUN_MARKER]
            ):
                proc.terminate()
                servers.append(proc)
        except psutil.Error:
            continue
    _, alive = psutil.wait_procs(servers, timeout=timeout)
    for proc in alive:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    return len(servers)


def _error_text(stderr: str, code: int | None) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    tail = lines[-1] if lines else "no output"
    return f"exit code {code}: {tail}"[:300]


def _start(cmd: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
    """A measuring process, leader of its own process group, its output piped as text."""
    return subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=cwd,
        start_new_session=True,
    )


def _wait(proc: subprocess.Popen[str], timeout: float) -> tuple[str, str]:
    """Wait for the child itself, not for the end of its pipes (a server it started may
    outlive it, holding them), then end its process group; its stdout and stderr."""
    texts: dict[str, str] = {}

    def read(name: str, stream: Any) -> None:
        texts[name] = stream.read()

    readers = [
        threading.Thread(target=read, args=(name, stream), daemon=True)
        for name, stream in (("out", proc.stdout), ("err", proc.stderr))
    ]
    for reader in readers:
        reader.start()
    timed_out = False
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:
        _kill_group(proc)
    proc.wait()
    for reader in readers:
        reader.join(10.0)  # a leftover that left the group may still hold a pipe
    err = texts.get("err", "") + (f"\ntimed out after {timeout:.0f} s" if timed_out else "")
    return texts.get("out", ""), err


def run_module(
    module: str, args: list[str], env: dict[str, str], cwd: Path, timeout: float
) -> dict[str, Any]:
    """``python -m module args`` in a new session; its RESULT dict, or ``{"error": ...}``.
    Any nbtasks server it leaves running is stopped."""
    proc = _start([sys.executable, "-m", module, *args], env, cwd)
    out, err = _wait(proc, timeout)
    end_servers(env)
    results = [line for line in out.splitlines() if line.startswith(RESULT_PREFIX)]
    if not results:
        return {"error": _error_text(err, proc.returncode)}
    result: dict[str, Any] = json.loads(results[-1][len(RESULT_PREFIX) :])
    return result


def cold_start(
    code: str, env: dict[str, str], cwd: Path, timeout: float, keep_servers: bool = False
) -> dict[str, Any]:
    """W4 once: ``python -c code``; seconds from the process's start to its ``RESULT`` line
    (``first_result_s``) and to its exit (``exit_s``), and what the line reports if it is a
    JSON object (``reported``). The nbtasks server it started is stopped, unless
    ``keep_servers``."""
    t0 = time.perf_counter()
    proc = _start([sys.executable, "-c", code], env, cwd)
    assert proc.stdout is not None and proc.stderr is not None
    first: float | None = None
    line = ""
    deadline = t0 + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while first is None and time.perf_counter() < deadline:
            if not sel.select(timeout=max(0.0, deadline - time.perf_counter())):
                break
            line = proc.stdout.readline()
            if not line:  # end of file: the process ended without a result
                break
            if line.startswith("RESULT") or code.strip() == "pass":
                first = time.perf_counter() - t0
    _, err = _wait(proc, max(1.0, deadline - time.perf_counter()))
    exit_s = time.perf_counter() - t0
    if not keep_servers:
        end_servers(env)
    if code.strip() == "pass":
        first = exit_s
    if first is None:
        return {"error": _error_text(err, proc.returncode)}
    result: dict[str, Any] = {"first_result_s": first, "exit_s": exit_s}
    reported = _json_object(line.removeprefix("RESULT"))
    if reported is not None:
        result["reported"] = reported
    return result


def _json_object(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
