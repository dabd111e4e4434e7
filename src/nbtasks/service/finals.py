"""The final snapshots a blocking wait awaits, streamed to its client.

The server pushes them as the wait's runs end (``settled``: those that became durable in
one step of its loop, in one message), then ``final`` once all have, with those of the
last step (so all of a single run's wait is one message). The client makes the snapshots
while the rest run, rather than all at the end, and the engine's loop spends no time on
them but their plain values (``RunState.wire()``), encoded as MessagePack in one go
(msgspec: times stay times, at a fraction of pickle's cost for a datetime).
"""

from __future__ import annotations

import concurrent.futures as cf
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from nbtasks.core.models import Run, run_from_wire

if TYPE_CHECKING:
    from nbtasks.engine.state import RunState

_encode: Callable[[Any], bytes] | None = None
_decode: Callable[[bytes], Any] | None = None


class Finals:
    """(Server side, on the engine's loop.) The final runs of one blocking wait, to push."""

    def __init__(self, push: Callable[..., None], later: Callable[[Callable[[], None]], Any],
                 token: int) -> None:  # fmt: skip
        self.push = push  # the session's push
        self.later = later  # the loop's call_soon: the rest of this step's runs join in
        self.token = token
        self.ready: list[tuple[int, tuple[Any, ...]]] = []

    def add(self, index: int, run: RunState) -> None:
        if not self.ready:
            self.later(self.flush)
        self.ready.append((index, run.wire()))

    def flush(self) -> None:
        if self.ready:
            ready, self.ready = self.ready, []
            self.push("settled", self.token, pack(ready))

    def end(self, final: cf.Future[Any]) -> None:
        """Every run is final: send what is left in ``final`` (plain pickled values: a
        single run's wait needs no msgspec on the client), or why the wait failed."""
        ready, self.ready = self.ready, []
        error = final.exception()
        self.push("final", self.token, error is None, error or ready)


def pack(ready: list[tuple[int, tuple[Any, ...]]]) -> bytes:
    global _encode
    if _encode is None:
        import msgspec

        _encode = msgspec.msgpack.Encoder().encode
    return _encode(ready)


def unpack(data: bytes) -> list[tuple[int, Run]]:
    """(Client side.) What ``pack`` made: ``(index in the batch, snapshot)`` each."""
    global _decode
    if _decode is None:
        import msgspec  # about 20 ms, once, on the client's reading thread

        _decode = msgspec.msgpack.Decoder().decode
    return snapshots(_decode(data))


def snapshots(ready: list[Any]) -> list[tuple[int, Run]]:
    """``(index, RunState.wire() values)`` pairs as ``(index, snapshot)``."""
    return [(index, run_from_wire(values)) for index, values in ready]
