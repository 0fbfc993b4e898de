"""The reaper's reads grow with active clusters, not with history.

With 1,000 stopped and 50 active clusters (the bench: 5,000), one ``Watchdog.run_once()``
on DynamoDB reads at most 100 items (the active clusters from the sparse index, and one
heartbeat each) in at most 3 requests (the index, and one BatchGetItem of the heartbeats),
counted from DynamoDB's own responses, and never Scans the clusters table; on Firestore it
runs one query on ``active`` and reads at most as many documents (counted from the
responses, as Firestore bills them). SQLite does not report rows read, so there the query
the reaper issues is checked to be answered from the partial index ``clusters_active``.
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest

from billow_control.adapters.aws.dynamodb import DynamoDBStore
from billow_control.adapters.local.sqlite_store import SqliteStore
from tests.support.fleet import DocumentsRead, Fleet, ItemsRead
from tests.support.stores import dynamodb_store, firestore_store

pytestmark = pytest.mark.integration

ACTIVE = 50
STOPPED = 1_000  # twenty times the active ones
MAX_ITEMS_READ = 100  # the active clusters and their latest heartbeats
MAX_READ_REQUESTS = 3


def test_reaper_pass_on_dynamodb_reads_active_clusters_only(moto_url: str) -> None:
    with dynamodb_store(moto_url) as store:
        assert isinstance(store, DynamoDBStore)
        fleet = Fleet(store)
        active = fleet.add_active(ACTIVE)
        fleet.add_stopped(STOPPED)
        reads = ItemsRead(store)

        report = fleet.reap()

        assert report.clusters_read == ACTIVE
        assert reads.table_scans == 0, reads.calls
        assert reads.items <= MAX_ITEMS_READ, (reads.items, reads.calls)
        assert len(reads.calls) <= MAX_READ_REQUESTS, reads.calls
        assert "BatchGetItem" in reads.calls and "GetItem" not in reads.calls, reads.calls
        # The meter sees history when it is read: listing everything Scans the table.
        reads.reset()
        history = store.list_clusters(None, active_only=False)
        assert len(history) == ACTIVE + STOPPED
        assert reads.table_scans >= 1
        assert reads.items >= ACTIVE + STOPPED
        assert {r.id for r in history if r.active} == set(active)


def test_reaper_query_on_sqlite_uses_the_partial_active_index(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "billow.db")
    fleet = Fleet(store)
    fleet.add_active(ACTIVE)
    fleet.add_stopped(STOPPED)
    statements: list[str] = []
    conn = store._conn()  # the reaper runs on this thread, so on this connection
    conn.set_trace_callback(statements.append)
    try:
        report = fleet.reap()
    finally:
        conn.set_trace_callback(None)

    assert report.clusters_read == ACTIVE
    cluster_reads = [sql for sql in statements if " FROM clusters " in sql]
    assert cluster_reads, statements
    with sqlite3.connect(store.path) as db:
        for sql in cluster_reads:
            plan = [row[3] for row in db.execute("EXPLAIN QUERY PLAN " + sql)]
            access = [
                step for step in plan if step.startswith(("SCAN clusters", "SEARCH clusters"))
            ]
            assert access, (sql, plan)
            assert all(
                re.search(r"USING (COVERING )?INDEX clusters_active\b(?!_)", step)
                for step in access
            ), (sql, plan)


def test_reaper_pass_on_firestore_reads_active_clusters_only(
    firestore_host: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with firestore_store(firestore_host) as store:
        fleet = Fleet(store)
        active = fleet.add_active(ACTIVE)
        fleet.add_stopped(STOPPED)
        reads = DocumentsRead().install(monkeypatch)

        report = fleet.reap()

        assert report.clusters_read == ACTIVE
        cluster_queries = [where for collection, where in reads.queries if "clusters" in collection]
        assert len(cluster_queries) == 1 and '"active"' in cluster_queries[0], reads.queries
        # plus the meter's query of open usage records (none: Firestore bills one read)
        usage_queries = [where for collection, where in reads.queries if "usage" in collection]
        assert len(usage_queries) == 1 and '"open"' in usage_queries[0], reads.queries
        assert reads.documents <= MAX_ITEMS_READ + 1, (reads.documents, reads.queries)
        # The meter sees history when it is read (the first 500 clusters of all: listing
        # all 5,050 takes the emulator ten seconds).
        reads.reset()
        assert len(list(store.cluster_query(None, False, None).limit(500).stream())) == 500
        assert reads.documents == 500
        listed = store.list_clusters(None, active_only=True)
        assert {r.id for r in listed} == set(active)
