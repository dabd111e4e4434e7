"""``nbtasks server``: the store's server, its status, stopping it, and serving in the
foreground."""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from typing import Any

import click

import nbtasks
from nbtasks.cli.output import emit, fail
from nbtasks.client import config
from nbtasks.core.errors import NbtasksError

NO_SERVER = 3
STOP_TIMEOUT_S = 60.0  # a server stopping interrupts its runs and commits the store


@click.group()
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
            emit({"running": True, "store": config.store_path(), **_other_build(),
                   "error": str(exc)})  # fmt: skip
        fail(exc)
    if engine is None:
        if as_json:
            emit({"running": False, "store": config.store_path()})
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
        emit(info)
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
        fail(exc)
    sys.exit(code)
