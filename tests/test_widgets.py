"""The widgets' kernel side: state pushed to the front-end, and the actions its buttons send.

The front-end itself is exercised in a real browser by test_browser.py; here the messages a
button sends are delivered the way ipywidgets delivers them (``_handle_custom_msg``)."""

from __future__ import annotations

from typing import Any

import pytest

import nbtasks
from nbtasks import RunStatus, runs
from nbtasks.core import display
from nbtasks.ui.table import RunTable
from nbtasks.ui.widgets import BatchWidget, RunWidget

from conftest import wait_for
from crashers import sleep_for
from tasks import add, always_fail, succeed_on_third


def _click(widget: Any, content: dict[str, Any]) -> None:
    widget._handle_custom_msg(content, [])


def test_run_widget_follows_a_run_to_its_end(nb: object) -> None:
    handle = succeed_on_third.trigger(None)
    widget = RunWidget(handle.id)
    handle.wait(timeout=10)
    wait_for(lambda: widget.run.get("status") == "COMPLETED", "the widget to show COMPLETED")
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
    assert widget.feedback == "canceled"  # not "canceled: CANCELED"
    assert str(handle.retrieve().error) == "CANCELED: by the Cancel button of its run widget"
    wait_for(lambda: widget.run.get("status") == "CANCELED", "the widget to show CANCELED")
    _click(widget, {"action": "cancel"})
    assert widget.feedback == "already CANCELED"
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
    wait_for(lambda: widget.counts == {"COMPLETED": 2000}, "the widget to count 2000 COMPLETED")
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


# -- the display hook: how the layers below the UI reach it ------------------------------


class _FakeView:
    def __init__(self, *args: Any) -> None:
        self.args = args

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        return {"view": self.args}


class _FakeUI:
    def __init__(self) -> None:
        self.shown: list[tuple[Any, ...]] = []

    def run_view(self, run_id: str, text: str) -> _FakeView:
        return _FakeView("run", run_id, text)

    def batch_view(self, run_ids: list[str], task_id: str, text: str) -> _FakeView:
        return _FakeView("batch", run_ids, task_id, text)

    def show_wait(self, run_ids: list[str], task_id: str, batch: bool) -> None:
        self.shown.append((run_ids, task_id, batch))

    def pump(self) -> None:
        return None

    def run_table(self, status: str | None, task: str | None, tag: str | None,
                  limit: int) -> _FakeView:  # fmt: skip
        return _FakeView("table", status, task, tag, limit)


def test_without_a_ui_runs_show_as_text_and_waits_do_not_pump(
    nb: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(display, "_ui", None)
    monkeypatch.setattr(display, "_loader", None)
    monkeypatch.setattr(display, "kernel", lambda main_thread_only=True: object())  # "Jupyter"
    result = add.trigger_and_wait({"a": 1, "b": 2})  # a wait, without pump or live view
    assert result.unwrap() == 3
    batch = add.batch_trigger_and_wait([{"a": 1, "b": 1}])
    handle = add.trigger({"a": 2, "b": 2})
    for shown in (result.run, batch, handle, add.batch_trigger([{"a": 0, "b": 0}])):
        assert shown._repr_mimebundle_() == {"text/plain": repr(shown)}
    with pytest.raises(nbtasks.NbtasksError, match="notebook UI"):
        runs.table()
    handle.wait(timeout=10)


def test_the_ui_is_loaded_on_first_need_and_reached_through_the_hook(
    nb: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    ui = _FakeUI()
    loads: list[int] = []
    monkeypatch.setattr(display, "_ui", None)
    monkeypatch.setattr(display, "_loader", lambda: loads.append(1) or display.install(ui))
    result = add.trigger_and_wait({"a": 1, "b": 2})
    assert result.run._repr_mimebundle_() == {"text/plain": repr(result.run)}  # no notebook
    assert loads == []  # nothing needed the UI outside a notebook
    assert runs.table(status="FAILED")._repr_mimebundle_() == {
        "view": ("table", "FAILED", None, None, 25)
    }  # the run table is a UI object wherever it is asked for
    assert loads == [1]
    monkeypatch.setattr(display, "kernel", lambda main_thread_only=True: object())  # "Jupyter"
    assert result.run._repr_mimebundle_() == {"view": ("run", result.id, repr(result.run))}
    batch = add.batch_trigger_and_wait([{"a": 1, "b": 1}, {"a": 2, "b": 2}])
    assert batch._repr_mimebundle_() == {
        "view": ("batch", [r.id for r in batch], "add", repr(batch))
    }
    assert ui.shown == [([r.id for r in batch], "add", True)]  # the wait showed its batch
    assert loads == [1]
