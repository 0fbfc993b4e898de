"""Many clusters in a store, a reaper over them, and a meter of DynamoDB items read.

Shared by tests/integration/test_reaper_cost.py and tests/bench/bench_watchdog.py.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from cryptography.fernet import Fernet

from billow_control.adapters.aws.dynamodb import DynamoDBStore
from billow_control.adapters.clock import ManualClock
from billow_control.adapters.local.fernet_box import FernetSecretBox
from billow_control.core.models import (
    ClusterRecord,
    ClusterRequest,
    ClusterStatus,
    ClusterTarget,
    Heartbeat,
    HeartbeatRecord,
    new_id,
)
from billow_control.core.ports import Ports, Store
from billow_control.core.service import ControlPlane
from billow_control.core.settings import ControlSettings
from billow_control.core.watchdog import WatchdogReport
from tests.unit.fakes import MemoryBus, MemoryProvider, RecordingOrchestrator


class ItemsRead:
    """Items in the DynamoDB read responses of one store's client, and its table Scans.

    Query and Scan count ``ScannedCount`` (items read before any filter, what DynamoDB
    bills), GetItem its item, BatchGetItem the items returned. ``table_scans`` counts
    Scans of the clusters table itself (not of one of its indexes).
    """

    OPERATIONS = ("Query", "Scan", "GetItem", "BatchGetItem")

    def __init__(self, store: DynamoDBStore) -> None:
        self.items = 0
        self.table_scans = 0
        self.calls: list[str] = []
        self._clusters = store.models.cluster.Meta.table_name
        events = store.connection.client.meta.events
        for op in self.OPERATIONS:
            events.register(f"before-parameter-build.dynamodb.{op}", self._before)
            events.register(f"after-call.dynamodb.{op}", self._after)

    @staticmethod
    def _before(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        context["billow_read"] = (params.get("TableName"), params.get("IndexName"))

    def _after(self, parsed: dict[str, Any], model: Any, context: dict[str, Any], **_: Any) -> None:
        table, index = context.get("billow_read", (None, None))
        self.calls.append(model.name)
        if model.name in ("Query", "Scan"):
            self.items += parsed["ScannedCount"]
            if model.name == "Scan" and table == self._clusters and index is None:
                self.table_scans += 1
        elif model.name == "GetItem":
            self.items += 1 if "Item" in parsed else 0
        else:
            self.items += sum(len(items) for items in parsed.get("Responses", {}).values())

    def reset(self) -> None:
        self.items = self.table_scans = 0
        self.calls = []


class DocumentsRead:
    """Documents in the Firestore read responses of this process, as Firestore bills them:
    each document a query returns (at least one read per query), each document a get
    asks for (found or missing), one per aggregation. ``queries`` holds the collection
    and filters of each query.

    Installed by wrapping the GAPIC client's streaming read methods (``install``); the
    responses pass through unchanged.
    """

    def __init__(self) -> None:
        self.documents = 0
        self.queries: list[tuple[str, str]] = []

    def install(self, monkeypatch: Any) -> DocumentsRead:
        from google.cloud.firestore_v1.services.firestore.client import FirestoreClient

        def counted(name: str) -> Any:
            original = getattr(FirestoreClient, name)

            def wrapper(client: Any, *args: Any, **kwargs: Any) -> Any:
                request = kwargs.get("request")
                if name == "run_query" and request is not None:
                    query = request["structured_query"]
                    self.queries.append((query.from_[0].collection_id, str(query.where)))
                return self._count(name, original(client, *args, **kwargs))

            monkeypatch.setattr(FirestoreClient, name, wrapper)

        for name in ("run_query", "batch_get_documents", "run_aggregation_query"):
            counted(name)
        return self

    def _count(self, name: str, responses: Any) -> Any:
        returned = 0
        for response in responses:
            if name == "run_query":
                returned += 1 if "document" in response else 0
            elif name == "batch_get_documents":
                self.documents += 1 if ("found" in response or "missing" in response) else 0
            else:
                self.documents += 1
            yield response
        if name == "run_query":
            self.documents += max(1, returned)

    def reset(self) -> None:
        self.documents = 0
        self.queries = []


class Fleet:
    """Active and finished clusters in ``store``, and a reaper over it.

    Active clusters are ready with a fresh heartbeat of a busy scheduler, so a reaper
    pass decides nothing and only reads. The provider has no instances: the orphan sweep
    reads nothing either. Clusters are owned by one user, as the worst case of one Query.
    """

    def __init__(self, store: Store, owner: str = "u-fleet") -> None:
        self.store = store
        self.owner = owner
        self.clock = ManualClock()
        self.settings = ControlSettings(deployment="fleet")
        bus = MemoryBus()
        provider = MemoryProvider(self.clock)
        box = FernetSecretBox(Fernet.generate_key())
        ports = Ports(
            store=store,
            provider=provider,
            orchestrator=RecordingOrchestrator(),
            secrets=box,
            clock=self.clock,
            events=bus,
            settings=self.settings,
        )
        self.reaper = ControlPlane(ports).watchdog

    def record(self, i: int, status: ClusterStatus) -> ClusterRecord:
        """Cluster number ``i`` with ``status``, created ``i`` seconds after the first."""
        created = self.clock.now() - timedelta(days=7) + timedelta(seconds=i)
        finished = status.terminal
        return ClusterRecord(
            id=new_id("c"),
            owner=self.owner,
            name=f"{status.value}-{i}",
            request=ClusterRequest(name=f"{status.value}-{i}", n_workers=2),
            status=status,
            target=ClusterTarget.stopped if finished else ClusterTarget.running,
            desired_workers=2,
            version=3 if finished else 0,  # created, provisioning, ready, stopped
            created_at=created,
            updated_at=created,
            ready_at=created + timedelta(seconds=30),
            stopped_at=created + timedelta(seconds=300) if finished else None,
            stop_reason="idle" if finished else None,
        )

    def add_active(self, n: int) -> list[str]:
        """``n`` ready clusters, each with a fresh heartbeat of a busy scheduler."""
        ids = []
        for i in range(n):
            rec, _ = self.store.create_cluster(self.record(i, ClusterStatus.ready), None, "h")
            self.store.put_heartbeat(
                HeartbeatRecord(
                    cluster_id=rec.id,
                    received_at=self.clock.now(),
                    heartbeat=Heartbeat(
                        scheduler_address="tls://127.0.0.1:8786",
                        workers=["worker-0", "worker-1"],
                        busy=True,
                        tasks_processing=2,
                    ),
                )
            )
            ids.append(rec.id)
        return ids

    def add_stopped(self, n: int) -> None:
        """``n`` stopped clusters, stored as the store leaves a finished cluster.

        SQLite: ``create_cluster`` of the terminal record (one row, ``active=0``).
        DynamoDB: ``BatchWriteItem`` of the store's own item for the terminal record, as
        its terminal update writes it (no ``active_owner``, so absent from the sparse
        index; TTL stamp set; name lock already released). Firestore: batched writes of
        the store's own document for the terminal record (``active`` false).
        """
        records = (self.record(i, ClusterStatus.stopped) for i in range(n))
        cluster_document = getattr(self.store, "cluster_document", None)
        if cluster_document is not None:  # FirestoreStore
            from concurrent.futures import ThreadPoolExecutor

            client, clusters = self.store.client, self.store.col("clusters")  # type: ignore[attr-defined]
            batches = []
            for rec in records:
                if not batches or len(batches[-1]) == 500:  # Firestore's writes per commit
                    batches.append(client.batch())
                batches[-1].set(clusters.document(rec.id), cluster_document(rec))
            with ThreadPoolExecutor(4) as pool:
                list(pool.map(lambda batch: batch.commit(), batches))
        elif isinstance(self.store, DynamoDBStore):
            store = self.store
            with store.models.cluster.batch_write() as batch:
                for rec in records:
                    batch.save(store._cluster_item(rec, stored_version=rec.version + 1))
        else:
            for rec in records:
                self.store.create_cluster(rec, None, "h")

    def reap(self) -> WatchdogReport:
        """One reaper pass, checked to have read the active clusters and decided nothing."""
        report = self.reaper.run_once()
        decided = report.stopped or report.failed or report.warned or report.orphans_terminated
        assert not decided, f"a quiet pass was expected: {report}"
        return report
