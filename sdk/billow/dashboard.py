"""The scheduler's private dashboard: HTTPS with the cluster's certificate, and a
per-cluster token that the link carries.

``serve_over_tls`` points distributed's dashboard TLS settings
(``distributed.scheduler.dashboard.tls.*``) at the scheduler's certificate, issued by
the cluster's own CA. ``require_token`` wraps the tornado application behind the
dashboard (``Scheduler.http_application``): a request carrying ``?token=<token>`` gets a
cookie (``HttpOnly``, ``Secure``, ``SameSite=Lax``) and a redirect to the same URL
without the token; a request with that cookie is served; anything else (pages, static
files, bokeh's websockets, ``/metrics``) gets 403.

Browsers warn about the certificate until the cluster's CA is trusted: its certificates
name no host, since the scheduler's address is not known when the CA issues them.
Programs pin the CA instead (``billow.Cluster.dashboard_ssl_context``).
"""

from __future__ import annotations

import hmac
import logging
import os
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from tornado import web

COOKIE_PREFIX = "billow-dashboard-"
FORBIDDEN = (
    "this dashboard needs its token: open the link billow gives "
    "(cluster.dashboard_link), which carries it\n"
)


def serve_over_tls(cert_pem: str, key_pem: str, directory: str | None = None) -> dict[str, str]:
    """Write the scheduler's certificate and key (mode 0600) and return the Dask config
    that serves the dashboard with them; set it before the ``Scheduler`` is created."""
    where = Path(directory or tempfile.mkdtemp(prefix="billow-dashboard-"))
    files = {}
    for name, pem in (("dashboard.pem", cert_pem), ("dashboard.key", key_pem)):
        path = where / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(pem)
        files[name] = str(path)
    return {
        "distributed.scheduler.dashboard.tls.cert": files["dashboard.pem"],
        "distributed.scheduler.dashboard.tls.key": files["dashboard.key"],
    }


def skip_bokeh_route_dump() -> None:
    """Spare the scheduler's start bokeh's dump of the dashboard's routes.

    bokeh's tornado server pretty-prints every route (``pprint.pformat``) for a debug log
    line each time it starts, whether or not debug logging is on: about half of a warm
    scheduler's 0.1 s start. Unless that logger logs debug, its formatter returns nothing.
    A no-op without bokeh (no dashboard)."""
    try:
        from bokeh.server import tornado as bokeh_tornado
    except ImportError:
        return
    if not logging.getLogger(bokeh_tornado.__name__).isEnabledFor(logging.DEBUG):
        bokeh_tornado.pformat = lambda *args, **kwargs: ""  # type: ignore[attr-defined]


def _same(given: str, token: str) -> bool:
    return hmac.compare_digest(given.encode(errors="replace"), token.encode())


class _Forbidden(web.RequestHandler):
    def prepare(self) -> None:
        self.set_status(403)
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(FORBIDDEN)


class _TokenAccepted(web.RequestHandler):
    """Trades ``?token=`` for the cookie, then sends the browser to the same URL
    without the token (it leaves the address bar and the history)."""

    def initialize(self, cookie: str, token: str) -> None:
        self.cookie = cookie
        self.token = token

    def prepare(self) -> None:
        self.set_cookie(
            self.cookie,
            self.token,
            path="/",
            httponly=True,
            secure=self.request.protocol == "https",
            samesite="Lax",
        )
        rest = {k: v for k, v in self.request.query_arguments.items() if k != "token"}
        query = urlencode([(k, v.decode()) for k, vs in rest.items() for v in vs])
        self.redirect(self.request.path + (f"?{query}" if query else ""))


def require_token(scheduler: Any, token: str, cluster_id: str) -> None:
    """Make every dashboard request of ``scheduler`` show ``token`` (query or cookie)."""
    app = scheduler.http_application
    route = app.find_handler
    cookie = f"{COOKIE_PREFIX}{cluster_id}"

    def find_handler(request: Any, **kwargs: Any) -> Any:
        given = request.query_arguments.get("token")
        if given and _same(given[0].decode(errors="replace"), token):
            return app.get_handler_delegate(
                request, _TokenAccepted, {"cookie": cookie, "token": token}
            )
        morsel = request.cookies.get(cookie)
        if morsel is not None and _same(morsel.value, token):
            return route(request, **kwargs)
        return app.get_handler_delegate(request, _Forbidden)

    app.find_handler = find_handler
