"""The ``nbtasks`` command: runs and the store's server, from a terminal.

Every command works on one store: ``--store`` (or ``NBTASKS_STORE``), else the folder's
``.nbtasks/runs.duckdb``, as in a notebook started there. Commands that read or change runs
reach the store's server, starting it if none runs; ``server status`` and ``server stop``
never start one.

Exit codes: 0 done; 1 an error (an unknown run, a server that cannot start), its message on
stderr; 2 a usage error; 3 ``server status`` finds no server (as ``systemctl status``).
``--json`` prints one JSON document on stdout and nothing else (strict JSON: a value with no
JSON number, as an idle time of "never", is null).

A server of another nbtasks build (one started before an upgrade) refuses this build's
requests: ``server status`` says so (exit 1), and ``server stop`` stops it all the same.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import sys
import time
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
STOP_TIMEOUT_S = 60.0  # a server stopping interrupts its runs and commits the store


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


def _finite(value: Any) -> Any:
    """``value`` with every float that JSON cannot hold (inf, nan) as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _emit(data: Any) -> None:
    click.echo(json.dumps(_finite(data), indent=2, sort_keys=True, allow_nan=False))


def _fail(exc: BaseException) -> None:
    raise click.ClickException(str(exc))


class _Main(click.Group):
    """The command group: an nbtasks error or a failed file operation (a store that cannot
    be made or served) is an error with its message (exit 1), not a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            raise  # click's own: the reader went away
        except (NbtasksError, OSError) as exc:
            raise click.ClickException(str(exc)) from None


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--store", type=click.Path(dir_okay=False), envvar="NBTASKS_STORE",
              help="The store file (default: .nbtasks/runs.duckdb here).")  # fmt: skip
@click.version_option(VERSION, prog_name="nbtasks")
def main(store: str | None) -> None:
    """nbtasks: list, follow, cancel and replay runs; see and stop the store's server; open
    the dashboard."""
    config.name_process("nbtasks")  # what its replays record, however it was started
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
        _fail(exc)
    if as_json:
        _emit({"runs": [run_dict(r) for r in list(page)], "next": page.next})
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


# -- the dashboard -------------------------------------------------------------------------


@main.command()
@click.option("--port", type=click.IntRange(0, 65535), default=0, show_default=True,
              help="The port on 127.0.0.1; 0 takes a free one.")  # fmt: skip
@click.option("--no-browser", is_flag=True, help="Print the URL only; open no browser.")
def dashboard(port: int, no_browser: bool) -> None:
    """A page with the store's runs, live: the run table and run pages, on localhost behind
    a token. Runs until Ctrl-C."""
    from nbtasks.dashboard.local import serve

    def started(url: str) -> None:
        click.echo(f"nbtasks dashboard of {config.store_path()}:\n  {url}")
        sys.stdout.flush()

    try:
        serve(port, not no_browser, started)
    except OSError as exc:  # e.g. the port is taken
        _fail(NbtasksError(f"the dashboard cannot listen on 127.0.0.1:{port}: {exc}"))


# -- the server ----------------------------------------------------------------------------


@main.group()
def server() -> None:
    """The store's server: the process that runs its tasks."""


def _connected() -> Any:
    """A connection to the running server, or None: never starts one. A server of another
    nbtasks build (one that ran before an upgrade) raises ``ServerVersionError``."""
    from nbtasks.service.client import ServerVersionError, connect

    try:
        return connect(config.server_config(), "nbtasks server", start=False)
    except ServerVersionError:
        raise
    except NbtasksError:
        return None


def _other_build() -> dict[str, Any]:
    """The pid and build of the live server of another build (from its lock file)."""
    from nbtasks.service.client import server_pid
    from nbtasks.service.places import place_of

    store = config.store_path()
    found: dict[str, Any] = {"pid": server_pid(store), "build": None}
    try:
        with open(place_of(store).lock) as f:
            found["build"] = json.load(f).get("build")
    except (OSError, ValueError, AttributeError):
        pass
    return found


@server.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status(as_json: bool) -> None:
    """pid, store, uptime, clients, executor and live runs (exit 3: no server)."""
    from nbtasks.service.client import ServerVersionError

    try:
        engine = _connected()
    except ServerVersionError as exc:  # it runs, but cannot be asked: exit 1, say why
        if as_json:
            _emit({"running": True, "store": config.store_path(), **_other_build(),
                   "error": str(exc)})  # fmt: skip
        _fail(exc)
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
    idle = "never" if math.isinf(info["idle_s"]) else f"{info['idle_s']:g}s idle"
    for key, value in (
        ("pid", info["pid"]), ("store", info["store"]), ("socket", info["socket"]),
        ("uptime", f"{info['uptime_s']:.0f}s"), ("executor", info["executor"]),
        ("workers", info["workers"]), ("clients", clients), ("live runs", live),
        ("stops after", idle), ("build", info["build"]),
    ):  # fmt: skip
        click.echo(f"{key + ':':13}{value}")


@server.command("stop")
def stop() -> None:
    """Stop the server; its executing runs end INTERRUPTED."""
    from nbtasks.service.client import ServerVersionError

    pid: int | None = None
    try:
        engine = _connected()
    except ServerVersionError:
        # It refuses this build's requests: SIGTERM stops it as the stop request does.
        pid = _other_build()["pid"]  # None: it stopped meanwhile
        if pid is not None:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    else:
        if engine is not None:
            pid = engine.info["pid"]
            try:
                engine.request("stop")
            except NbtasksError:
                pass  # it stopped meanwhile
            engine.close()
    if pid is None:
        click.echo(f"no nbtasks server runs for store {config.store_path()}")
        return
    _wait_gone(pid)
    click.echo(f"stopped the nbtasks server (pid {pid})")


def _wait_gone(pid: int, timeout: float = STOP_TIMEOUT_S) -> None:
    """Return once process ``pid`` has ended: gone, or a zombie that its parent (e.g. the
    shell or supervisor that ran ``nbtasks server start``) has yet to reap."""
    import psutil

    deadline = time.monotonic() + timeout
    try:
        proc = psutil.Process(pid)
        while proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
            if time.monotonic() > deadline:
                raise click.ClickException(
                    f"the nbtasks server (pid {pid}) of store {config.store_path()} is still "
                    f"stopping after {timeout:g}s"
                )
            time.sleep(0.02)
    except psutil.NoSuchProcess:
        pass


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
