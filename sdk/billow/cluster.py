"""``billow.Cluster``: a Dask cluster run by a Billow control plane.

Honours the ``distributed.deploy.Cluster`` contract: ``Client(cluster)``, ``scale``,
``adapt``, ``get_logs``, ``close``, ``dashboard_link``, context managers, and
``asynchronous=True``. Connections to the scheduler use mutual TLS with the certificate
the control plane issues to the cluster's owner.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import ssl
import time
import warnings
from pathlib import Path
from typing import Any

from distributed.core import Status, rpc
from distributed.deploy import Cluster as DaskCluster
from distributed.security import Security
from distributed.utils import Log, Logs
from tornado.ioloop import PeriodicCallback

from . import config
from .api import ControlPlaneClient
from .credentials import DEFAULT_DURATION, Forwarder, obtain
from .errors import ClusterStartError, ClusterStopped
from .progress import StartProgress

_TERMINAL = ("stopped", "failed")
RECORD_REFRESH_SECONDS = 30


class BillowWarning(UserWarning):
    """Something the control plane wants the user to know (idle GPUs, a reaped cluster)."""


def reachable_address(found: dict[str, Any], what: str) -> str | None:
    """Where this client reaches the cluster's ``what`` (``scheduler``, ``dashboard``):
    its public address when it has one, unless ``billow.network.private-only`` says this
    client is inside the cluster's network; else the private one."""
    public = found.get(f"{what}_public_address")
    if public and not config.get("network.private-only", False):
        return str(public)
    private = found.get(f"{what}_address")
    return str(private) if private else None


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Mark a background request's outcome as seen (its failure is reported by whoever
    awaits it, or does not matter once the start failed)."""
    if not task.cancelled():
        task.exception()


class Cluster(DaskCluster):
    """Create a cluster, or reconnect to the active one named ``name``.

    Parameters
    ----------
    n_workers : int or [min, max]
        Worker count, or bounds for adaptive scaling.
    name : str, optional
        Reconnects when an active cluster of yours has this name; otherwise names the new one.
    worker_cpu, worker_memory, scheduler_cpu, scheduler_memory, tags, environ
        Passed to the control plane, which validates them and names any bad field.
        ``environ`` is plain configuration: stored and shown as given.
    secrets : dict of str, optional
        Environment variables for credentials, set on every instance like ``environ``:
        encrypted at rest, handed only to the cluster's instances, never returned (the
        cluster shows their names). A name may not be in both.
    idle_timeout, no_client_timeout, cluster_timeout : str, optional
        Durations such as ``"20m"``: stop when idle (no tasks, no client activity), this
        long after the last client left, or after this total lifetime.
    analytics : {"off", "minimal", "full"}
        What the scheduler plugin reports (default ``billow.analytics``).
    package_sync : bool
        Run the client's own software on every instance: the installed packages are
        scanned and pinned, local and editable code is built into wheels and uploaded to
        the deployment's object store, and each instance builds (or reuses) that
        environment with uv. Default ``False``: instances run their image's environment.
    package_sync_ignore, package_sync_only : list of str, optional
        Leave these distributions out of the sync, or sync only these.
    package_sync_strict : bool
        Refuse to start unless every package matches the client exactly (by default only
        Python and Dask's core packages must).
    software : str, optional
        A software environment of yours (``billow.create_software_environment``) by name,
        its latest revision, or ``"name:revision"``. Its spec is checked against this
        client's versions first; the cluster keeps the revision it started with.
        Exclusive with ``package_sync=True``.
    credentials : {"local", None}
        ``"local"`` (default): forward short-lived credentials of this client's AWS and
        Google identities to the workers over the cluster's TLS connection, never through
        the control plane, refreshed while the cluster is open here (see
        ``billow.credentials``); ``None``: forward nothing.
    credentials_duration_seconds : int, optional
        Lifetime of forwarded credentials (default 3600; STS session tokens last at
        least 900 s); fresh ones are sent at half of it.
    worker_vm_types, scheduler_vm_types : list of str, optional
        Machine types in order of preference (e.g. ``["m7i.xlarge", "m6i.xlarge"]``);
        default: the smallest types that fit the cpu and memory asked.
    arm : bool
        ARM (arm64) machines for every instance.
    worker_gpu : int
        NVIDIA GPUs per worker (the scheduler never gets one).
    spot_policy : str, optional
        ``"on-demand"``, ``"spot"`` or ``"spot_with_fallback"``; default: the deployment's.
    allow_ingress_from : str or list of str, optional
        Who may reach the scheduler and dashboard: CIDR blocks, or ``"me"`` (the
        default: the address this client's requests come from, as a /32).
    shutdown_on_close : bool
        Stop the cluster when this object closes (default ``True``).
    server, token : str, optional
        Control plane URL and API token; default to config and the login file.
    timeout : float
        Seconds to wait for the cluster to become ready (default: ``billow.start-timeout``).

    Raises
    ------
    billow.errors.ValidationError
        The request was rejected; ``.field`` names the offending field.
    billow.errors.VersionMismatchError
        Package sync (or the ``software`` environment) would give the cluster other
        versions of Python or Dask's core packages than this client's; raised before
        anything is created.
    billow.errors.SoftwareEnvironmentNotFound
        You have no software environment named ``software``.
    ValueError
        ``software`` and ``package_sync=True`` were both given.
    billow.errors.ClusterStartError
        The cluster failed to start; ``.logs`` has the failing instance's last log lines.
    """

    def __init__(
        self,
        n_workers: int | list[int] | tuple[int, int] | None = None,
        *,
        name: str | None = None,
        worker_cpu: int | None = None,
        worker_memory: str | None = None,
        scheduler_cpu: int | None = None,
        scheduler_memory: str | None = None,
        idle_timeout: str | float | None = None,
        no_client_timeout: str | float | None = None,
        cluster_timeout: str | float | None = None,
        analytics: str | None = None,
        tags: dict[str, str] | None = None,
        environ: dict[str, str] | None = None,
        secrets: dict[str, str] | None = None,
        package_sync: bool = False,
        package_sync_ignore: list[str] | None = None,
        package_sync_only: list[str] | None = None,
        package_sync_strict: bool = False,
        software: str | None = None,
        worker_vm_types: list[str] | None = None,
        scheduler_vm_types: list[str] | None = None,
        arm: bool | None = None,
        worker_gpu: int | None = None,
        spot_policy: str | None = None,
        allow_ingress_from: str | list[str] | None = None,
        shutdown_on_close: bool = True,
        credentials: str | None = "local",
        credentials_duration_seconds: int | None = None,
        server: str | None = None,
        token: str | None = None,
        timeout: float | None = None,
        show_progress: bool | None = None,
        asynchronous: bool = False,
        loop: Any = None,
    ) -> None:
        if software is not None and package_sync:
            raise ValueError(
                "software= and package_sync=True are exclusive: the cluster runs either a "
                "named software environment or a copy of this client's"
            )
        if credentials not in ("local", None):
            raise ValueError("credentials must be 'local' (forward this client's) or None")
        self._credentials = credentials
        self._credentials_duration = int(credentials_duration_seconds or DEFAULT_DURATION)
        self._forwarder: Forwarder | None = None
        self._software_environment = software
        spec: dict[str, Any] = {
            "n_workers": list(n_workers) if isinstance(n_workers, tuple) else n_workers,
            "name": name,
            "worker_cpu": worker_cpu,
            "worker_memory": worker_memory,
            "scheduler_cpu": scheduler_cpu,
            "scheduler_memory": scheduler_memory,
            "idle_timeout": idle_timeout,
            "no_client_timeout": no_client_timeout,
            "cluster_timeout": cluster_timeout,
            "analytics": analytics or config.analytics_level(),
            "tags": tags,
            "environ": environ,
            "secrets": secrets,
            "allow_ingress_from": allow_ingress_from,
            "worker_vm_types": worker_vm_types,
            "scheduler_vm_types": scheduler_vm_types,
            "arm": arm,
            "worker_gpu": worker_gpu,
            "spot_policy": spot_policy,
        }
        self._spec = {k: v for k, v in spec.items() if v is not None}
        self._spec["shutdown_on_close"] = shutdown_on_close
        self._package_sync = (
            {
                "ignore": list(package_sync_ignore or ()),
                "only": None if package_sync_only is None else list(package_sync_only),
                "strict": package_sync_strict,
            }
            if package_sync
            else None
        )
        self._requested_name = name
        self.shutdown_on_close = shutdown_on_close
        self._server, self._token = config.credentials(server, token)
        from dask.utils import parse_timedelta

        self._timeout = timeout or float(parse_timedelta(config.get("start-timeout")))
        self._show_progress = (
            config.get("show-progress", True) if show_progress is None else show_progress
        )
        self.cluster_id: str | None = None
        self.record: dict[str, Any] = {}
        self.security = Security()
        self.reconnected = False
        self._api: ControlPlaneClient | None = None
        self._warned: set[str] = set()
        self._dashboard_token: str | None = None
        self._ca_pem: str | None = None
        self._notices: list[str] = []
        self._workers_changed = asyncio.Event()  # a worker joined or left (once connected)
        self._started_by_constructor = not asynchronous
        super().__init__(asynchronous=asynchronous, loop=loop, name=name)
        self.periodic_callbacks["billow-record"] = PeriodicCallback(
            self._refresh_record, RECORD_REFRESH_SECONDS * 1000
        )
        if not self.asynchronous:
            self._loop_runner.start()
            try:
                self.sync(self._start)
            except BaseException:
                self._loop_runner.stop()
                raise
            self._warn_notices(stacklevel=2)

    def _warn_notices(self, stacklevel: int) -> None:
        """Each notice of the start (credentials not forwarded), once, as a warning shown
        at the line ``stacklevel`` frames above the caller of this method."""
        for note in self._notices:
            warnings.warn(f"billow: {note}", BillowWarning, stacklevel=stacklevel + 1)
        self._notices = []

    def __await__(self):  # type: ignore[override]
        async def _() -> Cluster:
            if self.status == Status.created:
                await self._start()
            return self

        return _().__await__()

    # -- lifecycle -------------------------------------------------------------------

    async def _start(self) -> None:
        self.status = Status.starting
        self._api = ControlPlaneClient(self._server, self._token)
        created = False
        # Obtained while the cluster starts (an STS call, or the identity chain's probes).
        obtaining = (
            asyncio.ensure_future(asyncio.to_thread(obtain, self._credentials_duration))
            if self._credentials == "local"
            else None
        )
        try:
            record = None
            if self._requested_name:
                record = await self._api.find_cluster(self._requested_name)
                self.reconnected = record is not None
            if record is None:
                if self._package_sync is not None:
                    self._spec["software"] = await self._sync_software()
                elif self._software_environment is not None:
                    from .environments import pin_environment

                    self._spec["software_environment"] = await pin_environment(
                        self._api, self._software_environment
                    )
                record = await self._api.create_cluster(self._spec)
                created = True
            self._set_record(record)
            # The cluster's CA and client certificate exist from its creation: fetched
            # while it starts, not after (one request less between ready and connected).
            certificates = asyncio.ensure_future(self._api.credentials(record["id"]))
            certificates.add_done_callback(_retrieve)
            try:
                record = await self._wait_until_ready(certificates)
                if self.scheduler_comm is None:  # ready at the first look (a reconnect)
                    await self._connect(record, await certificates)
            finally:
                certificates.cancel()
            if obtaining is not None:
                self._forwarder = Forwarder(self.scheduler_comm, self._credentials_duration)
                self._notices = await self._forwarder.start(obtaining)
                if not self._started_by_constructor:  # it warns from the user's line
                    self._warn_notices(stacklevel=2)
        except BaseException:
            if obtaining is not None:
                obtaining.cancel()
            # Leave nothing behind that this call created (Ctrl-C included).
            if created and self.cluster_id and self.shutdown_on_close:
                with contextlib.suppress(Exception):
                    await asyncio.shield(self._api.stop(self.cluster_id))
            if self.scheduler_comm is not None:  # connected while it started
                with contextlib.suppress(Exception):
                    await DaskCluster._close(self)
            await self._api.aclose()
            self.status = Status.failed
            raise
        bounds = self._spec.get("n_workers")
        if isinstance(bounds, list):
            self.adapt(minimum=bounds[0], maximum=bounds[1])

    async def _sync_software(self) -> dict[str, Any]:
        """The scanned spec of this client's environment, its local code uploaded."""
        import tempfile

        from rich.console import Console

        from .software.sync import package_sync

        assert self._api is not None and self._package_sync is not None
        console = Console(stderr=True)

        def report(line: str) -> None:
            if self._show_progress:
                console.print(line, highlight=False)

        with tempfile.TemporaryDirectory(prefix="billow-wheels-") as wheel_dir:
            spec = await package_sync(
                self._api, wheel_dir=Path(wheel_dir), report=report, **self._package_sync
            )
        return spec.model_dump(mode="json")

    async def _wait_until_ready(self, certificates: asyncio.Future[Any]) -> dict[str, Any]:
        """Look at the control plane until the cluster is ready; raise
        ``ClusterStartError`` when it failed or ``timeout`` passed.

        As soon as a look shows where the scheduler listens, connect to it
        (``certificates``: the answer of the credentials route): from then on Dask pushes
        each worker that joins to this client, which looks again at once when the
        scheduler has them all (the control plane marks it ready on the scheduler's next
        report, debounced 20 ms), instead of at its next look."""
        assert self._api is not None and self.cluster_id is not None
        deadline = time.monotonic() + self._timeout
        with StartProgress(self.name, self.cluster_id, enabled=self._show_progress) as progress:
            delay, seen = 0.05, None
            while True:
                record = await self._api.get_cluster(self.cluster_id)
                self._set_record(record)
                progress.update(record)
                if record["status"] == "ready":
                    return record
                if self.scheduler_comm is None and reachable_address(record, "scheduler"):
                    await self._connect(record, await certificates)
                poll_after = float(record.get("poll_after") or 0.5)
                progressed = (record["status"], record["workers"], self.scheduler_comm is None)
                if progressed != seen:
                    # Progress (the scheduler up, workers joining): ready is near, look
                    # again soon, then less often, up to the control plane's
                    # ``poll_after`` (each look is a request, billed on a cloud control
                    # plane: 0.25 s there, 0.025 s on the embedded server).
                    delay, seen = poll_after / 4, progressed
                # A failed start is reported once teardown finished: nothing is left running.
                if record["status"] in _TERMINAL:
                    raise ClusterStartError(
                        f"cluster {record['name']} ({record['id']}) did not start: "
                        f"{record.get('error') or record.get('stop_reason') or record['status']}",
                        logs=record.get("error_logs"),
                        reason=record.get("stop_reason"),
                    )
                if time.monotonic() > deadline:
                    raise ClusterStartError(
                        f"cluster {record['name']} not ready after {self._timeout:.0f}s "
                        f"(status {record['status']}, {record['workers']} workers)"
                    )
                wanted = int(record.get("desired_workers") or 0)
                if self._has_workers(wanted):  # the scheduler's report is on its way
                    await asyncio.sleep(poll_after / 4)
                elif not await self._next_look(wanted, delay):
                    delay = min(delay * 1.5, poll_after)

    async def _connect(self, record: dict[str, Any], creds: dict[str, Any]) -> None:
        """Connect to the scheduler (TLS with the cluster's client certificate) and
        subscribe to its workers joining and leaving (Dask's ``Cluster._start``)."""
        self._dashboard_token = creds.get("dashboard_token")
        self._ca_pem = str(creds["ca_cert"])
        self.security = Security(
            require_encryption=True,
            tls_ca_file=creds["ca_cert"],
            tls_client_cert=creds["client_cert"],
            tls_client_key=creds["client_key"],
        )
        self.scheduler_comm = rpc(
            reachable_address(record, "scheduler") or reachable_address(creds, "scheduler"),
            connection_args=self.security.get_connection_args("client"),
        )
        await super()._start()

    def _has_workers(self, wanted: int) -> bool:
        return self.scheduler_comm is not None and len(self.scheduler_info["workers"]) >= wanted

    async def _next_look(self, wanted: int, seconds: float) -> bool:
        """Wait ``seconds``, or less once connected: ``True`` as soon as the scheduler has
        ``wanted`` workers (the last one just joined: look now)."""
        if self.scheduler_comm is None:
            await asyncio.sleep(seconds)
            return False
        until = time.monotonic() + seconds
        while True:
            self._workers_changed.clear()
            if self._has_workers(wanted):
                return True
            left = until - time.monotonic()
            if left <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._workers_changed.wait(), left)

    def _update_worker_status(self, op: str, msg: Any) -> None:
        super()._update_worker_status(op, msg)
        self._workers_changed.set()

    async def _close(self) -> None:
        if self.status == Status.closed:
            return
        if self._forwarder is not None:
            self._forwarder.stop()
        await super()._close()
        if self._api is None:
            return
        try:
            if self.shutdown_on_close and self.cluster_id:
                await self._api.stop(self.cluster_id)
                await self._wait_until_stopped()
        finally:
            await self._api.aclose()

    async def _wait_until_stopped(self, timeout: float = 120.0) -> None:
        assert self._api is not None and self.cluster_id is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            record = await self._api.get_cluster(self.cluster_id)
            self._set_record(record)
            if record["status"] in _TERMINAL:
                return
            # As often as the control plane's ``poll_after`` says (each look is billed
            # on a cloud control plane; the embedded server says 0.1 s).
            await asyncio.sleep(float(record.get("poll_after") or 0.2))
        raise ClusterStopped(f"cluster {self.cluster_id} still stopping after {timeout:.0f}s")

    def _set_record(self, record: dict[str, Any]) -> None:
        """Keep the latest record; surface new control-plane warnings and a stop by the
        watchdog as Python warnings, once each."""
        self.record = record
        self.cluster_id = record["id"]
        self.name = record["name"]
        for message in record.get("warnings") or []:
            if message not in self._warned:
                self._warned.add(message)
                warnings.warn(f"billow cluster {self.name}: {message}", BillowWarning, stacklevel=3)

    async def _refresh_record(self) -> None:
        if self._api is not None and self.cluster_id and self.status == Status.running:
            # The control plane may be briefly unreachable: the next refresh catches up.
            with contextlib.suppress(Exception):
                self._set_record(await self._api.get_cluster(self.cluster_id))
            self._warn_if_stopped_by_control_plane()

    def _warn_if_stopped_by_control_plane(self) -> None:
        record = self.record
        reason = record.get("stop_reason")
        if (
            record.get("target") == "stopped"
            and reason not in (None, "user")
            and "stopped" not in self._warned
        ):
            self._warned.add("stopped")
            warnings.warn(
                f"billow cluster {self.name} was stopped by the control plane "
                f"(stop_reason: {reason}){': ' + record['error'] if record.get('error') else ''}",
                BillowWarning,
                stacklevel=3,
            )

    # -- scaling ---------------------------------------------------------------------

    def scale(self, n: int) -> Any:
        """Ask for ``n`` workers; returns at once (the control plane converges on it)."""
        return self.sync(self._scale, n)

    async def _scale(self, n: int, remove: list[str] | None = None) -> None:
        assert self._api is not None and self.cluster_id is not None
        self._set_record(await self._api.scale(self.cluster_id, int(n), remove))

    async def scale_up(self, n: int) -> None:
        await self._scale(n)

    async def scale_down(self, workers: list[str]) -> None:
        """Remove named workers (``Adaptive`` retires them on the scheduler first)."""
        names = [str(w) for w in workers]
        await self._scale(max(0, self.record.get("desired_workers", 0) - len(names)), names)

    @property
    def requested(self) -> set[str]:
        observed = sorted(self.observed)
        missing = max(0, self.record.get("desired_workers", 0) - len(observed))
        return set(observed) | {f"pending-{i}" for i in range(missing)}

    @property
    def plan(self) -> set[str]:
        return self.requested

    # -- information ---------------------------------------------------------------

    async def _get_logs(
        self, cluster: bool = True, scheduler: bool = True, workers: bool = True
    ) -> Logs:
        """Instance logs as the control plane has them (also after the cluster is gone)."""
        assert self._api is not None and self.cluster_id is not None
        found = await self._api.logs(self.cluster_id)
        logs = Logs()
        for inst in found["instances"]:
            wanted = scheduler if inst["role"] == "scheduler" else workers
            if wanted:
                logs[inst["name"]] = Log("\n".join(inst["lines"]))
        return logs

    @property
    def dashboard_link(self) -> str:
        """``https://<address>/status?token=...``: the scheduler serves its dashboard with
        the cluster's certificate and asks for the token this link carries (the page
        trades it for a cookie). Browsers warn about the certificate unless the cluster's
        CA is trusted; programs pin it with ``dashboard_ssl_context()``."""
        address = reachable_address(self.record, "dashboard")
        if not address:
            return super().dashboard_link
        if not self._dashboard_token:  # a cluster created before dashboards had tokens
            return f"http://{address}/status"
        return f"https://{address}/status?token={self._dashboard_token}"

    def dashboard_ssl_context(self) -> ssl.SSLContext:
        """An SSL context trusting only this cluster's CA, for programs that fetch the
        dashboard (``httpx.get(link, verify=cluster.dashboard_ssl_context())``). The
        CA is the cluster's own and issues only its certificates, which name no host:
        the chain is checked, the host name is not."""
        if self._ca_pem is None:
            raise RuntimeError("the cluster has not started: no CA yet")
        context = ssl.create_default_context(cadata=self._ca_pem)
        context.check_hostname = False
        return context

    @property
    def cluster_status(self) -> str:
        return self.record.get("status", "unknown")

    def _repr_html_(self, cluster_status: str | None = None) -> str:
        rows = {
            "Billow id": self.cluster_id,
            "Status": self.cluster_status,
            "Workers": f"{len(self.scheduler_info.get('workers', {}))} of "
            f"{self.record.get('desired_workers', '?')} requested",
            "Stop reason": self.record.get("stop_reason"),
        }
        table = "".join(
            f"<tr><th style='text-align:left'>{html.escape(k)}</th>"
            f"<td style='text-align:left'>{html.escape(str(v))}</td></tr>"
            for k, v in rows.items()
            if v is not None
        )
        return super()._repr_html_(cluster_status=f"<table>{table}</table>")

    def __repr__(self) -> str:
        workers = len(self.scheduler_info.get("workers", {}))
        return (
            f"<billow.Cluster {self.name!r} id={self.cluster_id} status={self.cluster_status} "
            f"workers={workers} dashboard={self.dashboard_link}>"
        )
