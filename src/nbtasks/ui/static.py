"""Static HTML copies of the widgets' state, kept in the notebook beside the live view.

A saved notebook keeps each output's MIME bundle. The widget view in it needs a live
kernel, so each widget's bundle also carries ``text/html`` drawn here from the same state
the front-end draws (``run_state`` and friends): what nbviewer, GitHub, ``nbconvert`` and an
untrusted JupyterLab show. Plain HTML only (tables, ``<details>``, ``<pre>``), no script;
styles inline, since a sanitiser may drop them without harm. Times are UTC, in ISO form.

Every copy starts with ``<div class="nbt-static"``, so a notebook test can recognise it (the
nbval sanitize rules replace it whole: it shows the state at the moment it was drawn).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from html import escape
from typing import Any

COLORS = {
    "WAITING_FOR_DEPLOY": "#8e6fbf", "DELAYED": "#6c8ebf", "QUEUED": "#7a7a7a",
    "EXECUTING": "#1f77d0", "REATTEMPTING": "#e38d13", "FROZEN": "#2aa7b8",
    "COMPLETED": "#2e9d4b", "CANCELED": "#5b5b5b", "FAILED": "#d23b3b", "TIMED_OUT": "#b3541e",
    "CRASHED": "#8b1a1a", "INTERRUPTED": "#9a7d0a", "SYSTEM_FAILURE": "#6d214f",
    "EXPIRED": "#a0a0a0",
}  # fmt: skip
_BOX = (
    "font-family:system-ui,sans-serif;font-size:13px;border:1px solid #ddd;"
    "border-radius:6px;padding:6px 10px;max-width:900px"
)
_PRE = "max-height:220px;overflow:auto;background:#f6f6f6;padding:6px;font-size:11px;"
_CELL = "text-align:left;padding:2px 6px;border-bottom:1px solid #eee;font-size:12px"


def badge(status: str, text: str | None = None) -> str:
    color = COLORS.get(status, "#777")
    style = (
        f"background:{color};color:#fff;border-radius:10px;padding:1px 8px;"
        "font-size:11px;font-weight:600"
    )
    return f'<span style="{style}">{escape(text if text is not None else status)}</span>'


def when(iso: str | None) -> str:
    """An ISO time as ``2026-12-01 21:03:05 UTC``."""
    if not iso:
        return ""
    at = datetime.fromisoformat(iso)
    if at.tzinfo is not None:
        at = at.astimezone(timezone.utc)
    return at.strftime("%Y-%m-%d %H:%M:%S UTC")


def ms(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.1f} ms" if value < 1000 else f"{value / 1000:.2f}s"


def _row(cells: Iterable[str], header: bool = False) -> str:
    tag = "th" if header else "td"
    return "<tr>" + "".join(f'<{tag} style="{_CELL}">{c}</{tag}>' for c in cells) + "</tr>"


def _pre(text: str) -> str:
    return f'<pre style="{_PRE}">{escape(text)}</pre>'


def _details(summary: str, body: str) -> str:
    return f"<details><summary>{summary}</summary>{body}</details>"


def run_html(run: Mapping[str, Any], logs: str = "", replays: Iterable[str] = ()) -> str:
    """A run: head (task, status, id, attempts, times), payload, outcome, attempts, logs."""
    if not run:
        return '<div class="nbt-static"></div>'
    head = [
        f"<b>{escape(run['task_id'])}</b>",
        badge(run["status"]),
        f"<code>{escape(run['id'])}</code>",
        f"attempt {run['attempt_count']}/{run.get('max_attempts') or 1}",
    ]
    if run.get("duration_ms") is not None:
        head.append(ms(run["duration_ms"]))
    if run["status"] == "DELAYED" and run.get("delay_until"):
        head.append(f"until {when(run['delay_until'])}")
    times = [f"created {when(run['created_at'])}"]
    for name in ("started_at", "finished_at"):
        if run.get(name):
            times.append(f"{name.split('_')[0]} {when(run[name])}")
    parts = [
        " &nbsp;".join(head),
        f'<div style="color:#777;font-size:12px">{", ".join(times)}</div>',
    ]
    if run.get("payload_preview") is not None:
        parts.append(f"<div>payload: <code>{escape(run['payload_preview'])}</code></div>")
    if run["status"] == "COMPLETED" and run.get("output_preview") is not None:
        parts.append(f"<div>output: <code>{escape(run['output_preview'])}</code></div>")
    error = run.get("error")
    if error:
        parts.append(f"<div>error: {escape(error['type'])}: {escape(error['message'])}</div>")
    attempts = run.get("attempts") or []
    if attempts:
        rows = []
        for a in attempts:
            info = ""
            if a.get("error"):
                e = a["error"]
                info = _details(
                    escape(f"{e['type']}: {e['message']}"), _pre(e.get("traceback") or "")
                )
            elif a.get("signal") is not None:
                info = f"signal {a['signal']}"
            elif a.get("exit_code") is not None:
                info = f"exit code {a['exit_code']}"
            if a.get("oom"):
                info += " (out of memory)"
            rows.append(_row([f"#{a['number']}", badge(a["status"]), ms(a["duration_ms"]), info]))
        parts.append(f'<table style="border-collapse:collapse">{"".join(rows)}</table>')
    if logs:
        parts.append(_details("logs", _pre(logs)))
    replayed = list(replays)
    if replayed:
        parts.append("replayed as " + ", ".join(f"<code>{escape(r)}</code>" for r in replayed))
    return f'<div class="nbt-static" style="{_BOX}">{"".join(parts)}</div>'


def batch_html(task_id: str, total: int, counts: Mapping[str, int], final: set[str]) -> str:
    """A batch: how many of its runs finished, and how many have each status."""
    done = sum(n for s, n in counts.items() if s in final)
    bar = "".join(
        f'<div style="width:{100 * n / total:.3f}%;background:{COLORS.get(s, "#777")}"></div>'
        for s, n in sorted(counts.items())
        if s in final and total
    )
    badges = " ".join(badge(s, f"{s} {n}") for s, n in sorted(counts.items()))
    return (
        f'<div class="nbt-static" style="{_BOX}"><b>{escape(task_id)}</b> batch of {total}: '
        f"{done}/{total} finished"
        f'<div style="display:flex;height:6px;background:#eee;margin:6px 0">{bar}</div>'
        f"<div>{badges}</div></div>"
    )


def _table_row(r: Mapping[str, Any]) -> str:
    outcome = r["error"] or (r["output_preview"] or "")
    return _row([
        f"<code>{escape(r['id'])}</code>", escape(r["task_id"]), escape(r["origin"] or ""),
        badge(r["status"]),
        when(r["created_at"]), ms(r["duration_ms"]), escape(outcome),
    ])  # fmt: skip


def table_html(rows: list[dict[str, Any]], total: int, filters: Mapping[str, str]) -> str:
    """A page of the run table, and how many runs match its filter."""
    shown = ", ".join(f"{k}={v!r}" for k, v in filters.items() if v)
    head = _row(["id", "task", "origin", "status", "created", "duration", "output / error"],
                header=True)  # fmt: skip
    body = "".join(_table_row(r) for r in rows)
    return (
        f'<div class="nbt-static" style="{_BOX}">{total} runs'
        f"{' matching ' + escape(shown) if shown else ''}"
        f'<table style="border-collapse:collapse">{head}{body}</table></div>'
    )
