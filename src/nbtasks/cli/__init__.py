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

Here: the top group (``--store``, ``--version``); its commands are modules of their own,
``runs``, ``server`` and ``dashboard``, and ``output`` has what they share (JSON on stdout,
an error's exit).
"""

from __future__ import annotations

from typing import Any

import click

import nbtasks
from nbtasks.cli import dashboard, runs, server
from nbtasks.client import config
from nbtasks.core.errors import NbtasksError
from nbtasks.core.version import VERSION


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


main.add_command(runs.runs)
main.add_command(dashboard.dashboard)
main.add_command(server.server)
