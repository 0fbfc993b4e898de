"""A scheduler port reserved at launch: nothing else can take it before the scheduler
binds it, and the scheduler's own listener (tornado's, as Dask binds) can."""

from __future__ import annotations

import socket

import pytest
from tornado.netutil import bind_sockets

from billow_control.adapters.local.port_reservations import PortReservations

pytestmark = pytest.mark.integration


def test_a_reserved_port_is_the_schedulers_alone() -> None:
    reservations = PortReservations()
    port = reservations.reserve("i-1")
    assert reservations.reserve("i-1") == port  # a retried launch keeps its port
    try:
        other = socket.socket()
        with pytest.raises(OSError):  # a plain bind of it fails
            other.bind(("127.0.0.1", port))
        other.close()
        chosen = set()
        for _ in range(200):  # nor does the kernel hand it out
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                chosen.add(s.getsockname()[1])
        assert port not in chosen
        [listener] = bind_sockets(port, address="127.0.0.1")  # the scheduler's bind
        listener.close()
    finally:
        reservations.release_all()
    with socket.socket() as s:  # released: free for anyone again
        s.bind(("127.0.0.1", port))
