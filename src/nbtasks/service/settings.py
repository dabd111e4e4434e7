"""What a server is started with: the choices of the process that starts it."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field


@dataclass
class Config:
    """What a server is started with (the starting client's choices)."""

    store: str
    workers: int | None = None  # None: the executor's size hint, else one per core
    executor: bytes | None = None  # a dill'ed executor factory; None: local workers
    executor_name: str = "local"
    max_payload: tuple[int, str] = (64 << 20, "64MiB")
    sys_path: list[str] = field(default_factory=lambda: list(sys.path))
    cwd: str = field(default_factory=os.getcwd)
    spawn: bool = False  # start workers at once (the server starts for a trigger)
    idle_s: float = 300.0
