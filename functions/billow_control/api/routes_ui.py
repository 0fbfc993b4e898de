"""The web dashboard's static files, ``/ui/`` (``billow_control/ui``), from the one route
table: the embedded server and the AWS API function serve the same bytes.

Public (the page holds no data; it calls ``/v1/...`` with the user's bearer token), with
a strict Content-Security-Policy: scripts, styles and connections to this origin only,
no inline script or style, no framing. Only the files of ``ui/`` are served, by exact
name; ``index.html`` is revalidated on every load, the other files cached for an hour.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

from aws_lambda_powertools.event_handler import Response

from .guard import PUBLIC

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'; "
    "object-src 'none'"
)
TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
}


@cache
def ui_files() -> dict[str, str]:
    """Every file of the dashboard by name, read once from the package."""
    folder = resources.files("billow_control").joinpath("ui")
    return {
        f.name: f.read_text(encoding="utf-8")
        for f in folder.iterdir()
        if f.is_file() and any(f.name.endswith(ext) for ext in TYPES)
    }


def _serve(name: str) -> Response[str]:
    files = ui_files()
    ext = name[name.rfind(".") :] if "." in name else ""
    headers = {
        "Content-Security-Policy": CSP,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "X-Frame-Options": "DENY",
    }
    if name not in files or ext not in TYPES:
        headers["Cache-Control"] = "no-store"
        return Response(404, "text/plain; charset=utf-8", f"no file {name[:100]}", headers)
    headers["Cache-Control"] = "no-cache" if ext == ".html" else "public, max-age=3600"
    return Response(200, TYPES[ext], files[name], headers)


def install_ui(app: Any) -> None:
    """Add the dashboard's routes to ``app`` (on the resolver itself: a ``Router`` drops
    the empty ``security`` that marks a route public)."""

    @app.get("/ui", include_in_schema=False, security=PUBLIC)
    def ui_root() -> Response[str]:
        return Response(308, "text/plain; charset=utf-8", "", {"Location": "/ui/"})

    @app.get("/ui/", include_in_schema=False, security=PUBLIC)
    def ui_index() -> Response[str]:
        return _serve("index.html")

    @app.get("/ui/<name>", include_in_schema=False, security=PUBLIC)
    def ui_file(name: str) -> Response[str]:
        return _serve(name)
