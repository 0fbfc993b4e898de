"""Scheduler ports the embedded provider fixes at launch, so that a cluster's workers can
be told where their scheduler will listen before it does (``InstanceInfo.listen_address``):
they bootstrap at once and connect as soon as it listens, instead of waiting for its
first report to the control plane. Only for a scheduler from the warm pool, up in about
0.1 s: a cold one spends a second or two importing, and workers starting beside it on
this machine's cores would only slow it down (they wait for its report, as on a cloud).

A port is reserved by a socket bound to it (with ``SO_REUSEADDR``) that never listens:
the scheduler's own listener binds it too (tornado sets ``SO_REUSEADDR``), while the
kernel gives it to no ``bind(("127.0.0.1", 0))`` and to no outgoing connection, and a
plain ``bind`` of it fails. Without the reservation another process could take the port
between the choice and the scheduler's bind, and the cluster would fail to start. A
reservation is held until the instance is terminated (or seen gone); after a server
restart the listening scheduler holds the port itself.
"""

from __future__ import annotations

import contextlib
import socket
import threading

HOST = "127.0.0.1"


class PortReservations:
    """Reserved loopback ports, by instance id."""

    def __init__(self, host: str = HOST) -> None:
        self.host = host
        self._held: dict[str, socket.socket] = {}
        self._lock = threading.Lock()

    def reserve(self, instance_id: str) -> int:
        """Reserve a free port for ``instance_id`` (its reservation if it has one)."""
        with self._lock:
            held = self._held.get(instance_id)
            if held is None:
                held = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                held.bind((self.host, 0))
                self._held[instance_id] = held
            return int(held.getsockname()[1])

    def release(self, instance_id: str) -> None:
        """Close ``instance_id``'s reservation, if any."""
        with self._lock:
            held = self._held.pop(instance_id, None)
        if held is not None:
            with contextlib.suppress(OSError):
                held.close()

    def release_all(self) -> None:
        for instance_id in list(self._held):
            self.release(instance_id)
