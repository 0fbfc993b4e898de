"""The SQLite store syncs every commit (``synchronous=FULL``) but heartbeats."""

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
    assert synchronous(store) == FULL  # restored after the heartbeat's unsynced commit
    assert store.get_heartbeat("c-1") is not None


def test_normal_is_a_choice_and_nothing_else_is(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "billow.db", synchronous="normal")
    store.put_heartbeat(beat("c-1"))
    assert synchronous(store) == NORMAL
    with pytest.raises(ValueError, match="FULL, NORMAL"):
        SqliteStore(tmp_path / "other.db", synchronous="OFF")
