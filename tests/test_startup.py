"""How the first trigger starts the engine and its workers: a worker boots while the
engine loads, workers boot no more at once than there are cores for them, and a first
trigger that fails leaves no process behind."""

from __future__ import annotations

import json
from pathlib import Path

import psutil
import pytest

import nbtasks
from nbtasks.executor.local import pool as _pool

from conftest import _is_worker, run_script, wait_for
from crashers import sleep_for

FIRST_TRIGGER = """
import json, sys
import nbtasks
from nbtasks import task
from nbtasks.executor.local import launch as _launch

launches = []
real_launch = _launch.launch

def spy(*args):
    launches.append(
        {"engine_loaded": "nbtasks.engine.engine" in sys.modules,
         "trigger_loaded": "nbtasks.client.triggers" in sys.modules
                           or "nbtasks.client.specs" in sys.modules,
         "asyncio_loaded": "asyncio" in sys.modules}
    )
    return real_launch(*args)

_launch.launch = spy

@task
def add(p):
    return p + 1

result = add.trigger_and_wait(41)
print(json.dumps({"output": result.output, "launches": launches}))
"""


def test_the_first_trigger_starts_a_worker_before_loading_the_engine(tmp_path: Path) -> None:
    done = run_script(FIRST_TRIGGER, tmp_path, env={"NBTASKS_STORE": str(tmp_path / "s.duckdb")})
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["output"] == 42
    # The first worker was launched before the trigger's modules and the engine's loaded
    # (asyncio alone is about 35 ms of imports); the second one comes from the engine.
    assert report["launches"][0] == {
        "engine_loaded": False,
        "trigger_loaded": False,
        "asyncio_loaded": False,
    }


def test_workers_boot_no_more_at_once_than_boot_slots(
    store_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_pool, "boot_slots", lambda: 1)  # as on a two-core machine
    booting_at_spawn: list[int] = []
    real_spawn = _pool.LocalExecutor.spawn

    def spawn(self: _pool.LocalExecutor) -> int:
        booting = [w for w in self.workers.values() if not w.ready and not w.dying]
        booting_at_spawn.append(len(booting))
        return real_spawn(self)

    monkeypatch.setattr(_pool.LocalExecutor, "spawn", spawn)
    nbtasks.configure(store=store_path, workers=3)
    assert sleep_for.trigger_and_wait(0.0).output == 0.0
    engine = nbtasks.client.config.get_engine()
    wait_for(lambda: sum(w.ready for w in engine.dispatch.workers.values()) >= 3,
             "the three workers to be ready", 30, 0.01)  # fmt: skip
    # The trigger launched the first worker; the engine launched the two others, each
    # once no other worker was booting.
    assert booting_at_spawn == [0, 0]
    assert len(engine.dispatch.workers) == 3


def test_a_first_trigger_that_fails_leaves_no_worker_behind(store_path: str) -> None:
    nbtasks.configure(store=store_path, workers=2)
    with pytest.raises(ValueError, match="max_attempts"):
        sleep_for.trigger(0.0, max_attempts=0)
    me = psutil.Process()
    assert [p for p in me.children(recursive=True) if _is_worker(p)]  # launched early
    nbtasks.shutdown()
    left = [p for p in me.children(recursive=True) if _is_worker(p)]
    _, alive = psutil.wait_procs(left, timeout=5)
    assert not alive
