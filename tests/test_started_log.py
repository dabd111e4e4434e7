"""The started log (``executor/started.py``): what an engine that takes a store over
trusts of what the previous engine's workers noted, and what it does not."""

from __future__ import annotations

import os
from pathlib import Path

from nbtasks.executor import started

HEADER = started.header() or b"(no boot id here)"


def test_notes_are_read_back_under_the_header(tmp_path: Path) -> None:
    log = started.path_for(str(tmp_path / "runs.duckdb"))
    assert log == str(tmp_path / "runs.duckdb.started")
    started.reset(log, noted=True)
    assert os.stat(log).st_mode & 0o777 == 0o600
    fd = started.open_for_notes(log)
    assert started.note(fd, "run_a", 1) and started.note(fd, "run_b", 2)
    assert started.read(log) == {("run_a", 1), ("run_b", 2)}
    started.reset(log, noted=True)  # a next engine starts it afresh; the fd still appends
    assert started.note(fd, "run_c", 1)
    assert started.read(log) == {("run_c", 1)}
    assert fd is not None
    os.close(fd)


def test_a_log_that_cannot_say_is_not_trusted(tmp_path: Path) -> None:
    log = started.path_for(str(tmp_path / "runs.duckdb"))
    assert started.read(log) is None  # none at all
    started.reset(log, noted=False)  # an engine whose workers do not note (Dask)
    assert started.read(log) is None
    Path(log).write_bytes(HEADER + b"run_a 1\nrun_b")  # a torn last line
    assert started.read(log) is None
    Path(log).write_bytes(HEADER + b"run_a one\n")
    assert started.read(log) is None
    Path(log).write_bytes(b"nbtasks started log 0\nrun_a 1\n")  # another format
    assert started.read(log) is None
    other_boot = started.FORMAT + b" boot 00000000-0000-0000-0000-000000000000\n"
    Path(log).write_bytes(other_boot + b"run_a 1\n")  # written before the machine rebooted:
    assert started.read(log) is None  # notes without fsync may have been lost
    os.unlink(log)
    target = tmp_path / "elsewhere"
    target.write_bytes(HEADER + b"run_a 1\n")
    os.symlink(target, log)  # a link planted beside the store is never followed
    assert started.read(log) is None
    assert started.open_for_notes(log) is None
    assert not started.note(None, "run_a", 1)
    started.reset(log, noted=True)  # the next engine puts a file of its own in its place
    assert not os.path.islink(log) and started.read(log) == set()
    assert target.read_bytes() == HEADER + b"run_a 1\n"


def test_a_servers_first_worker_notes_the_runs_sent_ahead(tmp_path: Path) -> None:
    """A new server launches its first worker before it makes the log: that worker still
    notes every run sent ahead to it (it opens the log when it first needs it), and none of
    them makes it give up (a worker that cannot note exits before the body)."""
    import nbtasks
    from nbtasks.client import config

    from tasks import worker_pid

    store = tmp_path / "store" / "runs.duckdb"
    nbtasks.configure(store=str(store), workers=1)
    try:
        batch = worker_pid.batch_trigger_and_wait(list(range(200)))
        pids = set(batch.unwrap())
        noted = started.read(started.path_for(str(store)))
    finally:
        config.shutdown(stop_server=True)
    assert len(pids) == 1, f"the worker was replaced: {pids}"
    ids = {r.id for r in batch.runs}
    assert noted is not None and noted and {run_id for run_id, _ in noted} <= ids
    assert all(number == 1 for _, number in noted)
