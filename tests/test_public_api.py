"""The public surface: what ``import nbtasks`` offers, and nothing private leaking out."""

from __future__ import annotations

import types

import pytest

import nbtasks


def test_all_lists_exactly_the_public_names() -> None:
    """Everything public is in __all__, and every name there resolves: besides the hook
    IPython looks up for ``%load_ext nbtasks``."""
    public = {name for name in dir(nbtasks) if not name.startswith("_")}
    assert set(nbtasks.__all__) == public - {"load_ipython_extension"}
    for name in nbtasks.__all__:
        assert not isinstance(getattr(nbtasks, name), types.ModuleType), name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        nbtasks.nope  # noqa: B018
    assert nbtasks.__all__ == sorted(nbtasks.__all__)


def test_contract_names_are_importable() -> None:
    from nbtasks import (  # noqa: F401
        AbortRun,
        Attempt,
        BatchItem,
        BatchResult,
        Queue,
        Result,
        Retry,
        Run,
        RunError,
        RunHandle,
        RunStatus,
        Task,
        context,
        metadata,
        runs,
        task,
    )

    assert [s.value for s in RunStatus] == [
        "WAITING_FOR_DEPLOY", "DELAYED", "QUEUED", "EXECUTING", "REATTEMPTING", "FROZEN",
        "COMPLETED", "CANCELED", "FAILED", "TIMED_OUT", "CRASHED", "INTERRUPTED",
        "SYSTEM_FAILURE", "EXPIRED",
    ]  # fmt: skip
    assert RunStatus("COMPLETED") is RunStatus.COMPLETED and RunStatus.COMPLETED == "COMPLETED"


def test_errors_share_one_base_and_read_under_their_public_name() -> None:
    for err in (
        nbtasks.StoreLockedError,
        nbtasks.StoreWriteError,
        nbtasks.UnknownRunError,
        nbtasks.PayloadError,
        nbtasks.RunError,
        nbtasks.EngineStoppedError,
    ):
        assert issubclass(err, nbtasks.NbtasksError)
        assert err.__module__ == "nbtasks"
    assert issubclass(nbtasks.PayloadError, TypeError)
    assert issubclass(nbtasks.UnknownRunError, KeyError)
    assert not issubclass(nbtasks.AbortRun, nbtasks.NbtasksError)
