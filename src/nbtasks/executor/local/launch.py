"""Starting a local worker process: what the first trigger does before anything else, so
its imports are kept to what that takes (the pool and the engine load meanwhile).

Workers are spawned (never forked from the kernel) as ``python -c ...`` in a new session,
with two pipes and a control block (``control.py``); every process a worker starts carries
its token in the environment (see ``pool.sweep``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from typing import TYPE_CHECKING, Any

from nbtasks.executor.local import protocol as P
from nbtasks.executor.local.control import Control
from nbtasks.executor.started import ENV as STARTED_ENV

if TYPE_CHECKING:
    from nbtasks.executor.local.proctree import TreeMeter

TOKEN_ENV = "NBTASKS_WORKER_TOKEN"
# What local workers import while they boot: unpickling a task needs its class.
WORKER_PRELOAD = ("nbtasks.client.task",)
_BOOT = "import sys; from nbtasks.executor.local.worker import main; main(sys.argv)"
_PACKAGE_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))


class WorkerProc:
    """The kernel's side of one worker process."""

    def __init__(self, popen: subprocess.Popen[bytes], cmd_fd: int, event_fd: int,
                 boot_log: Any, control: Control, token: str) -> None:  # fmt: skip
        self.id: int = popen.pid  # its WorkerId (executor.base)
        self.popen = popen
        self.pid = popen.pid
        self.cmd_fd = cmd_fd
        self.event_fd = event_fd
        self.boot_log = boot_log
        self.control = control
        self.token = token
        self.reader = P.reader_for_kernel()
        self.ready = False
        self.dying = False  # a kill was decided: it takes nothing more up
        self.closed = False  # its pipes are closed
        self.seq = 0  # the sequence number of the last attempt sent
        self.sent: dict[str, tuple[int, int | None]] = {}  # attempt id -> (seq, limit)
        self.loaded: set[str] = set()  # function keys this worker already holds
        self.outbox: list[bytes] = []  # frames written at the end of the loop's step
        self.meter: TreeMeter | None = None  # measures its tree, once a limit applies
        self.started_log: str | None = None  # where it notes attempts sent ahead (launch)

    def __repr__(self) -> str:
        return f"<worker pid={self.pid}{' dying' if self.dying else ''}>"


def launch(preload: tuple[str, ...] = (), path: list[str] | None = None,
           cwd: str | None = None, started_log: str | None = None) -> WorkerProc:  # fmt: skip
    """Start a worker process. Callable from any long-lived thread, before an engine exists
    (the first trigger starts workers first, so they boot while the engine loads); the
    worker dies with the thread that started it, so not from a short-lived one. The worker
    imports the ``preload`` modules while it boots (what unpickling tasks needs), with
    ``path`` as its ``sys.path`` and ``cwd`` as its working folder (by default this
    process's). With ``started_log``, it notes there each attempt sent ahead before its
    body begins (``executor/started.py``)."""
    cmd_r, cmd_w = os.pipe()
    event_r, event_w = os.pipe()
    control = Control.create()
    token = os.urandom(8).hex()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
    env[TOKEN_ENV] = token
    env.pop("NBTASKS_STORE", None)
    env.pop(STARTED_ENV, None)
    if started_log is not None:
        env[STARTED_ENV] = started_log
    boot_log = tempfile.TemporaryFile()
    try:
        args = [str(cmd_r), str(event_w), str(os.getpid()), str(control.fd)]
        popen = subprocess.Popen(
            [sys.executable, "-c", _BOOT, *args],
            pass_fds=(cmd_r, event_w, control.fd),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=boot_log,
            start_new_session=True,
            env=env,
        )
    except BaseException:
        for fd in (cmd_r, cmd_w, event_r, event_w):
            os.close(fd)
        control.close()
        boot_log.close()
        raise
    os.close(cmd_r)
    os.close(event_w)
    worker = WorkerProc(popen, cmd_w, event_r, boot_log, control, token)
    worker.started_log = started_log
    P.write_all(cmd_w, P.encode(P.Init(path or list(sys.path), cwd or os.getcwd(), list(preload))))
    return worker


def discard(worker: WorkerProc) -> None:
    """Kill a launched worker that no pool took charge of, and let go of its pipes."""
    from nbtasks.executor.local import treekill

    treekill.kill_tree(worker.pid)
    worker.popen.wait()
    os.close(worker.cmd_fd)
    os.close(worker.event_fd)
    worker.control.close()
    worker.boot_log.close()
