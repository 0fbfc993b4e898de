"""Composition root of the embedded control plane: SQLite, local processes, threads,
wired into one ``Ports`` bundle, plus the timer that stands in for the scheduled
watchdog function.

Run as root (and with an agent interpreter unprivileged users can run), the server runs
each owner's instances as an OS user of their own (``adapters.local.tenant_users``), with
working directories in ``instance_dir`` (default ``/var/lib/billow-instances``: outside
the data directory, which stays 0700 root). Otherwise it is single-tenant
(``ControlSettings.multi_tenant`` off: a second user is refused) and instance directories
default to ``<data_dir>/instances``; the log says why.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..adapters.clock import SystemClock
from ..adapters.local.event_log import JsonLinesEventBus
from ..adapters.local.fernet_box import FernetSecretBox
from ..adapters.local.instance_logs import DEFAULT_LOG_LIMIT
from ..adapters.local.instance_setup import (
    USERS,
    agent_pythonpath,
    instance_environment,
    prepare_workspace,
)
from ..adapters.local.object_store import LocalObjectStore
from ..adapters.local.process_provider import LocalProcessProvider
from ..adapters.local.sqlite_store import SqliteStore
from ..adapters.local.tenant_users import TenantAccounts, isolation_problem
from ..adapters.local.thread_orchestrator import LocalOrchestrator
from ..core.ports import Ports
from ..core.service import ControlPlane
from ..core.settings import ControlSettings

log = logging.getLogger(__name__)

ISOLATED_INSTANCE_DIR = Path("/var/lib/billow-instances")


@dataclass(frozen=True)
class InstanceOptions:
    """How the embedded server runs local instances: the bytes of output kept per
    instance (``billow.instance-log-limit``) and the pooled agents kept warm
    (``billow.warm-pool.size``; 0: none)."""

    log_limit: int = DEFAULT_LOG_LIMIT
    warm_pool: int = 0


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
    def create(
        cls,
        data_dir: Path,
        settings: ControlSettings,
        instance_dir: Path | None = None,
        instances: InstanceOptions | None = None,
    ) -> EmbeddedRuntime:
        """The runtime over ``data_dir``; ``settings.multi_tenant`` is turned off unless
        the provider isolates tenants. ``instance_dir``: where instances work (see the
        module's docstring for the default); ``instances``: their log limit and warm pool."""
        data_dir = Path(data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(data_dir, 0o700)
        clock = SystemClock()
        provider = _local_provider(
            data_dir, settings.deployment, clock, instance_dir, instances or InstanceOptions()
        )
        if settings.multi_tenant and not provider.isolates_tenants:
            settings = settings.model_copy(update={"multi_tenant": False})
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
        if not settings.multi_tenant and ports.store.count_users() > 1:
            log.warning(
                "this single-tenant server has %d users from an earlier run: their "
                "instances are not isolated from one another",
                ports.store.count_users(),
            )
        return cls(data_dir, ports, plane, orchestrator, provider, objects)

    def start(self) -> None:
        """Start the reconcile threads, resubmit every unfinished cluster that has not
        converged (the watchdog's resync, as after any lost submit), and start the
        watchdog timer and the warm pool's filling."""
        self.orchestrator.start()
        self.provider.pool.start()
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
        self.provider.pool.stop()

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


def _local_provider(
    data_dir: Path,
    deployment: str,
    clock: SystemClock,
    instance_dir: Path | None,
    options: InstanceOptions,
) -> LocalProcessProvider:
    """The local-process provider, isolating tenants when it can (and saying why not)."""
    accounts: TenantAccounts | None = None
    workspace = Path(instance_dir) if instance_dir is not None else None
    if os.geteuid() == 0:
        workspace = workspace or ISOLATED_INSTANCE_DIR
        made = not workspace.exists()
        prepare_workspace(workspace)
        probe_env = {
            **instance_environment(sys.executable, agent_pythonpath()),
            "HOME": "/nonexistent",
        }
        problem = isolation_problem(sys.executable, probe_env, workspace)
        if problem is not None and made:  # leave no empty directory behind
            with contextlib.suppress(OSError):
                (workspace / USERS).rmdir()
                workspace.rmdir()
            workspace = Path(instance_dir) if instance_dir is not None else None
    else:
        problem = "the server does not run as root"
    if problem is None:
        accounts = TenantAccounts()
        log.info("instances run as one unprivileged OS user per owner, in %s", workspace)
    else:
        workspace = workspace or data_dir / "instances"
        log.warning(
            "single-tenant: instances run as the server's own user (%s); a second user is "
            "refused. Run `billow server` as root with billow installed where unprivileged "
            "users can read it to serve several users.",
            problem,
        )
    return LocalProcessProvider(
        data_dir / "instances",
        deployment,
        clock,
        env_cache=data_dir / "envs",
        workspace=workspace,
        accounts=accounts,
        log_limit=options.log_limit,
        warm_pool=options.warm_pool,
    )


def write_login(path: Path, server: str, token: str) -> None:
    """Write ``billow.server`` and ``billow.token`` into a dask config file (mode 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump({"billow": {"server": server, "token": token}}, f)
    os.chmod(path, 0o600)
