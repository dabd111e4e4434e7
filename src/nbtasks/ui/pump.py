"""Keep widget buttons working while a cell blocks in a wait.

ipykernel handles no shell message while a synchronous cell runs, so a Cancel button
clicked during ``trigger_and_wait`` would only act after the wait. While a wait blocks,
``Pump`` reads the main shell socket itself: comm messages (widget updates and button
clicks) are handled at once, with the cell's parent message restored afterwards so output
stays in the cell; every other message (a queued cell, say) is held and handed back to the
kernel in order when the wait ends, to run after the cell as usual.

This uses ipykernel internals (7.x: the shell channel's socket pair to the main thread;
6.x: the shell stream). When they are not found, or anything about them fails, the wait
simply does not pump.
"""

from __future__ import annotations

import asyncio
from typing import Any

from nbtasks.core.display import kernel

_COMM = frozenset({"comm_open", "comm_msg", "comm_close"})
_pending: set[asyncio.Future[Any]] = set()  # re-dispatched messages, until they are handled


class Pump:
    """Handles comm messages that arrive while the current cell blocks."""

    def __init__(self, kernel: Any) -> None:
        self.kernel = kernel
        self.held: list[Any] = []
        self.broken = False
        manager = getattr(getattr(kernel, "shell_channel_thread", None), "manager", None)
        pair = getattr(manager, "_shell_channel_to_main", None)
        if pair is not None and manager is not None:  # ipykernel 7
            self.socket = pair.to_socket
            self.stream = manager.get_subshell_to_shell_channel_socket(None)
            self.version = 7
        else:  # ipykernel 6
            self.socket = kernel.shell_stream.socket
            self.stream = kernel.shell_stream
            self.version = 6

    def __call__(self) -> None:
        if self.broken:
            return
        try:
            self._drain()
        except Exception:
            self.broken = True  # fall back to plain waiting

    def _drain(self) -> None:
        import zmq

        session = self.kernel.session
        while True:
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            idents, parts = session.feed_identities(frames, copy=False)
            header = session.deserialize(parts, content=False, copy=False)["header"]
            if header.get("msg_type") not in _COMM:
                self.held.append(frames)
                continue
            message = session.deserialize(parts, content=True, copy=False)
            parent = self.kernel.get_parent("shell")
            parent_ident = getattr(self.kernel, "_parent_ident", {}).get("shell")
            self.kernel.set_parent(idents, message, channel="shell")
            try:
                self.kernel.shell_handlers[header["msg_type"]](self.stream, idents, message)
            finally:
                self.kernel.set_parent(parent_ident, parent, channel="shell")

    def release(self) -> None:
        """Hand the held messages back to the kernel, in order, to run after the cell.

        They go back only once the kernel's loop has run again: a request the kernel had
        already read before the cell blocked must keep its place ahead of them."""
        held, self.held = self.held, []
        if not held:
            return
        if self.version == 7:
            loop = asyncio.get_event_loop()
            loop.call_soon(loop.call_soon, self._redispatch, held)
        else:
            for frames in held:
                self.kernel.schedule_dispatch(self.kernel.dispatch_shell, frames)

    def _redispatch(self, held: list[Any]) -> None:
        for frames in held:
            task = asyncio.ensure_future(self.kernel.shell_main(None, frames))
            _pending.add(task)
            task.add_done_callback(_pending.discard)


def start() -> Pump | None:
    """A pump for the current cell, or None outside a kernel's main thread."""
    found = kernel()
    if found is None:
        return None
    try:
        return Pump(found)
    except Exception:
        return None
