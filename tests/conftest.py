"""Shared fixtures: a real store file per test, a real engine with real workers; and
``wait_for``, the one way tests wait for a state."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import psutil
import pytest

import nbtasks
from nbtasks.client import config

ROOT = Path(__file__).resolve().parent.parent
# Kernels, Jupyter servers and scripts the tests start run in other folders: a relative
# PYTHONPATH (``PYTHONPATH=src pytest``) must still lead them to this checkout's code.
if os.environ.get("PYTHONPATH"):
    os.environ["PYTHONPATH"] = os.pathsep.join(
        str(Path(p).resolve()) if p else p for p in os.environ["PYTHONPATH"].split(os.pathsep)
    )
# Processes the tests start import the nbtasks under test, whatever PYTHONPATH says.
SRC = str(Path(nbtasks.__file__).resolve().parent.parent)
PYTHONPATH = os.pathsep.join(filter(None, [SRC, os.environ.get("PYTHONPATH")]))
# Servers that processes the tests start (scripts, kernels) stop soon once idle; each
# carries this session's mark in its environment, so that a test can stop those it left.
os.environ.setdefault("NBTASKS_SERVER_IDLE", "3s")
SESSION_MARK = f"NBTASKS_TEST_SESSION={os.getpid()}"
os.environ["NBTASKS_TEST_SESSION"] = str(os.getpid())
DEADLINE_S = 15.0  # generous: every awaited state normally holds well within a second
T = TypeVar("T")


def wait_for(condition: Callable[[], T], what: str, timeout: float = DEADLINE_S,
             interval: float = 0.02) -> T:  # fmt: skip
    """Poll ``condition`` until it returns something truthy, and return that; after
    ``timeout`` seconds, fail the test naming ``what`` was awaited.

    (Scripts that tests run in processes of their own carry a copy: see
    ``test_scripts.PRELUDE``.)"""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def has_status(run_id: str, status: nbtasks.RunStatus) -> Callable[[], nbtasks.Run | None]:
    """A ``wait_for`` condition: the run's snapshot once it has ``status`` (a status it
    stays in for a while); the test fails at once if the run ends without reaching it."""

    def check() -> nbtasks.Run | None:
        run = nbtasks.runs.retrieve(run_id)
        if run.status is status:
            return run
        if run.is_final:
            pytest.fail(f"run {run_id} ended {run.status.value} before reaching {status.value}")
        return None

    return check


@pytest.fixture
def store_path(tmp_path: Path) -> str:
    return str(tmp_path / "store" / "runs.duckdb")


@pytest.fixture(scope="session")
def dask_cluster() -> Iterator[Any]:
    """A Dask LocalCluster of two single-threaded worker processes, for the session."""
    from distributed import LocalCluster

    cluster = LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
    )
    yield cluster
    cluster.close()


@pytest.fixture
def nb(store_path: str) -> Iterator[object]:
    """nbtasks with a fresh store in tmp_path and two workers; its server stopped
    afterwards."""
    nbtasks.configure(store=store_path, workers=2)
    yield nbtasks
    config.shutdown(stop_server=True)


@pytest.fixture
def served(store_path: str) -> Iterator[Any]:
    """nbtasks with a fresh store whose server runs in this process, on threads of its
    own, with two workers: for tests that look inside the engine, its dispatch or its
    store (``served.engine``) while this process uses it over the socket, as any client
    does. Yields the ``service.host.Server``."""
    from nbtasks.service.host import Server
    from nbtasks.service.places import place_of
    from nbtasks.service.server import listen, take_lock
    from nbtasks.store.files import make_store_folder

    nbtasks.configure(store=store_path, workers=2)
    settings = config.server_config()
    make_store_folder(os.path.dirname(store_path))
    place = place_of(store_path)
    lock = take_lock(place)
    assert lock is not None
    server = Server(settings, place, listen(place), [])
    try:
        yield server
    finally:
        config.shutdown()  # disconnect: the server is this process's to close
        server.close()
        os.unlink(place.socket)
        os.close(lock)


@pytest.fixture(autouse=True)
def no_leftover_workers() -> Iterator[None]:
    """Every test must leave no worker process of this process behind: the server it
    used is stopped (its workers with it)."""
    yield
    config.shutdown(stop_server=True)
    stop_servers_left()
    me = psutil.Process()
    left = [p for p in me.children(recursive=True) if _is_worker(p)]
    _, alive = psutil.wait_procs(left, timeout=5)
    assert not alive, f"worker processes left alive: {alive}"


def stop_servers_left() -> None:
    """Stop (SIGTERM, as ``nbtasks server stop`` does) the servers that processes of this
    session started and left running, e.g. with runs a killed script's tasks still run."""
    mark = SESSION_MARK.encode()
    left = []
    for p in psutil.process_iter(["cmdline"]):
        if "nbtasks.service.server" not in " ".join(p.info["cmdline"] or ()):
            continue
        try:
            with open(f"/proc/{p.pid}/environ", "rb") as f:
                if mark in f.read().split(b"\0"):
                    p.terminate()
                    left.append(p)
        except (OSError, psutil.Error):
            continue
    _, alive = psutil.wait_procs(left, timeout=15)
    for p in alive:
        p.kill()


def _is_worker(p: psutil.Process) -> bool:
    try:
        return "nbtasks.executor.local.worker" in " ".join(p.cmdline())
    except psutil.Error:
        return False


def run_script(code: str, tmp_path: Path, *, env: dict[str, str] | None = None,
               timeout: float = 60) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """Run ``code`` as ``python script.py`` (tasks defined in ``__main__``, as in a notebook)."""
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(code))
    full_env = {**os.environ, "NBTASKS_WORKERS": "2", "PYTHONPATH": PYTHONPATH, **(env or {})}
    return subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_script(code: str, tmp_path: Path, *, env: dict[str, str] | None = None,
                 name: str = "script.py") -> subprocess.Popen[str]:  # fmt: skip
    script = tmp_path / name
    script.write_text(textwrap.dedent(code))
    full_env = {**os.environ, "NBTASKS_WORKERS": "2", "PYTHONPATH": PYTHONPATH, **(env or {})}
    return subprocess.Popen(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
