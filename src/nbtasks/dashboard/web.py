"""The dashboard's HTTP side: its pages, their event streams and their messages.

The same handlers serve ``nbtasks dashboard`` (``local.py``) and the Jupyter server
extension (``jupyter.py``); each gives them its own base class, which says who may see the
page (a token on localhost, or Jupyter's own auth). Every handler needs an authenticated
user, and every POST an XSRF token (tornado's, which the page carries).

    {prefix}                 the run table: every run of the store, live
    {prefix}runs/{id}        a run's page, live, with its buttons
    {prefix}events?view=...  the page's event stream (server-sent events)
    {prefix}send?page=...    a message from the page to one of its widgets
    {prefix}static/{file}    the page's own script and style
"""

from __future__ import annotations

import asyncio
import html
import json
from typing import Any

from tornado import web
from tornado.iostream import StreamClosedError

from nbtasks.dashboard.pages import Page, Pages

KEEP_ALIVE_S = 15.0  # a comment line on a quiet stream, so proxies keep it open
STATIC = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}


class _PageHandler:
    """The table's page and a run's page."""

    dashboard: Dashboard

    @web.authenticated
    def get(self: Any, run_id: str | None = None) -> None:
        d = self.dashboard
        config = {"base": d.prefix, "view": "run" if run_id else "table", "run": run_id,
                  "xsrf": self.xsrf_token.decode(), "store": d.store()}  # fmt: skip
        data = json.dumps(config).replace("</", "<\\/")  # cannot end the script element
        title = f"nbtasks · {run_id}" if run_id else "nbtasks · runs"
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.write(
            "<!doctype html>\n<html><head><meta charset='utf-8'>"
            f"<title>{html.escape(title)}</title><link rel='icon' href='data:,'>"
            f"<link rel='stylesheet' href='{d.prefix}static/dashboard.css'></head>"
            "<body class='nbt-dash'><header class='nbt-dash-head'>"
            f"<a class='nbt-dash-home' href='{d.prefix}'>nbtasks</a>"
            f"<code class='nbt-dash-store'>{html.escape(d.store())}</code>"
            "<div class='nbt-dash-server'></div></header>"
            "<nav class='nbt-dash-nav'></nav><main class='nbt-dash-view'></main>"
            f"<script id='nbtasks-config' type='application/json'>{data}</script>"
            f"<script type='module' src='{d.prefix}static/dashboard.js'></script>"
            "</body></html>"
        )


class _EventsHandler:
    """A page's event stream: its widgets' messages and the server's status, as JSON."""

    dashboard: Dashboard
    page: Page | None = None

    @web.authenticated
    async def get(self: Any) -> None:
        view = self.get_query_argument("view", "table")
        run_id = self.get_query_argument("run", None)
        if view not in ("table", "run") or (view == "run") != bool(run_id):
            raise web.HTTPError(400, "view is 'table', or 'run' with a run id")
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("Cache-Control", "no-store")
        page = self.page = self.dashboard.pages.open(view, run_id)
        starting: asyncio.Future[None] | None = None
        try:
            await self._send({"type": "hello", "page": page.id})
            starting = asyncio.ensure_future(page.start())
            while True:
                try:
                    message = await asyncio.wait_for(page.queue.get(), KEEP_ALIVE_S)
                except asyncio.TimeoutError:
                    self.write(": keep-alive\n\n")
                    await self.flush()
                    continue
                if message.get("type") == "gone":
                    break
                await self._send(message)
        except StreamClosedError:
            pass
        finally:
            self.dashboard.pages.close(page)
        if starting is not None:
            await starting  # its widgets are made: closed at once if the page left first

    async def _send(self: Any, message: dict[str, Any]) -> None:
        self.write(f"data: {json.dumps(message, default=str)}\n\n")
        await self.flush()

    def on_connection_close(self: Any) -> None:
        if self.page is not None:  # wakes the stream's loop above, which ends it
            self.page.queue.put_nowait({"type": "gone"})


class _SendHandler:
    """A message from a page to one of its widgets: a button, a filter."""

    dashboard: Dashboard

    @web.authenticated
    async def post(self: Any) -> None:
        page = self.dashboard.pages.get(self.get_query_argument("page", ""))
        if page is None:
            raise web.HTTPError(404, "no such page: reload it")
        try:
            message = json.loads(self.request.body)
        except ValueError:
            raise web.HTTPError(400, "the body is not JSON") from None
        if not isinstance(message, dict):
            raise web.HTTPError(400, "the body is not a JSON object")
        await page.receive(message)
        self.set_status(204)


class _StaticHandler:
    dashboard: Dashboard

    @web.authenticated
    def get(self: Any, name: str) -> None:
        from nbtasks.ui.base import asset

        self.set_header("Content-Type", f"{STATIC[name]}; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        self.write(asset(name).read_bytes())


class Dashboard:
    """The dashboard of this process's store, served under ``prefix``."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix if prefix.endswith("/") else prefix + "/"
        self.pages = Pages()

    @staticmethod
    def store() -> str:
        from nbtasks.client.config import store_path

        return store_path()

    def handlers(self, base: type[web.RequestHandler]) -> list[Any]:
        """The routes, on handlers made from ``base`` (which says who is authenticated)."""
        p = self.prefix

        def on(mixin: type) -> type:
            return type(mixin.__name__.lstrip("_"), (mixin, base), {"dashboard": self})

        return [
            (p.rstrip("/"), web.RedirectHandler, {"url": p}),
            (p, on(_PageHandler)),
            (p + r"runs/([^/]+)", on(_PageHandler)),
            (p + "events", on(_EventsHandler)),
            (p + "send", on(_SendHandler)),
            (p + r"static/(dashboard\.js|dashboard\.css)", on(_StaticHandler)),
        ]
