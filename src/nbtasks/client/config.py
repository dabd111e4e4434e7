"""Where the store lives, how many workers run, and this process's connection to the
store's server (``nbtasks.service``): made on first need, the server started if none runs,
given the versions of the tasks defined here, and closed."""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol

from nbtasks.client.blocking import block
from nbtasks.client.registry import registry
from nbtasks.core import context as _context
from nbtasks.core.errors import NbtasksError, NbtasksWarning

if TYPE_CHECKING:
    from nbtasks.client.task import Task
    from nbtasks.engine.state import TaskVersion
    from nbtasks.service.client import RemoteEngine

_lock = threading.Lock()
DEFAULT_IDLE_S = 300.0
RECONNECT_AFTER_S = 0.2  # after a server crash, before starting a new one
_settings: dict[str, Any] = {"store": None, "workers": None, "executor": None,
                             "max_payload": None}  # fmt: skip
_engine: Any = None  # this process's connection to its store's server
_disconnects = 0  # how many times shutdown() ran: a connect begun before one is dropped


def _workers_from(name: str, value: object) -> int:
    try:
        n = int(str(value).strip()) if isinstance(value, str) else int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        n = 0
    if isinstance(value, bool) or n < 1 or (isinstance(value, float) and n != value):
        raise ValueError(f"{name}={value!r} is not valid: use an integer >= 1")
    return n


def _notebook_path() -> str | None:
    """The running notebook's path (or name), from Jupyter or VS Code, if there is one."""
    path = os.environ.get("JPY_SESSION_NAME")
    if not path:
        main = sys.modules.get("__main__")
        path = getattr(main, "__vsc_ipynb_file__", None)
        ipython = sys.modules.get("IPython")  # not imported: not in IPython, no need to
        if path is None and ipython is not None:
            shell = ipython.get_ipython()
            path = shell.user_ns.get("__vsc_ipynb_file__") if shell else None
    return str(path) if path else None


def default_store_path() -> str:
    """``.nbtasks/runs.duckdb`` in the working directory: one store per folder, shared by
    the notebooks, scripts and the CLI started there."""
    return os.path.join(os.getcwd(), ".nbtasks", "runs.duckdb")


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


def server_idle_s() -> float:
    """How long a server with nothing to do waits before it stops: ``NBTASKS_SERVER_IDLE``
    (a duration), else 5 minutes."""
    from nbtasks.core.durations import parse_duration

    seconds = parse_duration("NBTASKS_SERVER_IDLE", os.environ.get("NBTASKS_SERVER_IDLE") or None)
    return DEFAULT_IDLE_S if seconds is None else seconds


def server_config(spawn: bool = False) -> Any:
    """What this process would start the server of its store with."""
    from nbtasks.service.settings import Config

    executor: bytes | None = None
    name = "local"
    if not _local():
        import dill

        choice = _executor_choice()
        name = repr(choice)
        try:
            executor = dill.dumps(choice)
        except Exception as exc:
            raise NbtasksError(
                f"executor={choice!r} cannot be sent to the nbtasks server ({exc}); use a "
                "callable that pickles, e.g. nbtasks.DaskExecutor('tcp://host:8786')"
            ) from None
    return Config(store_path(), chosen_workers(), executor, name, payload_cap(), list(sys.path),
                  os.getcwd(), spawn, server_idle_s())  # fmt: skip


_named: list[str] = []  # the name this process gave itself, if it did


def name_process(name: str) -> None:
    """What the server's clients list calls this process, and the origin of the runs it
    triggers (replays), e.g. ``nbtasks dashboard`` (otherwise: ``origin``)."""
    _named[:] = [name]


def origin(store: str) -> str:
    """What this process runs, as its runs record it (``Run.origin``) and its store's server
    lists its clients: a notebook (``_notebook_origin``); else ``ipython`` in an IPython
    shell; else a script's file name (``python -m pkg``: the package's name). Computed at
    each connection, not per run."""
    if _named:
        return _named[0]
    notebook = _notebook_path()
    if notebook is not None:
        return _notebook_origin(notebook, store)
    ipython = sys.modules.get("IPython")  # not imported: not in IPython, no need to
    if ipython is not None and ipython.get_ipython() is not None:
        return "ipython"
    main = getattr(sys.modules.get("__main__"), "__file__", None) or sys.argv[0]
    name = os.path.basename(main) if main else ""
    if name == "__main__.py":
        return os.path.basename(os.path.dirname(main))
    return name if name and name != "-c" else "python"


def _notebook_origin(notebook: str, store: str) -> str:
    """A notebook's path relative to the folder that holds the store's folder (the
    project's folder, for the default ``.nbtasks/runs.duckdb``) if it lies inside it, else
    its file name. (Jupyter may give a path relative to its own root: just the name then.)"""
    if os.path.isabs(notebook):
        inside = os.path.relpath(notebook, os.path.dirname(os.path.dirname(store)))
        if inside != os.pardir and not inside.startswith(os.pardir + os.sep):
            return inside
    return os.path.basename(notebook)


def prelaunch() -> None:
    """At a first trigger, before its modules load: launch the server if none runs (from
    here: its boot is what a first trigger waits for), then reach it on a thread of its
    own, while the trigger goes on."""
    if _engine is not None or _context.IN_WORKER or getattr(_background, "on", False):
        return
    from nbtasks.service.places import place_of
    from nbtasks.service.starting import Starting, begin
    from nbtasks.store.files import make_store_folder

    found: Any = None
    disconnects = _disconnects
    try:
        config = server_config(True)
        make_store_folder(os.path.dirname(config.store))  # before place_of: as connect does
        found = begin(place_of(config.store), config)
    except Exception:  # the trigger's own connect says why
        pass

    def reach() -> None:
        try:
            sock = found.wait() if isinstance(found, Starting) else found
        except Exception:  # it did not start: the trigger's own connect says why (trying
            return  # again here would leave a server starting behind a failed trigger)
        if sock is not None:
            sock.close()  # the connection is made anew, with its hello
            _connect_quietly(unless_disconnected_since=disconnects)

    threading.Thread(target=reach, name="nbtasks-connect", daemon=True).start()


def _connect_quietly(spawn: bool = True, unless_disconnected_since: int | None = None) -> None:
    """Connect ahead of a caller that will need it (its own connect raises what fails).
    Not if this process disconnected meanwhile (``shutdown``, ``configure``): that
    connection would keep the server up with no one using it."""
    try:
        get_engine(spawn, unless_disconnected_since)
    except Exception:
        pass


_background = threading.local()


@contextlib.contextmanager
def in_background() -> Iterator[None]:
    """Calls made inside, on this thread, reach a running server only. A background
    refresh (a live table's, the dashboard's) must never start one: after `nbtasks server
    stop` it would bring the server back, with no one to stop it."""
    before = getattr(_background, "on", False)  # nested: the outer one still holds after
    _background.on = True
    try:
        yield
    finally:
        _background.on = before


def get_engine(spawn: bool = False, unless_disconnected_since: int | None = None) -> Any:
    global _engine
    engine = _engine
    if engine is not None and not engine.closed:
        return engine
    with _lock:
        if _engine is not None and not _engine.closed:
            return _engine
        if unless_disconnected_since is not None and unless_disconnected_since != _disconnects:
            raise NbtasksError("this process disconnected from the server meanwhile")
        if _context.IN_WORKER:
            raise NbtasksError(
                "in a worker process, runs can be triggered and read only by task code "
                "while it executes"
            )
        from nbtasks.service.client import connect

        config = server_config(spawn)
        engine = connect(config, origin(config.store),
                         start=not getattr(_background, "on", False))  # fmt: skip
        _check_same_choices(engine, config)
        engine.on_lost = _reconnect_later
        _engine = engine
        for task_id in engine.info.get("waiting_tasks", ()):  # runs left waiting for a task
            task = registry.get(task_id)
            if task is not None:
                deploy(engine, task)
        return engine


class Follower(Protocol):
    """What follows runs live in this process (the UI's views, ``add_follower``)."""

    def wanted(self) -> bool:
        """Whether it follows runs that are not final yet."""

    def resume(self) -> None:
        """Follow them again, on this process's new connection."""


_followers: list[Follower] = []


def add_follower(follower: Follower) -> None:
    _followers.append(follower)


def _reconnect_later(lost: Any) -> None:
    """The server crashed: if this process defines tasks, start a new server and give it
    their definitions, so that their queued and delayed runs resume; if it shows live runs,
    start one too, and follow them again there (the new server settles what the crashed
    one left, e.g. its executing runs end INTERRUPTED, and the views show it)."""
    if not len(registry) and not any(f.wanted() for f in _followers):
        return

    def reconnect() -> None:
        time.sleep(RECONNECT_AFTER_S)
        if _engine is lost:
            _connect_quietly(spawn=False)
        for follower in list(_followers):
            try:
                follower.resume()
            except Exception:  # no server to follow them on: they stay as they were
                pass

    threading.Thread(target=reconnect, name="nbtasks-reconnect", daemon=True).start()


def _check_same_choices(engine: Any, config: Any) -> None:
    """Warn when the server already running has other settings than this process chose."""
    info = engine.info
    differ = []
    if config.workers is not None and info["workers"] != config.workers:
        differ.append(f"workers={info['workers']} (this process chose {config.workers})")
    if config.executor_name != info["executor"]:
        differ.append(f"executor {info['executor']} (this process chose {config.executor_name})")
    if differ:
        warnings.warn(
            f"the nbtasks server of store {engine.store_path!r} (pid {info['pid']}) already "
            f"runs with {', '.join(differ)}: its settings apply. To change them, stop it with "
            f"`nbtasks server stop --store {engine.store_path}` (its executing runs end "
            "INTERRUPTED), then trigger again",
            NbtasksWarning,
            stacklevel=4,
        )


def engine(spawn: bool = False) -> RemoteEngine:
    """This process's connection to its store's server, started if needed (``spawn``: for
    a trigger, with workers at once)."""
    eng: RemoteEngine = get_engine(spawn)
    return eng


def version_of(task: Task[Any, Any], eng: RemoteEngine | None = None) -> TaskVersion:
    """The version of ``task`` to run, registered with ``eng`` (by default this process's
    server)."""
    if _context.IN_WORKER:  # the server assigns the version of a task sent from a worker
        return task.shipping(lambda *args: "")
    eng = eng or engine(spawn=True)
    return task.shipping(lambda *args: block(eng.call("register_version", *args)), eng)


def deploy(engine: Any, task: Any) -> None:
    """Start the runs of the server that wait for ``task`` to be defined."""
    block(engine.call("deploy", version_of(task, engine)))


def task_defined(task: Any) -> None:
    """A task was (re)defined in this process: runs waiting for it may start.

    Connected to a server, its waiting runs of the task start. Not connected, a task
    defined in ``__main__`` (a notebook or script) connects if the store exists, so runs
    left waiting start when their task's cell runs again."""
    if _context.IN_WORKER:
        return
    engine = _engine
    if engine is not None and not engine.closed:
        if block(engine.call("is_waiting", task.id)):
            deploy(engine, task)
        return
    if getattr(task, "__module__", None) != "__main__" or not os.path.exists(store_path()):
        return  # (a new store's server starts at the first trigger: the store may change)
    try:
        get_engine()
    except NbtasksError as exc:  # e.g. the store is held by another program
        warnings.warn(
            f"runs of {task.id!r} left waiting in the store (if any) cannot start: {exc}",
            NbtasksWarning,
            stacklevel=3,
        )


def shutdown(stop_server: bool = False) -> None:
    """Disconnect this process from its store's server; the server and its runs go on.
    With ``stop_server``, stop the server first (its executing runs end INTERRUPTED)
    and wait until it is gone."""
    global _engine, _disconnects
    with _lock:
        engine, _engine = _engine, None
        _disconnects += 1
    if engine is None:
        return
    if stop_server and not engine.closed:
        stop(engine)
    engine.close()


def stop(engine: Any, timeout: float = 30.0) -> int | None:
    """Stop the server ``engine`` is connected to and wait until it is gone: its process
    ended and its socket answers no more (a process whose main thread ended may hold
    its sockets a while longer, e.g. a thread finishing a write). Returns its pid."""
    import psutil

    from nbtasks.service.starting import listening

    pid: int = engine.info["pid"]
    engine.on_lost = None  # a server stopped on purpose is not restarted by this process
    try:
        engine.request("stop")
    except NbtasksError:  # gone already, or its reply lost as it began stopping: wait
        pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:  # ended: gone, or a zombie its parent will reap
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.NoSuchProcess:
            break
        time.sleep(0.01)
    while listening(engine.store_path) and time.monotonic() < deadline:
        time.sleep(0.01)
    return pid


atexit.register(shutdown)
