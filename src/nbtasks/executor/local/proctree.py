"""Find and measure a worker's whole process tree (Linux, stdlib only); ``treekill.py``
freezes and kills it, ``memlimit.py`` holds the in-process memory backstop.

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
* :func:`treekill.kill_tree` kills a tree so that nothing escapes, even a process that forks while
  the tree is being killed. For SIGKILL it first *freezes* the tree: it sends SIGSTOP to
  every process it finds and enumerates again until all found are stopped and a listing
  made after that finds no new process (a stopped process cannot fork). Then it SIGKILLs
  everything, children before parents, enumerating again until every process it killed
  is dead, and kills the root last (a dying subreaper's descendants would otherwise be
  re-parented out of reach). A process that leads its own process group gets the signal
  via ``killpg``, which also reaches members that left the tree.
* :func:`treekill.reap_children` collects the zombies a subreaper inherits.
* :func:`memlimit.limit_data` is a memory backstop for *inside* the worker, enforced by the
  operating system: a soft ``RLIMIT_DATA`` makes an over-large allocation fail with
  ``MemoryError`` at once, even when the allocating code holds the GIL and a watching
  thread would never get to run.

``/proc/<pid>/task/<tid>/children`` is documented as exact only while the processes are
stopped or frozen; that is why :func:`treekill.kill_tree` freezes and repeats its enumeration. A pid
read from ``/proc`` can always be gone (or, in theory, reused) by the time it is signalled:
every function here tolerates vanished processes. All functions take thread-group ids
(what ``os.getpid()`` and ``Popen.pid`` give).
"""

from __future__ import annotations

import os
from types import TracebackType

__all__ = [
    "TreeMeter",
    "become_subreaper",
    "children",
    "descendants",
    "is_subreaper",
    "rss",
    "rss_self",
    "tree_rss",
    "vm_data",
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
        import ctypes  # only workers call this: the kernel measures trees without it

        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def is_subreaper() -> bool:
    """Whether the calling process is a child subreaper (False where unsupported)."""
    try:
        import ctypes  # only workers call this: the kernel measures trees without it

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
