"""Only the owner's client certificate opens the scheduler: no plain TCP, no other CA."""

from __future__ import annotations

import socket
import ssl

import pytest
from dask.distributed import Client
from distributed.security import Security

import billow
from tests.support.processes import EmbeddedServer

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def cluster(embedded_server: EmbeddedServer):
    with billow.Cluster(
        n_workers=1,
        name="tls-check",
        server=embedded_server.url,
        token=embedded_server.token,
        show_progress=False,
    ) as c:
        yield c


def test_owner_certificate_connects(cluster: billow.Cluster) -> None:
    with Client(cluster) as client:
        assert client.submit(lambda: 42).result() == 42


def test_plain_tcp_is_refused(cluster: billow.Cluster) -> None:
    hostport = cluster.scheduler_address.split("://", 1)[1]
    with pytest.raises((OSError, TimeoutError)):
        Client(f"tcp://{hostport}", timeout="3s")


def test_certificate_from_another_ca_is_refused(cluster: billow.Cluster) -> None:
    with pytest.raises((OSError, TimeoutError)):
        Client(cluster.scheduler_address, security=Security.temporary(), timeout="3s")


def test_tls_without_client_certificate_is_refused(cluster: billow.Cluster) -> None:
    """A peer that trusts the cluster CA but shows no certificate gets no Dask session."""
    host, port = cluster.scheduler_address.split("://", 1)[1].rsplit(":", 1)
    context = ssl.create_default_context(cadata=cluster.security.tls_ca_file)
    context.check_hostname = False
    with (
        socket.create_connection((host, int(port)), timeout=5) as raw,
        pytest.raises((ssl.SSLError, ConnectionError)),
        context.wrap_socket(raw) as tls,
    ):
        tls.sendall(b"\x00" * 16)
        if tls.recv(1) == b"":
            raise ConnectionError("scheduler closed the connection")
