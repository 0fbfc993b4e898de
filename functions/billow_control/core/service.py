"""Use cases of the control plane. API handlers call exactly one of these per request.

Every method checks who is asking (owner, cluster token or instance token) before it
reads or writes anything, and raises an ``ApiError`` subclass for anything a user did
wrong. Nothing here imports a cloud SDK. ``ControlPlane`` owns the runtime's one
``Ports`` bundle and what is built over it: ``Lifecycle``, ``Watchdog``, the software
catalog (``.software``) and the use cases of the cluster's own processes (``.agents``).
"""

from __future__ import annotations

import json
import secrets
from typing import Any

from . import access, idempotency, placement
from .access import Action
from .accounts import Caller
from .agents import DASHBOARD_TOKEN, ENVIRON_SECRETS, ClusterAgents, unseal
from .auth import hash_token
from .catalog import SoftwareCatalog
from .errors import Conflict, Invalid
from .lifecycle import WRITE_RETRIES, Lifecycle
from .log_lines import LOG_RESPONSE_BYTES, newest_within
from .models import (
    ADDRESS_FIELDS,
    ClusterRecord,
    ClusterRequest,
    ClusterTarget,
    InstanceRole,
    ScaleRequest,
    User,
    new_id,
)
from .ports import IdempotencyMismatch, NameTakenError, Ports, StaleRecordError
from .quotas import Quotas
from .teams import SINGLE_TENANT as SINGLE_TENANT  # re-exported
from .teams import AccountService
from .usage_reports import UsageReports
from .watchdog import Watchdog


class ControlPlane:
    """The control plane's use cases over the one ``Ports`` bundle of a runtime."""

    def __init__(self, ports: Ports) -> None:
        self.ports = ports
        self.software = SoftwareCatalog(ports)
        self.lifecycle = Lifecycle(ports)
        self.agents = ClusterAgents(ports, self.lifecycle)
        self.watchdog = Watchdog(ports, self.lifecycle)
        self.accounts = AccountService(ports)
        self.quotas = Quotas(ports)
        self.usage = UsageReports(ports)

    # -- users and tokens (core.teams) ------------------------------------------------

    def authenticate(self, token: str | None) -> Caller:
        return self.accounts.authenticate(token)

    def create_user(self, name: str, is_admin: bool = False) -> tuple[User, str]:
        return self.accounts.create_user(name, is_admin=is_admin)

    def add_user(self, admin: User, name: str) -> dict[str, Any]:
        return self.accounts.add_user(admin, name)

    def bootstrap_admin(self) -> str | None:
        return self.accounts.bootstrap_admin()

    def first_admin(self) -> dict[str, Any]:
        """The deployment's first admin, for a deployer who reached this use case through
        a path the cloud's IAM guards (the AWS ``bootstrap`` function), never an API route.

        Returns ``{"name", "token", "server"}`` (the token exists only in this answer and,
        hashed, in the store). Raises ``Conflict`` when the deployment has any user: it
        creates the first admin once, and a concurrent second call loses on the unique
        user name.
        """
        token = self.bootstrap_admin()
        if token is None:
            raise Conflict(
                "this deployment already has users, so its first admin exists: log in with "
                "that admin's token (`billow login`), or ask an admin for a token"
            )
        return {"name": "admin", "token": token, "server": self.ports.settings.control_url}

    def list_machine_types(
        self, user: User, cores: int | None, memory: str | None, arch: str | None, gpu: int | None
    ) -> dict[str, Any]:
        """Machine types of the deployment's region that fit (``placement.listing``).
        Raises ``Invalid`` naming ``memory``, and ``Conflict`` on a deployment whose
        instances are not cloud machines."""
        from .units import parse_bytes

        if self.ports.machines is None:
            raise Conflict("this deployment runs clusters as local processes: no machine types")
        try:
            size = parse_bytes(memory) if memory else None
        except (TypeError, ValueError):
            shown = str(memory)[:40]
            raise Invalid(
                f"memory: {shown!r} is not a size such as '8 GiB'", field="memory"
            ) from None
        found = placement.listing(self.ports.machines.types(), cores, size, arch, gpu)
        return {"instance_types": found}

    # -- clusters --------------------------------------------------------------------

    def create_cluster(
        self, user: User, request: ClusterRequest, idempotency_key: str | None
    ) -> tuple[dict[str, Any], bool]:
        """Record a new cluster with target=running and hand it to the orchestrator.

        Returns ``(cluster, created)``; a repeated ``idempotency_key`` with the same
        request returns the first cluster with ``created=False`` (see
        ``core.idempotency``). Secrets are written before the record, so a visible
        cluster is never missing its certificates or its sealed ``request.secrets``; the
        record keeps only the names of those.
        """
        access.require(user, Action.create_cluster)
        key = idempotency.check_key(idempotency_key)
        for role in InstanceRole:  # a 422 naming the field, before anything exists
            if placement.needs_check(request, role.value) and self.ports.machines is not None:
                placement.machine_types(self.ports.machines, request, role.value)
        # The hash is of the request as sent: a retry naming an environment matches the
        # first create even if the environment got a new revision since. Only a key's
        # hash is stored; secret values count through a digest salted with the key.
        request_hash = (
            idempotency.request_hash(request, salt=f"{user.id}\0{key}") if key is not None else ""
        )
        request, environment = self.software.resolve(user, request)
        cache = self.ports.idempotency
        if key is None or cache is None:
            return self._create(user, request, key, request_hash, environment)
        fresh: list[tuple[dict[str, Any], bool]] = []

        def create() -> str:
            fresh.append(self._create(user, request, key, request_hash, environment))
            return str(fresh[0][0]["id"])

        try:
            cluster_id = cache.run_once(user.id, key, request_hash, create)
        except IdempotencyMismatch:
            raise idempotency.reused_key() from None
        return fresh[0] if fresh else (self.get_cluster(user, cluster_id), False)

    def _create(
        self,
        user: User,
        request: ClusterRequest,
        key: str | None,
        request_hash: str,
        environment: str | None = None,
    ) -> tuple[dict[str, Any], bool]:
        from .tls import make_cluster_pki  # cryptography: only creates pay for it

        ports = self.ports
        if not self._replay(user, key):  # a replay is answered as the first create was
            self.quotas.check(user, request, request.initial_workers)  # before anything
        name = request.name or f"{user.name}-{secrets.token_hex(3)}"
        cluster_id = new_id("c")
        now = ports.clock.now()
        pki = make_cluster_pki(cluster_id, now)
        blobs = {
            "ca.pem": pki.ca_cert_pem,
            **{f"{role}.pem": pair.cert_pem for role, pair in pki.pairs.items()},
            **{f"{role}.key": pair.key_pem for role, pair in pki.pairs.items()},
        }
        blobs[DASHBOARD_TOKEN] = secrets.token_urlsafe(32)
        if request.secrets:
            blobs[ENVIRON_SECRETS] = json.dumps(request.secrets)
        for secret_name, value in blobs.items():
            ports.store.put_secret(cluster_id, secret_name, ports.secrets.encrypt(value.encode()))
        record = ClusterRecord(
            id=cluster_id,
            owner=user.id,
            name=name,
            team=user.team,
            request=request.model_copy(update={"secrets": {}}),  # the values stay sealed
            secrets=sorted(request.secrets),
            desired_workers=request.initial_workers,
            created_at=now,
            updated_at=now,
            software_environment=environment,
            idempotency_key=hash_token(key) if key is not None else None,
        )
        try:
            stored, created = ports.store.create_cluster(record, key, request_hash)
        except NameTakenError:
            raise Conflict(
                f"an active cluster named {name!r} already exists; reconnect to it with "
                f"billow.Cluster(name={name!r}) or choose another name",
                field="name",
            ) from None
        except IdempotencyMismatch:
            raise idempotency.reused_key() from None
        if created:
            ports.events.publish("requested", stored)
        if stored.active:
            ports.orchestrator.submit(stored.id)
        return self._public(stored), created

    def get_cluster(self, user: User, cluster_id: str) -> dict[str, Any]:
        return self._public(self._owned(user, cluster_id, Action.read_clusters))

    def list_clusters(
        self, user: User, active_only: bool, name: str | None = None
    ) -> list[dict[str, Any]]:
        """The clusters the caller may see (``access.listing``: everyone's for a
        deployment admin, the team's for team admins and viewers, else their own;
        ``name`` always means the caller's own), newest first."""
        access.require(user, Action.read_clusters)
        owner, team = access.listing(user) if name is None else (user.id, None)
        found = self.ports.store.list_clusters(owner, active_only, name)
        return [self._public(r) for r in found if team is None or r.team == team]

    def scale_cluster(self, user: User, cluster_id: str, scale: ScaleRequest) -> dict[str, Any]:
        """Set the desired worker count; the orchestrator converges on it. Scaling up is
        checked against the owner's quotas (``QuotaExceeded``, nothing written)."""
        for _ in range(WRITE_RETRIES):
            record = self._owned(user, cluster_id, Action.scale_cluster)
            if record.target != ClusterTarget.running or record.status.terminal:
                reason = f" (stop_reason: {record.stop_reason})" if record.stop_reason else ""
                raise Conflict(f"cluster is {record.status.value}{reason}; it cannot be scaled")
            if scale.n_workers > record.desired_workers:
                owner = self.ports.store.get_user(record.owner) or user
                self.quotas.check(owner, record.request, scale.n_workers, record.id)
            record.desired_workers = scale.n_workers
            record.remove_workers = sorted(set(record.remove_workers) | set(scale.remove))
            record.updated_at = self.ports.clock.now()
            try:
                record = self.ports.store.update_cluster(record)
            except StaleRecordError:
                continue
            self.ports.events.publish("scaled", record, {"n_workers": scale.n_workers})
            self.ports.orchestrator.submit(record.id)
            return self._public(record)
        raise Conflict("cluster is changing too quickly; try again")

    def stop_cluster(
        self, user: User, cluster_id: str, reason: str | None = None
    ) -> dict[str, Any]:
        """Set target=stopped (idempotent); the orchestrator terminates the instances.
        The stop reason, unless given, is ``user``, or ``admin:<name>`` when an admin
        stops another's cluster."""
        record = self._owned(user, cluster_id, Action.stop_cluster)
        reason = reason or access.stop_reason(user, record)
        return self._public(self.lifecycle.request_stop(record, reason))

    def client_credentials(self, user: User, cluster_id: str) -> dict[str, Any]:
        """The owner's TLS bundle and the scheduler address. Owners only, admins included."""
        record = self._owned(user, cluster_id, Action.connect_cluster)
        if record.status.terminal:
            raise Conflict(f"cluster is {record.status.value}")
        beat = self.ports.store.get_heartbeat(cluster_id)
        return {
            "cluster_id": record.id,
            **(beat.heartbeat.addresses() if beat else dict.fromkeys(ADDRESS_FIELDS)),
            "ca_cert": self._secret(cluster_id, "ca.pem"),
            "client_cert": self._secret(cluster_id, "client.pem"),
            "client_key": self._secret(cluster_id, "client.key"),
            # The dashboard's link carries it (clusters created before it have none).
            "dashboard_token": self.agents.dashboard_token(record),
        }

    def cluster_logs(self, user: User, cluster_id: str, lines: int) -> dict[str, Any]:
        """The last ``lines`` lines of each instance's log, scheduler first. The answer
        holds at most ``LOG_RESPONSE_BYTES`` of lines, shared equally by the instances
        (each keeps its newest); the provider may also read less of a huge log."""
        record = self._owned(user, cluster_id, Action.read_clusters)
        if not 1 <= lines <= 10_000:
            raise Invalid("lines must be between 1 and 10000", field="lines")
        instances = sorted(
            self.ports.provider.describe(record.id),
            key=lambda i: (i.role != InstanceRole.scheduler, i.launched_at),
        )
        share = LOG_RESPONSE_BYTES // max(len(instances), 1)
        answers = [
            {
                "id": i.id,
                "name": i.name,
                "role": i.role.value,
                "state": i.state.value,
                "lines": newest_within(self.ports.provider.tail_logs(i.id, lines), share),
            }
            for i in instances
        ]
        return {"cluster_id": record.id, "instances": answers}

    # -- helpers ---------------------------------------------------------------------

    def _replay(self, user: User, key: str | None) -> bool:
        """Whether an active cluster of ``user`` was created with ``key``: the store then
        answers the repeat (or refuses another request with the key), so the quota the
        first create used is not counted against its own replay."""
        if key is None:
            return False
        active = self.ports.store.list_clusters(user.id, active_only=True)
        return any(c.idempotency_key == hash_token(key) for c in active)

    def _owned(self, user: User, cluster_id: str, action: Action) -> ClusterRecord:
        """The record if ``user`` may ``action`` it (``access.cluster``): the same 404 for
        "absent" and "not yours", so ids of other tenants do not leak."""
        return access.cluster(user, action, self.ports.store.get_cluster(cluster_id), cluster_id)

    def _public(self, record: ClusterRecord) -> dict[str, Any]:
        """The record as the API shows it, with ``poll_after``: the seconds a client
        waiting on the cluster waits between looks (``settings.poll_interval``)."""
        answer = record.public(self.ports.store.get_heartbeat(record.id))
        return {**answer, "poll_after": self.ports.settings.poll_interval}

    def _secret(self, cluster_id: str, name: str) -> str:
        return unseal(self.ports, cluster_id, name)
