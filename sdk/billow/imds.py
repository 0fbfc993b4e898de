"""EC2's instance metadata service (IMDSv2), as the agent on an instance reads it.

IMDSv2 is session-oriented: a ``PUT /latest/api/token`` (with the token's lifetime in
``X-aws-ec2-metadata-token-ttl-seconds``) returns a token that every ``GET
/latest/meta-data/...`` carries in ``X-aws-ec2-metadata-token``. The endpoint is
``BILLOW_IMDS_ENDPOINT`` (EC2 user data sets ``http://169.254.169.254``; tests serve one
on loopback); without it the agent asks nothing.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from .instance_http import request

log = logging.getLogger("billow.imds")
TOKEN_TTL_SECONDS = 21600
TOKEN_HEADER = "X-aws-ec2-metadata-token"
TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"


class ImdsError(Exception):
    """The metadata service could not be reached or refused the session."""


@dataclass(frozen=True)
class Addresses:
    """The instance's addresses: ``private`` in its VPC, ``public`` (``None`` without
    one) as the internet reaches it through EC2's one-to-one NAT."""

    private: str | None
    public: str | None


class Imds:
    """A client of one IMDSv2 endpoint; renews its session token when it expires."""

    def __init__(self, endpoint: str, timeout: float = 2.0) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.timeout = timeout
        self._token: str | None = None
        self._token_at = 0.0

    def _session(self, renew: bool = False) -> str:
        if (
            renew
            or self._token is None
            or time.monotonic() - self._token_at > TOKEN_TTL_SECONDS / 2
        ):
            response = request(
                "PUT",
                f"{self.endpoint}/latest/api/token",
                headers={TTL_HEADER: str(TOKEN_TTL_SECONDS)},
                timeout=self.timeout,
            )
            if response.status != 200:
                raise ImdsError(f"IMDS token request answered HTTP {response.status}")
            self._token, self._token_at = response.text.strip(), time.monotonic()
        return self._token

    def get(self, path: str) -> str | None:
        """The value of ``meta-data/<path>``; ``None`` when the instance has none (404).
        Raises ``ImdsError`` when the service is unreachable or refuses."""
        url = f"{self.endpoint}/latest/meta-data/{path}"
        try:
            for attempt in range(2):
                response = request(
                    "GET",
                    url,
                    headers={TOKEN_HEADER: self._session(renew=attempt > 0)},
                    timeout=self.timeout,
                )
                if response.status == 401:  # the session expired: renew it once
                    continue
                if response.status == 404:
                    return None
                if response.status != 200:
                    raise ImdsError(f"IMDS {path} answered HTTP {response.status}")
                return response.text.strip() or None
        except OSError as e:
            raise ImdsError(f"IMDS at {self.endpoint} unreachable: {e}") from None
        raise ImdsError(f"IMDS refused the session token for {path}")


def instance_addresses(endpoint: str | None, attempts: int = 3) -> Addresses:
    """The instance's private and public IPv4 addresses from ``endpoint``. Without an
    endpoint, or when the service stays unreachable (logged), both are ``None`` and Dask
    keeps the address it finds itself."""
    if not endpoint:
        return Addresses(None, None)
    imds = Imds(endpoint)
    for attempt in range(attempts):
        try:
            return Addresses(private=imds.get("local-ipv4"), public=imds.get("public-ipv4"))
        except ImdsError as e:
            log.warning("instance addresses: %s (attempt %d of %d)", e, attempt + 1, attempts)
            time.sleep(0.5 * (attempt + 1))
    return Addresses(None, None)
