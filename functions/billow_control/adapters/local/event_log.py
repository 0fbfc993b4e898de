"""Local event bus: lifecycle events as JSON lines in a file (the embedded runtime's bus)."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

from ...core.models import ClusterRecord, utcnow

log = logging.getLogger(__name__)


class JsonLinesEventBus:
    """Implements ``billow_control.core.ports.EventBus``; never raises into callers."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def publish(self, kind: str, cluster: ClusterRecord, detail: dict | None = None) -> None:
        event = {
            "time": utcnow().isoformat(),
            "kind": kind,
            "cluster_id": cluster.id,
            "cluster_name": cluster.name,
            "owner": cluster.owner,
            "status": cluster.status.value,
            "detail": detail or {},
        }
        try:
            with self._lock, open(self.path, "a") as f:
                f.write(json.dumps(event) + "\n")
        except OSError:
            log.exception("could not write event %s", kind)

    def publish_usage(self, kind: str, detail: dict) -> None:
        """A usage event (``core.meter``) as one JSON line: ``kind`` and ``detail``."""
        event = {"time": utcnow().isoformat(), "kind": kind, "detail": detail}
        try:
            with self._lock, open(self.path, "a") as f:
                f.write(json.dumps(event) + "\n")
        except OSError:
            log.exception("could not write event %s", kind)
