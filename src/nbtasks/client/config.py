"""Where the store lives, how many workers run, and the engine of this process: started on
first need, given the versions of the tasks defined here, and stopped."""

from __future__ import annotations

import atexit
import os
import re
import sys
import threading
import warnings
from typing import TYPE_CHECKING, Any

from nbtasks.client.blocking import block
from nbtasks.client.registry import registry
from nbtasks.core import context as _context
from nbtasks.core.errors import NbtasksError, NbtasksWarning

if TYPE_CHECKING:
    from nbtasks.client.task import Task
    from nbtasks.engine.engine import Engine
    from nbtasks.engine.state import TaskVersion

_lock = threading.Lock()
# What local workers import while they boot: unpickling a task needs its class.
WORKER_PRELOAD = ("nbtasks.client.task",)
_settings: dict[str, Any] = {"store": None, "workers": None, "executor": None,
                             "max_payload": None}  # fmt: skip
_engine: Any = None
_early: Any = None  # a worker launched before the first engine (``prelaunch``)


def _workers_from(name: str, value: object) -> int:
    try:
        n = int(str(value).strip()) if isinstance(value, str) else int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        n = 0
    if isinstance(value, bool) or n < 1 or (isinstance(value, float) and n != value):
        raise ValueError(f"{name}={value!r} is not valid: use an integer >= 1")
    return n


def _notebook_name() -> str | None:
    """The running notebook's file name, from Jupyter or VS Code, if there is one."""
    path = os.environ.get("JPY_SESSION_NAME")
    if not path:
        main = sys.modules.get("__main__")
        path = getattr(main, "__vsc_ipynb_file__", None)
        ipython = sys.modules.get("IPython")  # not imported: not in IPython, no need to
        if path is None and ipython is not None:
            shell = ipython.get_ipython()
            path = shell.user_ns.get("__vsc_ipynb_file__") if shell else None
    if not path:
        return None
    return os.path.basename(str(path))


def default_store_path() -> str:
    """``.nbtasks/<notebook or script name>.duckdb`` in the working directory."""
    name = _notebook_name()
    if name is None:
        main_file = getattr(sys.modules.get("__main__"), "__file__", None)
        name = os.path.basename(main_file) if main_file else "default"
    stem = os.path.splitext(name)[0] or "default"
    stem = re.sub(r"[^A-Za-z0-9_.\-]+", "_", stem)
    return os.path.join(os.getcwd(), ".nbtasks", f"{stem}.duckdb")


def store_path() -> str:
    chosen = _settings["store"] or os.environ.get("NBTASKS_STORE")
    return os.path.abspath(os.path.expanduser(chosen)) if chosen else default_store_path()


def chosen_workers() -> int | None:
    """The worker count given by ``configure(workers=...)`` or ``NBTASKS_WORKERS``."""
    if _settings["workers"] is not None:
        workers: int = _settings["workers"]
        return workers
    env = os.environ.get("NBTASKS_WORKERS")
    if env:
        return _workers_from("NBTASKS_WORKERS", env)
    return None


def worker_count() -> int:
    """Local workers: as chosen, else one per core."""
    chosen = chosen_workers()
    return chosen if chosen is not None else os.cpu_count() or 1


def payload_cap() -> tuple[int, str]:
    """The payload cap in bytes, and as written: ``configure(max_payload=...)``, else
    ``NBTASKS_MAX_PAYLOAD``, else 64 MiB."""
    from nbtasks.engine.payloads import DEFAULT_MAX_PAYLOAD, max_payload_bytes

    chosen = _settings["max_payload"]
    if chosen is not None:
        return max_payload_bytes("max_payload", chosen), str(chosen)
    env = os.environ.get("NBTASKS_MAX_PAYLOAD")
    if env:
        return max_payload_bytes("NBTASKS_MAX_PAYLOAD", env), env
    return max_payload_bytes("max_payload", DEFAULT_MAX_PAYLOAD), DEFAULT_MAX_PAYLOAD


def configure(store: str | os.PathLike[str] | None = None, workers: int | None = None,
              executor: Any = None, max_payload: int | str | None = None) -> None:  # fmt: skip
    """Choose the store file, the worker count, the executor and the payload cap. Takes
    effect for the next engine: if one is running, it is shut down first (its executing
    runs end INTERRUPTED).

    ``executor`` is ``"local"`` (worker processes on this machine, the default),
    ``nbtasks.DaskExecutor(target)`` (a Dask cluster; also chosen by
    ``NBTASKS_DASK_SCHEDULER``), or a zero-argument callable returning a new object that
    implements ``nbtasks.executor.base.Executor`` (one per engine)."""
    if store is not None and not isinstance(store, (str, os.PathLike)):
        raise ValueError(f"store={store!r} is not valid: use a file path")
    if workers is not None:
        workers = _workers_from("workers", workers)
    if max_payload is not None:
        from nbtasks.engine.payloads import max_payload_bytes

        max_payload_bytes("max_payload", max_payload)  # a bad value fails here, named
    if executor is not None and executor != "local" and not callable(executor):
        raise ValueError(
            f"executor={executor!r} is not valid: use 'local' or a callable that returns an "
            "executor"
        )
    with _lock:
        if store is not None:
            _settings["store"] = os.fspath(store)
        if workers is not None:
            _settings["workers"] = workers
        if executor is not None:
            _settings["executor"] = executor
        if max_payload is not None:
            _settings["max_payload"] = max_payload
            if _engine is not None:  # a cap alone needs no new engine
                _engine.max_payload = payload_cap()
    if max_payload is None or store is not None or workers is not None or executor is not None:
        shutdown()


def _executor_choice() -> Any:
    """``"local"``, or a callable that makes the engine's executor."""
    chosen = _settings.get("executor")
    if chosen is None:
        from nbtasks.executor.dask import from_environment

        chosen = from_environment() or "local"
    return chosen


def _local() -> bool:
    chosen = _settings.get("executor")
    if chosen is None:
        return not os.environ.get("NBTASKS_DASK_SCHEDULER", "").strip()
    return bool(chosen == "local")


def prelaunch() -> None:
    """At a first trigger, before its modules and the engine's load (about 0.1 s): start a
    worker, so that it boots meanwhile. From the main thread only: a worker dies with the
    thread that launched it."""
    global _early
    if _engine is not None or _early is not None:
        return
    if _context.IN_WORKER or threading.current_thread() is not threading.main_thread():
        return
    if not _local():
        return
    from nbtasks.executor.local.launch import launch

    with _lock:
        if _engine is None and _early is None:
            _early = launch(WORKER_PRELOAD)


def get_engine(spawn: bool = False) -> Any:
    global _engine, _early
    engine = _engine
    if engine is not None and not engine.closed:
        return engine
    with _lock:
        if _engine is not None and not _engine.closed:
            return _engine
        if _context.IN_WORKER:
            raise NbtasksError(
                "in a worker process, runs can be triggered and read only by task code "
                "while it executes"
            )
        path, size, cap = store_path(), chosen_workers(), payload_cap()
        launched = []
        if _early is not None:
            launched, _early = [_early], None
        elif spawn and _local():  # a first worker boots while DuckDB... load
            from nbtasks.executor.local.launch import launch

            launched = [launch(WORKER_PRELOAD)]
        from nbtasks.engine.engine import Engine

        if _local():
            from nbtasks.executor.local.pool import LocalExecutor

            executor = LocalExecutor(launched, WORKER_PRELOAD)
        else:
            executor = _executor_choice()()  # a cluster's executor knows its size
        if size is None:
            size = getattr(executor, "size_hint", None) or worker_count()
        engine = _engine = Engine(path, size, executor, spawn)
        engine.max_payload = cap

        def own_definition(task_id: str) -> Any:
            task = registry.get(task_id)
            return task.shipping(engine.version_for, engine) if task is not None else None

        engine.resolve_task = own_definition
        for task_id in list(engine.waiting_tasks):  # runs an earlier kernel left waiting
            task = registry.get(task_id)
            if task is not None:
                deploy(engine, task)
        return engine


def engine(spawn: bool = False) -> Engine:
    """This process's engine, started if needed (``spawn``: for a trigger)."""
    eng: Engine = get_engine(spawn)
    return eng


def version_of(task: Task[Any, Any], eng: Engine | None = None) -> TaskVersion:
    """The version of ``task`` to run, registered with ``eng`` (by default this process's
    engine)."""
    if _context.IN_WORKER:  # the kernel assigns the version of a task sent from a worker
        return task.shipping(lambda *args: "")
    eng = eng or engine(spawn=True)
    return task.shipping(lambda *args: block(eng.call(eng.register_version, *args)), eng)


def deploy(engine: Any, task: Any) -> None:
    """Start the runs of ``engine`` that wait for ``task`` to be defined."""
    block(engine.call(engine.deploy, version_of(task, engine)))


def task_defined(task: Any) -> None:
    """A task was (re)defined in this process: runs waiting for it may start.

    With an engine running, its waiting runs start. Without one, a task defined in
    ``__main__`` (a notebook or script) opens the store if it exists, so runs left waiting
    by an earlier kernel start when their task's cell runs again."""
    if _context.IN_WORKER:
        return
    engine = _engine
    if engine is not None and not engine.closed:
        if task.id in engine.waiting_tasks:
            deploy(engine, task)
        return
    if getattr(task, "__module__", None) == "__main__" and os.path.exists(store_path()):
        try:
            get_engine()
        except NbtasksError as exc:  # e.g. the store is held by another process
            warnings.warn(
                f"runs of {task.id!r} left waiting in the store (if any) cannot start: {exc}",
                NbtasksWarning,
                stacklevel=3,
            )


def shutdown() -> None:
    """Stop this process's engine: executing runs end INTERRUPTED, workers are killed."""
    global _engine, _early
    with _lock:
        engine, _engine = _engine, None
        early, _early = _early, None
    if engine is not None:
        engine.close()
    if early is not None:  # launched by a first trigger that failed before the engine
        from nbtasks.executor.local.launch import discard

        discard(early)


atexit.register(shutdown)
