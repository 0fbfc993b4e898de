"""The dashboard's static files through the route table: public, exact names only, the
right content types, caching and a strict Content-Security-Policy."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.test_api_guard import Api

pytestmark = pytest.mark.unit


@pytest.fixture
def api(tmp_path: Path) -> Api:
    return Api(tmp_path)


def _get(api: Api, path: str) -> tuple[int, dict[str, str], str]:
    from billow_control.runtimes.http_proxy import LambdaContextStub, http_api_event

    out = api.app.resolve(
        http_api_event("GET", path, "", {}, b"", "127.0.0.1"), LambdaContextStub("t")
    )  # type: ignore[arg-type]
    return out["statusCode"], out.get("headers", {}), out.get("body") or ""


def test_the_page_and_its_files_are_served_with_a_strict_policy(api: Api) -> None:
    status, headers, body = _get(api, "/ui/")
    assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    assert headers["Cache-Control"] == "no-cache"
    csp = headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "script-src 'self';" in csp and "unsafe" not in csp
    assert '<script src="app.js" defer></script>' in body and "<script>" not in body
    assert " style=" not in body and "<style" not in body  # no inline style either
    status, headers, body = _get(api, "/ui/app.js")
    assert status == 200 and headers["Content-Type"] == "text/javascript; charset=utf-8"
    assert headers["Cache-Control"] == "public, max-age=3600" and "sessionStorage" in body
    status, headers, _ = _get(api, "/ui/uplot-1.6.31.iife.min.js")
    assert status == 200 and headers["X-Content-Type-Options"] == "nosniff"
    assert _get(api, "/ui/uplot-1.6.31.min.css")[1]["Content-Type"].startswith("text/css")
    assert _get(api, "/ui/uplot-LICENSE.txt")[0] == 200
    assert _get(api, "/ui")[0] == 308


def test_only_the_dashboard_files_are_served(api: Api) -> None:
    for path in ("/ui/nothing.js", "/ui/..%2F..%2Fcore%2Fauth.py", "/ui/__init__.py"):
        status, headers, _ = _get(api, path)
        assert status == 404, path
    assert _get(api, "/ui/../api/app.py")[0] == 404
