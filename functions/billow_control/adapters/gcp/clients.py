"""What every Google client of the GCP adapters is built with."""

from __future__ import annotations

from typing import Any


def client_options(endpoint: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(client kwargs, client_options)`` of a Google client: anonymous credentials for an
    ``http://`` endpoint (a loopback fake), ADC otherwise."""
    if not endpoint:
        return {}, {}
    kwargs: dict[str, Any] = {}
    if endpoint.startswith("http://"):
        from google.auth.credentials import AnonymousCredentials

        kwargs["credentials"] = AnonymousCredentials()
    return kwargs, {"api_endpoint": endpoint.rstrip("/")}
