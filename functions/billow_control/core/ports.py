"""The ports the core talks through, and ``Ports``, the one bundle a runtime builds.

Adapters live in ``billow_control.adapters`` (``local/``, ``aws/``, ...). Each runtime
(``billow_control.runtimes``) builds exactly one ``Ports`` in its composition root and
hands it to ``ControlPlane``, which gives it to the lifecycle and the watchdog: no port
is passed twice.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Generic, Protocol, TypeVar, overload

from .accounts import ApiToken, Team
from .models import (
    ClusterRecord,
    HeartbeatRecord,
    InstanceCredential,
    InstanceInfo,
    InstanceSpec,
    User,
)
from .placement import MachineCatalog
from .port_errors import (  # re-exported: what adapters raise through the ports
    FinishedClusterError as FinishedClusterError,
)
from .port_errors import IdempotencyMismatch as IdempotencyMismatch
from .port_errors import LaunchRefused as LaunchRefused
from .port_errors import NameTakenError as NameTakenError
from .port_errors import StaleRecordError as StaleRecordError
from .port_errors import UserNameTakenError as UserNameTakenError
from .settings import ControlSettings
from .software import SoftwareEnvironment, SoftwareSpec
from .usage_port import UsageStore


class Clock(Protocol):
    def now(self) -> datetime:
        """Aware UTC time; injectable so timeouts can be tested without sleeping."""
        ...


class Store(UsageStore, Protocol):
    """Durable state of clusters, users, tokens, secrets, software environments and usage.

    Writes of cluster records are conditional on ``version``: ``update_cluster`` raises
    ``StaleRecordError`` when another writer got there first, and never half-writes.
    Software environments are named per owner and revisioned: each put writes the next
    revision with a conditional write, and a written revision never changes.
    """

    def create_cluster(
        self, record: ClusterRecord, idempotency_key: str | None, request_hash: str
    ) -> tuple[ClusterRecord, bool]:
        """Insert ``record`` atomically with its idempotency key.

        Returns ``(record, True)`` when created, or ``(existing, False)`` when the same
        owner already created a cluster with this key and the same ``request_hash``
        within the store's Idempotency-Key lifetime (an expired key counts as unused).
        Raises ``IdempotencyMismatch`` when the key was used for another request, and
        ``NameTakenError`` when an active cluster of this owner has the same name.
        """
        ...

    def get_cluster(self, cluster_id: str) -> ClusterRecord | None:
        """The record as last written (a strongly consistent read), or ``None``."""
        ...

    def list_clusters(
        self, owner: str | None, active_only: bool, name: str | None = None
    ) -> list[ClusterRecord]:
        """Clusters of ``owner`` (all owners when ``None``), optionally of one ``name``,
        newest first. ``active_only`` reads only non-terminal clusters (an index, never a
        scan of finished ones). May be eventually consistent."""
        ...

    def update_cluster(self, record: ClusterRecord) -> ClusterRecord:
        """Write ``record`` if the stored version equals ``record.version``.

        Returns the record with its new version. Raises ``StaleRecordError`` otherwise,
        and ``FinishedClusterError`` when ``record`` is active but the stored one is
        terminal. A finished cluster never becomes active again.
        """
        ...

    def put_heartbeat(self, beat: HeartbeatRecord) -> None:
        """Overwrite the latest heartbeat; never conflicts with cluster updates."""
        ...

    def get_heartbeat(self, cluster_id: str) -> HeartbeatRecord | None: ...

    def get_heartbeats(self, cluster_ids: Sequence[str]) -> dict[str, HeartbeatRecord]:
        """The latest heartbeat of each of ``cluster_ids`` that has one, in as few reads as
        the store allows (the reaper's pass: one request per 100 clusters on DynamoDB)."""
        ...

    def put_secret(self, cluster_id: str, name: str, value: bytes) -> None:
        """Store an already-encrypted secret blob."""
        ...

    def get_secret(self, cluster_id: str, name: str) -> bytes | None: ...

    def put_user(self, user: User) -> None:
        """Insert ``user``, or replace the user with its id (a new name frees the old one).

        User names are unique: raises ``UserNameTakenError``, writing nothing, when
        another user has ``user.name``. Atomic: of concurrent puts of one name by
        different users, one wins.
        """
        ...

    def get_user(self, user_id: str) -> User | None: ...

    def count_users(self) -> int: ...

    def list_users(self) -> list[User]:
        """Every user, by name (a consistent read; the table is small)."""

    def put_team(self, team: Team) -> None:
        """Insert ``team``, or replace the team of its name."""
        ...

    def get_team(self, name: str) -> Team | None: ...

    def list_teams(self) -> list[Team]:
        """Every team, by name."""

    def put_api_token(self, token: ApiToken) -> None:
        """Insert ``token`` (or replace the one with its ``token_hash``)."""

    def get_api_token(self, token_hash: str) -> ApiToken | None:
        """The token, as last written (a strongly consistent read), or ``None``. Tokens
        written before they had metadata come back as ``ApiToken.legacy``."""
        ...

    def list_api_tokens(self, user_id: str) -> list[ApiToken]:
        """The tokens of one user, oldest first."""

    def touch_api_token(self, token_hash: str, at: datetime) -> None:
        """Set ``last_used_at`` of an existing token; never recreates a deleted one."""
        ...

    def delete_api_token(self, token_hash: str) -> bool:
        """Delete the token (it stops working at once); ``False`` when it did not exist."""
        ...

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

    def put_environment_revision(
        self, owner: str, name: str, spec: SoftwareSpec, now: datetime
    ) -> int:
        """Write ``spec`` as the next revision of ``owner``'s environment ``name`` and
        return that revision: 1 for a new (or deleted) name, else the latest plus one.

        Atomic: concurrent puts of one name get distinct revisions (a conditional write;
        the loser re-reads and retries), and a reader never sees a half-written revision.
        Raises ``StaleRecordError`` only when it kept losing to concurrent writers.
        """
        ...

    def get_environment(
        self, owner: str, name: str, revision: int | None = None
    ) -> SoftwareEnvironment | None:
        """The latest revision of ``owner``'s environment ``name`` (or ``revision``), as
        last written (a strongly consistent read); ``None`` when absent. Owners never see
        each other's environments."""
        ...

    def list_environments(self, owner: str) -> list[SoftwareEnvironment]:
        """The latest revision of each of ``owner``'s environments, by name (a strongly
        consistent read of one item per environment, never of every revision)."""
        ...

    def delete_environment(self, owner: str, name: str) -> bool:
        """Delete every revision of ``owner``'s environment ``name``; ``False`` when it did
        not exist. Clusters keep the specs they copied. After a delete, the name starts
        again at revision 1."""
        ...


class Provider(Protocol):
    """Runs instances. Every method is idempotent and safe to call again after a crash.

    Infrastructure errors (the cloud API unavailable, throttled, refusing) are raised;
    the orchestrator retries the reconcile step with backoff.
    """

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

    def sweep_cluster_resources(self, is_active: Callable[[str], bool]) -> list[str]:
        """Release what clusters hold besides instances (EC2: launch templates and security
        groups; local processes: scratch directories) for every cluster of this deployment
        for which ``is_active(cluster_id)`` is false and no instance is alive.

        Returns the ids of clusters now fully cleaned up; the others are tried again on
        the next call. Never touches shared resources or instance logs.
        """
        ...


class Orchestrator(Protocol):
    """Drives ``Lifecycle.reconcile`` for each cluster until it reports ``done``."""

    def submit(self, cluster_id: str) -> None:
        """Make sure ``reconcile(cluster_id)`` runs soon and keeps running until done.

        Calling it for a cluster that is already being driven is a cheap no-op (or a
        prompt re-run); never two concurrent reconciles of the same cluster. Raises on
        infrastructure errors; the record is already written, so the watchdog's resync
        drives the cluster later.
        """
        ...

    def running_clusters(self) -> set[str]:
        """Ids of the clusters being driven right now (queued or running)."""
        ...


class SecretBox(Protocol):
    def encrypt(self, plaintext: bytes) -> bytes:
        """Ciphertext that only this deployment's key opens."""
        ...

    def decrypt(self, ciphertext: bytes) -> bytes:
        """The plaintext; raises when the ciphertext was not sealed by this deployment."""
        ...


class EventBus(Protocol):
    def publish(self, kind: str, cluster: ClusterRecord, detail: dict | None = None) -> None:
        """Emit a lifecycle event; failures are logged, never raised into the caller."""
        ...


class ObjectStore(Protocol):
    """Where wheels of users' local code live, addressed by their sha256. Their bytes go
    from the client to the store and from the store to instances through pre-signed URLs
    this port issues: they never pass through the control plane's API."""

    def upload_url(self, sha256: str, size: int) -> str:
        """A URL that accepts one ``PUT`` of exactly ``size`` bytes whose sha256 is
        ``sha256``, valid for a limited time; the store refuses other bytes."""
        ...

    def upload_headers(self, sha256: str, size: int) -> dict[str, str]:
        """Headers the ``PUT`` to ``upload_url`` must carry besides ``Content-Length``
        (S3: the checksum it verifies the bytes against); empty when none."""
        ...

    def download_url(self, sha256: str) -> str:
        """A URL that answers ``GET`` with the object, valid for a limited time."""
        ...

    def exists(self, sha256: str) -> bool:
        """Whether the object was uploaded (completely) and its bytes were checked
        against its name."""
        ...


class IdempotencyCache(Protocol):
    """Answers a *completed* repeat of a create from one read, before the core pays for
    a fresh PKI and its encrypted secrets. The store's transactional create stays the
    source of truth: whenever the cache cannot decide it simply runs ``create``."""

    def run_once(self, owner: str, key: str, request_hash: str, create: Callable[[], str]) -> str:
        """The cluster id of ``create()`` run now, or of the first completed run for
        ``(owner, key)``. Raises ``IdempotencyMismatch`` when the key was used with
        another ``request_hash``."""
        ...


T = TypeVar("T")


class _Port(Generic[T]):
    """A ``Ports`` attribute holding an adapter, or a factory that builds it on first use."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, objtype: type) -> _Port[T]: ...

    @overload
    def __get__(self, obj: Ports, objtype: type) -> T: ...

    def __get__(self, obj: Ports | None, objtype: type) -> T | _Port[T]:
        if obj is None:
            return self
        value = obj.__dict__[self.name]
        if isinstance(value, _Lazy):
            with obj._build_lock:
                value = obj.__dict__[self.name]
                if isinstance(value, _Lazy):
                    value = obj.__dict__[self.name] = value.build()
        return value

    def __set__(self, obj: Ports, value: T) -> None:
        obj.__dict__[self.name] = value


class _Lazy:
    def __init__(self, build: Callable[[], Any]) -> None:
        self.build = build


def lazy(build: Callable[[], T]) -> T:
    """Give ``Ports`` a factory instead of an adapter: it is called once, on first use,
    so a Lambda request builds only the clients it needs (typed as the adapter)."""
    return _Lazy(build)  # type: ignore[return-value]


class Ports:
    """Every adapter of one runtime. Build exactly one per runtime (composition root).

    Any port may be given as ``lazy(factory)``: the adapter is built on first access and
    kept. ``idempotency`` is optional (``None``: the store alone answers repeats), and so
    is ``objects`` (``None``: package sync of local code is refused with a clear error),
    and ``machines`` (``None``: instances are not cloud machines; sizing is the provider's).
    """

    store: _Port[Store] = _Port()
    provider: _Port[Provider] = _Port()
    orchestrator: _Port[Orchestrator] = _Port()
    secrets: _Port[SecretBox] = _Port()
    events: _Port[EventBus] = _Port()
    idempotency: _Port[IdempotencyCache | None] = _Port()
    objects: _Port[ObjectStore | None] = _Port()
    machines: _Port[MachineCatalog | None] = _Port()

    def __init__(
        self,
        *,
        store: Store,
        provider: Provider,
        orchestrator: Orchestrator,
        secrets: SecretBox,
        clock: Clock,
        events: EventBus,
        settings: ControlSettings,
        idempotency: IdempotencyCache | None = None,
        objects: ObjectStore | None = None,
        machines: MachineCatalog | None = None,
    ) -> None:
        self._build_lock = threading.RLock()
        self.store = store
        self.provider = provider
        self.orchestrator = orchestrator
        self.secrets = secrets
        self.events = events
        self.idempotency = idempotency
        self.objects = objects
        self.machines = machines
        self.clock = clock
        self.settings = settings

    def built(self) -> list[str]:
        """Names of the adapters built so far (what requests have paid for); absent
        optional ports are not listed."""
        names = ["store", "provider", "orchestrator", "secrets", "events", "idempotency"]
        names += ["objects", "machines"]
        return [n for n in names if not isinstance(self.__dict__.get(n), _Lazy | None)]
