"""The watchdog's warm-pool phase: it refills the provider's pool when the provider keeps
one (``core.pool_port.PoolKeeper``), and a failing refill fails no other phase."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from billow_control.adapters.clock import ManualClock
from billow_control.adapters.local.fernet_box import FernetSecretBox
from billow_control.adapters.local.sqlite_store import SqliteStore
from billow_control.core.ports import Ports
from billow_control.core.service import ControlPlane
from billow_control.core.settings import ControlSettings
from tests.unit.fakes import MemoryBus, MemoryProvider, RecordingOrchestrator
from tests.unit.test_meter import START

pytestmark = pytest.mark.unit


class PoolProvider(MemoryProvider):
    def __init__(self, clock: ManualClock, fail: bool = False) -> None:
        super().__init__(clock)
        self.refills = 0
        self.fail = fail

    def refill_pool(self) -> list[str]:
        self.refills += 1
        if self.fail:
            raise ConnectionError("EC2 unavailable")
        return [f"i-pool{self.refills}"]


def watchdog(tmp_path: Path, provider: MemoryProvider) -> ControlPlane:
    clock = ManualClock(START)
    ports = Ports(
        store=SqliteStore(tmp_path / "billow.db"),
        provider=provider,
        orchestrator=RecordingOrchestrator(),
        secrets=FernetSecretBox(Fernet.generate_key()),
        clock=clock,
        events=MemoryBus(),
        settings=ControlSettings(deployment="t"),
    )
    return ControlPlane(ports)


def test_each_pass_refills_a_provider_pool(tmp_path: Path) -> None:
    provider = PoolProvider(ManualClock(START))
    plane = watchdog(tmp_path, provider)
    report = plane.watchdog.run_once()
    assert provider.refills == 1 and report.pool_launched == ["i-pool1"] and report.acted
    assert plane.watchdog.run_once().summary()["pool_launched"] == ["i-pool2"]


def test_a_failing_refill_is_logged_and_a_provider_without_pool_is_skipped(
    tmp_path: Path,
) -> None:
    failing = PoolProvider(ManualClock(START), fail=True)
    report = watchdog(tmp_path, failing).watchdog.run_once()
    assert failing.refills == 1 and report.pool_launched == []
    (tmp_path / "plain").mkdir()
    plain = watchdog(tmp_path / "plain", MemoryProvider(ManualClock(START)))
    assert plain.watchdog.run_once().pool_launched == []
