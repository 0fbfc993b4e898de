"""The agent's IMDSv2 client against the loopback IMDS harness: a session token first,
then the instance's addresses; no public address, a refused token and an unreachable
service are answered without raising."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from billow.imds import Addresses, Imds, ImdsError, instance_addresses
from tests.support.imds import ImdsServer
from tests.support.processes import free_port

pytestmark = pytest.mark.integration


@pytest.fixture
def imds() -> Iterator[ImdsServer]:
    with ImdsServer() as server:
        yield server


def test_addresses_come_from_an_imdsv2_session(imds: ImdsServer) -> None:
    imds.set("i-1", "local-ipv4", "10.86.1.20")
    imds.set("i-1", "public-ipv4", "198.51.100.9")
    imds.set("i-2", "local-ipv4", "10.86.1.21")  # no public IP
    assert instance_addresses(imds.endpoint("i-1")) == Addresses("10.86.1.20", "198.51.100.9")
    assert instance_addresses(imds.endpoint("i-2")) == Addresses("10.86.1.21", None)
    # IMDSv2: the token request comes first, and every read carries its token.
    assert imds.requests[0] == ("PUT", "/latest/api/token")
    assert ("GET", "/latest/meta-data/public-ipv4") in imds.requests
    assert instance_addresses(None) == Addresses(None, None)  # not on EC2: nothing asked


def test_an_expired_session_is_renewed_once(imds: ImdsServer) -> None:
    imds.set("i-1", "local-ipv4", "10.86.1.20")
    client = Imds(imds.endpoint("i-1"))
    assert client.get("local-ipv4") == "10.86.1.20"
    imds.tokens.clear()  # the service forgot the session
    assert client.get("local-ipv4") == "10.86.1.20"
    assert [r for r in imds.requests if r[0] == "PUT"] == [("PUT", "/latest/api/token")] * 2


def test_an_unreachable_service_leaves_the_addresses_to_dask() -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ImdsError, match="unreachable"):
        Imds(endpoint, timeout=0.5).get("local-ipv4")
    assert instance_addresses(endpoint, attempts=1) == Addresses(None, None)
