"""Payload sizes: a cap on what one run may carry, and big payloads kept off the journal.

A trigger's payloads are checked against ``max_payload`` (64 MiB unless configured) before
any run is made. A payload bigger than ``BIG_PAYLOAD`` does not travel through the journal
(every commit waits behind a frame being written, and a fold writes it again): it is
written to the store's ``payloads`` table by the store thread first, in a transaction of
its own, and the run's row holds no copy of it. A payload written for a run that was never
created is removed when the store is next opened.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nbtasks.core.durations import parse_memory
from nbtasks.core.errors import PayloadError

if TYPE_CHECKING:  # the store and the specs' module load only where runs are made
    from nbtasks.engine.state import RunSpec

BIG_PAYLOAD = 1 << 20
DEFAULT_MAX_PAYLOAD = "64MiB"


def max_payload_bytes(option: str, value: object) -> int:
    """The cap in bytes, from ``configure(max_payload=...)`` or ``NBTASKS_MAX_PAYLOAD``."""
    size = parse_memory(option, value)
    assert size is not None  # value is never None here
    return size


def check_sizes(specs: list[RunSpec], cap: int, cap_text: str) -> None:
    """Refuse the trigger, naming the payload and its size, if one is over the cap."""
    for i, spec in enumerate(specs):
        size = len(spec.payload)
        if size > cap:
            what = "payload" if spec.batch_id is None else f"items[{i}]"
            raise PayloadError(
                f"{what} is {_mib(size)} serialised, over max_payload={cap_text!r} "
                f"({_mib(cap)}); no run was made. Pass a path or a URL to the data instead, "
                "or raise the cap with nbtasks.configure(max_payload=...) or "
                "NBTASKS_MAX_PAYLOAD"
            )


def store_big(store: Any, specs: list[RunSpec]) -> None:
    """Write the big payloads of ``specs`` to the store (durable on return) and mark them,
    so their runs' rows carry none. ``store`` has ``put_payloads``: the store itself, in
    the server, or a client's way to it."""
    big = [spec for spec in specs if len(spec.payload) > BIG_PAYLOAD]
    if big:
        store.put_payloads([(spec.id, spec.payload) for spec in big])
        for spec in big:
            spec.payload_stored = True


def _mib(size: int) -> str:
    return f"{size / (1 << 20):.1f} MiB"
