"""The scheduler plugin that reports to the control plane (see docs/analytics.md).

The first heartbeat carries the scheduler's address. After that the plugin reports
when the control plane's answer says (``next_heartbeat``: ``interval``, 5 s, while the
cluster converges; up to a minute once it is steady, since every report is an API
Gateway request and a Lambda invocation), and sooner on news:

* at once (debounced 20 ms): a worker or client joins or leaves, or work starts after
  ``next_heartbeat`` seconds without any;
* ``interval`` seconds after the last task in flight ended, if no work came since and
  the last report said the cluster was busy (the reaper never stops a busy cluster).

The reaper extrapolates idleness from the last report. These rules keep that exact
enough: work it has not heard of is never older than ``next_heartbeat``, which the
control plane keeps at most half the idle timeout, and the end of work is heard of
within ``interval``.

Idleness is measured on the monotonic clock, so a wall-clock jump cannot make a busy
cluster look idle. What is sent depends on ``analytics``: ``off`` sends only what the
reaper needs (address, worker names, busy/idle, client counts), ``minimal`` adds sizes
and versions, ``full`` adds per-worker detail and the task prefixes being processed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from distributed.diagnostics.plugin import SchedulerPlugin

from .gpu import METRIC as GPU_METRIC
from .gpu import GPUProbe, aggregate
from .instance_http import request

__all__ = ["BillowSchedulerPlugin", "GPUProbe"]  # GPUProbe moved to billow.gpu

log = logging.getLogger("billow.plugin")

ANALYTICS_LEVELS = ("off", "minimal", "full")
IN_FLIGHT = frozenset({"queued", "no-worker", "processing"})  # what makes a cluster busy


class BillowSchedulerPlugin(SchedulerPlugin):
    name = "billow"

    def __init__(
        self,
        control_url: str,
        cluster_id: str,
        cluster_token: str,
        interval: float = 5.0,
        analytics: str = "minimal",
        gpu_threshold: float = 0.1,
        clock: Any = time.monotonic,
        private_host: str | None = None,
        public_host: str | None = None,
    ) -> None:
        if analytics not in ANALYTICS_LEVELS:
            raise ValueError(f"analytics must be one of {ANALYTICS_LEVELS}, not {analytics!r}")
        self.control_url = control_url.rstrip("/")
        self.cluster_id = cluster_id
        self.cluster_token = cluster_token
        self.interval = interval
        self.analytics = analytics
        self.gpu_threshold = gpu_threshold
        self.clock = clock
        # The instance's addresses (IMDS on EC2): workers use the private one, clients
        # outside its network the public one; None keeps the address Dask found.
        self.private_host = private_host
        self.public_host = public_host
        self.scheduler: Any = None
        self.target = "running"
        self.next_heartbeat = interval  # until the control plane says otherwise
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._last_activity = clock()
        self._in_flight = 0  # tasks queued or processing, counted from transitions
        self._went_idle_at: float | None = None  # when the last task in flight ended
        self._reported_busy = False  # what the last snapshot said
        self._ever_had_client = False
        self._last_client_left: float | None = None
        self._gpu_low_since: float | None = None
        self._spot_interrupted: list[str] = []  # workers that got a spot notice

    async def start(self, scheduler: Any) -> None:
        self.scheduler = scheduler
        self._task = asyncio.create_task(self._loop())

    async def close(self) -> None:
        if self._task:
            self._task.cancel()

    # -- scheduler hooks -------------------------------------------------------------

    def add_worker(self, scheduler: Any = None, worker: str | None = None) -> None:
        self._wake.set()

    def remove_worker(self, scheduler: Any = None, worker: str | None = None, **kw: Any) -> None:
        self._wake.set()

    def add_client(self, scheduler: Any, client: str) -> None:
        if not client.startswith("fire-and-forget"):
            self._ever_had_client = True
            self._last_client_left = None
            self._touch()
            self._wake.set()

    def remove_client(self, scheduler: Any, client: str) -> None:
        if not self._user_clients():
            self._last_client_left = self.clock()
        self._touch()
        self._wake.set()

    def update_graph(self, scheduler: Any, *args: Any, **kw: Any) -> None:
        self._touch()

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kw: Any) -> None:
        self._touch()
        self._in_flight += (finish in IN_FLIGHT) - (start in IN_FLIGHT)
        if self._in_flight <= 0 and start in IN_FLIGHT:
            self._in_flight = 0
            self._went_idle_at = self._last_activity  # reported if nothing follows

    def log_event(self, topic: str, msg: Any) -> None:
        """A worker's agent reports a spot interruption notice (``billow.spot``): count
        it and report it at once."""
        from .spot import SPOT_TOPIC

        if topic == SPOT_TOPIC and isinstance(msg, dict):
            self._spot_interrupted.append(str(msg.get("worker")))
            self._wake.set()

    def _touch(self) -> None:
        """Work happened now: news if the control plane last heard of work long ago."""
        now = self.clock()
        if now - self._last_activity >= self.next_heartbeat:
            self._wake.set()
        self._last_activity = now
        self._went_idle_at = None

    def seconds_until_due(self, last_sent: float, failures: int = 0) -> float:
        """Seconds until the next report is due when nothing wakes the plugin: the control
        plane's ``next_heartbeat`` (``interval`` after a failure), or ``interval`` after
        the cluster went idle after a report that said busy. Zero or less: due now."""
        due = last_sent + (self.interval if failures else self.next_heartbeat)
        if self._went_idle_at is not None and self._reported_busy:
            due = min(due, self._went_idle_at + self.interval)
        return due - self.clock()

    def _user_clients(self) -> list[str]:
        return [c for c in self.scheduler.clients if not c.startswith("fire-and-forget")]

    # -- reporting -------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The heartbeat body for the configured analytics level."""
        s = self.scheduler
        now = self.clock()
        workers = list(s.workers.values())
        processing = sum(len(ws.processing) for ws in workers)
        queued = len(getattr(s, "queued", ())) + len(getattr(s, "unrunnable", ()))
        busy = bool(processing or queued)
        self._reported_busy = busy
        if busy:
            self._last_activity = now
        clients = self._user_clients()
        beat: dict[str, Any] = {
            **self._addresses(),
            "workers": sorted(str(ws.name) for ws in workers),
            "busy": busy,
            "idle_seconds": max(0.0, now - self._last_activity),
            "clients": len(clients),
            "seconds_without_clients": (
                now - self._last_client_left
                if self._ever_had_client and not clients and self._last_client_left is not None
                else None
            ),
            **self._gpu_report(now),
        }
        if self._spot_interrupted:
            beat["spot_interrupted"] = list(self._spot_interrupted)
        if self.analytics in ("minimal", "full"):
            import dask
            import distributed

            beat.update(
                n_threads=sum(ws.nthreads for ws in workers),
                memory_bytes=sum(ws.memory_limit or 0 for ws in workers),
                tasks_processing=processing,
                tasks_queued=queued,
                versions={"dask": dask.__version__, "distributed": distributed.__version__},
            )
        if self.analytics == "full":
            prefixes: dict[str, int] = {}
            for ws in workers:
                for ts in ws.processing:
                    prefixes[ts.prefix.name] = prefixes.get(ts.prefix.name, 0) + 1
            beat["processing_prefixes"] = prefixes
            beat["worker_detail"] = [
                {
                    "name": str(ws.name),
                    "nthreads": ws.nthreads,
                    "memory_limit": ws.memory_limit,
                    "processing": len(ws.processing),
                    "managed_bytes": ws.nbytes,
                }
                for ws in workers
            ]
        return beat

    def _addresses(self) -> dict[str, str | None]:
        """Where workers (private) and outside clients (public) reach the scheduler and
        its dashboard: the instance's addresses when known, else the one Dask found."""
        from distributed.comm.addressing import parse_address, parse_host_port

        s = self.scheduler
        dashboard = s.services.get("dashboard")
        if not (self.private_host or self.public_host):
            host = s.address.split("://", 1)[1].rsplit(":", 1)[0]
            return {
                "scheduler_address": s.address,
                "dashboard_address": f"{host}:{dashboard.port}" if dashboard else None,
            }
        protocol, location = parse_address(s.address)
        host, port = parse_host_port(location)
        private = self.private_host or host
        out: dict[str, str | None] = {
            "scheduler_address": f"{protocol}://{private}:{port}",
            "dashboard_address": f"{private}:{dashboard.port}" if dashboard else None,
        }
        if self.public_host:
            out["scheduler_public_address"] = f"{protocol}://{self.public_host}:{port}"
            if dashboard:
                out["dashboard_public_address"] = f"{self.public_host}:{dashboard.port}"
        return out

    def _gpu_report(self, now: float) -> dict[str, Any]:
        """GPU use of the workers (their ``billow_gpu`` metric, ``billow.gpu``); the
        scheduler's own machine never counts."""
        found = aggregate(ws.metrics.get(GPU_METRIC) for ws in self.scheduler.workers.values())
        if not found["gpus"]:
            self._gpu_low_since = None
            return {"gpus": 0, "gpu_low_seconds": None}
        low = found["utilization_max"] < self.gpu_threshold
        if not low:
            self._gpu_low_since = None
        elif self._gpu_low_since is None:
            self._gpu_low_since = now
        return {
            "gpus": found["gpus"],
            "gpu_low_seconds": now - self._gpu_low_since if low else None,
            "gpu_utilization": round(found["utilization_mean"], 4),
            "gpu_memory_used": found["memory_used"],
            "gpu_memory_total": found["memory_total"],
        }

    async def send(self) -> None:
        """Report a snapshot (the request runs in a thread, off the scheduler's loop).
        Raises ``OSError`` when the control plane is unreachable, ``RuntimeError`` when
        it refuses."""
        url = f"{self.control_url}/v1/clusters/{self.cluster_id}/heartbeat"
        response = await asyncio.to_thread(
            request,
            "POST",
            url,
            headers={"Authorization": f"Bearer {self.cluster_token}"},
            json_body=self.snapshot(),
        )
        if response.status >= 400:
            raise RuntimeError(f"control plane answered {response.status}: {response.text}")
        self.apply_answer(response.json())

    def apply_answer(self, answer: dict[str, Any]) -> None:
        """Obey the control plane's answer to a heartbeat: the cluster's target, and when
        to report next if nothing changes (``interval`` when it does not say)."""
        self.target = answer.get("target", "running")
        self.next_heartbeat = float(answer.get("next_heartbeat", self.interval))

    async def _loop(self) -> None:
        failures = 0
        while True:
            last_sent = self.clock()
            self._went_idle_at = None
            # Cleared before the snapshot: news while the report is in flight (a worker
            # joining the moment the first report leaves) wakes the next one at once.
            self._wake.clear()
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
            while (wait := self.seconds_until_due(last_sent, failures)) > 0:
                try:
                    await asyncio.wait_for(self._wake.wait(), wait)
                    await asyncio.sleep(0.02)  # debounce a burst of joins (a start)
                    break
                except TimeoutError:
                    pass
