"""The ports the core talks through. Adapters live in ``billow_control.adapters``.

Each runtime (embedded, AWS, GCP) wires one adapter per port in its composition root.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from .models import (
    ClusterRecord,
    HeartbeatRecord,
    InstanceCredential,
    InstanceInfo,
    InstanceSpec,
    User,
)


class ConflictError(Exception):
    """A conditional write lost: the record changed since it was read. Re-read and retry."""


class NameTakenError(Exception):
    """An active cluster of this owner already has that name."""


class IdempotencyMismatch(Exception):
    """An Idempotency-Key was reused with a different request body."""


class Clock(Protocol):
    def now(self) -> datetime:
        """Aware UTC time; injectable so timeouts can be tested without sleeping."""
        ...


class Store(Protocol):
    """Durable state of clusters, users, tokens and secrets.

    Writes of cluster records are conditional on ``version``: ``update_cluster`` raises
    ``ConflictError`` when another writer got there first, and never half-writes.
    """

    def create_cluster(
        self, record: ClusterRecord, idempotency_key: str | None, request_hash: str
    ) -> tuple[ClusterRecord, bool]:
        """Insert ``record`` atomically with its idempotency key.

        Returns ``(record, True)`` when created, or ``(existing, False)`` when the same
        owner already created a cluster with this key and the same ``request_hash``.
        Raises ``IdempotencyMismatch`` when the key was used for another request, and
        ``NameTakenError`` when an active cluster of this owner has the same name.
        """
        ...

    def get_cluster(self, cluster_id: str) -> ClusterRecord | None: ...

    def list_clusters(
        self, owner: str | None, active_only: bool, name: str | None = None
    ) -> list[ClusterRecord]:
        """Clusters of ``owner`` (all owners when ``None``), optionally of one ``name``,
        newest first. ``active_only`` reads only non-terminal clusters (an index, never a
        scan of finished ones)."""
        ...

    def update_cluster(self, record: ClusterRecord) -> ClusterRecord:
        """Write ``record`` if the stored version equals ``record.version``.

        Returns the record with its new version. Raises ``ConflictError`` otherwise.
        """
        ...

    def put_heartbeat(self, beat: HeartbeatRecord) -> None:
        """Overwrite the latest heartbeat; never conflicts with cluster updates."""
        ...

    def get_heartbeat(self, cluster_id: str) -> HeartbeatRecord | None: ...

    def put_secret(self, cluster_id: str, name: str, value: bytes) -> None:
        """Store an already-encrypted secret blob."""
        ...

    def get_secret(self, cluster_id: str, name: str) -> bytes | None: ...

    def put_user(self, user: User) -> None: ...

    def get_user(self, user_id: str) -> User | None: ...

    def count_users(self) -> int: ...

    def put_api_token(self, token_hash: str, user_id: str) -> None: ...

    def user_for_token(self, token_hash: str) -> User | None: ...

    def put_cluster_token(self, cluster_id: str, token_hash: str) -> None:
        """Replace the cluster-scoped (heartbeat) token hash."""
        ...

    def get_cluster_token(self, cluster_id: str) -> str | None: ...

    def put_instance_credential(self, cred: InstanceCredential) -> None: ...

    def consume_instance_credential(
        self, token_hash: str, now: datetime
    ) -> InstanceCredential | None:
        """Mark a one-time token used and return it; ``None`` if unknown, used or expired."""
        ...

    def peek_instance_credential(self, token_hash: str) -> InstanceCredential | None: ...


class Provider(Protocol):
    """Runs instances. Every method is idempotent and safe to call again after a crash."""

    def launch(self, spec: InstanceSpec) -> InstanceInfo:
        """Start the instance, or return the one already started for ``spec.client_token``."""
        ...

    def describe(self, cluster_id: str) -> list[InstanceInfo]:
        """All instances tagged with this cluster, including terminated ones still known."""
        ...

    def terminate(self, instance_ids: list[str]) -> None:
        """Ask instances to stop; unknown or already-gone ids are ignored."""
        ...

    def tail_logs(self, instance_id: str, lines: int = 50) -> list[str]:
        """The last ``lines`` log lines of the instance, also after it terminated."""
        ...

    def list_deployment_instances(self) -> list[InstanceInfo]:
        """Every live instance tagged with this deployment (for the orphan sweep)."""
        ...


class Orchestrator(Protocol):
    def submit(self, cluster_id: str) -> None:
        """Make sure ``reconcile(cluster_id)`` runs soon and keeps running until done.

        Calling it for a cluster that is already being driven is a cheap no-op (or a
        prompt re-run); never two concurrent reconciles of the same cluster.
        """
        ...


class SecretBox(Protocol):
    def encrypt(self, plaintext: bytes) -> bytes: ...

    def decrypt(self, ciphertext: bytes) -> bytes: ...


class EventBus(Protocol):
    def publish(self, kind: str, cluster: ClusterRecord, detail: dict | None = None) -> None:
        """Emit a lifecycle event; failures are logged, never raised into the caller."""
        ...
