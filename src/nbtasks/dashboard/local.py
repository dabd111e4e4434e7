"""``nbtasks dashboard``: the dashboard on localhost, behind a token.

It listens on 127.0.0.1 only. The URL it prints carries a random token; the first request
with it gets a signed cookie (HttpOnly, SameSite=Strict) that the page's later requests
carry. Anyone without the token gets 403; a POST also needs the page's XSRF token.
"""

from __future__ import annotations

import asyncio
import hmac
import secrets
import signal
import webbrowser
from collections.abc import Callable
from typing import Any

from tornado import web
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from nbtasks.dashboard.web import Dashboard

PREFIX = "/nbtasks/"
COOKIE = "nbtasks-dashboard"


class _TokenHandler(web.RequestHandler):
    token = ""

    def get_current_user(self) -> str | None:
        if self.get_signed_cookie(COOKIE) == b"1":
            return "owner"
        given = self.get_query_argument("token", "")
        if given and hmac.compare_digest(given, self.token):
            self.set_signed_cookie(COOKIE, "1", expires_days=None, httponly=True,
                                   samesite="Strict")  # fmt: skip
            return "owner"
        return None

    def get_login_url(self) -> str:  # there is no login: only the token
        raise web.HTTPError(403, reason="open the URL nbtasks dashboard printed (its token)")


def serve(port: int = 0, open_browser: bool = True,
          started: Callable[[str], Any] = print) -> None:  # fmt: skip
    """Serve the dashboard of this process's store until SIGINT or SIGTERM; ``started``
    gets its URL (with the token) once it listens."""
    asyncio.run(_serve(port, open_browser, started))


async def _serve(port: int, open_browser: bool, started: Callable[[str], Any]) -> None:
    from nbtasks.client.config import name_process, shutdown

    name_process("nbtasks dashboard")
    token = secrets.token_urlsafe(24)
    dashboard = Dashboard(PREFIX)
    base = type("TokenHandler", (_TokenHandler,), {"token": token})
    app = web.Application(
        [*dashboard.handlers(base), ("/", web.RedirectHandler, {"url": PREFIX})],
        cookie_secret=secrets.token_bytes(32), xsrf_cookies=True,
    )  # fmt: skip
    sockets = bind_sockets(port, "127.0.0.1")
    server = HTTPServer(app)
    server.add_sockets(sockets)
    url = f"http://127.0.0.1:{sockets[0].getsockname()[1]}{PREFIX}?token={token}"
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    started(url)
    if open_browser:
        webbrowser.open(url)
    try:
        await stop.wait()
    finally:
        server.stop()
        dashboard.pages.close_all()
        await loop.run_in_executor(None, shutdown)  # this process leaves; runs go on
