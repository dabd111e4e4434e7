"""``@task`` and ``Task``: a function that can be triggered as durable runs."""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import sys
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar, overload

from nbtasks.client.blocking import run_in_thread
from nbtasks.client.config import prelaunch, task_defined
from nbtasks.client.handles import BatchHandle, RunHandle
from nbtasks.client.registry import register
from nbtasks.core.durations import parse_duration, parse_memory
from nbtasks.core.ids import check_task_id
from nbtasks.core.models import BatchItem, BatchResult, Result
from nbtasks.core.options import Queue, Retry, check_resources, coerce_queue, coerce_retry
from nbtasks.engine.state import TaskVersion

P = TypeVar("P")
R = TypeVar("R")
TASK_OPTIONS = ("id", "retry", "max_duration", "memory_limit", "queue", "ttl", "resources")


def _check_option_names(options: dict[str, Any]) -> None:
    """Refuse an option ``@task`` does not take, naming it (and saying so for a trigger
    option, which belongs on ``.trigger(...)``)."""
    for name, value in options.items():
        if name in TASK_OPTIONS:
            continue
        from nbtasks.client.specs import OPTIONS as TRIGGER_OPTIONS  # only on a mistake

        allowed = ", ".join(TASK_OPTIONS)
        if name in TRIGGER_OPTIONS:
            raise TypeError(
                f"{name}={value!r} is a trigger option, not a task option: pass it to "
                f".trigger(payload, {name}=...) (or runs.trigger); the task options are: " + allowed
            )
        raise TypeError(f"unknown task option {name}={value!r}; the task options are: {allowed}")


def _source_of(fn: Callable[..., Any]) -> str:
    try:
        return inspect.getsource(fn)
    except (OSError, TypeError):
        code = getattr(fn, "__code__", None)
        if code is None:
            return repr(fn)
        return repr((code.co_code, code.co_consts, code.co_names, code.co_varnames))


class Task(Generic[P, R]):
    """A function registered as a task. Calling it runs it in-process, without a run."""

    def __init__(
        self,
        fn: Callable[[P], R],
        *,
        id: str | None = None,
        retry: Retry | int | None = None,
        max_duration: float | str | Any = None,
        memory_limit: int | str | None = None,
        queue: Queue | str | None = None,
        ttl: float | str | Any = None,
        resources: dict[str, float] | None = None,
        source: str | None = None,
    ) -> None:
        if not callable(fn):
            raise TypeError(f"@task needs a function, got {fn!r}")
        task_id = fn.__name__ if id is None else id
        self.fn = fn
        self.id: str = task_id
        (self.retry, self.max_duration_s, self.memory_limit, self.queue, self.ttl_s) = (
            _check_options(task_id, retry, max_duration, memory_limit, queue, ttl)
        )
        self.memory_limit_text = memory_limit if isinstance(memory_limit, str) else None
        self.resources = check_resources(resources)
        self.source = source if source is not None else _source_of(fn)
        self.code_hash = hashlib.sha256(self.source.encode()).hexdigest()[:32]
        # (store, version shipped, fingerprint of the function then)
        self._shipped: tuple[object, TaskVersion, Any] | None = None
        self._look_like(fn)
        register(self)
        task_defined(self)

    def _look_like(self, fn: Callable[[P], R]) -> None:
        """Carry the function's name, module and docstring, as functools.wraps does."""
        self.__doc__ = fn.__doc__
        self.__name__ = getattr(fn, "__name__", self.id)
        self.__qualname__ = getattr(fn, "__qualname__", self.id)
        self.__module__ = getattr(fn, "__module__", "__main__")
        self.__wrapped__ = fn

    def __call__(self, payload: P) -> R:
        return self.fn(payload)

    def __repr__(self) -> str:
        return f"Task({self.id!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        module = self.__module__
        if (
            module != "__main__"
            and getattr(sys.modules.get(module), self.__qualname__, None) is self
        ):
            return (_task_by_reference, (module, self.__qualname__))
        from nbtasks.core.sources import sources_of

        options = (self.retry, self.max_duration_s, self.memory_limit, self.queue, self.ttl_s,
                   self.resources)  # fmt: skip
        return (_task_by_value, (self.fn, self.id, options, sources_of(self.fn)))

    def options_json(self) -> str:
        return json.dumps(
            {
                "retry": None if self.retry is None else repr(self.retry),
                "max_duration_s": self.max_duration_s,
                "memory_limit": self.memory_limit,
                "queue": None if self.queue is None else self.queue.name,
                "ttl_s": self.ttl_s,
                "resources": self.resources,
            },
            sort_keys=True,
        )

    def shipping(self, register: Callable[[str, str, str, bytes, str], str],
                 store: object = None) -> TaskVersion:  # fmt: skip
        """The version to send to workers, with this definition's current globals.

        ``register`` records the version in ``store`` (an engine); the result is reused
        while the serialised function and the store stay the same. The function is not
        serialised again while its fingerprint (``_fingerprint``) says nothing it uses
        changed."""
        from nbtasks.core.fingerprint import fingerprint
        from nbtasks.core.serialize import dumps_checked

        cached = self._shipped
        mark = fingerprint(self.fn) if self.__module__ == "__main__" else None
        if cached is not None and cached[0] is store and mark is not None and cached[2] == mark:
            return cached[1]
        fn_bytes = dumps_checked(f"task {self.id!r}", self)
        fn_key = hashlib.blake2b(fn_bytes, digest_size=16).hexdigest()
        if cached is not None and cached[0] is store and cached[1].fn_key == fn_key:
            self._shipped = (store, cached[1], mark)
            return cached[1]
        version = register(self.id, self.code_hash, self.source, fn_bytes, self.options_json())
        shipped = TaskVersion(
            self.id, version, fn_key, fn_bytes, self.retry, self.memory_limit,
            self.max_duration_s, self.ttl_s, self.queue.name if self.queue else None,
            self.queue.concurrency_limit if self.queue else None,
            getattr(self, "memory_limit_text", None), getattr(self, "resources", None),
        )  # fmt: skip
        self._shipped = (store, shipped, mark)
        return shipped

    # -- triggering (implemented in client.triggers, loaded after ``prelaunch``) ------------

    def trigger(self, payload: P, **options: Any) -> RunHandle[R]:
        """Create a run; returns once it is stored, without waiting for it to execute."""
        prelaunch()
        from nbtasks.client.triggers import trigger

        return trigger(self, payload, options)

    def trigger_and_wait(self, payload: P, **options: Any) -> Result[R]:
        """Create a run and block until it is final."""
        prelaunch()
        from nbtasks.client.triggers import trigger_and_wait

        return trigger_and_wait(self, payload, options)

    def batch_trigger(self, items: Iterable[P | BatchItem], **options: Any) -> BatchHandle[R]:
        """Create one run per item; returns once they are stored."""
        prelaunch()
        from nbtasks.client.triggers import batch_trigger

        return batch_trigger(self, items, options)

    def batch_trigger_and_wait(
        self, items: Iterable[P | BatchItem], **options: Any
    ) -> BatchResult[R]:
        """Create one run per item and block until all are final; results in item order."""
        prelaunch()
        from nbtasks.client.triggers import batch_trigger_and_wait

        return batch_trigger_and_wait(self, items, options)

    async def atrigger(self, payload: P, **options: Any) -> RunHandle[R]:
        return await run_in_thread(self.trigger, payload, **options)

    async def atrigger_and_wait(self, payload: P, **options: Any) -> Result[R]:
        handle = await self.atrigger(payload, **options)
        return await handle.await_result()

    async def abatch_trigger(
        self, items: Iterable[P | BatchItem], **options: Any
    ) -> BatchHandle[R]:
        return await run_in_thread(self.batch_trigger, list(items), **options)

    async def abatch_trigger_and_wait(
        self, items: Iterable[P | BatchItem], **options: Any
    ) -> BatchResult[R]:
        handle = await self.abatch_trigger(items, **options)
        return await handle.await_result()


def _check_options(
    id: str | None = None,
    retry: Retry | int | None = None,
    max_duration: Any = None,
    memory_limit: Any = None,
    queue: Queue | str | None = None,
    ttl: Any = None,
    resources: Any = None,
) -> tuple[Retry | None, float | None, int | None, Queue | None, float | None]:
    if id is not None:
        check_task_id(id)
    check_resources(resources)
    return (
        coerce_retry(retry),
        parse_duration("max_duration", max_duration),
        parse_memory("memory_limit", memory_limit),
        coerce_queue(queue),
        parse_duration("ttl", ttl),
    )


def _task_by_reference(module: str, qualname: str) -> Task[Any, Any]:
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj  # type: ignore[no-any-return]


def _task_by_value(fn: Callable[[Any], Any], task_id: str, options: tuple[Any, ...],
                   sources: dict[str, str] | None = None) -> Task[Any, Any]:  # fmt: skip
    """Rebuild a notebook-defined task in a worker, without registering it there; its
    cells' text goes to ``linecache``, so that tracebacks show their lines."""
    if sources:
        from nbtasks.core.sources import register

        register(sources)
    t: Task[Any, Any] = Task.__new__(Task)
    t.fn, t.id, t.source, t.code_hash, t._shipped = fn, task_id, "", "", None
    (t.retry, t.max_duration_s, t.memory_limit, t.queue, t.ttl_s, t.resources) = options
    t._look_like(fn)
    return t


@overload
def task(fn: Callable[[P], R], /) -> Task[P, R]: ...
@overload
def task(
    *,
    id: str | None = None,
    retry: Retry | int | None = None,
    max_duration: float | str | Any = None,
    memory_limit: int | str | None = None,
    queue: Queue | str | None = None,
    ttl: float | str | Any = None,
    resources: dict[str, float] | None = None,
) -> Callable[[Callable[[P], R]], Task[P, R]]: ...
def task(fn: Any = None, /, **options: Any) -> Any:
    """Make a function a task: ``@task`` or ``@task(id=..., retry=Retry(...), ...)``."""
    _check_option_names(options)
    if fn is not None:
        return Task(fn, **options)

    def decorate(f: Callable[[P], R]) -> Task[P, R]:
        return Task(f, **options)

    _check_options(**options)  # a mistake points at the decorator line
    return decorate
