"""The started log: where workers note each attempt they take up on their own (one sent
ahead to a busy worker), before its body begins.

A worker is handed an attempt only once the store holds that the run counts it
(``engine/handover.py``), so after a crash the next engine knows which runs a worker may
have begun. For a run sent ahead that is not enough to tell: it may still have been waiting
in its worker. This log tells, for the local executor: an engine whose workers note here
writes a header as the log's first line once it has read what the previous engine left,
and each worker appends ``<run id> <attempt number>`` for an attempt sent ahead before it
begins: one appending write, with no ``fsync``, which a killed process cannot undo but a
machine that stops (power lost) can. So the header names the machine's boot: a log
written before a reboot is not trusted. A worker that cannot note exits instead of
beginning the body (its attempt then never started, as the executor seam says of a worker
lost without ``Started``).

``read`` trusts the log only if its header is this format's, of this boot, and every line
parses: anything else (no log, an engine whose workers cannot note here such as Dask's, a
reboot since, a torn line) counts every run handed over as begun. The log is data only;
it never runs code.
"""

from __future__ import annotations

import os

ENV = "NBTASKS_STARTED_LOG"  # the log's path, in a local worker's environment
FORMAT = b"nbtasks started log 1"
_MAX_BYTES = 64 << 20  # a log beyond this is not read (not trusted)


def header() -> bytes | None:
    """The first line of a log written during this boot; None where the boot cannot be
    told (the log is then never trusted)."""
    try:
        with open("/proc/sys/kernel/random/boot_id", "rb") as f:
            boot = f.read().strip()
    except OSError:
        return None
    return FORMAT + b" boot " + boot + b"\n" if boot else None


def path_for(store_path: str) -> str:
    return os.path.abspath(store_path) + ".started"


def read(path: str) -> set[tuple[str, int]] | None:
    """The attempts the last engine's workers noted, or None if the log is not trusted."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if os.fstat(fd).st_size > _MAX_BYTES:
            return None
        data = b""
        while chunk := os.read(fd, 1 << 20):
            data += chunk
    finally:
        os.close(fd)
    first = header()
    if first is None or not data.startswith(first) or not data.endswith(b"\n"):
        return None
    noted: set[tuple[str, int]] = set()
    for line in data[len(first) :].splitlines():
        parts = line.split(b" ")
        if len(parts) != 2 or not parts[1].isdigit():
            return None
        noted.add((parts[0].decode("ascii", "replace"), int(parts[1])))
    return noted


def reset(path: str, noted: bool) -> None:
    """Empty the log (in place: workers already launched hold it open), then, if this
    engine's workers note in it, write its header. A link planted in its place is removed,
    never followed."""
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o600)
    except OSError:
        if not os.path.islink(path):
            raise
        os.unlink(path)
        fd = os.open(path, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.ftruncate(fd, 0)
        first = header()
        if noted and first is not None:
            os.pwrite(fd, first, 0)
    finally:
        os.close(fd)


def open_for_notes(path: str) -> int | None:
    """(Worker.) The log, open for appending; None if it cannot be opened."""
    try:
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None


def note(fd: int | None, run_id: str, number: int) -> bool:
    """(Worker.) Note an attempt taken up; False if it could not be noted."""
    if fd is None:
        return False
    line = f"{run_id} {number}\n".encode()
    try:
        return os.write(fd, line) == len(line)
    except OSError:
        return False
