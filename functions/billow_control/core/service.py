"""Use cases of the control plane. API handlers call exactly one of these per request.

Every method checks who is asking (owner, cluster token or instance token) before it
reads or writes anything, and raises an ``ApiError`` subclass for anything a user did
wrong. Nothing here imports a cloud SDK.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from typing import Any

from .auth import (
    API_TOKEN_PREFIX,
    CLUSTER_TOKEN_PREFIX,
    hash_token,
    new_token,
    same_hash,
)
from .errors import Conflict, Forbidden, Invalid, NotFound, NotReady, Unauthorized
from .models import (
    ClusterRecord,
    ClusterRequest,
    ClusterStatus,
    ClusterTarget,
    Heartbeat,
    HeartbeatRecord,
    InstanceRole,
    ScaleRequest,
    User,
    new_id,
)
from .ports import (
    Clock,
    EventBus,
    IdempotencyMismatch,
    NameTakenError,
    Orchestrator,
    Provider,
    SecretBox,
    StaleRecordError,
    Store,
)
from .settings import ControlSettings
from .tls import make_cluster_pki

SECRET_NAMES = (
    "ca.pem",
    "scheduler.pem",
    "scheduler.key",
    "worker.pem",
    "worker.key",
    "client.pem",
    "client.key",
)
_RETRIES = 20


class ControlPlane:
    """The control plane's use cases, over injected ports."""

    def __init__(
        self,
        store: Store,
        provider: Provider,
        orchestrator: Orchestrator,
        secrets_box: SecretBox,
        clock: Clock,
        events: EventBus,
        settings: ControlSettings,
    ) -> None:
        self.store = store
        self.provider = provider
        self.orchestrator = orchestrator
        self.box = secrets_box
        self.clock = clock
        self.events = events
        self.settings = settings

    # -- users and tokens ------------------------------------------------------------

    def authenticate(self, token: str | None) -> User:
        """The user owning an API token. Raises ``Unauthorized`` for a missing or bad one."""
        if not token:
            raise Unauthorized("missing bearer token; run `billow login` or pass token=")
        user = self.store.user_for_token(hash_token(token))
        if user is None:
            raise Unauthorized("invalid API token")
        return user

    def create_user(self, name: str, is_admin: bool = False) -> tuple[User, str]:
        """A new user and its first API token (returned once, stored hashed)."""
        user = User(id=new_id("u"), name=name, is_admin=is_admin)
        self.store.put_user(user)
        token = new_token(API_TOKEN_PREFIX)
        self.store.put_api_token(hash_token(token), user.id)
        return user, token

    def add_user(self, admin: User, name: str) -> dict[str, Any]:
        """Admins create users; the new token is in the answer and nowhere else."""
        if not admin.is_admin:
            raise Forbidden("only admins can create users")
        if not name or len(name) > 64:
            raise Invalid("name must be 1 to 64 characters", field="name")
        user, token = self.create_user(name)
        return {**user.model_dump(), "token": token}

    def bootstrap_admin(self) -> str | None:
        """Create the first admin and return its token, or ``None`` if users exist."""
        if self.store.count_users() > 0:
            return None
        return self.create_user("admin", is_admin=True)[1]

    # -- clusters --------------------------------------------------------------------

    def create_cluster(
        self, user: User, request: ClusterRequest, idempotency_key: str | None
    ) -> tuple[dict[str, Any], bool]:
        """Record a new cluster with target=running and hand it to the orchestrator.

        Returns ``(cluster, created)``; a repeated ``idempotency_key`` with the same
        request returns the first cluster with ``created=False``. Secrets are written
        before the record, so a visible cluster is never missing its certificates.
        """
        if idempotency_key is not None and not (0 < len(idempotency_key) <= 128):
            raise Invalid("Idempotency-Key must be 1 to 128 characters", field="Idempotency-Key")
        name = request.name or f"{user.name}-{secrets.token_hex(3)}"
        cluster_id = new_id("c")
        pki = make_cluster_pki(cluster_id, self.clock.now())
        blobs = {
            "ca.pem": pki.ca_cert_pem,
            **{f"{role}.pem": pair.cert_pem for role, pair in pki.pairs.items()},
            **{f"{role}.key": pair.key_pem for role, pair in pki.pairs.items()},
        }
        for secret_name, value in blobs.items():
            self.store.put_secret(cluster_id, secret_name, self.box.encrypt(value.encode()))
        record = ClusterRecord(
            id=cluster_id,
            owner=user.id,
            name=name,
            request=request,
            desired_workers=request.initial_workers,
            created_at=self.clock.now(),
            updated_at=self.clock.now(),
        )
        request_hash = hashlib.sha256(
            json.dumps(request.model_dump(mode="json"), sort_keys=True).encode()
        ).hexdigest()
        try:
            stored, created = self.store.create_cluster(record, idempotency_key, request_hash)
        except NameTakenError:
            raise Conflict(
                f"an active cluster named {name!r} already exists; reconnect to it with "
                f"billow.Cluster(name={name!r}) or choose another name",
                field="name",
            ) from None
        except IdempotencyMismatch:
            raise Conflict(
                "Idempotency-Key was already used for a different request",
                field="Idempotency-Key",
            ) from None
        if created:
            self.events.publish("requested", stored)
        if stored.active:
            self.orchestrator.submit(stored.id)
        return self._public(stored), created

    def get_cluster(self, user: User, cluster_id: str) -> dict[str, Any]:
        return self._public(self._owned(user, cluster_id))

    def list_clusters(
        self, user: User, active_only: bool, name: str | None = None
    ) -> list[dict[str, Any]]:
        """The caller's clusters (everyone's for an admin, unless ``name`` is given, which
        always means the caller's own), newest first."""
        owner = None if user.is_admin and name is None else user.id
        return [self._public(r) for r in self.store.list_clusters(owner, active_only, name)]

    def scale_cluster(self, user: User, cluster_id: str, scale: ScaleRequest) -> dict[str, Any]:
        """Set the desired worker count; the orchestrator converges on it."""
        for _ in range(_RETRIES):
            record = self._owned(user, cluster_id)
            if record.target != ClusterTarget.running or record.status.terminal:
                reason = f" (stop_reason: {record.stop_reason})" if record.stop_reason else ""
                raise Conflict(f"cluster is {record.status.value}{reason}; it cannot be scaled")
            record.desired_workers = scale.n_workers
            record.remove_workers = sorted(set(record.remove_workers) | set(scale.remove))
            record.updated_at = self.clock.now()
            try:
                record = self.store.update_cluster(record)
            except StaleRecordError:
                continue
            self.events.publish("scaled", record, {"n_workers": scale.n_workers})
            self.orchestrator.submit(record.id)
            return self._public(record)
        raise Conflict("cluster is changing too quickly; try again")

    def stop_cluster(self, user: User, cluster_id: str, reason: str = "user") -> dict[str, Any]:
        """Set target=stopped (idempotent); the orchestrator terminates the instances."""
        record = self._owned(user, cluster_id)
        return self._public(self.request_stop(record, reason))

    def request_stop(self, record: ClusterRecord, reason: str) -> ClusterRecord:
        for _ in range(_RETRIES):
            if record.target == ClusterTarget.stopped:
                self.orchestrator.submit(record.id)
                return record
            record.target = ClusterTarget.stopped
            record.stop_reason = record.stop_reason or reason
            record.updated_at = self.clock.now()
            try:
                record = self.store.update_cluster(record)
            except StaleRecordError:
                fresh = self.store.get_cluster(record.id)
                if fresh is None:
                    raise NotFound("cluster disappeared") from None
                record = fresh
                continue
            self.orchestrator.submit(record.id)
            return record
        raise Conflict("cluster is changing too quickly; try again")

    def client_credentials(self, user: User, cluster_id: str) -> dict[str, Any]:
        """The owner's TLS bundle and the scheduler address. Owners only, admins included."""
        record = self._owned(user, cluster_id, owner_only=True)
        if record.status.terminal:
            raise Conflict(f"cluster is {record.status.value}")
        beat = self.store.get_heartbeat(cluster_id)
        return {
            "cluster_id": record.id,
            "scheduler_address": beat.heartbeat.scheduler_address if beat else None,
            "dashboard_address": beat.heartbeat.dashboard_address if beat else None,
            "ca_cert": self._secret(cluster_id, "ca.pem"),
            "client_cert": self._secret(cluster_id, "client.pem"),
            "client_key": self._secret(cluster_id, "client.key"),
        }

    def cluster_logs(self, user: User, cluster_id: str, lines: int) -> dict[str, Any]:
        record = self._owned(user, cluster_id)
        if not 1 <= lines <= 10_000:
            raise Invalid("lines must be between 1 and 10000", field="lines")
        instances = sorted(
            self.provider.describe(record.id),
            key=lambda i: (i.role != InstanceRole.scheduler, i.launched_at),
        )
        return {
            "cluster_id": record.id,
            "instances": [
                {
                    "id": i.id,
                    "name": i.name,
                    "role": i.role.value,
                    "state": i.state.value,
                    "lines": self.provider.tail_logs(i.id, lines),
                }
                for i in instances
            ],
        }

    # -- what runs on the cluster -----------------------------------------------------

    def bootstrap_instance(self, instance_token: str | None) -> dict[str, Any]:
        """Exchange a one-time instance token for the instance's config and certificates.

        Workers get ``NotReady`` (token not consumed) until the scheduler reported its
        address. The scheduler also gets a fresh cluster token for its heartbeats.
        """
        if not instance_token:
            raise Unauthorized("missing instance token")
        token_hash = hash_token(instance_token)
        cred = self.store.peek_instance_credential(token_hash)
        now = self.clock.now()
        if cred is None or cred.used or cred.expired(now):
            raise Unauthorized("instance token is unknown, used or expired")
        record = self.store.get_cluster(cred.cluster_id)
        if record is None or record.target != ClusterTarget.running:
            raise Conflict("cluster is stopping; instance should exit")
        beat = self.store.get_heartbeat(record.id)
        if cred.role == InstanceRole.worker and beat is None:
            raise NotReady("scheduler has not reported its address yet", retry_after=0.2)
        if self.store.consume_instance_credential(token_hash, now) is None:
            raise Unauthorized("instance token is unknown, used or expired")
        role = cred.role.value
        request = record.request
        config: dict[str, Any] = {
            "cluster_id": record.id,
            "cluster_name": record.name,
            "name": cred.instance_name,
            "role": role,
            "ca_cert": self._secret(record.id, "ca.pem"),
            "cert": self._secret(record.id, f"{role}.pem"),
            "key": self._secret(record.id, f"{role}.key"),
            "environ": request.environ,
            "nthreads": request.worker_cpu,
            "memory_limit": request.worker_memory,
            "heartbeat_interval": self.settings.heartbeat_interval,
        }
        if cred.role == InstanceRole.scheduler:
            cluster_token = new_token(CLUSTER_TOKEN_PREFIX)
            self.store.put_cluster_token(record.id, hash_token(cluster_token))
            config["cluster_token"] = cluster_token
            config["analytics"] = request.analytics
            config["gpu_threshold"] = self.settings.gpu_utilization_threshold
        else:
            assert beat is not None
            config["scheduler_address"] = beat.heartbeat.scheduler_address
        return config

    def heartbeat(self, cluster_id: str, cluster_token: str | None, beat: Heartbeat) -> dict:
        """Record the scheduler's report; wakes the orchestrator while the cluster converges.

        Returns ``{"target": ...}`` so the scheduler learns when it should shut down.
        """
        record = self.store.get_cluster(cluster_id)
        stored_hash = self.store.get_cluster_token(cluster_id) if record else None
        if (
            record is None
            or not cluster_token
            or not same_hash(stored_hash, hash_token(cluster_token))
        ):
            raise Unauthorized("invalid cluster token")
        self.store.put_heartbeat(
            HeartbeatRecord(cluster_id=cluster_id, received_at=self.clock.now(), heartbeat=beat)
        )
        converging = record.status != ClusterStatus.ready or len(beat.workers) != (
            record.desired_workers
        )
        if record.active and converging:
            self.orchestrator.submit(cluster_id)
        return {"target": record.target.value, "status": record.status.value}

    # -- helpers ---------------------------------------------------------------------

    def _owned(self, user: User, cluster_id: str, owner_only: bool = False) -> ClusterRecord:
        record = self.store.get_cluster(cluster_id)
        if record is None or (record.owner != user.id and (owner_only or not user.is_admin)):
            # Same answer for "absent" and "not yours": ids of other tenants do not leak.
            raise NotFound(f"no cluster {cluster_id!r}", field="cluster_id")
        return record

    def _public(self, record: ClusterRecord) -> dict[str, Any]:
        return record.public(self.store.get_heartbeat(record.id))

    def _secret(self, cluster_id: str, name: str) -> str:
        blob = self.store.get_secret(cluster_id, name)
        if blob is None:
            raise NotFound(f"cluster {cluster_id} has no secret {name}")
        return self.box.decrypt(blob).decode()
