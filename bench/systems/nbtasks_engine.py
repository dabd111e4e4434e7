"""Where nbtasks' engine runs, for the bench's nbtasks processes: in a server process per
store (the service, ``nbtasks.service``), or in the calling process (the commits before
it, e.g. a ``--baseline``). The bench's code is the work tree's for both rows, so it asks
which one it runs with.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import nbtasks

SERVICE = importlib.util.find_spec("nbtasks.service") is not None
REPO = Path(__file__).resolve().parent.parent.parent


def server_pid(store: str) -> int | None:
    """The pid of the live server of ``store``; None when none runs (or no service)."""
    if not SERVICE:
        return None
    from nbtasks.service.client import server_pid as live_server

    return live_server(store)


def engine_pid(store: str) -> int:
    """The process that runs the engine of ``store``: its server, or this process."""
    return server_pid(store) or os.getpid()


def where(store: str) -> str:
    """Where the engine of ``store`` runs and which nbtasks it is, said for the report."""
    root = Path(nbtasks.__file__).resolve().parent.parent
    code = root.relative_to(REPO) if root.is_relative_to(REPO) else root
    pid = server_pid(store)
    if pid is None:
        return f"in the measuring process (in-process engine); nbtasks from {code}"
    return f"in a server process (pid {pid}) reached over a Unix socket; nbtasks from {code}"


def stop() -> None:
    """End this process's engine. With the service, stop the store's server and wait until
    it is gone: ``nbtasks.shutdown()`` alone only disconnects, and the server would stay
    up, idle, for minutes. Before it, ``nbtasks.shutdown()`` ends the engine."""
    if SERVICE:
        nbtasks.shutdown(stop_server=True)
    else:
        nbtasks.shutdown()
