"""Find, measure, freeze and kill a worker's whole process tree (Linux, stdlib only).

Why: a worker runs in its own session and used to be stopped with ``os.killpg``. Anything
a task starts that leaves the worker's process group escapes that: a
``subprocess.Popen(..., start_new_session=True)``, or a daemon-style double fork +
``os.setsid()``. Its memory is not counted either. This module tracks the process *tree*
(parent/child links) instead of the process group.

How:

* :func:`become_subreaper` (``prctl(PR_SET_CHILD_SUBREAPER)``, called by the worker at start):
  an orphaned descendant (its parent exited, as with a double fork) is re-parented to the
  worker instead of to init, so it stays a descendant of the worker. Without it a
  double-forked grandchild is out of reach once its parent exits.
* :func:`children` reads ``/proc/<pid>/task/<tid>/children`` for *every thread* (a child
  belongs to the thread that forked it, and orphans go to any live thread of a subreaper).
  Where the kernel lacks those files (``CONFIG_PROC_CHILDREN`` unset) it scans the ppid
  field of every ``/proc/<p>/stat`` instead (slower: one read per process on the machine).
  :func:`descendants` repeats that down the tree.
* :func:`tree_rss` adds up resident memory (``/proc/<p>/statm``) of a process and its
  descendants. Each number is a process's RSS, so pages two processes share (libraries,
  copy-on-write pages after ``fork``) are counted once per process, as ``psutil``'s
  ``memory_info().rss`` would.
* :func:`kill_tree` kills a tree so that nothing escapes, even a process that forks while
  the tree is being killed. For SIGKILL it first *freezes* the tree: it sends SIGSTOP to
  every process it finds and enumerates again until all found are stopped and a listing
  made after that finds no new process (a stopped process cannot fork). Then it SIGKILLs
  everything, children before parents, enumerating again until every process it killed
  is dead, and kills the root last (a dying subreaper's descendants would otherwise be
  re-parented out of reach). A process that leads its own process group gets the signal
  via ``killpg``, which also reaches members that left the tree.
* :func:`reap_children` collects the zombies a subreaper inherits.
* :func:`limit_data` is a memory backstop for *inside* the worker, enforced by the
  operating system: a soft ``RLIMIT_DATA`` makes an over-large allocation fail with
  ``MemoryError`` at once, even when the allocating code holds the GIL and a watching
  thread would never get to run.

``/proc/<pid>/task/<tid>/children`` is documented as exact only while the processes are
stopped or frozen; that is why :func:`kill_tree` freezes and repeats its enumeration. A pid
read from ``/proc`` can always be gone (or, in theory, reused) by the time it is signalled:
every function here tolerates vanished processes. All functions take thread-group ids
(what ``os.getpid()`` and ``Popen.pid`` give).
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import time
from types import TracebackType

__all__ = [
    "DataLimit",
    "TreeMeter",
    "become_subreaper",
    "children",
    "descendants",
    "is_subreaper",
    "kill_tree",
    "limit_data",
    "reap_children",
    "resume",
    "rss",
    "rss_self",
    "stop",
    "terminate_tree",
    "tree_rss",
    "vm_data",
    "wait_stopped",
]

_PR_SET_CHILD_SUBREAPER = 36
_PR_GET_CHILD_SUBREAPER = 37
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
_DEAD_STATES = (b"Z", b"X", b"x")  # zombie, dead: they cannot run, fork or use memory
_STOPPED_STATES = (b"T", b"t")  # stopped by a signal, stopped by a tracer
_POLL_S = 0.0005  # first sleep between /proc polls; doubled up to _POLL_MAX_S
_POLL_MAX_S = 0.01


# --------------------------------------------------------------------------- /proc reading


def _read(path: str) -> bytes:
    """The whole content of a /proc file (raises OSError if the process is gone)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = os.read(fd, 4096)
        if len(data) < 4096:  # the usual case: all of it in one read
            return data
        chunks = [data]
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _stat_fields(pid: int) -> list[bytes] | None:
    """Fields of /proc/<pid>/stat after the command name: [state, ppid, pgrp, session, ...];
    None if the process is gone."""
    try:
        data = _read(f"/proc/{pid}/stat")
    except OSError:
        return None
    # The command name is in parentheses and may itself contain ")" and spaces.
    return data[data.rindex(b")") + 2 :].split()


def _state(pid: int) -> bytes | None:
    """The one-letter state of a process's main thread, or None if it is gone."""
    fields = _stat_fields(pid)
    return fields[0] if fields else None


def _is_dead(pid: int) -> bool:
    """True if the process is gone, or a zombie whose threads have all exited.

    A thread-group leader that exited with ``pthread_exit`` shows "Z" while its other
    threads still run; that process is alive."""
    state = _state(pid)
    if state is None:
        return True
    if state not in _DEAD_STATES:
        return False
    try:
        return len(os.listdir(f"/proc/{pid}/task")) <= 1
    except OSError:
        return True


def _proc_children_supported() -> bool:
    me = os.getpid()
    return os.path.exists(f"/proc/{me}/task/{me}/children")


_HAVE_CHILDREN_FILES = _proc_children_supported()


def _children_from_files(pid: int) -> list[int]:
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    found: list[int] = []
    for tid in tids:
        try:
            data = _read(f"/proc/{pid}/task/{tid}/children")
        except OSError:  # that thread exited meanwhile
            continue
        found.extend(map(int, data.split()))
    return found


def _ppid_map() -> dict[int, list[int]]:
    """Parent pid -> child pids, for every process visible in /proc (the fallback)."""
    by_parent: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        pid = int(name)
        fields = _stat_fields(pid)
        if fields is not None:
            by_parent.setdefault(int(fields[1]), []).append(pid)
    return by_parent


def _children_from_scan(pid: int) -> list[int]:
    """Direct children of ``pid`` found by scanning every /proc/<p>/stat (the fallback)."""
    return _ppid_map().get(pid, [])


# --------------------------------------------------------------------------- the tree


def become_subreaper() -> bool:
    """Make the calling process a child subreaper (``prctl(PR_SET_CHILD_SUBREAPER, 1)``).

    Orphaned descendants (whose parent exited: double forks, daemons) are then re-parented
    to this process instead of init, so they stay among its :func:`descendants`, and their
    zombies must be collected with :func:`reap_children`. Not inherited by children; kept
    across ``execve``. Returns False where unsupported (not Linux, or the call failed).
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def is_subreaper() -> bool:
    """Whether the calling process is a child subreaper (False where unsupported)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        flag = ctypes.c_int(0)
        ok = libc.prctl(_PR_GET_CHILD_SUBREAPER, ctypes.byref(flag), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False
    return bool(ok and flag.value)


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (of all its threads), zombies included; [] if it is gone.

    Reads ``/proc/<pid>/task/<tid>/children``; where the kernel lacks those files, scans
    the ppid of every process in /proc instead."""
    if _HAVE_CHILDREN_FILES:
        return _children_from_files(pid)
    return _children_from_scan(pid)


def descendants(pid: int, *, live_only: bool = False) -> list[int]:
    """All descendants of ``pid`` (children, their children, ...), excluding ``pid``,
    parents before their children; [] if ``pid`` is gone.

    With ``live_only`` zombies are left out (they cannot run, fork or hold memory; their
    children, if any, were already re-parented). That costs one more /proc read per
    descendant.
    """
    by_parent = None if _HAVE_CHILDREN_FILES else _ppid_map()  # fallback: one scan per walk
    found: list[int] = []
    seen = {pid}
    todo = [pid]
    while todo:
        parent = todo.pop()
        kids = _children_from_files(parent) if by_parent is None else by_parent.get(parent, [])
        for child in kids:
            if child in seen:  # only possible with pid reuse during the walk
                continue
            seen.add(child)
            if live_only and _is_dead(child):
                continue
            found.append(child)
            todo.append(child)
    return found


def rss(pid: int) -> int:
    """Resident bytes of one process (0 if it is gone or a zombie)."""
    try:
        data = _read(f"/proc/{pid}/statm")
    except OSError:
        return 0
    return int(data.split(maxsplit=2)[1]) * _PAGE_SIZE


def rss_self() -> int:
    """Resident bytes of the calling process."""
    return rss(os.getpid())


def tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` plus all its live descendants (whatever their session or
    process group). Processes that vanish meanwhile count 0, so a gone ``pid`` gives 0.

    Cost: a directory listing of /proc/<p>/task plus one read per thread and one read of
    statm, per process. Shared pages are counted once per process that maps them.
    """
    if not _HAVE_CHILDREN_FILES:
        return rss(pid) + sum(rss(p) for p in descendants(pid))
    total = 0
    todo = [pid]
    seen = {pid}
    while todo:
        p = todo.pop()
        total += rss(p)  # a zombie's statm reads as zeros
        for child in _children_from_files(p):
            if child not in seen:
                seen.add(child)
                todo.append(child)
    return total


class TreeMeter:
    """Measures :func:`tree_rss` of one root again and again, faster: the root's ``statm``
    and its threads' ``children`` files stay open between calls and are re-read with
    ``pread`` (opening a /proc file costs more than reading it). Descendants are read
    afresh each time, so a large tree costs no file descriptors. The root's ``statm`` is
    opened here, and an open /proc file keeps referring to the process it was opened for,
    so once the root is gone :meth:`rss` returns 0, even if its pid is reused. Close it when
    done (or use it as a context manager).
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._children: dict[str, int] = {}  # thread id -> open children file
        self._statm: int | None = None
        try:
            self._statm = os.open(f"/proc/{pid}/statm", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:  # already gone: rss() gives 0
            pass

    def rss(self) -> int:
        """Resident bytes of the root plus all its descendants; 0 once the root is gone."""
        if self._statm is None:
            return 0
        if not _HAVE_CHILDREN_FILES:
            return tree_rss(self.pid)
        try:
            total = int(os.pread(self._statm, 4096, 0).split(maxsplit=2)[1]) * _PAGE_SIZE
            tids = os.listdir(f"/proc/{self.pid}/task")
        except OSError:  # the root is gone
            self.close()
            return 0
        todo = self._root_children(tids)
        seen = {self.pid, *todo}
        while todo:
            p = todo.pop()
            total += rss(p)
            for child in _children_from_files(p):
                if child not in seen:
                    seen.add(child)
                    todo.append(child)
        return total

    def _root_children(self, tids: list[str]) -> list[int]:
        found: list[int] = []
        for tid in tids:
            data = self._pread_children(tid)
            if data is not None:
                found.extend(map(int, data.split()))
        if len(self._children) > len(tids):  # forget exited threads
            for tid in set(self._children) - set(tids):
                os.close(self._children.pop(tid))
        return found

    def _pread_children(self, tid: str) -> bytes | None:
        fd = self._children.get(tid)
        if fd is not None:
            try:
                data = os.pread(fd, 4096, 0)
            except OSError:  # that thread is gone (and its id perhaps reused): reopen
                os.close(self._children.pop(tid))
                fd = None
        if fd is None:
            path = f"/proc/{self.pid}/task/{tid}/children"
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                return None
            self._children[tid] = fd
            try:
                data = os.pread(fd, 4096, 0)
            except OSError:
                return None
        if len(data) == 4096:  # very many children: read the whole file
            try:
                data = _read(f"/proc/{self.pid}/task/{tid}/children")
            except OSError:
                return None
        return data

    def close(self) -> None:
        """Close the files kept open; :meth:`rss` then returns 0."""
        if self._statm is not None:
            os.close(self._statm)
            self._statm = None
        for fd in self._children.values():
            os.close(fd)
        self._children.clear()

    def __enter__(self) -> TreeMeter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def vm_data(pid: int | None = None) -> int:
    """``VmData`` of a process in bytes (what ``RLIMIT_DATA`` is checked against): private,
    writable, non-stack mappings, touched or not; 0 if it is gone."""
    try:
        status = _read(f"/proc/{os.getpid() if pid is None else pid}/status")
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith(b"VmData:"):
            return int(line.split()[1]) * 1024
    return 0


# --------------------------------------------------------------------------- signals


def _signal(pid: int, sig: int) -> bool:
    """Send ``sig`` to one process; False if it is gone or not ours."""
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _signal_group(pgid: int, sig: int) -> bool:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _pgrp(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[2]) if fields else None


def _signal_all(pids: list[int], sig: int, *, groups: bool) -> set[int]:
    """Send ``sig`` to each process, in the order given, and return the pids that got it.

    With ``groups`` (only for signals where a duplicate does no harm: SIGKILL, SIGSTOP)
    a process that leads its process group is signalled with ``killpg``, which also reaches
    group members outside the tree and is atomic with respect to ``fork``; members listed
    after their leader are then not signalled one by one again."""
    if not groups:
        return {p for p in pids if _signal(p, sig)}
    own = os.getpgrp()  # never stop or kill the caller's own group
    done: set[int] = set()
    for p in pids:
        g = _pgrp(p)
        if g is None:  # gone
            continue
        if g == p != own:
            if _signal_group(p, sig):
                done.add(p)
        elif g in done or _signal(p, sig):  # ``g in done``: reached by that killpg
            done.add(p)
    return done


def stop(pid: int) -> bool:
    """Send SIGSTOP to one process; False if it is gone. See :func:`wait_stopped`."""
    return _signal(pid, signal.SIGSTOP)


def resume(pid: int) -> bool:
    """Send SIGCONT to one process; False if it is gone."""
    return _signal(pid, signal.SIGCONT)


def _thread_states(pid: int) -> list[bytes]:
    """The state letter of each thread of ``pid``; [] if it is gone."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    states = []
    for tid in tids:
        try:
            data = _read(f"/proc/{pid}/task/{tid}/stat")
        except OSError:  # that thread exited meanwhile
            continue
        states.append(data[data.rindex(b")") + 2 :][:1])
    return states


def _all_threads_stopped(pid: int) -> bool:
    """True if every thread of ``pid`` is stopped, a zombie, or gone (so is the process)."""
    return all(st in _STOPPED_STATES or st in _DEAD_STATES for st in _thread_states(pid))


def wait_stopped(pid: int, timeout: float) -> bool:
    """Wait until every thread of ``pid`` is stopped ("T", or "t" under a tracer), polling
    /proc with short sleeps. A process that is gone or a zombie counts as stopped too (it
    will not run again), so True means "not running". False if ``timeout`` seconds pass
    first (e.g. a thread stays in an uninterruptible sleep, or nobody sent SIGSTOP)."""
    deadline = time.monotonic() + timeout
    pause = _POLL_S
    while True:
        if _all_threads_stopped(pid):
            return True
        now = time.monotonic()
        if now >= deadline:
            return False
        time.sleep(min(pause, deadline - now))
        pause = min(pause * 2, _POLL_MAX_S)


def _frozen(pid: int) -> bool:
    """True if no thread of ``pid`` can run user code before it handles a pending SIGSTOP:
    all are stopped, dead, or in an uninterruptible sleep ("D", e.g. a ``vfork`` parent
    waiting for its child, which never ends while that child is stopped)."""
    return all(
        st in _STOPPED_STATES or st in _DEAD_STATES or st == b"D" for st in _thread_states(pid)
    )


def _freeze(pid: int, include_root: bool, deadline: float) -> None:
    """SIGSTOP ``pid``'s tree (with ``include_root``, ``pid`` too) until all processes
    found are frozen and one more enumeration finds no new one; or until the deadline
    (the caller then kills what it can)."""
    me = os.getpid()
    stopped = {me}  # never stop the caller: nobody would continue it
    include_root = include_root and pid != me
    if include_root:
        _signal_all([pid], signal.SIGSTOP, groups=True)
    pause = _POLL_S
    all_frozen = False  # as of the previous listing
    while time.monotonic() < deadline:
        live = descendants(pid, live_only=True)
        new = [p for p in live if p not in stopped]
        if new:
            _signal_all(new, signal.SIGSTOP, groups=True)
            stopped.update(new)  # a vanished one needs no second try
            all_frozen = False
            continue  # their children forked meanwhile: look again at once
        if all_frozen:
            # This listing was made after every process was seen frozen, so it also holds
            # any child a process linked just before it stopped: done.
            return
        if include_root:
            live.append(pid)
        running = [p for p in live if p != me and not _frozen(p)]
        if not running:
            all_frozen = True
            continue
        # Not stopped yet (the signal takes effect when the process next runs), or
        # continued by someone else: send again, and wait a little.
        _signal_all(running, signal.SIGSTOP, groups=True)
        time.sleep(max(0.0, min(pause, deadline - time.monotonic())))
        pause = min(pause * 2, _POLL_MAX_S)


def _start_time(pid: int) -> bytes | None:
    """The start time of a process (stat field 22), which tells a reused pid apart."""
    fields = _stat_fields(pid)
    return fields[19] if fields else None


def _alive(pid: int, start: bytes) -> bool:
    """True if the process that had this start time still exists and is not a zombie."""
    fields = _stat_fields(pid)
    return fields is not None and fields[19] == start and fields[0] not in _DEAD_STATES


def kill_tree(
    pid: int,
    sig: int = signal.SIGKILL,
    *,
    include_root: bool = True,
    timeout: float = 5.0,
) -> int:
    """Send ``sig`` to every descendant of ``pid``, then (with ``include_root``) to ``pid``.
    Returns how many distinct processes were signalled.

    With SIGKILL (the default) nothing escapes: the tree is frozen first (see the module
    docstring), then the descendants are killed, re-enumerating until none is alive, and
    the root last. It returns once every process it killed is dead (a zombie or gone), also
    those re-parented out of the tree when their parent died first; it does not wait for the
    root (its parent reaps it). Group leaders are killed with ``killpg`` (reaching group
    members outside the tree; the root's group too, even if the root died meanwhile).

    For any other signal each live descendant is signalled once (per pid, no ``killpg``, so
    nobody gets it twice), re-enumerating until a pass finds none it has not signalled, then
    the root; nothing waits for the signal to take effect.

    ``timeout`` bounds the whole call: past it (a process stuck in an uninterruptible sleep
    takes a while to die) the root is signalled anyway and the call returns; check
    ``descendants(pid, live_only=True)`` if that matters. With ``include_root=False`` the
    root is neither frozen nor signalled (it may be the caller), so it must not start
    processes while this runs. Unless ``pid`` is a subreaper (:func:`become_subreaper`), a
    descendant whose parent exited *before* the call was re-parented to init and is out of
    reach; freezing first ensures that no process is orphaned that way during the call.
    """
    deadline = time.monotonic() + timeout
    kill = sig == signal.SIGKILL
    root_pgrp = _pgrp(pid)
    signalled: set[int] = set()
    tried: set[int] = set()  # for other signals: who was (or vanished before being) signalled
    dying: dict[int, bytes] = {}  # for SIGKILL: pid -> start time of those not yet dead
    if kill:
        _freeze(pid, include_root, deadline)
    pause = _POLL_S
    while True:
        live = descendants(pid, live_only=True)
        if kill:
            # Children before parents: a child whose parent dies is re-parented, and if that
            # orphans its process group, the kernel sends the group SIGHUP and SIGCONT. Once
            # SIGKILL is pending on it, neither matters. SIGKILL again to the dying too: it is
            # idempotent, and it keeps this simple.
            signalled |= _signal_all(live[::-1], sig, groups=True)
            for p in live:
                start = _start_time(p)
                if start is not None:
                    dying[p] = start
            # Those whose parent died already are no longer descendants: watch them here.
            dying = {p: start for p, start in dying.items() if _alive(p, start)}
            if not dying:
                break
        else:
            todo = [p for p in live if p not in tried]
            if not todo:
                break
            signalled |= _signal_all(todo, sig, groups=False)
            tried.update(todo)
        now = time.monotonic()
        if now >= deadline:
            break
        if kill:  # give the killed a moment to die before looking again
            time.sleep(min(pause, deadline - now))
            pause = min(pause * 2, _POLL_MAX_S)
    if include_root:
        if _signal(pid, sig):
            signalled.add(pid)
        if kill and root_pgrp == pid != os.getpgrp():
            _signal_group(pid, sig)
    return len(signalled)


def terminate_tree(pid: int, *, include_root: bool = True) -> int:
    """Politely ask ``pid``'s tree to exit: SIGTERM, then SIGCONT (so stopped processes act
    on it), to every live descendant and then to ``pid``. One enumeration, per pid (nobody
    gets SIGTERM twice), no waiting. Returns how many processes got SIGTERM.

    Follow up with :func:`kill_tree` after a grace period. Note that if ``pid`` itself exits
    on SIGTERM, its descendants that are still alive are re-parented away from it (to init,
    or to a subreaper above it) and out of reach of that :func:`kill_tree`; to avoid that,
    use ``include_root=False`` and leave the root to :func:`kill_tree`.
    """
    targets = descendants(pid, live_only=True)
    if include_root:
        targets.append(pid)  # the list is complete before anyone is told to exit
    done = _signal_all(targets, signal.SIGTERM, groups=False)
    _signal_all(targets, signal.SIGCONT, groups=False)
    return len(done)


def reap_children() -> int:
    """Collect every exited child of the calling process (``waitpid(-1, WNOHANG)`` until
    none is left) and return how many. A subreaper inherits orphans and must reap their
    zombies.

    This reaps *any* child, including one that other code still means to wait for (a
    ``subprocess.Popen`` would then report a wrong return code): call it only when no code
    of the current attempt is running, i.e. between attempts in the worker.
    """
    count = 0
    while True:
        try:
            child, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:  # no children at all
            return count
        if child == 0:  # children exist, none has exited
            return count
        count += 1


# --------------------------------------------------------------------------- memory backstop


class DataLimit:
    """A soft ``RLIMIT_DATA`` in force; call it (or leave its ``with`` block) to put back
    the soft limit that was there before. Restoring twice is harmless."""

    def __init__(self, limit: int, previous_soft: int) -> None:
        self.limit = limit  # the soft limit set, in bytes
        self.previous_soft = previous_soft
        self._restored = False

    def restore(self) -> None:
        if self._restored:
            return
        _soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
        soft = self.previous_soft
        if hard != resource.RLIM_INFINITY and (soft == resource.RLIM_INFINITY or soft > hard):
            soft = hard  # the hard limit was lowered meanwhile
        resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))
        self._restored = True

    __call__ = restore

    def __enter__(self) -> DataLimit:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.restore()


def limit_data(extra_bytes: int) -> DataLimit:
    """Let the calling process's data segment grow by at most ``extra_bytes`` from now:
    set the soft ``RLIMIT_DATA`` to the current :func:`vm_data` plus ``extra_bytes``
    (never above the hard limit or an already tighter soft limit; the hard limit is kept).
    Returns a :class:`DataLimit`; call it to restore the previous soft limit.

    The kernel then refuses any private writable mapping (``malloc``'s ``mmap`` of a large
    block, heap growth via ``brk``) past the limit, so Python raises ``MemoryError`` at the
    allocation, with no watcher thread involved. Caveats:

    * It limits *reserved* memory, not resident memory: memory reserved but never touched
      counts too, and memory freed by ``free()`` only counts down once returned to the OS.
    * A new thread's stack (8 MiB by default) counts: under a tight limit
      ``Thread.start()`` raises ``RuntimeError("can't start new thread")``.
    * Shared mappings (``mmap`` with ``MAP_SHARED``, ``multiprocessing`` shared memory)
      and file-backed read-only mappings do not count.
    * It is per process and inherited by children (forked or exec'd), each of which is
      then limited to this absolute size of its *own* data segment.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    limit = vm_data() + max(0, extra_bytes)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    if soft != resource.RLIM_INFINITY:
        limit = min(limit, soft)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))
    return DataLimit(limit, soft)
