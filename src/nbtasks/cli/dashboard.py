"""``nbtasks dashboard``: the store's runs, live, on a page on localhost."""

from __future__ import annotations

import sys

import click

from nbtasks.cli.output import fail
from nbtasks.client import config
from nbtasks.core.errors import NbtasksError


@click.command()
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
        fail(NbtasksError(f"the dashboard cannot listen on 127.0.0.1:{port}: {exc}"))
