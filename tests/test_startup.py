"""How the first trigger starts the store's server and its workers: the server launches a
worker before the engine's modules load, workers boot no more at once than there are cores
for them, and a first trigger that fails leaves no process behind.

The server is a process of its own: what happens inside it is recorded by ``SPY``, a
``sitecustomize`` on its ``PYTHONPATH`` (``spy_env``), which wraps the launch of workers
in the server process only and writes one JSON line per event to a file (it can also
change a few settings of the server: see its ``NBTASKS_TEST_*`` variables)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import psutil
import pytest

import nbtasks
from nbtasks.client import config
from nbtasks.service.client import server_pid

from conftest import PYTHONPATH, _is_worker, run_script, wait_for
from crashers import sleep_for

SPY = """
import importlib.machinery
import json
import os
import sys

LOG = os.environ.get("NBTASKS_TEST_SPY")


def in_server():
    return sys.argv[:1] != [] and sys.argv[0].replace(os.sep, "/").endswith(
        "nbtasks/service/server.py"
    )


def record(event, **data):
    with open(LOG, "a") as f:
        f.write(json.dumps({"event": event, "pid": os.getpid(), **data}) + "\\n")


def spy_launch(module):
    real = module.launch

    def launch(*args, **kwargs):
        record("launch", engine_loaded="nbtasks.engine.engine" in sys.modules,
               host_loaded="nbtasks.service.host" in sys.modules,
               duckdb_loaded="duckdb" in sys.modules, asyncio_loaded="asyncio" in sys.modules)
        broken = os.environ.get("NBTASKS_TEST_BREAK_WORKERS")
        if not broken or not os.path.exists(broken):
            return real(*args, **kwargs)
        os.environ["PYTHONHOME"] = "/nonexistent-python-home"  # this worker cannot start
        try:
            return real(*args, **kwargs)
        finally:
            del os.environ["PYTHONHOME"]

    module.launch = launch


def spy_pool(module):
    slots = os.environ.get("NBTASKS_TEST_BOOT_SLOTS")
    if slots:
        module.boot_slots = lambda: int(slots)
    real = module.LocalExecutor.spawn

    def spawn(self, *args, **kwargs):
        booting = [w for w in self.workers.values() if not w.ready and not w.dying]
        record("spawn", booting=len(booting))
        return real(self, *args, **kwargs)

    module.LocalExecutor.spawn = spawn


def spy_store(module):
    fold_s = os.environ.get("NBTASKS_TEST_FOLD_S")  # how long rows stay in the journal
    if fold_s:
        module.FOLD_IDLE_S = module.FOLD_MAX_AGE_S = float(fold_s)


HOOKS = {
    "nbtasks.executor.local.launch": spy_launch,
    "nbtasks.executor.local.pool": spy_pool,
    "nbtasks.store.folding": spy_store,
}


class Spy:
    @staticmethod
    def find_spec(name, path, target=None):
        if name not in HOOKS or not in_server():
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None:
            return None
        real = spec.loader.exec_module

        def exec_module(module):
            real(module)
            HOOKS[name](module)

        spec.loader.exec_module = exec_module
        return spec


if LOG:
    sys.meta_path.insert(0, Spy)
"""


def spy_env(tmp_path: Path) -> dict[str, str]:
    """The environment that puts ``SPY`` in the servers a process starts; its events go
    to ``tmp_path/spy.jsonl`` (read with ``spied``)."""
    folder = tmp_path / "spy"
    folder.mkdir(exist_ok=True)
    (folder / "sitecustomize.py").write_text(SPY)
    return {
        "PYTHONPATH": os.pathsep.join([str(folder), PYTHONPATH]),
        "NBTASKS_TEST_SPY": str(tmp_path / "spy.jsonl"),
    }


def spied(tmp_path: Path, event: str) -> list[dict[str, Any]]:
    path = tmp_path / "spy.jsonl"
    if not path.exists():
        return []
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    return [e for e in lines if e["event"] == event]


FIRST_TRIGGER = """
import json
import nbtasks
from nbtasks import task
from nbtasks.client import config

@task
def add(p):
    return p + 1

result = add.trigger_and_wait(41)
print(json.dumps({"output": result.output, "server": config.get_engine().info["pid"]}))
"""


def test_the_server_started_for_a_first_trigger_launches_a_worker_before_its_engine_loads(
    tmp_path: Path,
) -> None:
    env = {"NBTASKS_STORE": str(tmp_path / "s.duckdb"), **spy_env(tmp_path)}
    done = run_script(FIRST_TRIGGER, tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["output"] == 42
    launches = spied(tmp_path, "launch")
    assert launches and {e["pid"] for e in launches} == {report["server"]}
    # The server's first worker was launched before the engine's modules (the engine,
    # DuckDB, asyncio: most of the server's start) loaded; the second comes from the engine.
    first, *rest = launches
    assert {k: v for k, v in first.items() if k.endswith("_loaded")} == {
        "engine_loaded": False,
        "host_loaded": False,
        "duckdb_loaded": False,
        "asyncio_loaded": False,
    }
    assert len(rest) == 1 and rest[0]["engine_loaded"] and rest[0]["host_loaded"]


def test_the_server_boots_workers_no_more_at_once_than_boot_slots(
    store_path: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in spy_env(tmp_path).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("NBTASKS_TEST_BOOT_SLOTS", "1")  # as on a two-core machine
    nbtasks.configure(store=store_path, workers=3)
    assert sleep_for.trigger_and_wait(0.0).output == 0.0
    server = psutil.Process(config.get_engine().info["pid"])
    wait_for(lambda: len(spied(tmp_path, "spawn")) >= 2 and len(_workers_of(server)) >= 3,
             "the server to start its three workers", 30, 0.01)  # fmt: skip
    # The server launched the first worker as it started; its engine launched the two
    # others, each once no other worker was booting.
    assert [e["booting"] for e in spied(tmp_path, "spawn")] == [0, 0]
    assert len(spied(tmp_path, "launch")) == 3
    assert len(_workers_of(server)) == 3


def _workers_of(server: psutil.Process) -> list[psutil.Process]:
    try:
        return [p for p in server.children() if _is_worker(p)]
    except psutil.NoSuchProcess:
        return []


def test_a_first_trigger_that_fails_leaves_no_server_or_worker_behind(store_path: str) -> None:
    nbtasks.configure(store=store_path, workers=2)
    with pytest.raises(ValueError, match="max_attempts"):
        sleep_for.trigger(0.0, max_attempts=0)
    # The trigger started the store's server (with a first worker) before it failed.
    server = psutil.Process(config.get_engine().info["pid"])
    workers = wait_for(lambda: _workers_of(server), "the server's first worker")
    nbtasks.shutdown()  # this process disconnects: nothing keeps the server up
    _, alive = psutil.wait_procs([server, *workers], timeout=15)
    assert not alive, f"left running after the failed trigger: {alive}"
    assert server_pid(store_path) is None
    assert nbtasks.runs.list() == []  # (a new server) the failed trigger made no run
