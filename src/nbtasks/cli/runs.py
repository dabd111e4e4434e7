"""``nbtasks runs``: list, show, follow the logs of, cancel and replay runs."""

from __future__ import annotations

import re
import sys
from datetime import datetime
from typing import Any

import click

import nbtasks
from nbtasks.cli.output import emit, fail
from nbtasks.core.errors import NbtasksError
from nbtasks.core.models import Run
from nbtasks.core.status import RunStatus


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, RunStatus):
        return value.value
    return value


def run_dict(run: Run, attempts: bool = False) -> dict[str, Any]:
    """A run as JSON: its fields, its error as a dict, and optionally its attempts."""
    out: dict[str, Any] = {
        name: _jsonable(getattr(run, name))
        for name in (
            "id", "task_id", "version", "status", "queue", "payload_preview", "output_preview",
            "created_at", "updated_at", "queued_at", "started_at", "finished_at",
            "delay_until", "ttl", "expired_at", "idempotency_key", "metadata", "max_attempts",
            "attempt_count", "parent_id", "root_id", "depth", "batch_id", "replayed_from",
            "resources", "origin",
        )
    }  # fmt: skip
    out["tags"] = list(run.tags)
    out["duration_ms"] = run.duration_ms
    out["error"] = run.error.to_dict() if run.error is not None else None
    if attempts:
        out["attempts"] = [
            {
                "number": a.number, "status": a.status.value,
                "started_at": _jsonable(a.started_at), "finished_at": _jsonable(a.finished_at),
                "pid": a.pid, "exit_code": a.exit_code, "signal": a.signal, "oom": a.oom,
                "error": a.error.to_dict() if a.error is not None else None,
            }
            for a in run.attempts
        ]  # fmt: skip
    return out


@click.group()
def runs() -> None:
    """Runs of the store."""


@runs.command("list")
@click.option("--status", "statuses", multiple=True,
              type=click.Choice([s.value for s in RunStatus], case_sensitive=False),
              help="Only runs with this status (repeat for several).")  # fmt: skip
@click.option("--task", help="Only runs of this task id.")
@click.option("--tag", help="Only runs with this tag.")
@click.option("--origin", help="Only runs triggered from this notebook, script or command.")
@click.option("--limit", default=25, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_runs(statuses: tuple[str, ...], task: str | None, tag: str | None,
              origin: str | None, limit: int, as_json: bool) -> None:  # fmt: skip
    """Runs, newest first."""
    try:
        page = nbtasks.runs.list(status=list(statuses) or None, task=task, tag=tag,
                                 origin=origin, limit=limit)  # fmt: skip
    except (NbtasksError, ValueError) as exc:
        fail(exc)
    if as_json:
        emit({"runs": [run_dict(r) for r in list(page)], "next": page.next})
        return
    # ORIGIN last: a notebook's path may be long and hold spaces
    rows = [("ID", "TASK", "STATUS", "ATTEMPTS", "CREATED", "DURATION", "ORIGIN")]
    for r in page:
        duration = "" if r.duration_ms is None else f"{r.duration_ms / 1000:.3f}s"
        created = r.created_at.strftime("%Y-%m-%d %H:%M:%S")
        rows.append((r.id, r.task_id, r.status.value, str(r.attempt_count), created, duration,
                     r.origin or ""))  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    if page.next:
        click.echo(f"(more: --limit {limit * 2})", err=True)


def _retrieve(run_id: str) -> Run:
    try:
        return nbtasks.runs.retrieve(run_id)
    except (NbtasksError, KeyError) as exc:
        fail(exc)


@runs.command("show")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def show(run_id: str, as_json: bool) -> None:
    """One run, with its attempts."""
    run = _retrieve(run_id)
    data = run_dict(run, attempts=True)
    if as_json:
        emit(data)
        return
    for key in ("id", "task_id", "version", "status", "origin", "created_at", "started_at",
                "finished_at", "duration_ms", "attempt_count", "tags", "payload_preview",
                "output_preview", "parent_id", "batch_id", "replayed_from"):  # fmt: skip
        if data[key] not in (None, [], ""):
            click.echo(f"{key + ':':17}{data[key]}")
    if run.error is not None:
        click.echo(f"{'error:':17}{run.error}")
    for a in data["attempts"]:
        exit_text = f" exit {a['exit_code']}" if a["exit_code"] is not None else ""
        click.echo(f"attempt {a['number']}: {a['status']} pid {a['pid']}{exit_text}")


def _logs_of(run: Run) -> tuple[str, str]:
    attempt = run.attempts[-1] if run.attempts else None
    return (attempt.stdout, attempt.stderr) if attempt is not None else ("", "")


# How a finished attempt's output starts when only its tail was kept (executor capture).
_DROPPED = re.compile(r"\[\.\.\. \d+ earlier bytes not kept \.\.\.\]\n")


def _unseen(seen: str, text: str) -> str:
    """What ``text`` adds to ``seen``: both are one stream of an attempt as the server held
    it at two moments. The server keeps only a tail of a long output (the live log, and
    the finished attempt's output, which then starts with a note of what was dropped), so
    ``text`` need not extend ``seen``: it is then a later window, whose start is the
    longest end of ``seen`` it begins with."""
    if text.startswith(seen):
        return text[len(seen) :]
    dropped = _DROPPED.match(text)
    body = text[dropped.end() :] if dropped else text
    if body.startswith(seen):
        return body[len(seen) :]
    anchor = body[:64]
    start = seen.find(anchor) if anchor else -1
    while start != -1:
        if body.startswith(seen[start:]):
            return body[len(seen) - start :]
        start = seen.find(anchor, start + 1)
    return text  # nothing shown is left in it: more came than the server keeps


@runs.command("logs")
@click.argument("run_id")
@click.option("--follow", "-f", is_flag=True, help="Keep printing until the run is final.")
def logs(run_id: str, follow: bool) -> None:
    """The output of the run's latest attempt (stdout, and stderr on stderr)."""
    run = _retrieve(run_id)
    if not follow:
        out, err = _logs_of(run)
        click.echo(out, nl=False)
        click.echo(err, nl=False, err=True)
        return
    number = 0  # the attempt shown
    seen = {"out": "", "err": ""}  # its output as last shown, per stream
    try:
        for snapshot in nbtasks.runs.subscribe(run_id):
            attempt = snapshot.attempts[-1] if snapshot.attempts else None
            if attempt is None:
                continue
            if attempt.number != number:
                if number:
                    click.echo(f"--- attempt {attempt.number} ---", err=True)
                number = attempt.number
                seen = {"out": "", "err": ""}
            click.echo(_unseen(seen["out"], attempt.stdout), nl=False)
            click.echo(_unseen(seen["err"], attempt.stderr), nl=False, err=True)
            seen = {"out": attempt.stdout, "err": attempt.stderr}
            sys.stdout.flush()
    except NbtasksError as exc:
        fail(exc)
    final = nbtasks.runs.retrieve(run_id)
    click.echo(f"--- {run_id} {final.status.value} ---", err=True)


@runs.command("cancel")
@click.argument("run_id")
def cancel(run_id: str) -> None:
    """Cancel a run and its descendants; a final run is left as it is."""
    from nbtasks.client.control import cancel as cancel_run

    _retrieve(run_id)
    try:
        run = cancel_run(run_id, "by `nbtasks runs cancel`")
    except NbtasksError as exc:
        fail(exc)
    click.echo(f"{run.id} {run.status.value}")


@runs.command("replay")
@click.argument("run_id")
def replay(run_id: str) -> None:
    """A new run of the same task, with the same payload, tags and metadata."""
    _retrieve(run_id)
    try:
        handle = nbtasks.runs.replay(run_id)
    except NbtasksError as exc:
        fail(exc)
    click.echo(handle.id)
