"""The ``nbtasks`` command: runs and the store's server, from a terminal.

Every command works on one store: ``--store`` (or ``NBTASKS_STORE``), else the folder's
``.nbtasks/runs.duckdb``, as in a notebook started there. Commands that read or change runs
reach the store's server, starting it if none runs; ``server status`` and ``server stop``
never start one.

Exit codes: 0 done; 1 an error (an unknown run, a server that cannot start), its message on
stderr; 2 a usage error; 3 ``server status`` finds no server (as ``systemctl status``).
``--json`` prints one JSON document on stdout and nothing else.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime
from typing import Any

import click

import nbtasks
from nbtasks.client import config
from nbtasks.core.errors import NbtasksError
from nbtasks.core.models import Run
from nbtasks.core.status import RunStatus
from nbtasks.core.version import VERSION

NO_SERVER = 3


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
            "resources",
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


def _emit(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


def _fail(exc: BaseException) -> None:
    raise click.ClickException(str(exc))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--store", type=click.Path(dir_okay=False), envvar="NBTASKS_STORE",
              help="The store file (default: .nbtasks/runs.duckdb here).")  # fmt: skip
@click.version_option(VERSION, prog_name="nbtasks")
def main(store: str | None) -> None:
    """nbtasks: list, follow, cancel and replay runs; see and stop the store's server."""
    if store:
        nbtasks.configure(store=store)


# -- runs ----------------------------------------------------------------------------------


@main.group()
def runs() -> None:
    """Runs of the store."""


@runs.command("list")
@click.option("--status", "statuses", multiple=True,
              type=click.Choice([s.value for s in RunStatus], case_sensitive=False),
              help="Only runs with this status (repeat for several).")  # fmt: skip
@click.option("--task", help="Only runs of this task id.")
@click.option("--tag", help="Only runs with this tag.")
@click.option("--limit", default=25, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_runs(statuses: tuple[str, ...], task: str | None, tag: str | None, limit: int,
              as_json: bool) -> None:  # fmt: skip
    """Runs, newest first."""
    try:
        page = nbtasks.runs.list(status=list(statuses) or None, task=task, tag=tag, limit=limit)
    except (NbtasksError, ValueError) as exc:
        _fail(exc)
    if as_json:
        _emit({"runs": [run_dict(r) for r in list(page)], "next": page.next})
        return
    rows = [("ID", "TASK", "STATUS", "ATTEMPTS", "CREATED", "DURATION")]
    for r in page:
        duration = "" if r.duration_ms is None else f"{r.duration_ms / 1000:.3f}s"
        created = r.created_at.strftime("%Y-%m-%d %H:%M:%S")
        rows.append((r.id, r.task_id, r.status.value, str(r.attempt_count), created, duration))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    if page.next:
        click.echo(f"(more: --limit {limit * 2})", err=True)


def _retrieve(run_id: str) -> Run:
    try:
        return nbtasks.runs.retrieve(run_id)
    except (NbtasksError, KeyError) as exc:
        _fail(exc)
        raise  # unreachable: for the type checker


@runs.command("show")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def show(run_id: str, as_json: bool) -> None:
    """One run, with its attempts."""
    run = _retrieve(run_id)
    data = run_dict(run, attempts=True)
    if as_json:
        _emit(data)
        return
    for key in ("id", "task_id", "version", "status", "created_at", "started_at",
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
    shown = {"number": 0, "out": 0, "err": 0}
    try:
        for snapshot in nbtasks.runs.subscribe(run_id):
            attempt = snapshot.attempts[-1] if snapshot.attempts else None
            if attempt is None:
                continue
            if attempt.number != shown["number"]:
                if shown["number"]:
                    click.echo(f"--- attempt {attempt.number} ---", err=True)
                shown.update(number=attempt.number, out=0, err=0)
            click.echo(attempt.stdout[shown["out"] :], nl=False)
            click.echo(attempt.stderr[shown["err"] :], nl=False, err=True)
            shown.update(out=len(attempt.stdout), err=len(attempt.stderr))
            sys.stdout.flush()
    except NbtasksError as exc:
        _fail(exc)
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
        _fail(exc)
    click.echo(f"{run.id} {run.status.value}")


@runs.command("replay")
@click.argument("run_id")
def replay(run_id: str) -> None:
    """A new run of the same task, with the same payload, tags and metadata."""
    _retrieve(run_id)
    try:
        handle = nbtasks.runs.replay(run_id)
    except NbtasksError as exc:
        _fail(exc)
    click.echo(handle.id)


# -- the server ----------------------------------------------------------------------------


@main.group()
def server() -> None:
    """The store's server: the process that runs its tasks."""


def _connected() -> Any:
    """A connection to the running server, or None: never starts one."""
    from nbtasks.service.client import connect

    try:
        return connect(config.server_config(), "nbtasks server", start=False)
    except NbtasksError:
        return None


@server.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status(as_json: bool) -> None:
    """pid, store, uptime, clients, executor and live runs (exit 3: no server)."""
    engine = _connected()
    if engine is None:
        if as_json:
            _emit({"running": False, "store": config.store_path()})
        else:
            click.echo(f"no nbtasks server runs for store {config.store_path()}")
        sys.exit(NO_SERVER)
    try:
        info = engine.request("status")
    finally:
        engine.close()
    info["clients"] = [c for c in info["clients"] if c["pid"] != os.getpid()]
    info["running"] = True
    if as_json:
        _emit(info)
        return
    live = ", ".join(f"{n} {s}" for s, n in sorted(info["live_runs"].items())) or "none"
    clients = ", ".join(f"{c['name']} (pid {c['pid']})" for c in info["clients"]) or "none"
    for key, value in (
        ("pid", info["pid"]), ("store", info["store"]), ("socket", info["socket"]),
        ("uptime", f"{info['uptime_s']:.0f}s"), ("executor", info["executor"]),
        ("workers", info["workers"]), ("clients", clients), ("live runs", live),
        ("stops after", f"{info['idle_s']:g}s idle"), ("build", info["build"]),
    ):  # fmt: skip
        click.echo(f"{key + ':':13}{value}")


@server.command("stop")
def stop() -> None:
    """Stop the server; its executing runs end INTERRUPTED."""
    engine = _connected()
    if engine is None:
        click.echo(f"no nbtasks server runs for store {config.store_path()}")
        return
    pid = config.stop(engine)
    engine.close()
    click.echo(f"stopped the nbtasks server (pid {pid})")


@server.command("start")
@click.option("--workers", type=click.IntRange(1), help="Local workers (default: one per core).")
@click.option("--idle", default="0", show_default=True,
              help="Stop after this long idle (a duration like 10min); 0: never.")  # fmt: skip
def start(workers: int | None, idle: str) -> None:
    """Serve the store in the foreground (e.g. under systemd) until stopped."""
    from nbtasks.core.durations import parse_duration
    from nbtasks.service.server import serve

    if workers is not None:
        nbtasks.configure(workers=workers)
    try:
        seconds = parse_duration("--idle", idle)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--idle") from None
    settings = config.server_config()
    settings.idle_s = seconds or float("inf")

    def ready(line: str) -> None:
        if line == "taken":
            click.echo(f"an nbtasks server already runs for store {settings.store}", err=True)
        elif line == "ready":
            click.echo(f"nbtasks server (pid {os.getpid()}) serving {settings.store}", err=True)

    try:
        code = serve(settings, ready)
    except NbtasksError as exc:
        _fail(exc)
    sys.exit(code)


if __name__ == "__main__":
    main()
