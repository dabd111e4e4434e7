"""The widgets' kernel side: state pushed to the front-end, and the actions its buttons send.

The front-end itself is exercised in a real browser by test_browser.py; here the messages a
button sends are delivered the way ipywidgets delivers them (``_handle_custom_msg``)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from IPython.core.formatters import DisplayFormatter

import nbtasks
from nbtasks import RunStatus, runs
from nbtasks.core import display
from nbtasks.ui.table import RunTable
from nbtasks.ui.widgets import BatchWidget, RunWidget

from conftest import has_status, start_script, wait_for
from crashers import sleep_for
from tasks import add, always_fail, fail_some, succeed_on_third


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
    assert widget.run["id"] == handle.id and widget.run["payload_preview"] == "30"
    _click(widget, {"action": "cancel"})
    assert widget.feedback == "canceled"  # not "canceled: CANCELED"
    assert str(handle.retrieve().error) == "CANCELED: by the Cancel button of its run widget"
    wait_for(lambda: widget.run.get("status") == "CANCELED", "the widget to show CANCELED")
    _click(widget, {"action": "cancel"})
    assert widget.feedback == "already CANCELED"
    _click(widget, {"action": "replay"})
    (replay_id,) = widget.replays
    assert widget.feedback == f"replayed as {replay_id}"
    assert runs.retrieve(replay_id).replayed_from == handle.id
    _click(widget, {"action": "open", "id": replay_id})  # the link to the new run
    assert widget.detail["id"] == replay_id
    runs.cancel(replay_id)
    wait_for(lambda: widget.detail["status"] == "CANCELED", "the opened replay to follow")
    _click(widget, {"action": "reschedule", "delay": "1m"})
    assert "only a DELAYED run can be rescheduled" in widget.feedback


def test_reschedule_button_moves_a_delayed_run_from_when_it_is_due(nb: object) -> None:
    handle = add.trigger({"a": 1, "b": 1}, delay="1h")
    due = handle.retrieve().delay_until
    assert due is not None
    widget = RunWidget(handle.id)
    for minutes in (1, 2):  # from when it is due, not from now: twice is two minutes
        _click(widget, {"action": "reschedule", "by_s": 60})
        until = handle.retrieve().delay_until
        assert until == due + timedelta(minutes=minutes)
        # the feedback names the time for the front-end to write as it writes the view's
        assert widget.feedback == f"rescheduled to {{time:{until.isoformat()}}}"
        assert widget.run["delay_until"] == until.isoformat()


def test_batch_grid_reaches_every_item_and_filters_by_status(nb: object) -> None:
    handle = fail_some.batch_trigger(list(range(2000)))
    widget = BatchWidget([h.id for h in handle.runs], "fail_some")
    handle.wait(timeout=60)
    wait_for(lambda: widget.counts == {"COMPLETED": 1800, "FAILED": 200}, "the final counts")
    assert widget.grid == {"status": "", "page": 0, "size": 200, "matching": 2000}
    assert [c["index"] for c in widget.sample] == list(range(200))
    _click(widget, {"action": "grid", "page": 9})  # the last page: items 1800-1999
    assert [c["index"] for c in widget.sample] == list(range(1800, 2000))
    _click(widget, {"action": "grid", "page": 10})  # past the end: the last page
    assert widget.grid["page"] == 9
    _click(widget, {"action": "grid", "status": "FAILED"})  # the FAILED badge
    assert widget.grid == {"status": "FAILED", "page": 0, "size": 200, "matching": 200}
    assert [c["index"] for c in widget.sample] == [i for i in range(2000) if i % 10 == 7]
    assert {c["status"] for c in widget.sample} == {"FAILED"}
    _click(widget, {"action": "select", "run_id": widget.sample[-1]["id"]})
    assert widget.selected["error"]["message"] == "item 1997"
    _click(widget, {"action": "grid", "status": "FAILED"})  # the same badge again: all
    assert widget.grid["status"] == "" and widget.grid["matching"] == 2000


def test_live_views_follow_their_runs_onto_the_next_server_after_a_crash(
    nb: object, store_path: str
) -> None:
    """SIGKILL of the server while a run view and a batch view follow executing runs: the
    process starts a new server, which settles them INTERRUPTED, and both views show it
    (they would stay on EXECUTING, following a server that is gone)."""
    import signal

    import psutil

    from nbtasks.client import config
    from nbtasks.service.client import server_pid

    one = sleep_for.trigger(60)
    batch = sleep_for.batch_trigger([60])
    ids = [one.id, batch.runs[0].id]
    for run_id in ids:
        wait_for(has_status(run_id, RunStatus.EXECUTING), "the runs to execute")
    # ... and until the store holds it: the engine says EXECUTING as it stages a start, and
    # a start the crash lost was never handed to a worker: its run is queued again.
    wait_for(lambda: _stored_statuses(ids) == {"EXECUTING"}, "their starts to be committed")
    run_view = RunWidget(one.id)
    batch_view = BatchWidget([batch.runs[0].id], "sleep_for")
    assert run_view.run["status"] == "EXECUTING" and batch_view.counts == {"EXECUTING": 1}
    crashed = psutil.Process(config.engine().info["pid"])
    crashed.send_signal(signal.SIGKILL)
    crashed.wait(timeout=10)
    wait_for(lambda: server_pid(store_path) not in (None, crashed.pid), "a new server")
    wait_for(lambda: run_view.run["status"] == "INTERRUPTED", "the run view to say INTERRUPTED")
    wait_for(lambda: batch_view.counts == {"INTERRUPTED": 1}, "the batch view to say it too")
    assert "server that owned the run stopped" in run_view.run["error"]["message"]


def _stored_statuses(run_ids: list[str]) -> set[str]:
    """The statuses the store holds (committed) for ``run_ids``."""
    rows = runs.sql("SELECT status FROM runs WHERE id IN (SELECT unnest(?))", [run_ids])
    return {status for (status,) in rows.fetchall()}


def test_a_process_that_only_shows_a_run_follows_it_onto_the_next_server(
    tmp_path: Path,
) -> None:
    """The same from a process that defines no task and only shows a run: after the crash,
    it starts the next server itself, for its view."""
    import signal

    import psutil

    from nbtasks.service.client import server_pid

    store = str(tmp_path / "store" / "runs.duckdb")
    env = {"NBTASKS_STORE": store}
    trigger = start_script("""
        import time
        from nbtasks import task

        @task
        def nap(s):
            time.sleep(s)

        print(nap.trigger(60).id, flush=True)
    """, tmp_path, env=env, name="trigger.py")  # fmt: skip
    out, err = trigger.communicate(timeout=60)
    assert trigger.returncode == 0, err
    run_id = out.strip()
    viewer = start_script(f"""
        import sys, time
        from nbtasks import runs
        from nbtasks.ui.widgets import RunWidget

        stored = "SELECT status FROM runs WHERE id = ?"  # committed: what a crash keeps
        while runs.sql(stored, [{run_id!r}]).fetchall() != [("EXECUTING",)]:
            time.sleep(0.02)
        view = RunWidget({run_id!r})
        print(view.run["status"], flush=True)
        deadline = time.monotonic() + 30
        while view.run["status"] != "INTERRUPTED" and time.monotonic() < deadline:
            time.sleep(0.02)
        print(view.run["status"], flush=True)
    """, tmp_path, env=env, name="viewer.py")  # fmt: skip
    try:
        assert viewer.stdout is not None
        assert viewer.stdout.readline().strip() == "EXECUTING"
        crashed = psutil.Process(server_pid(store) or 0)
        crashed.send_signal(signal.SIGKILL)
        out, err = viewer.communicate(timeout=60)
    finally:
        viewer.kill()
    assert out.strip() == "INTERRUPTED", err
    assert server_pid(store) not in (None, crashed.pid)  # the viewer started it


def test_a_stopped_batch_says_what_did_not_complete(nb: object) -> None:
    handle = sleep_for.batch_trigger([0.0, 0.0, 30, 30, 30, 30])
    widget = BatchWidget([h.id for h in handle.runs], "sleep_for")
    wait_for(lambda: widget.counts.get("COMPLETED") == 2, "the quick runs to complete")
    _click(widget, {"action": "cancel_all"})
    assert widget.feedback == "canceled 4 unfinished run(s)"
    wait_for(lambda: widget.counts == {"COMPLETED": 2, "CANCELED": 4}, "the batch to end")
    html = widget._repr_mimebundle_()[0]["text/html"]
    assert "6/6 finished" in html and "CANCELED 4" in html and "COMPLETED 2" in html


def test_run_table_filters_sorts_pages_and_acts(nb: object) -> None:
    add.batch_trigger_and_wait([{"a": i, "b": 0} for i in range(30)])
    always_fail.trigger_and_wait(None, max_attempts=1)
    table = RunTable(limit=10)
    assert len(table.rows) == 10 and table.has_next and table.total == 31
    _click(table, {"action": "page", "delta": 1})
    assert table.page == 1 and len(table.rows) == 10
    _click(table, {"action": "filter", "status": "FAILED", "task": "", "tag": ""})
    assert [r["status"] for r in table.rows] == ["FAILED"] and table.page == 0
    assert table.total == 1 and table.rows[0]["error"] == "RuntimeError: always"
    row = table.rows[0]
    assert row["created_at"] <= row["started_at"] <= row["finished_at"]
    _click(table, {"action": "filter", "status": "", "task": "add", "tag": ""})
    _click(table, {"action": "sort", "col": "task_id"})
    assert {r["task_id"] for r in table.rows} == {"add"} and table.total == 30
    failed_id = runs.list(status="FAILED")[0].id
    _click(table, {"action": "open", "id": failed_id})
    assert table.detail["status"] == "FAILED"
    _click(table, {"action": "replay", "ids": [failed_id]})
    (replayed,) = [r for r in runs.list(task="always_fail") if r.id != failed_id]
    assert table.feedback == f"replayed 1 selected run as {replayed.id}"


def test_run_table_matches_task_and_tag_by_substring_and_ids_by_prefix(nb: object) -> None:
    add.trigger_and_wait({"a": 1, "b": 1}, tags=["nightly-crawl"])
    target = succeed_on_third.trigger_and_wait(None)
    table = RunTable(task="on_th")  # as %runs --task on_th
    assert table.filters == {"status": "", "task": "on_th", "tag": "", "id": ""}
    assert [r["task_id"] for r in table.rows] == ["succeed_on_third"]
    _click(table, {"action": "filter", "task": "ADD"})
    assert [r["task_id"] for r in table.rows] == ["add"]
    _click(table, {"action": "filter", "tag": "crawl"})
    assert [r["task_id"] for r in table.rows] == ["add"]
    # with or without "run_"; long enough to tell it from the run made just before it (an
    # id's first characters are its creation time: both may share the same 36 ms)
    for prefix in (target.id[:-3], target.id[4:-3]):
        _click(table, {"action": "filter", "id": prefix})
        assert [r["id"] for r in table.rows] == [target.id], prefix
    assert RunTable(id=target.id[:-3]).total == 1
    _click(table, {"action": "open", "id": target.id})  # its finished attempts' logs
    assert [a["status"] for a in table.detail["attempts"]] == ["FAILED", "FAILED", "COMPLETED"]
    assert "stdout" in table.detail["attempts"][0] and table.detail["payload_preview"] == "None"


def test_run_table_bulk_actions_act_on_what_the_filter_matches(nb: object) -> None:
    add.trigger_and_wait({"a": 1, "b": 1})
    sleepers = sleep_for.batch_trigger([30] * 3)
    table = RunTable(task="sleep")
    assert table.total == 3 and table.unfinished == 3
    _click(table, {"action": "bulk", "op": "cancel", "filters": dict(table.filters)})
    assert table.feedback == "canceled 3 matching runs"
    assert {h.retrieve().status.value for h in sleepers.runs} == {"CANCELED"}
    assert runs.list(task="add")[0].status is RunStatus.COMPLETED  # not matched: untouched
    _click(table, {"action": "bulk", "op": "replay", "filters": {"task": "add"}})
    assert table.feedback.startswith("replayed 1 matching run as run_")
    assert len(runs.list(task="add")) == 2
    for r in runs.list(task="sleep_for"):
        runs.cancel(r.id)


ORIGIN_SCRIPT = """
from nbtasks import task

@task
def tick(n):
    return n

tick.trigger_and_wait(1)
"""


def test_run_table_shows_and_sorts_where_each_run_came_from(
    nb: object, store_path: str, tmp_path: Path
) -> None:
    for name in ("b_job.py", "a_job.py"):  # b's run is the older
        script = start_script(ORIGIN_SCRIPT, tmp_path, env={"NBTASKS_STORE": store_path},
                              name=name)  # fmt: skip
        _, err = script.communicate(timeout=60)
        assert script.returncode == 0, err
    table = RunTable()
    assert [r["origin"] for r in table.rows] == ["a_job.py", "b_job.py"]  # newest first
    _click(table, {"action": "sort", "col": "origin"})
    assert table.sort == {"col": "origin", "desc": True}
    assert [r["origin"] for r in table.rows] == ["b_job.py", "a_job.py"]
    _click(table, {"action": "sort", "col": "origin"})
    assert [r["origin"] for r in table.rows] == ["a_job.py", "b_job.py"]
    _click(table, {"action": "open", "id": table.rows[1]["id"]})
    assert table.detail["origin"] == "b_job.py"
    html = table._repr_mimebundle_()[0]["text/html"]
    assert "<th" in html and ">origin</th>" in html and ">b_job.py</td>" in html


class _Output:
    """Stands for an output a widget was displayed in (an IPython DisplayHandle)."""

    def __init__(self) -> None:
        self.html: list[str] = []

    def update(self, data: dict[str, Any], **kwargs: Any) -> None:
        self.html.append(data["text/html"])


def test_static_copies_are_drawn_again_when_their_runs_end(nb: object) -> None:
    handle = sleep_for.trigger(0.5)
    widget, table = RunWidget(handle.id), RunTable()
    outputs = {widget: _Output(), table: _Output()}
    for shown, output in outputs.items():
        shown._displays.append(output)
        assert "COMPLETED" not in shown._repr_mimebundle_()[0]["text/html"]
    handle.wait(timeout=10)
    wait_for(lambda: all(o.html for o in outputs.values()), "both copies drawn again")
    for output in outputs.values():
        (html,) = output.html  # once, at the end
        assert html.startswith('<div class="nbt-static"') and "COMPLETED" in html
        assert handle.id in html and "EXECUTING" not in html


def test_a_live_tables_refresh_never_starts_a_stopped_server_again(
    nb: object, store_path: str
) -> None:
    """A table with a live (DELAYED) run refreshes itself every second on a thread of its
    own. Once the server was stopped on purpose, that refresh must not start it again: with
    a delayed run to drive, the new server would never stop by itself."""
    from nbtasks.client import config
    from nbtasks.service.client import server_pid
    from nbtasks.service.starting import listening

    handle = add.trigger({"a": 1, "b": 2}, delay="1h")
    table = RunTable()
    assert [r["status"] for r in table.rows] == ["DELAYED"]
    pid = server_pid(store_path)
    config.shutdown(stop_server=True)
    assert not listening(store_path)
    table.refresh_quietly()  # what its thread does each second
    assert not listening(store_path) and server_pid(store_path) is None
    assert [r["id"] for r in table.rows] == [handle.id]  # what it showed, still shown
    table.refresh()  # asked for: the server starts, and the run is driven on
    assert server_pid(store_path) not in (None, pid)
    assert handle.retrieve().status is RunStatus.DELAYED


def test_calls_in_the_background_start_no_server_even_after_a_nested_block(
    store_path: str,
) -> None:
    from nbtasks.client import config
    from nbtasks.core.errors import NbtasksError
    from nbtasks.service.client import server_pid

    nbtasks.configure(store=store_path)
    with config.in_background():
        with config.in_background():  # e.g. a refresh inside the dashboard's tick
            pass
        with pytest.raises(NbtasksError, match="no nbtasks server runs"):
            runs.list()
    assert server_pid(store_path) is None
    assert list(runs.list()) == []  # outside: asked for, so the server starts
    assert server_pid(store_path) is not None


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
    displayed: list[tuple[Any, ...]] = []

    def __init__(self, *args: Any) -> None:
        self.args = args

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        return {"view": self.args}

    def _ipython_display_(self) -> None:  # a view that displays itself (to update it later)
        self.displayed.append(self.args)


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
    formatter = DisplayFormatter()  # as IPython displays: _ipython_display_ declines
    for shown in (result.run, batch, handle, add.batch_trigger([{"a": 0, "b": 0}])):
        assert shown._repr_mimebundle_() == {"text/plain": repr(shown)}
        assert formatter.format(shown) == ({"text/plain": repr(shown)}, {})
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
    monkeypatch.setattr(_FakeView, "displayed", [])
    assert DisplayFormatter().format(result.run) == ({}, {})  # displayed by the view itself
    assert _FakeView.displayed == [("run", result.id, repr(result.run))]
    batch = add.batch_trigger_and_wait([{"a": 1, "b": 1}, {"a": 2, "b": 2}])
    assert batch._repr_mimebundle_() == {
        "view": ("batch", [r.id for r in batch], "add", repr(batch))
    }
    assert ui.shown == [([r.id for r in batch], "add", True)]  # the wait showed its batch
    assert loads == [1]
