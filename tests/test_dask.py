"""The Dask executor beyond the contract suite (``test_contract.py`` runs that on a
LocalCluster): what only a cluster can do to a run. A Dask worker killed mid-attempt, the
scheduler killed and started again, a scheduler that cannot be reached, the extra not
installed, ``resources=``. Real clusters: a LocalCluster of worker processes, or a
scheduler and workers started with the ``dask`` command."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any

import psutil
import pytest

import nbtasks
from nbtasks import AttemptStatus, NbtasksError, Retry, RunStatus, task
from nbtasks.service.client import server_pid

from conftest import wait_for

DASK = os.path.join(os.path.dirname(sys.executable), "dask")


@task
def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@task(retry=Retry(max_attempts=3, min_delay=0.05, randomize=False))
def nap_with_retries(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@task
def triple(x: int) -> int:
    return 3 * x


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _executing_pid(run_id: str) -> int:
    def pid() -> int | None:
        run = nbtasks.runs.retrieve(run_id)
        if run.status is RunStatus.EXECUTING and run.attempts and run.attempts[-1].pid:
            return run.attempts[-1].pid
        return None

    found: int = wait_for(pid, "the run executing, with its pid")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class CommandCluster:
    """A scheduler and two single-threaded workers, each started with the ``dask`` command,
    so that the scheduler can be killed. With ``gpu``, one more worker has a resource
    ``GPU=1``."""

    def __init__(self, gpu: bool = False) -> None:
        self.port = _free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.scheduler = self._scheduler()
        self.workers = self._workers()
        self.gpu = self._workers(1, "--resources", "GPU=1") if gpu else None

    def _scheduler(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [DASK, "scheduler", "--host", "127.0.0.1", "--port", str(self.port),
             "--no-dashboard"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def _workers(self, n: int = 2, *options: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [DASK, "worker", self.address, "--nworkers", str(n), "--nthreads", "1",
             "--no-dashboard", "--death-timeout", "60", *options],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def wait_ready(self) -> None:
        from distributed import Client

        with Client(self.address, timeout=30) as client:
            client.wait_for_workers(2 if self.gpu is None else 3, timeout=60)

    def gpu_worker_pid(self) -> int:
        """The pid of the Dask worker process that has the GPU."""
        from distributed import Client

        with Client(self.address, timeout=30) as client:
            info = client.scheduler_info()["workers"]
            (address,) = [a for a, w in info.items() if w.get("resources", {}).get("GPU")]
            pid: int = client.run(os.getpid, workers=[address])[address]
            return pid

    def kill_scheduler(self) -> None:
        self.scheduler.send_signal(signal.SIGKILL)
        self.scheduler.wait()

    def restart(self) -> None:
        """Start the scheduler again on the same port, and workers for it."""
        self.scheduler = self._scheduler()
        if self.workers.poll() is None:  # they give up on a lost scheduler by themselves
            self.workers.wait(timeout=60)
        self.workers = self._workers()
        self.wait_ready()

    def close(self) -> None:
        for proc in (self.gpu, self.workers, self.scheduler):
            if proc is None:
                continue
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def _command_cluster(gpu: bool) -> Iterator[CommandCluster]:
    cluster = CommandCluster(gpu=gpu)
    try:
        cluster.wait_ready()
        yield cluster
    finally:
        nbtasks.configure(executor="local")  # shuts the engine down
        cluster.close()


@pytest.fixture
def command_cluster() -> Iterator[CommandCluster]:
    yield from _command_cluster(gpu=False)


@pytest.fixture
def gpu_cluster() -> Iterator[CommandCluster]:
    yield from _command_cluster(gpu=True)


@pytest.fixture
def own_cluster() -> Iterator[Any]:
    """A LocalCluster of two single-threaded worker processes, for one test (it gets hurt)."""
    from distributed import LocalCluster

    cluster = LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
    )
    try:
        yield cluster
    finally:
        nbtasks.configure(executor="local")  # shuts the engine down
        cluster.close()


def test_a_killed_dask_worker_crashes_its_attempt_with_the_cause(
    own_cluster: Any, store_path: str
) -> None:
    nbtasks.configure(store=store_path, workers=2, executor=nbtasks.DaskExecutor(own_cluster))
    handle = nap.trigger(30)
    attempt_pid = _executing_pid(handle.id)
    dask_worker = psutil.Process(attempt_pid).parent()
    assert dask_worker is not None
    dask_worker.send_signal(signal.SIGKILL)

    run = nbtasks.runs.retrieve(handle.id)
    result = handle.wait()
    assert result.status is RunStatus.CRASHED, result
    attempt = nbtasks.runs.retrieve(handle.id).attempts[0]
    assert attempt.status is AttemptStatus.CRASHED
    assert "Dask worker" in str(attempt.error) and "was lost" in str(attempt.error), attempt
    wait_for(lambda: not _alive(attempt_pid), "the attempt's process gone with its worker")
    assert run.id == handle.id
    # Dask never ran it again behind the engine's back, and the next runs are fine
    assert [a.number for a in nbtasks.runs.retrieve(handle.id).attempts] == [1]
    assert [r.unwrap() for r in triple.batch_trigger_and_wait([1, 2, 3]).runs] == [3, 6, 9]


def test_a_killed_scheduler_loses_no_acknowledged_run(
    command_cluster: CommandCluster, store_path: str
) -> None:
    nbtasks.configure(
        store=store_path, workers=2, executor=nbtasks.DaskExecutor(command_cluster.address)
    )
    executing = [nap_with_retries.trigger(1.5) for _ in range(2)]
    queued = [nap.trigger(0.1) for _ in range(3)]
    pids = [_executing_pid(h.id) for h in executing]

    command_cluster.kill_scheduler()
    for pid in pids:  # the attempts' process trees do not outlive their runners
        wait_for(lambda pid=pid: not _alive(pid), "the attempt's process gone", timeout=30)
    for h in executing:
        first = wait_for(
            lambda h=h: (
                next(iter(nbtasks.runs.retrieve(h.id).attempts), None)
                if nbtasks.runs.retrieve(h.id).attempts[0].status is AttemptStatus.CRASHED
                else None
            ),
            "the first attempt CRASHED",
        )
        assert "Dask scheduler" in str(first.error), first
    with pytest.raises(NbtasksError, match=command_cluster.address) as raised:
        triple.trigger(1)
    assert "no run was made" in str(raised.value)

    command_cluster.restart()
    results = [h.wait() for h in executing + queued]
    assert [r.status for r in results] == [RunStatus.COMPLETED] * 5, results
    for h in executing:  # retried by its policy: a second attempt completed
        statuses = [a.status for a in nbtasks.runs.retrieve(h.id).attempts]
        assert statuses == [AttemptStatus.CRASHED, AttemptStatus.COMPLETED], statuses
    task_names = [r.task_id for r in nbtasks.runs.list(limit=100)]
    assert sorted(task_names) == sorted(["nap_with_retries"] * 2 + ["nap"] * 3)


def test_an_unreachable_scheduler_fails_the_trigger_naming_it(store_path: str) -> None:
    address = f"tcp://127.0.0.1:{_free_port()}"
    nbtasks.configure(store=store_path, executor=nbtasks.DaskExecutor(address, timeout=1))
    try:
        with pytest.raises(NbtasksError, match=address.replace(".", r"\.")):
            triple.trigger(1)
    finally:
        nbtasks.configure(executor="local")
    assert not Path(store_path).exists() or list(nbtasks.runs.list()) == []


def test_without_dask_the_error_names_the_extra(tmp_path: Path) -> None:
    script = (
        "import sys; sys.modules['distributed'] = None\n"
        "import nbtasks\n"
        "try:\n"
        "    nbtasks.DaskExecutor('tcp://127.0.0.1:8786')\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert 'pip install "nbtasks[dask]"' in out.stdout, out


def test_a_wrong_target_or_timeout_is_named() -> None:
    with pytest.raises(ValueError, match=r"target=42"):
        nbtasks.DaskExecutor(42)
    with pytest.raises(ValueError, match=r"timeout='soon'"):
        nbtasks.DaskExecutor("tcp://127.0.0.1:8786", timeout="soon")


@task(resources={"GPU": 1})
def on_gpu(seconds: float) -> int:
    time.sleep(seconds)
    return os.getppid()  # the Dask worker process hosting the attempt


@task
def where(_: object) -> int:
    return os.getppid()


def test_resources_place_runs_on_workers_that_have_them(
    gpu_cluster: CommandCluster, store_path: str
) -> None:
    gpu_pid = gpu_cluster.gpu_worker_pid()
    nbtasks.configure(
        store=store_path, workers=3, executor=nbtasks.DaskExecutor(gpu_cluster.address)
    )
    # a task's resources, and the same given at trigger time to a task without them
    gpu_runs = [on_gpu.trigger(0.2) for _ in range(3)]
    by_trigger = where.trigger(None, resources={"GPU": 1})
    plain = where.batch_trigger_and_wait([None] * 6)  # not held up by the GPU runs
    assert all(r.unwrap() != gpu_pid for r in plain.runs)
    assert [h.wait().unwrap() for h in gpu_runs] == [gpu_pid] * 3
    assert by_trigger.wait().unwrap() == gpu_pid
    assert nbtasks.runs.retrieve(by_trigger.id).resources == {"GPU": 1.0}
    # the one GPU: never two GPU attempts at once
    spans = sorted(
        (a.started_at, a.finished_at)
        for h in gpu_runs
        for a in nbtasks.runs.retrieve(h.id).attempts
    )
    assert all(prev[1] <= nxt[0] for prev, nxt in pairwise(spans)), spans


def test_a_run_needing_resources_no_worker_has_waits_without_blocking_others(
    own_cluster: Any, store_path: str
) -> None:
    nbtasks.configure(store=store_path, workers=2, executor=nbtasks.DaskExecutor(own_cluster))
    waiting = where.trigger(None, resources={"TPU": 1})
    assert [r.unwrap() > 0 for r in where.batch_trigger_and_wait([None] * 4).runs] == [True] * 4
    assert nbtasks.runs.retrieve(waiting.id).status is RunStatus.QUEUED
    waiting.cancel()
    assert waiting.wait().status is RunStatus.CANCELED


def test_the_local_executor_refuses_resources_naming_them(nb: Any) -> None:
    with pytest.raises(ValueError, match=r"resources=\{'GPU': 1\.0\}.*local executor"):
        on_gpu.trigger(0)
    with pytest.raises(ValueError, match=r"resources=\{'GPU': 2.0\}.*local executor"):
        where.trigger(None, resources={"GPU": 2})
    # A blocking wait outside a notebook waits for the final states alone: a refused
    # submit still ends it, with why.
    with pytest.raises(ValueError, match=r"resources=\{'GPU': 1\.0\}.*local executor"):
        on_gpu.trigger_and_wait(0)
    with pytest.raises(ValueError, match=r"resources=\{'GPU': 3.0\}.*local executor"):
        where.batch_trigger_and_wait([None, None], resources={"GPU": 3})
    assert list(nbtasks.runs.list()) == []
    with pytest.raises(ValueError, match=r"resources=\{'GPU': -1\} is not valid"):
        where.trigger(None, resources={"GPU": -1})
    with pytest.raises(ValueError, match=r"resources='GPU' is not valid"):
        task(resources="GPU")


def _event_log_size(cluster: Any) -> int:
    """How much nbtasks' messages weigh in the scheduler's event log (as text)."""
    from distributed import Client

    with Client(cluster, set_as_default=False) as client:
        return sum(
            len(str(msg))
            for topic, events in client.get_events().items()
            if topic.startswith("nbtasks-")
            for _, msg in events
        )


@task
def reverse(data: bytes) -> bytes:
    return data[::-1]


def test_big_payloads_and_outputs_travel_as_dask_data(dask_cluster: Any, store_path: str) -> None:
    """Past 1 MiB, a payload goes to the runner's worker as Dask data and an output comes
    back the same way: neither sits in the scheduler's event log, and neither is left on
    the cluster once read."""
    from distributed import Client

    nbtasks.configure(store=store_path, workers=2, executor=nbtasks.DaskExecutor(dask_cluster))
    try:
        data = os.urandom(3 << 20)
        assert reverse.trigger_and_wait(data).unwrap() == data[::-1]
        assert reverse.trigger_and_wait(b"small").unwrap() == b"llams"
        logged = _event_log_size(dask_cluster)
        assert logged < 200_000, logged  # the 3 MiB went elsewhere, twice
        with Client(dask_cluster, set_as_default=False) as client:

            def left() -> list[str]:
                keys = [str(k) for k in client.who_has()]
                return [k for k in keys if "payload" in k or "output" in k]

            wait_for(lambda: left() == [], "the payload and output let go on the cluster")
    finally:
        nbtasks.configure(executor="local")


def test_a_big_batch_of_quick_runs_completes(dask_cluster: Any, store_path: str) -> None:
    """Thousands of quick runs sent ahead to busy workers: Dask may deliver the messages
    between the kernel and a runner out of order (seen: 2 in 6,000), and the runner and the
    kernel put them back in order; out of order, a worker would start its runs in the wrong
    order and the engine stop with an error."""
    nbtasks.configure(store=store_path, workers=2, executor=nbtasks.DaskExecutor(dask_cluster))
    try:
        for _ in range(2):
            result = triple.batch_trigger_and_wait(list(range(3000)))
            assert result.outputs == [3 * i for i in range(3000)]
    finally:
        nbtasks.configure(executor="local")


def test_the_environment_variable_chooses_the_cluster(dask_cluster: Any, tmp_path: Path) -> None:
    """In a fresh process: NBTASKS_DASK_SCHEDULER alone puts attempts on the cluster
    (their parent is a Dask worker process); without it, on the local workers of the
    store's server."""
    script = tmp_path / "where.py"
    script.write_text(
        "import os\n"
        "import nbtasks\n"
        f"nbtasks.configure(store={str(tmp_path / 'env.duckdb')!r}, workers=1)\n"
        "@nbtasks.task\n"
        "def parent_pid(_):\n"
        "    return os.getppid()\n"
        "print(parent_pid.trigger_and_wait(None).unwrap(), os.getpid())\n"
    )
    env = dict(os.environ, NBTASKS_DASK_SCHEDULER=dask_cluster.scheduler_address)
    out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                         text=True, timeout=120, check=True)  # fmt: skip
    parent, me = map(int, out.stdout.split())
    assert parent in _dask_worker_pids(dask_cluster) and parent != me
    env.pop("NBTASKS_DASK_SCHEDULER")
    script.write_text(script.read_text().replace("env.duckdb", "local.duckdb"))
    out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                         text=True, timeout=120, check=True)  # fmt: skip
    parent, me = map(int, out.stdout.split())
    assert parent not in _dask_worker_pids(dask_cluster) and parent != me
    assert "nbtasks.service.server" in " ".join(psutil.Process(parent).cmdline())


def _dask_worker_pids(cluster: Any) -> list[int]:
    from distributed import Client

    with Client(cluster, set_as_default=False) as client:
        return list(client.run(os.getpid).values())


def test_a_tasks_function_goes_to_each_runner_once(dask_cluster: Any, store_path: str) -> None:
    """A function of 200 kB, 100 runs: it crosses the scheduler once per runner, not once
    per run (the scheduler's event log would hold 20 MB)."""

    big_constant = os.urandom(200_000)

    @task(id="uses_a_big_constant")
    def uses_a_big_constant(i: int) -> int:  # by value (a closure): 200 kB with it
        return len(big_constant) + i

    nbtasks.configure(store=store_path, workers=2, executor=nbtasks.DaskExecutor(dask_cluster))
    try:
        fn_bytes = len(uses_a_big_constant.shipping(lambda *args: "v").fn_bytes)
        assert fn_bytes > 200_000
        before = _event_log_size(dask_cluster)  # the cluster serves the whole session
        for i in range(100):
            assert uses_a_big_constant.trigger_and_wait(i).unwrap() == 200_000 + i
        logged = _event_log_size(dask_cluster) - before
        # At most ten crossings (two runners, and any that replaced them), as bytes' repr
        # (up to 4 characters a byte); once per run would be a hundred.
        assert logged < 10 * fn_bytes * 4, logged
    finally:
        nbtasks.configure(executor="local")


def test_a_killed_server_leaves_nothing_running_on_the_cluster(
    dask_cluster: Any, tmp_path: Path
) -> None:
    """SIGKILL of the process that triggered the runs leaves them running; SIGKILL of the
    store's server (which owns the engine and the Dask client): the scheduler lets its
    runners go, and each runner stops its attempt's process tree on the Dask worker's
    machine; the cluster is free for the next runs. A run a busy runner held ahead ends
    INTERRUPTED on the next server: Dask's workers cannot say whether it began."""
    script = tmp_path / "owner.py"
    script.write_text(
        "import os, sys, time\n"
        "import nbtasks\n"
        f"nbtasks.configure(store={str(tmp_path / 'k.duckdb')!r}, workers=2,\n"
        f"    executor=nbtasks.DaskExecutor({dask_cluster.scheduler_address!r}))\n"
        "@nbtasks.task\n"
        "def forever(_):\n"
        "    print(os.getpid(), flush=True)\n"
        "    time.sleep(600)\n"
        "hs = [forever.trigger(None) for _ in range(2)]\n"
        "while True:\n"
        "    runs = [nbtasks.runs.retrieve(h.id) for h in hs]\n"
        "    if all(r.attempts and r.attempts[-1].pid for r in runs):\n"
        "        print('PIDS', *[r.attempts[-1].pid for r in runs], flush=True)\n"
        "        break\n"
        "    time.sleep(0.05)\n"
        "held = forever.trigger(None)\n"  # sent ahead to a busy runner: its claim committed
        'q = "SELECT status, attempt_count FROM runs WHERE id = ?"\n'
        "while nbtasks.runs.sql(q, [held.id]).fetchall() != [('QUEUED', 1)]:\n"
        "    time.sleep(0.05)\n"
        "print('HELD', held.id, flush=True)\n"
        "time.sleep(600)\n"
    )
    owner = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout is not None
        line = ""
        while not line.startswith("PIDS"):
            line = owner.stdout.readline()
            assert line, "the owner ended before its runs executed"
        pids = [int(p) for p in line.split()[1:]]
        held = owner.stdout.readline().split()
        assert held[:1] == ["HELD"], held
        assert all(_alive(p) for p in pids)
        server = psutil.Process(server_pid(str(tmp_path / "k.duckdb")))
        owner.send_signal(signal.SIGKILL)
        owner.wait()
        assert all(_alive(p) for p in pids) and server.is_running()  # the runs go on
        server.send_signal(signal.SIGKILL)
        for pid in pids:
            wait_for(lambda pid=pid: not _alive(pid), "the attempt's tree gone", timeout=30)
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()
    # both Dask worker threads are free again: two runs execute at once here
    nbtasks.configure(
        store=str(tmp_path / "next.duckdb"), workers=2,
        executor=nbtasks.DaskExecutor(dask_cluster),
    )  # fmt: skip
    try:
        assert [r.unwrap() for r in nap.batch_trigger_and_wait([0.5, 0.5]).runs] == [0.5, 0.5]
        nbtasks.configure(store=str(tmp_path / "k.duckdb"))  # a next server of that store
        after = nbtasks.runs.retrieve(held[1])
        assert (after.status, after.attempt_count) == (RunStatus.INTERRUPTED, 1), after
        assert [a.status.value for a in after.attempts] == ["INTERRUPTED"]
    finally:
        nbtasks.configure(executor="local")
