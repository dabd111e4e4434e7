"""Payload size: a cap named in its error, and big payloads written around the journal."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

import nbtasks
from nbtasks import PayloadError, runs
from nbtasks.client import config
from nbtasks.core.serialize import dumps
from nbtasks.store.store import Store

from conftest import has_status, wait_for
from tasks import forward, size_of

MIB = 1 << 20


@pytest.fixture
def cap() -> Iterator[None]:
    """Leave the cap as it was for the next test."""
    yield
    config._settings["max_payload"] = None


def _count() -> int:
    ((n,),) = runs.sql("select count(*) from runs").fetchall()
    return int(n)


def test_a_payload_over_the_cap_is_refused_naming_its_size_before_any_run(
    nb: object, cap: None
) -> None:
    assert size_of.trigger_and_wait(b"warm").output == 4
    nbtasks.configure(max_payload="1MiB")  # the running engine takes it at once
    made = _count()
    with pytest.raises(PayloadError, match=r"^payload is 2\.0 MiB serialised, over "
                       r"max_payload='1MiB' \(1\.0 MiB\); no run was made"):  # fmt: skip
        size_of.trigger(bytes(2 * MIB))
    with pytest.raises(PayloadError, match=r"^items\[1\] is 3\.0 MiB serialised"):
        size_of.batch_trigger_and_wait([b"a", bytes(3 * MIB), b"c"])
    with pytest.raises(PayloadError, match="over max_payload='1MiB'"):
        runs.trigger("size_of", bytes(2 * MIB))
    assert _count() == made
    assert size_of.trigger_and_wait(bytes(MIB // 2)).output == MIB // 2


def test_a_task_triggering_over_the_cap_gets_the_error_in_the_task(nb: object, cap: None) -> None:
    nbtasks.configure(max_payload="1MiB")
    result = forward.trigger_and_wait(2 * MIB)
    assert not result.ok
    assert result.error is not None and "over max_payload='1MiB'" in result.error.message


@pytest.mark.parametrize("value", ["lots", 0, -5, "1.5.2MiB", True])
def test_a_bad_cap_is_named(value: object, cap: None) -> None:
    with pytest.raises(ValueError, match=rf"max_payload={value!r}"[:20].replace("(", r"\(")):
        nbtasks.configure(max_payload=value)  # type: ignore[arg-type]


def test_the_cap_from_the_environment(
    nb: object, cap: None, monkeypatch: pytest.MonkeyPatch, store_path: str
) -> None:
    monkeypatch.setenv("NBTASKS_MAX_PAYLOAD", "100KiB")
    nbtasks.configure(store=store_path)  # a new engine reads it
    with pytest.raises(PayloadError, match=r"over max_payload='100KiB' \(0\.1 MiB\)"):
        size_of.trigger(bytes(200 << 10))
    monkeypatch.setenv("NBTASKS_MAX_PAYLOAD", "plenty")
    nbtasks.configure(store=store_path)
    with pytest.raises(ValueError, match="NBTASKS_MAX_PAYLOAD='plenty'"):
        size_of.trigger(b"x")


def _journal_bytes(store_path: str) -> bytes:
    return b"".join(
        Path(store_path + suffix).read_bytes()
        for suffix in (".journal", ".journal.1")
        if os.path.exists(store_path + suffix)
    )


def test_a_big_payload_goes_around_the_journal_and_reads_back(nb: object, store_path: str) -> None:
    marker = b"BIG-PAYLOAD-MARKER-" * 1000
    data = marker * 200  # about 3.6 MiB
    handle = size_of.trigger(data, delay="1h")  # stays DELAYED: nothing folds it for us
    assert marker not in _journal_bytes(store_path)  # acknowledged, yet not in the journal
    rows = runs.sql(
        "select r.payload is null, p.data from runs r join payloads p on p.run_id = r.id"
    ).fetchall()
    assert rows == [(True, dumps(data))]  # the run's row holds no copy
    assert runs.retrieve(handle.id).payload == data
    runs.reschedule(handle.id, 0)
    assert runs.wait(handle.id, timeout=60).output == len(data)
    replayed = runs.replay(handle.id)
    assert replayed.wait(timeout=60).output == len(data)
    assert marker not in _journal_bytes(store_path)


def test_a_big_payload_from_inside_a_task(nb: object) -> None:
    assert forward.trigger_and_wait(3 * MIB).unwrap() == 3 * MIB
    ((stored,),) = runs.sql("select count(*) from payloads").fetchall()
    assert stored == 1


def test_a_delayed_run_with_a_big_payload_survives_a_restart(nb: object, store_path: str) -> None:
    data = bytes(range(256)) * (8 * 1024)  # 2 MiB
    handle = size_of.trigger(data, delay="2s")
    nbtasks.shutdown()
    nbtasks.configure(store=store_path, workers=1)  # as a new kernel would
    # The server outlived the disconnect: its settings apply, and the kernel is told so.
    with pytest.warns(nbtasks.NbtasksWarning, match=r"already runs with workers=2"):
        run = wait_for(has_status(handle.id, nbtasks.RunStatus.COMPLETED), "the delayed run")
    assert run.output == len(data)


def test_payloads_of_runs_never_made_are_removed_at_open(tmp_path: Path) -> None:
    path = tmp_path / "store.duckdb"
    store = Store(str(path), lambda ticket, error: None)
    store.put_payloads([("run_never_made", bytes(2 * MIB))])  # then the trigger was cut short
    store.close()
    Store(str(path), lambda ticket, error: None).close()
    conn = duckdb.connect(str(path), read_only=True)
    try:
        assert conn.execute("select count(*) from payloads").fetchone() == (0,)
    finally:
        conn.close()
