"""The files and folders of a store: private to their user, and durable once created.

Everything nbtasks creates beside a store is 0600, every folder 0700, whatever the umask: a
store holds payloads and outputs. DuckDB creates its own files (the database, its WAL,
which it makes anew after each checkpoint) with the process's umask, so the store's
thread, the one thread that writes to DuckDB, has a umask of its own (``private_umask``).
A new file or folder is only durable once the folder holding it is fsynced too.
"""

from __future__ import annotations

import os

_CLONE_FS = 0x200  # unshare(2): this thread gets its own umask, root and working directory
GITIGNORE = "# Created by nbtasks: a store holds payloads and outputs, keep it out of git\n*\n"


def private_umask() -> bool:
    """Give the calling thread, alone, a umask of 077. False where the kernel refuses to
    unshare the thread's file-system attributes (some container sandboxes do)."""
    import ctypes  # on the store's thread, off the way to a first run

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.unshare(_CLONE_FS) != 0:
            return False
    except (OSError, AttributeError):
        return False
    os.umask(0o077)
    return True


def fsync_folder(path: str) -> None:
    """Make the entry of ``path`` in its folder durable."""
    fd = os.open(os.path.dirname(os.path.abspath(path)) or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def create_private(path: str) -> int:
    """Create ``path`` (never an existing file or link: ``FileExistsError``) as a 0600 file,
    durable in its folder, and return it open for reading and writing."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # the umask may have taken more away than that
        fsync_folder(path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def make_store_folder(folder: str) -> None:
    """Create ``folder`` and any missing parents as 0700 folders. A folder nbtasks
    creates, and any folder named ``.nbtasks``, holds a ``.gitignore`` of everything."""
    folder = os.path.abspath(folder)
    missing = []
    head = folder
    while not os.path.isdir(head):
        missing.append(head)
        parent = os.path.dirname(head)
        if parent == head:
            break
        head = parent
    for path in reversed(missing):
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            continue  # made meanwhile by someone else: theirs to set up
        os.chmod(path, 0o700)
        fsync_folder(path)
    if missing or os.path.basename(folder) == ".nbtasks":
        _ignore_all(folder)


def _ignore_all(folder: str) -> None:
    path = os.path.join(folder, ".gitignore")
    try:
        fd = create_private(path)
    except FileExistsError:
        return
    except PermissionError:
        return  # a folder we may not write to: opening the store will say so
    try:
        os.write(fd, GITIGNORE.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


# inotify(7): the events that tell a watched file lost its name (unlinked, or replaced by a
# rename over it: IN_ATTRIB, its link count changed), was moved, or is gone.
_IN_ATTRIB, _IN_MOVE_SELF, _IN_DELETE_SELF = 0x4, 0x800, 0x400
_IN_NONBLOCK, _IN_CLOEXEC = 0o4000, 0o2000000


class FileWatch:
    """Says whether a file may have lost its name since the last look, without touching
    the file: a ``stat`` right after an ``fdatasync`` costs about 0.1 ms here, a read of an
    inotify descriptor a microsecond. Where inotify is not available, it always says maybe."""

    def __init__(self, path: str) -> None:
        self._fd = -1
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
            if fd < 0:
                return
            mask = _IN_ATTRIB | _IN_MOVE_SELF | _IN_DELETE_SELF
            if libc.inotify_add_watch(fd, os.fsencode(path), mask) < 0:
                os.close(fd)
                return
            self._fd = fd
        except (OSError, AttributeError):
            return

    def maybe_changed(self) -> bool:
        if self._fd < 0:
            return True
        changed = False
        while True:
            try:
                if not os.read(self._fd, 4096):
                    return changed
                changed = True
            except BlockingIOError:
                return changed

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
