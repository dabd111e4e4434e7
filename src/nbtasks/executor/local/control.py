"""A worker's control block: a few words of memory shared by the kernel and one worker.

The worker writes which attempt (by its sequence number on that worker) is executing; the
kernel writes ``doomed`` once it decides to kill the worker. The kernel reads the block
only while the worker is stopped (SIGSTOP), so what it reads cannot change under it: this
is how a kill is made to hit only the attempt it is meant for (see ``pool.LocalExecutor``).

Layout: three unsigned 64-bit integers, ``running`` (0: none), ``started`` (the highest
sequence number taken up so far) and ``doomed`` (non-zero: start nothing more).
"""

from __future__ import annotations

import mmap
import os
import struct

_WORDS = struct.Struct("=QQQ")
_RUNNING, _STARTED, _DOOMED = 0, 8, 16
_Q = struct.Struct("=Q")


class Control:
    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._map = mmap.mmap(fd, _WORDS.size)

    @classmethod
    def create(cls) -> Control:
        """A new zeroed block, backed by an anonymous memory file the worker inherits."""
        try:
            fd = os.memfd_create("nbtasks-control", os.MFD_CLOEXEC)
        except (AttributeError, OSError):  # not Linux: an unlinked temporary file
            import tempfile

            fd = os.dup(tempfile.TemporaryFile().fileno())
        os.ftruncate(fd, _WORDS.size)
        return cls(fd)

    @classmethod
    def attach(cls, fd: int) -> Control:
        return cls(fd)

    # -- the worker's side -----------------------------------------------------------------

    def start(self, seq: int) -> None:
        _Q.pack_into(self._map, _STARTED, seq)
        _Q.pack_into(self._map, _RUNNING, seq)

    def end(self) -> None:
        _Q.pack_into(self._map, _RUNNING, 0)

    @property
    def doomed(self) -> bool:
        return bool(_Q.unpack_from(self._map, _DOOMED)[0])

    # -- the kernel's side (read with the worker stopped) -----------------------------------

    def read(self) -> tuple[int, int]:
        """(running, started)"""
        running, started, _ = _WORDS.unpack_from(self._map)
        return running, started

    def doom(self) -> None:
        _Q.pack_into(self._map, _DOOMED, 1)

    def close(self) -> None:
        self._map.close()
        os.close(self.fd)
