"""Composition root of the embedded control plane: SQLite, local processes, threads,
wired into one ``Ports`` bundle, plus the timer that stands in for the scheduled
watchdog function."""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..adapters.clock import SystemClock
from ..adapters.local.event_log import JsonLinesEventBus
from ..adapters.local.fernet_box import FernetSecretBox
from ..adapters.local.object_store import LocalObjectStore
from ..adapters.local.process_provider import LocalProcessProvider
from ..adapters.local.sqlite_store import SqliteStore
from ..adapters.local.thread_orchestrator import LocalOrchestrator
from ..core.ports import Ports
from ..core.service import ControlPlane
from ..core.settings import ControlSettings

log = logging.getLogger(__name__)


@dataclass
class EmbeddedRuntime:
    """The one ``Ports`` of ``billow server``, the ``ControlPlane`` over it, and the
    concrete orchestrator and provider whose threads and processes it starts and stops."""

    data_dir: Path
    ports: Ports
    plane: ControlPlane
    orchestrator: LocalOrchestrator
    provider: LocalProcessProvider
    objects: LocalObjectStore
    _stop: threading.Event = field(default_factory=threading.Event)
    _timer: threading.Thread | None = None

    @classmethod
    def create(cls, data_dir: Path, settings: ControlSettings) -> EmbeddedRuntime:
        data_dir = Path(data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(data_dir, 0o700)
        clock = SystemClock()
        provider = LocalProcessProvider(
            data_dir / "instances", settings.deployment, clock, env_cache=data_dir / "envs"
        )
        orchestrator = LocalOrchestrator()
        objects = LocalObjectStore(
            data_dir / "objects", settings.control_url, data_dir / "objects.key"
        )
        ports = Ports(
            store=SqliteStore(
                data_dir / "billow.db",
                # FULL: a committed transition survives power loss (sqlite_store.py).
                synchronous=os.environ.get("BILLOW_SQLITE_SYNCHRONOUS") or "FULL",
            ),
            provider=provider,
            orchestrator=orchestrator,
            secrets=FernetSecretBox.from_key_file(data_dir / "secret.key"),
            events=JsonLinesEventBus(data_dir / "events.jsonl"),
            objects=objects,
            clock=clock,
            settings=settings,
        )
        plane = ControlPlane(ports)
        orchestrator.reconcile = plane.lifecycle.reconcile
        return cls(data_dir, ports, plane, orchestrator, provider, objects)

    def start(self) -> None:
        """Start the reconcile threads, resubmit every unfinished cluster that has not
        converged (the watchdog's resync, as after any lost submit), and start the
        watchdog timer."""
        self.orchestrator.start()
        report = self.plane.watchdog.run_once()
        if report.resubmitted:
            log.info("resuming %d cluster(s): %s", len(report.resubmitted), report.resubmitted)
        self._timer = threading.Thread(target=self._watch, name="billow-watchdog", daemon=True)
        self._timer.start()

    def stop(self) -> None:
        self._stop.set()
        if self._timer is not None:
            self._timer.join(10)
        self.orchestrator.stop()

    def _watch(self) -> None:
        """The embedded stand-in for the scheduled watchdog function."""
        while not self._stop.wait(self.ports.settings.reaper_interval):
            try:
                report = self.plane.watchdog.run_once()
            except Exception:
                log.exception("watchdog pass failed")
                continue
            if report.acted:
                log.info("watchdog: %s", report.summary())


def write_login(path: Path, server: str, token: str) -> None:
    """Write ``billow.server`` and ``billow.token`` into a dask config file (mode 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump({"billow": {"server": server, "token": token}}, f)
    os.chmod(path, 0o600)
