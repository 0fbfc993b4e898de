"""Composition root of the embedded control plane: SQLite, local processes, threads."""

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
from ..adapters.local.process_provider import LocalProcessProvider
from ..adapters.local.sqlite_store import SqliteStore
from ..adapters.local.thread_orchestrator import LocalOrchestrator
from ..core.reaper import Reaper
from ..core.reconcile import Reconciler
from ..core.service import ControlPlane
from ..core.settings import ControlSettings

log = logging.getLogger(__name__)


@dataclass
class EmbeddedRuntime:
    data_dir: Path
    settings: ControlSettings
    store: SqliteStore
    provider: LocalProcessProvider
    orchestrator: LocalOrchestrator
    reconciler: Reconciler
    plane: ControlPlane
    reaper: Reaper
    _stop: threading.Event = field(default_factory=threading.Event)
    _timer: threading.Thread | None = None

    @classmethod
    def create(cls, data_dir: Path, settings: ControlSettings) -> EmbeddedRuntime:
        data_dir = Path(data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(data_dir, 0o700)
        clock = SystemClock()
        store = SqliteStore(data_dir / "billow.db")
        box = FernetSecretBox.from_key_file(data_dir / "secret.key")
        provider = LocalProcessProvider(data_dir / "instances", settings.deployment, clock)
        events = JsonLinesEventBus(data_dir / "events.jsonl")
        reconciler = Reconciler(store, provider, clock, events, settings)
        orchestrator = LocalOrchestrator(reconciler.reconcile)
        plane = ControlPlane(store, provider, orchestrator, box, clock, events, settings)
        reaper = Reaper(plane, reconciler)
        return cls(data_dir, settings, store, provider, orchestrator, reconciler, plane, reaper)

    def start(self) -> None:
        """Resume every cluster that has not reached a terminal status."""
        resume = [r.id for r in self.store.list_clusters(None, active_only=True)]
        if resume:
            log.info("resuming %d cluster(s): %s", len(resume), ", ".join(resume))
        self.orchestrator.start(resume)
        self._timer = threading.Thread(target=self._reap_forever, name="billow-reaper", daemon=True)
        self._timer.start()

    def stop(self) -> None:
        self._stop.set()
        if self._timer is not None:
            self._timer.join(10)
        self.orchestrator.stop()

    def _reap_forever(self) -> None:
        """The embedded stand-in for the scheduled reaper function."""
        while not self._stop.wait(self.settings.reaper_interval):
            try:
                report = self.reaper.run_once()
            except Exception:
                log.exception("reaper pass failed")
                continue
            if report.stopped or report.failed or report.orphans_terminated:
                log.info(
                    "reaper: stopped %s failed %s orphans %s",
                    report.stopped,
                    report.failed,
                    report.orphans_terminated,
                )


def write_login(path: Path, server: str, token: str) -> None:
    """Write ``billow.server`` and ``billow.token`` into a dask config file (mode 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump({"billow": {"server": server, "token": token}}, f)
    os.chmod(path, 0o600)
