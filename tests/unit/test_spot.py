"""Spot interruptions a scheduler reports: counted once on the record, and published
once, however many heartbeats repeat them."""

from __future__ import annotations

from pathlib import Path

import pytest

from billow_control.core.models import ClusterRequest, Heartbeat
from billow_control.core.spot import note_interruptions
from tests.unit.test_api_guard import Api

pytestmark = pytest.mark.unit


def test_each_interruption_is_counted_and_published_once(tmp_path: Path) -> None:
    api = Api(tmp_path)
    admin = api.plane.authenticate(api.token)  # the harness's admin
    created, _ = api.plane.create_cluster(admin, ClusterRequest(n_workers=2), None)
    bus = api.plane.ports.events
    record = api.plane.ports.store.get_cluster(created["id"])
    assert record is not None
    before = len(bus.events)  # type: ignore[attr-defined]

    def beat(*workers: str) -> Heartbeat:
        return Heartbeat(scheduler_address="tls://10.0.0.1:8786", spot_interrupted=list(workers))

    record = note_interruptions(api.plane.ports, record, beat("worker-0"))
    record = note_interruptions(api.plane.ports, record, beat("worker-0"))  # repeated
    assert record.spot_interruptions == 1
    record = note_interruptions(api.plane.ports, record, beat("worker-0", "worker-3"))
    stored = api.plane.ports.store.get_cluster(record.id)
    assert stored is not None and stored.spot_interruptions == 2
    published = bus.events[before:]  # type: ignore[attr-defined]
    assert published == [("spot-interrupted", record.id)] * 2
