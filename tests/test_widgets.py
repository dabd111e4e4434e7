"""The widgets' kernel side: state pushed to the front-end, and the actions its buttons send.

The front-end itself is exercised in a real browser by test_browser.py; here the messages a
button sends are delivered the way ipywidgets delivers them (``_handle_custom_msg``)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from nbtasks import RunStatus, runs
from nbtasks.ui.table import RunTable
from nbtasks.ui.widgets import BatchWidget, RunWidget

from crashers import sleep_for
from tasks import add, always_fail, succeed_on_third


def _click(widget: Any, content: dict[str, Any]) -> None:
    widget._handle_custom_msg(content, [])


def _eventually(check: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "the widget never showed the expected state"
        time.sleep(0.02)


def test_run_widget_follows_a_run_to_its_end(nb: object) -> None:
    handle = succeed_on_third.trigger(None)
    widget = RunWidget(handle.id)
    handle.wait(timeout=10)
    _eventually(lambda: widget.run.get("status") == "COMPLETED")
    state = widget.run
    assert [a["status"] for a in state["attempts"]] == ["FAILED", "FAILED", "COMPLETED"]
    assert state["attempts"][0]["error"]["type"] == "RuntimeError"
    assert state["output_preview"] == "3" and state["error"] is None
    timeline = [status for status, *_ in widget.timeline]
    assert timeline[0] == "QUEUED" and timeline[-1] == "COMPLETED"
    assert "REATTEMPTING" in timeline
    assert repr(widget) == "Run(task='succeed_on_third', live)"  # its text at display time


def test_run_widget_buttons_cancel_and_replay(nb: object) -> None:
    handle = sleep_for.trigger(30)
    widget = RunWidget(handle.id)
    _click(widget, {"action": "cancel"})
    assert widget.feedback == "canceled: CANCELED"
    _eventually(lambda: widget.run.get("status") == "CANCELED")
    _click(widget, {"action": "replay"})
    (replay_id,) = widget.replays
    assert runs.retrieve(replay_id).replayed_from == handle.id
    runs.cancel(replay_id)
    _click(widget, {"action": "reschedule", "delay": "1m"})
    assert "only a DELAYED run can be rescheduled" in widget.feedback


def test_reschedule_button_moves_a_delayed_run(nb: object) -> None:
    handle = add.trigger({"a": 1, "b": 1}, delay="1h")
    widget = RunWidget(handle.id)
    _click(widget, {"action": "reschedule", "delay": "1m"})
    assert widget.feedback.startswith("rescheduled to ")
    run = handle.retrieve()
    assert run.delay_until is not None
    assert 50 < (run.delay_until - run.updated_at).total_seconds() < 70


def test_batch_widget_counts_every_run_of_a_big_batch(nb: object) -> None:
    handle = add.batch_trigger([{"a": i, "b": 0} for i in range(2000)])
    widget = BatchWidget([h.id for h in handle.runs], "add")
    handle.wait(timeout=60)
    _eventually(lambda: widget.counts == {"COMPLETED": 2000})
    assert widget.total == 2000 and len(widget.sample) == 200
    _click(widget, {"action": "select", "run_id": handle.runs[5].id})
    assert widget.selected["output_preview"] == "5"


def test_run_table_filters_sorts_pages_and_acts(nb: object) -> None:
    add.batch_trigger_and_wait([{"a": i, "b": 0} for i in range(30)])
    always_fail.trigger_and_wait(None, max_attempts=1)
    table = RunTable(limit=10)
    assert len(table.rows) == 10 and table.has_next
    _click(table, {"action": "page", "delta": 1})
    assert table.page == 1 and len(table.rows) == 10
    _click(table, {"action": "filter", "status": "FAILED", "task": "", "tag": ""})
    assert [r["status"] for r in table.rows] == ["FAILED"] and table.page == 0
    assert table.rows[0]["error"] == "RuntimeError: always"
    _click(table, {"action": "filter", "status": "", "task": "add", "tag": ""})
    _click(table, {"action": "sort", "col": "task_id"})
    assert {r["task_id"] for r in table.rows} == {"add"}
    failed_id = runs.list(status="FAILED")[0].id
    _click(table, {"action": "open", "id": failed_id})
    assert table.detail["status"] == "FAILED"
    _click(table, {"action": "replay", "ids": [failed_id]})
    assert table.feedback == "replay: 1 run(s)"
    assert len(runs.list(task="always_fail")) == 2


def test_run_table_validates_its_filters(nb: object) -> None:
    with pytest.raises(ValueError, match="status='NOPE'"):
        RunTable(status="NOPE")
    with pytest.raises(ValueError, match="limit=0"):
        RunTable(limit=0)
    assert repr(RunTable(status="FAILED", task="add")) == "RunTable(status='FAILED', task='add')"


def test_widget_reprs_are_stable(nb: object) -> None:
    result = add.trigger_and_wait({"a": 1, "b": 2})
    assert repr(RunWidget(result.id)) == "Run(task='add', status=COMPLETED, attempts=1, output=3)"
    assert result.status is RunStatus.COMPLETED
