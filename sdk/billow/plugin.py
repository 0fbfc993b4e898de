"""The scheduler plugin that reports to the control plane.

The first heartbeat carries the scheduler's address; later ones go out every
``interval`` seconds and promptly (debounced) whenever a worker joins or leaves, so the
control plane marks the cluster ready without waiting a full interval.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import httpx
from distributed.diagnostics.plugin import SchedulerPlugin

log = logging.getLogger("billow.plugin")


class BillowSchedulerPlugin(SchedulerPlugin):
    name = "billow"

    def __init__(
        self, control_url: str, cluster_id: str, cluster_token: str, interval: float = 5.0
    ) -> None:
        self.control_url = control_url.rstrip("/")
        self.cluster_id = cluster_id
        self.cluster_token = cluster_token
        self.interval = interval
        self.scheduler: Any = None
        self.target = "running"
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._last_activity = time.monotonic()
        self._http: httpx.AsyncClient | None = None

    async def start(self, scheduler: Any) -> None:
        self.scheduler = scheduler
        self._http = httpx.AsyncClient(
            headers={"Authorization": f"Bearer {self.cluster_token}"}, timeout=10
        )
        self._task = asyncio.create_task(self._loop())

    async def close(self) -> None:
        if self._task:
            self._task.cancel()
        if self._http:
            await self._http.aclose()

    # Activity hooks: wake the loop for a prompt heartbeat.
    def add_worker(self, scheduler: Any = None, worker: str | None = None) -> None:
        self._wake.set()

    def remove_worker(self, scheduler: Any = None, worker: str | None = None, **kw: Any) -> None:
        self._wake.set()

    def update_graph(self, scheduler: Any, **kw: Any) -> None:
        self._last_activity = time.monotonic()

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kw: Any) -> None:
        if finish in ("processing", "memory", "erred"):
            self._last_activity = time.monotonic()

    def snapshot(self) -> dict[str, Any]:
        s = self.scheduler
        workers = list(s.workers.values())
        processing = sum(len(ws.processing) for ws in workers)
        queued = len(getattr(s, "queued", ())) + len(getattr(s, "unrunnable", ()))
        if processing or queued:
            self._last_activity = time.monotonic()
        clients = [c for c in s.clients if not c.startswith("fire-and-forget")]
        dashboard = None
        if "dashboard" in s.services:
            host = s.address.split("://", 1)[1].rsplit(":", 1)[0]
            dashboard = f"{host}:{s.services['dashboard'].port}"
        return {
            "scheduler_address": s.address,
            "dashboard_address": dashboard,
            "workers": sorted(str(ws.name) for ws in workers),
            "n_threads": sum(ws.nthreads for ws in workers),
            "tasks_processing": processing,
            "tasks_queued": queued,
            "clients": len(clients),
            "idle_seconds": time.monotonic() - self._last_activity,
        }

    async def send(self) -> None:
        assert self._http is not None
        url = f"{self.control_url}/v1/clusters/{self.cluster_id}/heartbeat"
        response = await self._http.post(url, json=self.snapshot())
        response.raise_for_status()
        self.target = response.json().get("target", "running")

    async def _loop(self) -> None:
        failures = 0
        while True:
            try:
                await self.send()
                failures = 0
            except Exception as e:  # the control plane may be restarting: keep trying
                failures += 1
                log.warning("heartbeat failed (%d in a row): %s", failures, e)
            if self.target == "stopped":
                log.info("control plane asked this cluster to stop; closing scheduler")
                await self.scheduler.close()
                return
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), self.interval)
                await asyncio.sleep(0.05)  # debounce bursts of joins
            except TimeoutError:
                pass
