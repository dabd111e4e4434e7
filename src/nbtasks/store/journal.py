"""The store's journal: batches of staged rows made durable by one append to a file.

Committing a batch to DuckDB costs about a millisecond of CPU and two of wall time here,
however small it is (an Appender flush per table, each with its indexes, then the commit).
The hot path instead appends the batch to ``<store>.journal``, a frame with its sequence
number and CRC, and calls ``fdatasync``: about 0.2 ms. The store later *folds* the journal
into DuckDB: it merges the batches, so a run created and finished in between is written once
with its final state, writes them to ``runs``, ``attempts`` and ``run_events`` in bulk,
records the last folded sequence number in ``journal_state`` in the same transaction, then
empties the file. After a hard exit the next store to open the file folds the frames past
that number; a torn last frame (never acknowledged) is dropped.

A frame's body is MessagePack (msgspec): data only, so decoding one can never run code,
whoever wrote the file. A frame is checked before it is decoded (its length, its CRC, and
that its sequence number follows on), and what it decodes to is checked against the tables'
columns before anything of it is written.
"""

from __future__ import annotations

import os
import stat
import struct
import warnings
import zlib
from typing import Any

from nbtasks.core.errors import NbtasksError, NbtasksWarning
from nbtasks.store.files import FileWatch, create_private, fsync_folder
from nbtasks.store.schema import ATTEMPT_COLUMNS, RUN_COLUMNS, RUN_UPDATE_COLUMNS

Row = tuple[Any, ...]

# Where each column of a run update goes in a full run row.
_UPDATE_SLOTS = tuple(RUN_COLUMNS.index(c) for c in RUN_UPDATE_COLUMNS)
_EVENT_WIDTH, _VERSION_WIDTH = 5, 7  # run_events and task_versions columns
# The last run columns, added by later schemas (4: resources, 5: origin): a frame written
# before has rows without them, read as NULL.
_ADDED_RUN_COLUMNS = 2


def apply_run_update(row: Row, update: Row) -> Row:
    """A full run row with the columns of ``update`` (``RUN_UPDATE_COLUMNS``) written in."""
    merged = list(row)
    for slot, value in zip(_UPDATE_SLOTS, update, strict=True):
        merged[slot] = value
    return tuple(merged)


class JournalError(NbtasksError):
    """A journal file holds something nbtasks did not write, or cannot be trusted."""


_Rows = dict[str, tuple[Any, ...]]
_Body = tuple[_Rows, _Rows, _Rows, _Rows, list[tuple[Any, ...]], list[tuple[Any, ...]]]
_codec: Any = None  # msgspec's encoder and decoder, once imported


def codec() -> Any:
    """msgspec's MessagePack encoder and decoder of a frame body. Imported on first use
    (about 20 ms): the store's committer thread asks for it as it starts, while the kernel
    goes on, so the first commit does not wait for the import."""
    global _codec
    if _codec is None:
        import msgspec

        _codec = (msgspec.msgpack.Encoder(), msgspec.msgpack.Decoder(_Body), msgspec.DecodeError)
    return _codec


class Batch:
    """Rows staged between two commits, the latest version per key."""

    __slots__ = ("attempt_updates", "events", "new_attempts", "new_runs", "run_updates", "versions")

    def __init__(self) -> None:
        self.new_runs: dict[str, Row] = {}
        self.run_updates: dict[str, Row] = {}
        self.new_attempts: dict[str, Row] = {}
        self.attempt_updates: dict[str, Row] = {}
        self.events: list[Row] = []
        self.versions: list[Row] = []

    def __bool__(self) -> bool:
        return bool(
            self.new_runs
            or self.run_updates
            or self.new_attempts
            or self.attempt_updates
            or self.events
            or self.versions
        )

    def size(self) -> int:
        """Rows held, the measure of how much a fold has to write."""
        return (
            len(self.new_runs)
            + len(self.run_updates)
            + len(self.new_attempts)
            + len(self.attempt_updates)
            + len(self.events)
            + len(self.versions)
        )

    def absorb(self, later: Batch) -> None:
        """Merge a batch committed after this one: writing the result once leaves the
        tables as writing both in order would."""
        self.absorb_runs(later)
        self.new_attempts.update(later.new_attempts)
        for attempt_id, row in later.attempt_updates.items():  # attempt updates are whole rows
            if attempt_id in self.new_attempts:
                self.new_attempts[attempt_id] = row
            else:
                self.attempt_updates[attempt_id] = row
        self.events.extend(later.events)
        self.versions.extend(later.versions)

    def absorb_runs(self, later: Batch) -> None:
        """``absorb``, for the runs only."""
        self.new_runs.update(later.new_runs)
        for run_id, update in later.run_updates.items():
            created = self.new_runs.get(run_id)
            if created is not None:
                self.new_runs[run_id] = apply_run_update(created, update)
            else:
                self.run_updates[run_id] = update

    def dumps(self) -> bytes:
        data: bytes = codec()[0].encode(
            (self.new_runs, self.run_updates, self.new_attempts, self.attempt_updates,
             self.events, self.versions)
        )  # fmt: skip
        return data

    @classmethod
    def loads(cls, data: bytes) -> Batch:
        """Decode a frame's body, or raise ``ValueError`` saying what is wrong with it."""
        _, decoder, decode_error = codec()
        try:
            body = decoder.decode(data)
        except decode_error as exc:
            raise ValueError(str(exc)) from None
        batch = cls()
        (batch.new_runs, batch.run_updates, batch.new_attempts, batch.attempt_updates,
         batch.events, batch.versions) = body  # fmt: skip
        for key, row in batch.new_runs.items():
            missing = len(RUN_COLUMNS) - len(row)
            if 0 < missing <= _ADDED_RUN_COLUMNS:
                batch.new_runs[key] = (*row, *(None,) * missing)
        for name, rows, width in (
            ("new run", batch.new_runs, len(RUN_COLUMNS)),
            ("run update", batch.run_updates, len(RUN_UPDATE_COLUMNS)),
            ("new attempt", batch.new_attempts, len(ATTEMPT_COLUMNS)),
            ("attempt update", batch.attempt_updates, len(ATTEMPT_COLUMNS)),
        ):
            for key, row in rows.items():
                if len(row) != width or row[0] != key:
                    raise ValueError(f"a {name} row for {key!r} does not fit the table")
        for name, listed, width in (
            ("event", batch.events, _EVENT_WIDTH),
            ("task version", batch.versions, _VERSION_WIDTH),
        ):
            if any(len(row) != width for row in listed):
                raise ValueError(f"an {name} row does not fit the table")
        return batch


# A frame: body length, CRC32 of the body, sequence number; then the body.
_FRAME = struct.Struct(">IIQ")
# The file is zero-filled ahead of the frames: as much as it holds already (at least
# GROW_MIN, so the first commit stays cheap), at most GROW_MAX at a time.
GROW_MIN, GROW_MAX = 64 << 10, 4 << 20


class JournalFile:
    """The file next to a store, written in place from its start.

    Frames overwrite bytes that are already allocated and written (zeros, or frames already
    folded), so ``fdatasync`` flushes data only, not the file's size: about 0.15 ms here
    instead of 0.25 for an append. After a fold the next frame goes to offset 0 again; a
    reader takes frames while their sequence numbers follow on, so what is left of older
    frames further on is never read back. Used under the store's lock only.

    A journal must be the current user's and writable by nobody else, or it is refused:
    its frames become rows of the store. After each append the file at ``path`` is checked
    to be the one written: if it was deleted or replaced, a copy of what this one holds is
    put in its place, with a warning, before the frame is acknowledged."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = _open_journal(path)
        self._id = _identity(os.fstat(self._fd))
        self._watch = FileWatch(path)
        self._suspect = False  # the file may have lost its name: look before trusting it
        self._end = 0  # where the next frame goes
        self._size = os.fstat(self._fd).st_size  # bytes written so far, zeros or frames

    def append(self, seq: int, body: bytes) -> None:
        """Write one frame and wait until it is on disk."""
        header = _FRAME.pack(len(body), zlib.crc32(body), seq)
        size = len(header) + len(body)
        if self._end + size > self._size:
            self._grow(self._end + size)
        written = os.pwritev(self._fd, [header, body], self._end)  # no joined copy
        if written < size:
            _write(self._fd, (header + body)[written:], self._end + written)
        os.fdatasync(self._fd)
        self._end += size
        try:
            self.check()
        except BaseException:  # not durable under the journal's name: not written
            self._end -= size
            raise

    def check(self) -> None:
        """Make sure ``path`` is still this file; put a copy of it there if not. Looked
        at only when the file's watch saw it lose a name (or cannot watch)."""
        if self._watch.maybe_changed():
            self._suspect = True  # until seen whole: a restore that failed is tried again
        if not self._suspect:
            return
        try:
            if _identity(os.stat(self.path, follow_symlinks=False)) == self._id:
                self._suspect = False
                return
            what = "replaced"
        except FileNotFoundError:
            what = "deleted"
        warnings.warn(
            f"the nbtasks journal {self.path!r} was {what} while its store was open; "
            "nbtasks put back what it holds (nothing acknowledged is lost)",
            NbtasksWarning,
            stacklevel=2,
        )
        self._restore()
        self._suspect = False

    def _restore(self) -> None:
        """Write what this file holds to a new file, then move that over ``path``."""
        spare = f"{self.path}.{os.getpid()}.new"
        fd = create_private(spare)
        try:
            offset = 0
            while offset < self._end:
                chunk = os.pread(self._fd, min(1 << 20, self._end - offset), offset)
                _write(fd, chunk, offset)
                offset += len(chunk)
            os.fsync(fd)
            os.replace(spare, self.path)
            fsync_folder(self.path)
        except BaseException:
            os.close(fd)
            try:
                os.unlink(spare)
            except OSError:
                pass
            raise
        os.close(self._fd)
        self._fd, self._size = fd, self._end
        self._id = _identity(os.fstat(fd))
        self._watch.close()
        self._watch = FileWatch(self.path)

    def _grow(self, needed: int) -> None:
        """Zero-fill past ``needed``; the frame's own ``fdatasync`` makes it durable."""
        size = max(needed, self._size) + min(GROW_MAX, max(GROW_MIN, self._size))
        zeros = bytes(min(size - self._size, 1 << 20))
        for offset in range(self._size, size, len(zeros)):
            _write(self._fd, zeros[: size - offset], offset)
        self._size = size

    def read(self) -> list[tuple[int, bytes]]:
        """The frames from the start of the file while each is whole and follows on from
        the one before, undecoded; a torn, corrupt or older frame ends the journal."""
        data = os.pread(self._fd, os.fstat(self._fd).st_size, 0)
        frames: list[tuple[int, bytes]] = []
        pos = 0
        while len(data) - pos >= _FRAME.size:
            size, crc, seq = _FRAME.unpack_from(data, pos)
            body = data[pos + _FRAME.size : pos + _FRAME.size + size]
            if not size or len(body) < size or zlib.crc32(body) != crc:
                break
            if frames and seq != frames[-1][0] + 1:
                break
            frames.append((seq, body))
            pos += _FRAME.size + size
        return frames

    def clear(self) -> None:
        """Start again from the top, once what the file holds is folded."""
        self._end = 0

    def close(self) -> None:
        os.close(self._fd)
        self._watch.close()

    def remove(self) -> None:
        """Delete the file (its frames are folded). A folder that no longer lets us is
        left as it is: the frames are older than what the store records as folded."""
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        except OSError:  # EACCES, EPERM, EROFS
            return
        fsync_folder(self.path)


def decode_frames(path: str, frames: list[tuple[int, bytes]]) -> list[Batch]:
    """The batches of ``frames`` (checked already), or a ``JournalError`` naming the first
    frame that is not rows of this store."""
    batches = []
    for seq, body in frames:
        try:
            batches.append(Batch.loads(body))
        except ValueError as exc:
            raise JournalError(
                f"frame {seq} of the journal {path!r} is not nbtasks data ({exc}); nothing "
                "of it was used. If you did not expect this file, move it away and open "
                "the store again"
            ) from None
    return batches


def _identity(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


def _write(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _open_journal(path: str) -> int:
    """Open the journal at ``path``, creating it private if it is not there; refuse one
    that another user owns or could have written, or that is not a plain file."""
    try:
        return create_private(path)
    except FileExistsError:
        pass
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError as exc:
        raise JournalError(f"cannot open the nbtasks journal {path!r}: {exc}") from None
    st = os.fstat(fd)
    problem = None
    if not stat.S_ISREG(st.st_mode):
        problem = "it is not a regular file"
    elif st.st_uid != os.getuid():
        problem = f"it belongs to user id {st.st_uid}, not to you ({os.getuid()})"
    elif st.st_mode & 0o022:
        problem = f"others can write to it (mode {stat.S_IMODE(st.st_mode):o})"
    if problem is not None:
        os.close(fd)
        raise JournalError(
            f"the nbtasks journal {path!r} is refused: {problem}. Its frames would become "
            "runs of the store; if you trust it, fix its owner and mode, else move it away"
        )
    if stat.S_IMODE(st.st_mode) != 0o600:
        os.fchmod(fd, 0o600)
    return fd
