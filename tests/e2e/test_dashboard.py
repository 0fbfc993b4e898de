"""The private dashboard on ``billow server``: the link is https, served with the cluster's
certificate, and only a request that shows the cluster's dashboard token gets a page."""

from __future__ import annotations

from urllib.parse import urlsplit

import httpx
import pytest

import billow
from billow.dashboard import COOKIE_PREFIX
from tests.support.processes import EmbeddedServer

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_the_dashboard_link_loads_with_its_token_and_403s_without(
    embedded_server: EmbeddedServer,
) -> None:
    with billow.Cluster(
        n_workers=1,
        name="private-dashboard",
        server=embedded_server.url,
        token=embedded_server.token,
        show_progress=False,
        allow_ingress_from=["me", "192.0.2.0/24"],
    ) as cluster:
        link = cluster.dashboard_link
        url = urlsplit(link)
        assert url.scheme == "https" and url.path == "/status" and url.query.startswith("token=")
        bare = f"https://{url.netloc}/status"
        pinned = cluster.dashboard_ssl_context()
        # On the embedded server "me" is the peer address of the SDK's request.
        assert cluster.record["request"]["allow_ingress_from"] == ["127.0.0.1/32", "192.0.2.0/24"]

        with httpx.Client(verify=pinned, timeout=30) as browser:
            # The link trades its token for a cookie and drops it from the address.
            first = browser.get(link)
            assert first.status_code == 302 and first.headers["location"] == "/status"
            cookie = f"{COOKIE_PREFIX}{cluster.cluster_id}"
            set_cookie = first.headers["set-cookie"]
            assert set_cookie.startswith(f"{cookie}=") and "HttpOnly" in set_cookie
            assert "Secure" in set_cookie
            page = browser.get(bare)  # the cookie alone now opens every page
            assert page.status_code == 200 and "Dask" in page.text and "bokeh" in page.text
            assert browser.get(f"https://{url.netloc}/info/main/workers.html").status_code == 200

        with httpx.Client(verify=pinned, timeout=30) as stranger:
            for path in ("/status", "/status?token=guess", "/metrics", "/statics/css/base.css"):
                refused = stranger.get(f"https://{url.netloc}{path}")
                assert refused.status_code == 403, path
                assert "token" in refused.text
            stranger.cookies.set(f"{COOKIE_PREFIX}{cluster.cluster_id}", "guess")
            assert stranger.get(bare).status_code == 403

        # Served with the cluster's certificate: the system's trust store does not know
        # its CA (browsers warn until it is trusted), and plain http is not spoken.
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(link, timeout=10)
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://{url.netloc}/status", timeout=10)
