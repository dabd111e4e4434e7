"""A local worker process: executes one attempt at a time for the kernel that spawned it.

Started by the pool (``pool.py``) in a new session, with its command and event pipes and a
small control block shared with the kernel (``control.py``). The worker is a child
subreaper, so every process its attempts start, even one that double-forks or calls
``setsid()``, stays its descendant and is found and killed with it.

- An attempt sent ahead is answered once: ``Dropped`` if the kernel took it back before the
  worker got to it, else ``Started``; the choice is made under one lock (``_claim``).
- While an attempt's body runs, its sequence number is in the control block, so the kernel
  can tell, with the worker stopped, whether a kill still hits that attempt.
- An attempt's leftover processes are killed when it ends, so nothing of one attempt
  outlives it into the next.
- A ``memory_limit`` is enforced from outside: the kernel samples the whole tree's resident
  memory. Inside, a soft ``RLIMIT_DATA`` of the data in use plus twice the limit is a
  backstop, so one huge allocation fails with ``MemoryError`` at once (reported as out of
  memory) before it is even touched.
- When the kernel goes away (the command pipe ends, or the parent-death signal fires) the
  worker kills its whole tree, itself last.
"""

from __future__ import annotations

import builtins
import ctypes
import json
import os
import pickle
import queue
import signal
import sys
import threading
import time
from typing import Any

from nbtasks.core import context as _context
from nbtasks.core.errors import AbortRun
from nbtasks.core.sources import format_error
from nbtasks.executor import started
from nbtasks.executor.local import memlimit, proctree, treekill
from nbtasks.executor.local import protocol as P
from nbtasks.executor.local.capture import Capture, mime_bundle, on_ipython
from nbtasks.executor.local.control import Control

DISPLAY_CAP = 1 << 20  # bytes of one display(...) bundle
BACKSTOP = 2  # RLIMIT_DATA: the data in use at the start plus this many times memory_limit
_PR_SET_PDEATHSIG = 1


def _kill_tree_and_exit(*_: object) -> None:
    """The kernel is gone: kill everything this worker's attempts started, then itself."""
    try:
        treekill.kill_tree(os.getpid(), include_root=False, timeout=2.0)
    finally:
        os.killpg(os.getpgrp(), signal.SIGKILL)


def _die_with_parent(parent_pid: int) -> None:
    signal.signal(signal.SIGUSR2, _kill_tree_and_exit)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGUSR2, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the pipe watch below still applies
        pass
    if os.getppid() != parent_pid:
        _kill_tree_and_exit()


def _error_info(exc: BaseException) -> dict[str, str]:
    t = type(exc)
    name = (
        t.__qualname__
        if t.__module__ in ("builtins", "__main__")
        else f"{t.__module__}.{t.__qualname__}"
    )
    return {
        "type": name,
        "message": str(exc),
        "traceback": format_error(exc),  # the task's frames, not the worker's
    }


def _exc_bytes(exc: BaseException) -> bytes | None:
    from nbtasks.core.serialize import dumps, loads

    try:
        data = dumps(exc)
        loads(data)  # only ship what can be rebuilt
        return data
    except Exception:
        return None


class Worker:
    def __init__(self, cmd_fd: int, event_fd: int, control: Control) -> None:
        self.cmd_fd = cmd_fd
        self.event_fd = event_fd
        self.control = control
        self.write_lock = threading.Lock()
        self.functions: dict[str, Any] = {}
        self.inbox: queue.SimpleQueue[P.ToWorker | None] = queue.SimpleQueue()
        self.replies: dict[int, tuple[bool, bytes]] = {}
        self.replies_cv = threading.Condition()
        self.request_ids = 0
        # attempts sent ahead and not yet taken up, and those the kernel took back: an
        # attempt leaves ``waiting`` exactly once, started (_claim) or dropped (_drop)
        self.claim_lock = threading.Lock()
        self.waiting: set[str] = set()
        self.dropped: set[str] = set()
        self.capture = Capture()
        self.subreaper = proctree.become_subreaper()
        self.attempt_id = ""  # of the attempt executing, for messages from task code
        # Where attempts sent ahead are noted, if anywhere: opened at the first (the engine
        # makes the log once it opened the store, perhaps after this worker booted).
        self.notes_path = os.environ.get(started.ENV)
        self.notes: int | None = None
        builtins.display = self.display  # type: ignore[attr-defined]
        on_ipython(self.publish)  # IPython's display(...), once IPython is imported

    # -- messages to the kernel ------------------------------------------------------------

    def send(self, message: P.ToKernel) -> None:
        self.send_all([message])

    def send_all(self, messages: list[P.ToKernel]) -> None:
        """Send messages in one write (the kernel reads them in one wake-up)."""
        data = b"".join(P.encode(m) for m in messages)
        with self.write_lock:
            P.write_all(self.event_fd, data)

    def display(self, *objs: object, **_: object) -> None:
        """``display(obj)`` in task code (without IPython): the object's MIME bundle."""
        for obj in objs:
            if _context._current is None:
                print(repr(obj))
            else:
                self.publish(mime_bundle(obj))

    def publish(self, bundle: dict[str, Any]) -> None:
        """A MIME bundle displayed by the attempt executing: sent to the kernel."""
        current = _context._current
        if current is None:
            print(bundle.get("text/plain", ""))
            return
        text = json.dumps(bundle, default=str)
        if len(text) > DISPLAY_CAP:
            text = json.dumps({"text/plain": str(bundle.get("text/plain", ""))[:DISPLAY_CAP]})
        self.send(P.Show(current.ctx.attempt_id, json.loads(text)))

    def _send_context(self, message: tuple[Any, ...]) -> None:
        """What ``nbtasks.metadata`` sends: ("metadata", attempt_id, op, key, value)."""
        _, attempt_id, op, key, value = message
        self.send(P.Meta(attempt_id, op, key, value))

    def call(self, op: str, args: tuple[Any, ...]) -> Any:
        """Send a call to the kernel's engine and block until its reply."""
        current = _context._current
        assert current is not None
        with self.replies_cv:
            self.request_ids += 1
            request_id = self.request_ids
        data = pickle.dumps(args, protocol=pickle.HIGHEST_PROTOCOL)
        self.send(P.Ask(current.ctx.attempt_id, request_id, op, data))
        with self.replies_cv:
            while request_id not in self.replies:
                self.replies_cv.wait()
            ok, value = self.replies.pop(request_id)
        result = pickle.loads(value)
        if not ok:
            raise result
        return result

    # -- commands from the kernel ------------------------------------------------------------

    def _read_commands(self) -> None:
        reader = P.reader_for_worker()
        try:
            while data := os.read(self.cmd_fd, P.READ_BYTES):
                for message in reader.feed(data):  # the kernel writes several at once
                    if isinstance(message, P.Reply):
                        with self.replies_cv:
                            self.replies[message.request_id] = (message.ok, message.value)
                            self.replies_cv.notify_all()
                    elif isinstance(message, P.Drop):
                        self._drop(message.attempt_id)
                    else:
                        if isinstance(message, P.Run) and message.ahead:
                            with self.claim_lock:
                                self.waiting.add(message.attempt_id)
                        self.inbox.put(message)
        except OSError:
            pass
        _kill_tree_and_exit()  # the kernel is gone: take every process of this worker along

    def _drop(self, attempt_id: str) -> None:
        """The kernel takes back an attempt sent ahead: answered at once if it is still
        waiting (the main loop then skips it); else it started, and said so already."""
        with self.claim_lock:
            if attempt_id not in self.waiting:
                return
            self.waiting.discard(attempt_id)
            self.dropped.add(attempt_id)
        self.send(P.Dropped(attempt_id))

    def _note(self, run: P.Run, done: P.ToKernel | None = None) -> None:
        """Before an attempt sent ahead may begin: note it in the started log. A worker
        that cannot exits first (after reporting ``done``, the attempt that just ended):
        its attempt never began, as a worker lost without ``Started`` says."""
        if not run.ahead or not self.notes_path:
            return
        if self.notes is None:
            self.notes = started.open_for_notes(self.notes_path)
        if started.note(self.notes, run.run_id, run.number):
            return
        if done is not None:
            self.send(done)
        sys.stderr.write(f"nbtasks worker: cannot note attempt {run.attempt_id} in the started "
                         "log: exiting before it begins\n")  # fmt: skip
        sys.stderr.flush()
        os._exit(75)

    def _claim(self, run: P.Run) -> bool:
        """Take up an attempt: False if it was dropped. A kill decided for this worker
        (the control block's ``doomed``) means no attempt starts any more."""
        if self.control.doomed:
            os.killpg(os.getpgrp(), signal.SIGKILL)  # the kernel is killing this worker
        with self.claim_lock:
            if run.attempt_id in self.dropped:
                self.dropped.discard(run.attempt_id)
                return False
            self.waiting.discard(run.attempt_id)
            self.control.start(run.seq)
            return True

    # -- the main loop ---------------------------------------------------------------------

    def serve(self) -> None:
        threading.Thread(target=self._read_commands, daemon=True, name="nbtasks-cmd").start()
        threading.Thread(
            target=self.capture.stream, args=(self._send_log,), daemon=True, name="nbtasks-logs"
        ).start()
        taken: P.ToWorker | None = self.inbox.get()  # Init, sent with the launch
        if isinstance(taken, P.Init):  # set up and import before saying ready, so that
            self._init(taken)  # a second worker's boot does not compete with this
            taken = None
        self.send(P.Ready(os.getpid()))
        claimed = ""  # the attempt sent ahead already taken up (its Started sent)
        while (message := taken or self.inbox.get()) is not None:
            taken = None
            if isinstance(message, P.Run):
                run = message
                if run.attempt_id != claimed:
                    self._note(run)
                if run.attempt_id != claimed and not self._claim(run):
                    self._learn_quietly(run)
                    continue
                if run.ahead and run.attempt_id != claimed:
                    self.send(P.Started(run.attempt_id))
                done = self.run_attempt(run)
                # The next attempt is often here already (sent ahead): report this one's
                # end and that one's start in one write, so the kernel wakes once.
                try:
                    taken = self.inbox.get_nowait()
                except queue.Empty:
                    taken = None
                if isinstance(taken, P.Run) and taken.ahead:
                    self._note(taken, done)
                    if self._claim(taken):
                        claimed = taken.attempt_id
                        self.send_all([done, P.Started(claimed)])
                        continue
                    self._learn_quietly(taken)  # dropped: skipped
                    taken = None
                self.send(done)
            elif isinstance(message, P.Init):
                self._init(message)
            elif isinstance(message, P.Exit):
                return

    def _init(self, init: P.Init) -> None:
        sys.path[:] = init.sys_path
        os.chdir(init.cwd)
        for name in init.preload:
            __import__(name)

    def _send_log(self, attempt_id: str, stream: str, text: str) -> None:
        self.send(P.Log(attempt_id, stream, text))

    def _learn_quietly(self, run: P.Run) -> None:
        """A dropped attempt: the kernel counts on this worker knowing its function now."""
        try:
            self.learn_function(run.fn_key, run.fn_bytes)
        except Exception:
            pass  # the next attempt of it reports the failure

    def learn_function(self, fn_key: str, fn_bytes: bytes | None) -> None:
        """Keep a task function sent with an attempt; later attempts come without it."""
        if fn_bytes is not None:
            from nbtasks.core.serialize import loads

            self.functions[fn_key] = loads(fn_bytes)

    def _end_attempt(self) -> None:
        """Kill what the attempt left running (nothing of it outlives it), reap, and clear
        the control block: from now on a kill of this attempt finds it ended."""
        try:  # one system call tells whether this worker has any child at all
            os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            pass
        else:
            treekill.kill_tree(os.getpid(), include_root=False)
            treekill.reap_children()
        self.control.end()

    def run_attempt(self, run: P.Run) -> P.Done:
        """Execute one attempt; return its ``Done`` message (the caller sends it)."""
        from nbtasks.core.serialize import dumps, loads, preview

        attempt_id = run.attempt_id

        def done(
            outcome: str,
            output: bytes | None = None,
            out_preview: str = "",
            error: dict[str, str] | None = None,
            exc: bytes | None = None,
            rss: int | None = None,
        ) -> P.Done:
            self._end_attempt()
            stdout, stderr = self.capture.collect()
            took = time.perf_counter() - began
            return P.Done(attempt_id, outcome, output, out_preview, error, exc, stdout, stderr,
                          took, rss)  # fmt: skip

        began = time.perf_counter()  # reset once the function and payload are loaded
        self.capture.reset(attempt_id)
        try:
            self.learn_function(run.fn_key, run.fn_bytes)
            fn = self.functions[run.fn_key]
        except BaseException as exc:
            info = _error_info(exc)
            info["message"] = f"the worker could not load the task function: {info['message']}"
            return done("system_failure", error=info)
        try:
            payload = loads(run.payload)
        except BaseException as exc:
            info = _error_info(exc)
            info["message"] = f"the worker could not load the payload: {info['message']}"
            return done("system_failure", error=info)

        began = time.perf_counter()
        task_ctx = _context.TaskContext(
            run_id=run.run_id,
            task_id=run.task_id,
            attempt_number=run.number,
            version=run.version or "",
            tags=tuple(run.tags),
            attempt_id=attempt_id,
        )
        _context._install(
            _context._Current(task_ctx, dict(run.metadata), self._send_context, self.call)
        )
        # The backstop leaves room (reserved, untouched memory counts against it, thread
        # stacks say): the kernel's sampling of resident memory is the limit itself.
        limit = memlimit.limit_data(BACKSTOP * run.memory_limit) if run.memory_limit else None
        try:
            result = fn(payload)
        except AbortRun as exc:
            return done("aborted", error=_error_info(exc), exc=_exc_bytes(exc))
        except MemoryError as exc:
            if limit is None:
                return done("failed", error=_error_info(exc), exc=_exc_bytes(exc))
            limit()
            return done("oom", error=_error_info(exc), rss=proctree.tree_rss(os.getpid()))
        except BaseException as exc:
            return done("failed", error=_error_info(exc), exc=_exc_bytes(exc))
        finally:
            if limit is not None:
                limit()
            _context._install(None)
        try:
            output = dumps(result)
        except Exception as exc:
            info = _error_info(exc)
            info["message"] = (
                f"the task returned {type(result).__qualname__}, which dill cannot "
                f"serialise: {info['message']}"
            )
            return done("failed", error=info)
        return done("completed", output, preview(result))


def main(argv: list[str]) -> None:
    cmd_fd, event_fd, parent_pid, control_fd = (int(a) for a in argv[1:5])
    for fd in (cmd_fd, event_fd, control_fd):
        os.set_inheritable(fd, False)
    _die_with_parent(parent_pid)
    _context.IN_WORKER = True
    from nbtasks.core import serialize as _serialize  # noqa: F401  (loads task functions)

    Worker(cmd_fd, event_fd, Control.attach(control_fd)).serve()


if __name__ == "__main__":
    main(sys.argv)
