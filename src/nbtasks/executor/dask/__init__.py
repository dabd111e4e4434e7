"""Runs on a Dask cluster: ``nbtasks.configure(executor=nbtasks.DaskExecutor(target))``.

``distributed`` is imported only when an engine starts on the executor, so that
``import nbtasks`` never needs it; without it, a clear error names the extra to install.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from nbtasks.core.errors import NbtasksError

if TYPE_CHECKING:
    from nbtasks.executor.dask.pool import DaskPool

ENV = "NBTASKS_DASK_SCHEDULER"
CONNECT_TIMEOUT_S = 10.0
# What the workers import while they boot: unpickling a task needs its class.
PRELOAD = ("nbtasks.client.task",)


def _distributed() -> Any:
    try:
        import distributed
    except ImportError as exc:
        raise ImportError(
            'the Dask executor needs Dask: pip install "nbtasks[dask]" (it installs '
            f"dask[distributed]); importing distributed failed: {exc}"
        ) from exc
    return distributed


class DaskExecutor:
    """Attempts run on a Dask cluster, each in a process of its own on a Dask worker.

    ``target`` is a scheduler address (``"tcp://host:8786"``), a ``distributed.Client`` or a
    cluster object (``LocalCluster``, dask-jobqueue, dask-kubernetes, Coiled...).
    ``timeout``: how long connecting to an address may take before a trigger fails. One
    object serves every engine of the process: each engine gets a pool of its own."""

    def __init__(self, target: Any, timeout: float = CONNECT_TIMEOUT_S) -> None:
        distributed = _distributed()
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise ValueError(
                f"DaskExecutor(timeout={timeout!r}) is not valid: use seconds, a number > 0"
            )
        self.timeout = float(timeout)
        if isinstance(target, str):
            if not target.strip():
                raise ValueError(f"DaskExecutor(target={target!r}) is not valid: use a "
                                 "scheduler address, a Client or a cluster")  # fmt: skip
        elif not isinstance(target, distributed.Client) and not hasattr(
            target, "scheduler_address"
        ):
            raise ValueError(
                f"DaskExecutor(target={target!r}) is not valid: use a scheduler address "
                "(tcp://host:8786), a distributed.Client or a cluster object"
            )
        self.target = target

    def __repr__(self) -> str:
        return f"DaskExecutor({self.address!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        """To the store's server, by address: a Client or cluster object stays here."""
        return (DaskExecutor, (self.address, self.timeout))

    @property
    def address(self) -> str:
        target = self.target
        if isinstance(target, str):
            return target
        if hasattr(target, "scheduler_address"):
            return str(target.scheduler_address)
        return str(target.scheduler.address)

    def _client(self) -> tuple[Any, bool]:
        """The client to use, and whether it is the pool's own (closed with it)."""
        distributed = _distributed()
        target = self.target
        if isinstance(target, distributed.Client):
            if target.status != "running":
                raise NbtasksError(f"the Dask client of {self.address} is {target.status}")
            return target, False
        try:
            client = distributed.Client(target, timeout=self.timeout, set_as_default=False)
        except (OSError, TimeoutError, RuntimeError) as exc:  # RuntimeError: a closed cluster
            raise NbtasksError(
                f"the Dask scheduler at {self.address} cannot be reached: {exc}"
            ) from exc
        return client, True

    def __call__(self) -> DaskPool:
        from nbtasks.executor.dask.pool import DaskPool

        client, owned = self._client()
        threads = sum(w.get("nthreads", 1) for w in client.scheduler_info()["workers"].values())
        return DaskPool(client, owned, PRELOAD, size_hint=max(1, threads))


def from_environment() -> DaskExecutor | None:
    address = os.environ.get(ENV, "").strip()
    return DaskExecutor(address) if address else None
