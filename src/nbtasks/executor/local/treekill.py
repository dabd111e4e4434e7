"""Freeze, signal and kill process trees found by ``proctree`` (Linux, stdlib only).

See ``proctree``'s docstring for why and how: a tree is frozen (SIGSTOP, enumerated again
until nothing new appears) before it is killed, children before parents, so that nothing
forks its way out; a subreaper reaps the zombies it inherits.
"""

from __future__ import annotations

import os
import signal
import time

from nbtasks.executor.local.proctree import (
    _DEAD_STATES,
    _POLL_MAX_S,
    _POLL_S,
    _STOPPED_STATES,
    _read,
    _stat_fields,
    descendants,
)

__all__ = ["kill_tree", "reap_children", "resume", "stop", "terminate_tree", "wait_stopped"]


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
