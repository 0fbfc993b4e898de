"""The SQLite store syncs every commit (``synchronous=FULL``) but heartbeats, which it
writes in batches."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from billow_control.adapters.local.sqlite_store import SqliteStore
from billow_control.core.models import Heartbeat, HeartbeatRecord

pytestmark = pytest.mark.unit

FULL, NORMAL = 2, 1  # what PRAGMA synchronous reads back


def synchronous(store: SqliteStore) -> int:
    return int(store._conn().execute("PRAGMA synchronous").fetchone()[0])


def beat(cluster_id: str) -> HeartbeatRecord:
    return HeartbeatRecord(
        cluster_id=cluster_id,
        received_at=datetime.now(UTC),
        heartbeat=Heartbeat(scheduler_address="tls://127.0.0.1:1"),
    )


def test_commits_are_synced_by_default_and_a_heartbeat_does_not_change_that(
    tmp_path: Path,
) -> None:
    store = SqliteStore(tmp_path / "billow.db")
    assert synchronous(store) == FULL
    store.put_heartbeat(beat("c-1"))
    assert synchronous(store) == FULL  # heartbeats commit on a connection of their own
    assert store.get_heartbeat("c-1") is not None


def test_normal_is_a_choice_and_nothing_else_is(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "billow.db", synchronous="normal")
    store.put_heartbeat(beat("c-1"))
    assert synchronous(store) == NORMAL
    with pytest.raises(ValueError, match="FULL, NORMAL"):
        SqliteStore(tmp_path / "other.db", synchronous="OFF")


def test_heartbeats_in_a_burst_are_seen_at_once_and_written_by_the_next_read(
    tmp_path: Path,
) -> None:
    """A burst waits to be written together; this store's readers see every heartbeat at
    once, and a read writes the waiting ones, so another connection sees them too."""
    path = tmp_path / "billow.db"
    store = SqliteStore(path, heartbeat_batch=3600)  # a burst of an hour
    store.put_heartbeat(beat("c-0"))  # written at once: nothing was written before
    burst = [beat(f"c-{n}") for n in range(1, 50)]
    for b in burst:
        store.put_heartbeat(b)
    other = SqliteStore(path)  # another process's view of the file
    written_before_a_read = other.get_heartbeats([b.cluster_id for b in burst])
    assert written_before_a_read == {}  # the burst waits
    assert store.get_heartbeats([b.cluster_id for b in burst]) == {b.cluster_id: b for b in burst}
    assert other.get_heartbeats([b.cluster_id for b in burst]) == {b.cluster_id: b for b in burst}
    assert store.get_heartbeat("c-0") is not None
