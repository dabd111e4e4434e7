"""The executor seam: what the engine asks of whatever executes attempts, and what it hears.

Requests are methods of ``Executor``; what it hears back are typed events (named tuples:
cheap to make, one per message of a worker).

The engine owns every run and decides what runs where and when; an executor only runs
attempts on its workers and reports what happened, as typed events, on the engine's loop
thread. Every request that can race with the worker is answered, and the engine never
assumes the answer:

- ``start(worker, attempt, ahead=False)`` on an idle worker: the attempt starts unless the
  worker is lost first. With ``ahead=True`` on a busy worker, the worker starts it once
  what it has ends, and says so with ``Started``.
- ``take_back(worker, attempt_id)`` for an attempt sent ahead: answered by exactly one of
  ``Dropped`` (it never starts) or ``Started`` (it started before the worker heard), or by
  ``WorkerLost`` without a ``Started`` before it (it never started).
- ``kill(worker, attempt_id)``: answered by ``KillDone(killed=True)`` when the attempt was
  running or not yet started (the worker and everything its attempt started are then torn
  down; ``WorkerLost`` follows once they are gone), or ``KillDone(killed=False)`` when the
  attempt had already ended (its ``Finished`` is on the way or came already; the worker
  goes on). A kill never hits anything but that attempt.
- A worker's capacity is held from a start until ``Finished`` or ``WorkerLost``: an attempt
  being killed still counts until its processes are gone.

The local process pool (``executor.local``) is the first executor behind this seam.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

if TYPE_CHECKING:  # asyncio costs 35 ms of imports, on the way to a first worker's launch
    import asyncio

WorkerId = int


class AttemptSpec(NamedTuple):
    """Everything a worker needs to execute one attempt."""

    attempt_id: str
    run_id: str
    task_id: str
    number: int
    version: str | None
    fn_key: str  # a worker loads each function key once
    fn_bytes: bytes
    payload: bytes
    tags: tuple[str, ...] = ()
    metadata: dict[str, Any] | None = None
    memory_limit: int | None = None  # bytes, for the attempt's whole process tree
    memory_limit_text: str | None = None  # as the user wrote it, for messages


# -- events, executor -> engine ---------------------------------------------------------


class WorkerReady(NamedTuple):
    worker: WorkerId
    pid: int | None


class WorkerLost(NamedTuple):
    """The worker and every process its attempts started are gone. Without an exit code
    and a signal (a worker on a machine that went away, say), ``log`` says why."""

    worker: WorkerId
    exit_code: int | None
    signal: int | None
    log: str  # the end of what the worker wrote itself (why it failed to boot, say)


class Started(NamedTuple):
    """An attempt sent ahead started (its body runs, or is about to)."""

    worker: WorkerId
    attempt_id: str


class Dropped(NamedTuple):
    """An attempt taken back will never start."""

    worker: WorkerId
    attempt_id: str


class KillDone(NamedTuple):
    worker: WorkerId
    attempt_id: str
    killed: bool  # False: the attempt had ended already


class Finished(NamedTuple):
    """An attempt's body returned or raised (or could not be loaded)."""

    worker: WorkerId
    attempt_id: str
    outcome: str  # "completed" | "failed" | "aborted" | "system_failure" | "oom"
    output: bytes | None
    output_preview: str
    error: dict[str, str] | None
    exc: bytes | None  # the pickled exception, when it can be rebuilt
    stdout: str
    stderr: str
    took: float  # seconds the body ran
    rss: int | None = None  # "oom": the memory in use when the limit was hit


class OutOfMemory(NamedTuple):
    """The attempt's process tree passed its memory limit; it is being killed."""

    worker: WorkerId
    attempt_id: str
    rss: int  # resident bytes of the tree when it was caught


class Log(NamedTuple):
    worker: WorkerId
    attempt_id: str
    stream: str  # "stdout" | "stderr"
    text: str


class Display(NamedTuple):
    worker: WorkerId
    attempt_id: str
    bundle: dict[str, Any]


class Metadata(NamedTuple):
    worker: WorkerId
    attempt_id: str
    op: str
    key: str
    value: Any


class Call(NamedTuple):
    """Task code calls the engine (a nested trigger, a wait...); answered with ``reply``."""

    worker: WorkerId
    attempt_id: str
    request_id: int
    op: str
    args: tuple[Any, ...]


Event = (
    WorkerReady | WorkerLost | Started | Dropped | KillDone | Finished | OutOfMemory | Log
    | Display | Metadata | Call
)  # fmt: skip
Sink = Callable[[Event], None]


class Executor(Protocol):
    """Runs attempts on workers; every method is called on the engine's loop thread, and
    events are delivered there through the sink given to ``open``."""

    #: what attempts report about their process: "pid", "exit_code", "signal"
    capabilities: frozenset[str]
    #: whether ``spawn(resources)`` places a worker where those resources are
    accepts_resources: bool
    #: how long a request takes to reach a worker and its answer to come back (seconds,
    #: about): what is sent ahead to a busy worker covers it
    round_trip_s: float

    def open(self, loop: asyncio.AbstractEventLoop, sink: Sink) -> list[WorkerId]:
        """Bind to the engine's loop; return the workers already booting (launched before
        the engine existed): ``WorkerReady`` follows for each."""
        ...

    def boot_slots(self) -> int:
        """How many workers may boot at once."""
        ...

    def note_starts(self, path: str) -> bool:
        """Have workers note each attempt sent ahead in the started log at ``path`` before
        its body begins (``executor/started.py``): True if they will, False if they cannot
        (workers on other machines). Called before ``open``."""
        ...

    def room_for(self, resources: dict[str, float]) -> int:
        """How many workers started for ``resources`` can run at once (0: none can start
        now; asked again as runs come and go)."""
        ...

    def spawn(self, resources: dict[str, float] | None = None) -> WorkerId:
        """Start a worker (on a machine with ``resources``): ``WorkerReady`` follows, or
        ``WorkerLost`` if it fails."""
        ...

    def start(self, worker: WorkerId, attempt: AttemptSpec, ahead: bool = False) -> None: ...

    def take_back(self, worker: WorkerId, attempt_id: str) -> None: ...

    def kill(self, worker: WorkerId, attempt_id: str) -> None: ...

    def reply(self, worker: WorkerId, request_id: int, ok: bool, value: Any) -> None: ...

    def check(self) -> None:
        """Raise ``NbtasksError`` naming the cause if attempts cannot be run now (a cluster
        that cannot be reached, say): called before runs are created."""
        ...

    def frozen(self, worker: WorkerId, frozen: bool) -> None:
        """The worker's attempt became FROZEN (waits on children, its capacity given up to
        a spare worker), or thawed."""
        ...

    def retire(self, worker: WorkerId) -> None:
        """Stop an idle worker (``WorkerLost`` follows)."""
        ...

    def close(self) -> None:
        """Kill every worker at once (shutdown); no events follow."""
        ...
