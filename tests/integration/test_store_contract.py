"""The ``Store`` contract, run against every adapter: SQLite (a file), DynamoDB (moto) and
Firestore (Google's emulator).

Each test gets a fresh store: a new SQLite file, new DynamoDB tables under a fresh
prefix on the session's ``moto_server``, or a fresh project on the Firestore emulator.

The concurrency tests run DynamoDB against a second moto server that handles one request
at a time. The shared ``moto_server`` is threaded, and moto applies a TransactWriteItems
as a sequence of writes rolled back by restoring a copy of the table, so concurrent
transactions interleave (seen here: a cancelled create left its cluster item behind).
DynamoDB itself makes each conditional write and each transaction atomic and isolated;
one request at a time is the faithful stand-in for that.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest

from billow_control.adapters.aws.dynamodb import DynamoDBStore
from billow_control.adapters.local.sqlite_store import SqliteStore
from billow_control.core.accounts import ApiToken, Limits, Role, Team, TokenScope
from billow_control.core.metering import UsageRecord
from billow_control.core.models import (
    ClusterRecord,
    ClusterRequest,
    ClusterStatus,
    ClusterTarget,
    Heartbeat,
    HeartbeatRecord,
    InstanceCredential,
    InstanceRole,
    User,
    new_id,
)
from billow_control.core.ports import (
    FinishedClusterError,
    IdempotencyMismatch,
    NameTakenError,
    StaleRecordError,
    Store,
    UserNameTakenError,
)
from billow_control.core.software import PackagePin, SoftwareEnvironment, SoftwareSpec
from tests.support.stores import STORE_KINDS, dynamodb_store, store_of_kind

pytestmark = pytest.mark.integration

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
THREADS = 20
_T = TypeVar("_T")


@pytest.fixture(params=STORE_KINDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    with store_of_kind(request.param, tmp_path, request) as chosen:
        yield chosen


@pytest.fixture(params=STORE_KINDS)
def atomic_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """Like ``store``, with DynamoDB on the one-request-at-a-time moto server."""
    if request.param == "sqlite":
        yield SqliteStore(tmp_path / "billow.db")
    elif request.param == "firestore":
        with store_of_kind("firestore", tmp_path, request) as firestore:
            yield firestore
    else:
        with dynamodb_store(request.getfixturevalue("serial_moto_url")) as dynamodb:
            yield dynamodb


@pytest.fixture
def dynamo(moto_url: str) -> Iterator[DynamoDBStore]:
    with dynamodb_store(moto_url) as dynamodb:
        yield dynamodb


def record(
    owner: str = "u-alice", name: str = "analysis", at: float = 0, **fields: Any
) -> ClusterRecord:
    """A new cluster record created ``at`` seconds after ``T0``."""
    created = T0 + timedelta(seconds=at)
    return ClusterRecord(
        id=new_id("c"),
        owner=owner,
        name=name,
        request=ClusterRequest(name=name, n_workers=2),
        desired_workers=2,
        created_at=created,
        updated_at=created,
        **fields,
    )


def finish(store: Store, rec: ClusterRecord, status: ClusterStatus) -> ClusterRecord:
    done = rec.model_copy(
        update={"status": status, "target": ClusterTarget.stopped, "stopped_at": T0}
    )
    return store.update_cluster(done)


def concurrently(fn: Callable[[int], _T], n: int = THREADS) -> list[_T]:
    """Run ``fn(0..n-1)`` on ``n`` threads released together."""
    barrier = threading.Barrier(n)

    def run(i: int) -> _T:
        barrier.wait()
        return fn(i)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(run, range(n)))


# -- clusters --------------------------------------------------------------------------


def test_create_then_get_returns_the_record(store: Store) -> None:
    rec = record()
    stored, created = store.create_cluster(rec, "key-1", "hash-1")
    assert created is True
    assert stored == rec
    assert store.get_cluster(rec.id) == rec
    assert store.get_cluster("c-unknown") is None


def test_same_idempotency_key_returns_the_first_cluster(store: Store) -> None:
    first = record()
    store.create_cluster(first, "key-1", "hash-1")
    again, created = store.create_cluster(record(), "key-1", "hash-1")
    assert created is False
    assert again == first
    assert [r.id for r in store.list_clusters("u-alice", active_only=False)] == [first.id]


def test_same_idempotency_key_for_another_request_is_refused(store: Store) -> None:
    first = record()
    store.create_cluster(first, "key-1", "hash-1")
    other = record(name="other")
    with pytest.raises(IdempotencyMismatch):
        store.create_cluster(other, "key-1", "hash-2")
    assert store.get_cluster(other.id) is None
    assert [r.id for r in store.list_clusters("u-alice", active_only=False)] == [first.id]


def test_idempotency_keys_belong_to_one_owner(store: Store) -> None:
    store.create_cluster(record(owner="u-alice"), "key-1", "hash-1")
    bob = record(owner="u-bob")
    stored, created = store.create_cluster(bob, "key-1", "hash-1")
    assert created is True
    assert stored.id == bob.id


def test_active_name_is_taken_until_the_cluster_is_terminal(store: Store) -> None:
    first = record(name="etl")
    store.create_cluster(first, None, "hash-1")
    clash = record(name="etl", at=1)
    with pytest.raises(NameTakenError):
        store.create_cluster(clash, "key-2", "hash-2")
    assert store.get_cluster(clash.id) is None
    # Other owners may use the name.
    assert store.create_cluster(record(owner="u-bob", name="etl"), None, "hash-3")[1] is True
    # A key that failed on the name was not consumed.
    finish(store, first, ClusterStatus.stopped)
    reused, created = store.create_cluster(clash, "key-2", "hash-2")
    assert created is True
    assert reused.id == clash.id
    # A failed cluster frees its name too.
    finish(store, reused, ClusterStatus.failed)
    assert store.create_cluster(record(name="etl", at=2), None, "hash-4")[1] is True


def test_updating_a_finished_cluster_keeps_the_name_of_its_successor(store: Store) -> None:
    old = finish(
        store, store.create_cluster(record(name="etl"), None, "h")[0], ClusterStatus.stopped
    )
    new, _ = store.create_cluster(record(name="etl", at=1), None, "h")
    old.error_logs = ["late log line"]
    updated = store.update_cluster(old)
    assert store.get_cluster(old.id) == updated
    with pytest.raises(NameTakenError):
        store.create_cluster(record(name="etl", at=2), None, "h")
    assert store.get_cluster(new.id) == new


def test_update_bumps_the_version_and_persists(store: Store) -> None:
    rec, _ = store.create_cluster(record(), None, "h")
    rec.status = ClusterStatus.provisioning
    rec.desired_workers = 7
    updated = store.update_cluster(rec)
    assert updated.version == rec.version + 1
    assert store.get_cluster(rec.id) == updated


def test_stale_update_conflicts_and_writes_nothing(store: Store) -> None:
    rec, _ = store.create_cluster(record(), None, "h")
    winner = store.update_cluster(rec.model_copy(update={"desired_workers": 5}))
    with pytest.raises(StaleRecordError):
        store.update_cluster(rec.model_copy(update={"desired_workers": 9}))
    with pytest.raises(StaleRecordError):  # a stale terminal write must not free the name
        finish(store, rec, ClusterStatus.stopped)
    assert store.get_cluster(rec.id) == winner
    with pytest.raises(NameTakenError):
        store.create_cluster(record(), None, "h")
    with pytest.raises(StaleRecordError):
        store.update_cluster(record())  # never created


def test_a_finished_cluster_cannot_become_active_again(store: Store) -> None:
    created, _ = store.create_cluster(record(), None, "h")
    done = finish(store, created, ClusterStatus.stopped)
    with pytest.raises(FinishedClusterError, match="cannot become active again"):
        store.update_cluster(done.model_copy(update={"status": ClusterStatus.pending}))
    assert issubclass(FinishedClusterError, ValueError)
    assert store.get_cluster(done.id) == done
    # A stale reactivation is stale first: the caller must re-read.
    with pytest.raises(StaleRecordError):
        store.update_cluster(created.model_copy(update={"desired_workers": 3}))
    assert store.get_cluster(done.id) == done


@pytest.mark.parametrize("kind", STORE_KINDS)
def test_expired_idempotency_key_counts_as_unused_before_ttl_deletes_it(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    now = [1_750_000_000.0]
    with store_of_kind(
        kind, tmp_path, request, idempotency_ttl=timedelta(hours=1), clock=lambda: now[0]
    ) as store:
        first, _ = store.create_cluster(record(name="a"), "key-1", "hash-1")
        now[0] += 3599
        assert store.create_cluster(record(name="b"), "key-1", "hash-1") == (first, False)
        now[0] += 2
        later, created = store.create_cluster(record(name="b"), "key-1", "hash-2")
        assert created is True
        assert later.id != first.id
        assert store.create_cluster(record(name="c"), "key-1", "hash-2") == (later, False)


def test_concurrent_creates_with_one_key_make_one_cluster(atomic_store: Store) -> None:
    results = concurrently(
        lambda i: atomic_store.create_cluster(record(at=i), "same-key", "same-hash")
    )
    created = [rec for rec, was_created in results if was_created]
    assert len(created) == 1
    assert {rec.id for rec, _ in results} == {created[0].id}
    assert [r.id for r in atomic_store.list_clusters("u-alice", active_only=False)] == [
        created[0].id
    ]


def test_concurrent_updates_from_one_version_have_one_winner(atomic_store: Store) -> None:
    base, _ = atomic_store.create_cluster(record(), None, "h")

    def update(i: int) -> ClusterRecord | None:
        try:
            return atomic_store.update_cluster(base.model_copy(update={"desired_workers": i}))
        except StaleRecordError:
            return None

    winners = [r for r in concurrently(update) if r is not None]
    assert len(winners) == 1
    assert atomic_store.get_cluster(base.id) == winners[0]
    assert winners[0].version == base.version + 1


def test_list_clusters_filters_and_orders_newest_first(store: Store) -> None:
    a_old, _ = store.create_cluster(record(name="a", at=0), None, "h")
    a_mid, _ = store.create_cluster(record(name="b", at=10), None, "h")
    a_new, _ = store.create_cluster(record(name="c", at=20), None, "h")
    b_one, _ = store.create_cluster(record(owner="u-bob", name="a", at=15), None, "h")
    a_mid = finish(store, a_mid, ClusterStatus.stopped)
    a_again, _ = store.create_cluster(record(name="b", at=30), None, "h")

    def ids(owner: str | None, active_only: bool, name: str | None = None) -> list[str]:
        return [r.id for r in store.list_clusters(owner, active_only, name)]

    assert ids("u-alice", False) == [a_again.id, a_new.id, a_mid.id, a_old.id]
    assert ids("u-alice", True) == [a_again.id, a_new.id, a_old.id]
    assert ids("u-alice", False, name="b") == [a_again.id, a_mid.id]
    assert ids("u-alice", True, name="b") == [a_again.id]
    assert ids("u-bob", False) == [b_one.id]
    assert ids("u-carol", False) == []
    assert ids(None, False) == [a_again.id, a_new.id, b_one.id, a_mid.id, a_old.id]
    assert ids(None, True) == [a_again.id, a_new.id, b_one.id, a_old.id]
    assert store.list_clusters("u-alice", True, name="b")[0] == a_again
    assert store.list_clusters("u-alice", False, name="b")[1] == a_mid


# -- software environments ---------------------------------------------------------------


def env_spec(six: str = "1.16.0") -> SoftwareSpec:
    return SoftwareSpec(
        python="3.11.7",
        packages=[
            PackagePin(name="billow", version="0.1.0"),
            PackagePin(name="distributed", version="2025.1.0"),
            PackagePin(name="six", version=six),
        ],
    )


def test_environment_revisions_count_up_and_never_change(store: Store) -> None:
    assert store.get_environment("u-alice", "etl") is None
    assert store.list_environments("u-alice") == []
    specs = [env_spec(f"1.{i}.0") for i in range(3)]
    revisions = [
        store.put_environment_revision("u-alice", "etl", spec, T0 + timedelta(seconds=i))
        for i, spec in enumerate(specs)
    ]
    assert revisions == [1, 2, 3]
    latest = store.get_environment("u-alice", "etl")
    assert latest == SoftwareEnvironment(
        owner="u-alice",
        name="etl",
        revision=3,
        created_at=T0 + timedelta(seconds=2),
        spec=specs[2],
        spec_key=specs[2].key,
    )
    first = store.get_environment("u-alice", "etl", revision=1)
    assert first is not None and first.spec == specs[0] and first.created_at == T0
    assert store.get_environment("u-alice", "etl", revision=4) is None
    assert store.get_environment("u-alice", "other") is None


def test_list_environments_gives_the_latest_revision_of_each_by_name(store: Store) -> None:
    store.put_environment_revision("u-alice", "zeta", env_spec(), T0)
    for six in ("1.15.0", "1.16.0"):
        store.put_environment_revision("u-alice", "alpha", env_spec(six), T0)
    listed = store.list_environments("u-alice")
    assert [(e.name, e.revision) for e in listed] == [("alpha", 2), ("zeta", 1)]
    assert listed[0].spec.version_of("six") == "1.16.0"


def test_environments_of_owners_are_isolated(store: Store) -> None:
    assert store.put_environment_revision("u-alice", "etl", env_spec("1.15.0"), T0) == 1
    assert store.put_environment_revision("u-bob", "etl", env_spec("1.16.0"), T0) == 1
    assert store.put_environment_revision("u-bob", "etl", env_spec("1.16.0"), T0) == 2
    alice = store.get_environment("u-alice", "etl")
    assert alice is not None and alice.revision == 1 and alice.owner == "u-alice"
    assert alice.spec.version_of("six") == "1.15.0"
    assert [e.revision for e in store.list_environments("u-bob")] == [2]
    assert store.get_environment("u-carol", "etl") is None
    assert store.delete_environment("u-carol", "etl") is False
    assert store.delete_environment("u-bob", "etl") is True
    assert store.get_environment("u-alice", "etl") == alice


def test_delete_environment_removes_every_revision(store: Store) -> None:
    store.put_environment_revision("u-alice", "etl", env_spec("1.15.0"), T0)
    store.put_environment_revision("u-alice", "etl", env_spec("1.16.0"), T0)
    store.put_environment_revision("u-alice", "keep", env_spec(), T0)
    assert store.delete_environment("u-alice", "etl") is True
    assert store.get_environment("u-alice", "etl") is None
    assert store.get_environment("u-alice", "etl", revision=1) is None
    assert [e.name for e in store.list_environments("u-alice")] == ["keep"]
    assert store.delete_environment("u-alice", "etl") is False
    # The name starts again at revision 1.
    assert store.put_environment_revision("u-alice", "etl", env_spec(), T0) == 1


def test_concurrent_puts_of_one_name_get_distinct_revisions(atomic_store: Store) -> None:
    revisions = concurrently(
        lambda i: atomic_store.put_environment_revision(
            "u-alice", "etl", env_spec(f"1.{i}.0"), T0 + timedelta(seconds=i)
        )
    )
    assert sorted(revisions) == list(range(1, THREADS + 1))
    for i, revision in enumerate(revisions):
        stored = atomic_store.get_environment("u-alice", "etl", revision=revision)
        assert stored is not None and stored.spec.version_of("six") == f"1.{i}.0"
    latest = atomic_store.get_environment("u-alice", "etl")
    assert latest is not None and latest.revision == THREADS
    assert [e.revision for e in atomic_store.list_environments("u-alice")] == [THREADS]


# -- heartbeats, secrets, users, tokens --------------------------------------------------


def test_heartbeat_is_overwritten(store: Store) -> None:
    assert store.get_heartbeat("c-1") is None
    first = HeartbeatRecord(
        cluster_id="c-1", received_at=T0, heartbeat=Heartbeat(scheduler_address="tls://a:8786")
    )
    second = HeartbeatRecord(
        cluster_id="c-1",
        received_at=T0 + timedelta(seconds=5),
        heartbeat=Heartbeat(scheduler_address="tls://a:8786", workers=["w1", "w2"], gpu_util=0.5),
    )
    store.put_heartbeat(first)
    store.put_heartbeat(second)
    got = store.get_heartbeat("c-1")
    assert got == second
    assert got is not None and got.heartbeat.model_extra == {"gpu_util": 0.5}
    assert store.get_heartbeat("c-2") is None


def test_heartbeats_are_read_together(store: Store) -> None:
    beats = {
        f"c-{n}": HeartbeatRecord(
            cluster_id=f"c-{n}",
            received_at=T0 + timedelta(seconds=n),
            heartbeat=Heartbeat(scheduler_address=f"tls://a:{8000 + n}"),
        )
        for n in range(130)  # more than one DynamoDB BatchGetItem (100 keys)
    }
    for beat in beats.values():
        store.put_heartbeat(beat)
    asked = [*beats, "c-none", "c-7"]  # one without a heartbeat, one asked twice
    assert store.get_heartbeats(asked) == beats
    assert store.get_heartbeats([]) == {}


def test_secrets_round_trip_bytes(store: Store) -> None:
    blob = bytes(range(256))
    store.put_secret("c-1", "ca.pem", blob)
    store.put_secret("c-1", "worker.key", b"\x00key")
    assert store.get_secret("c-1", "ca.pem") == blob
    assert store.get_secret("c-1", "worker.key") == b"\x00key"
    store.put_secret("c-1", "ca.pem", b"rotated")
    assert store.get_secret("c-1", "ca.pem") == b"rotated"
    assert store.get_secret("c-1", "missing") is None
    assert store.get_secret("c-2", "ca.pem") is None


def test_users_and_api_tokens(store: Store) -> None:
    assert store.count_users() == 0
    alice = User(id="u-alice", name="alice", is_admin=True)
    bob = User(id="u-bob", name="bob")
    store.put_user(alice)
    store.put_user(bob)
    store.put_user(bob)  # replacing is not a second user
    assert store.count_users() == 2
    assert store.get_user("u-bob") == bob
    assert store.get_user("u-nobody") is None
    assert store.list_users() == [alice, bob]
    carol = User(id="u-carol", name="carol", team="etl", role=Role.viewer, disabled=True)
    store.put_user(carol)
    assert store.get_user("u-carol") == carol


def test_api_tokens_keep_metadata_and_are_revoked(store: Store) -> None:
    first = ApiToken(
        id="t-1",
        token_hash="hash-a",
        user_id="u-alice",
        name="laptop",
        created_at=T0,
        expires_at=T0 + timedelta(days=90),
    )
    second = ApiToken(
        id="t-2",
        token_hash="hash-b",
        user_id="u-alice",
        scope=TokenScope.read_only,
        created_at=T0 + timedelta(seconds=1),
    )
    store.put_api_token(first)
    store.put_api_token(second)
    store.put_api_token(ApiToken(id="t-3", token_hash="hash-c", user_id="u-bob", created_at=T0))
    assert store.get_api_token("hash-a") == first
    assert store.get_api_token("hash-unknown") is None
    assert store.list_api_tokens("u-alice") == [first, second]
    assert store.list_api_tokens("u-nobody") == []
    store.touch_api_token("hash-a", T0 + timedelta(hours=1))
    touched = store.get_api_token("hash-a")
    assert touched == first.model_copy(update={"last_used_at": T0 + timedelta(hours=1)})
    assert store.delete_api_token("hash-a") is True
    assert store.delete_api_token("hash-a") is False
    assert store.get_api_token("hash-a") is None
    store.touch_api_token("hash-a", T0 + timedelta(hours=2))  # never brings a revoked one back
    assert store.get_api_token("hash-a") is None
    assert [t.id for t in store.list_api_tokens("u-alice")] == ["t-2"]


def test_teams(store: Store) -> None:
    assert store.list_teams() == [] and store.get_team("etl") is None
    etl = Team(name="etl", created_at=T0)
    store.put_team(etl)
    store.put_team(Team(name="bi", created_at=T0))
    assert store.get_team("etl") == etl
    assert [t.name for t in store.list_teams()] == ["bi", "etl"]
    raised = etl.model_copy(update={"limits": Limits(cores=128, cpu_hours=1000.0)})
    store.put_team(raised)  # replaced: limits change
    assert store.get_team("etl") == raised


def test_user_names_are_unique(store: Store) -> None:
    alice = User(id="u-alice", name="alice")
    store.put_user(alice)
    with pytest.raises(UserNameTakenError):
        store.put_user(User(id="u-other", name="alice"))
    assert store.get_user("u-other") is None
    assert store.count_users() == 1
    store.put_user(alice.model_copy(update={"is_admin": True}))  # the same user, replaced
    assert store.get_user("u-alice") == alice.model_copy(update={"is_admin": True})
    store.put_user(User(id="u-alice", name="alicia"))  # renamed: "alice" is free again
    store.put_user(User(id="u-other", name="alice"))
    with pytest.raises(UserNameTakenError):
        store.put_user(User(id="u-third", name="alicia"))
    assert store.count_users() == 2
    names = {u.name for u in map(store.get_user, ["u-alice", "u-other"]) if u is not None}
    assert names == {"alicia", "alice"}


def test_concurrent_users_of_one_name_have_one_winner(atomic_store: Store) -> None:
    def put(i: int) -> bool:
        try:
            atomic_store.put_user(User(id=f"u-{i}", name="same"))
        except UserNameTakenError:
            return False
        return True

    assert sum(concurrently(put)) == 1
    assert atomic_store.count_users() == 1


def test_cluster_token_is_replaced(store: Store) -> None:
    assert store.get_cluster_token("c-1") is None
    store.put_cluster_token("c-1", "hash-1")
    store.put_cluster_token("c-1", "hash-2")
    assert store.get_cluster_token("c-1") == "hash-2"


def _credential(token_hash: str, expires_in: float) -> InstanceCredential:
    return InstanceCredential(
        token_hash=token_hash,
        cluster_id="c-1",
        instance_name="worker-0",
        role=InstanceRole.worker,
        expires_at=T0 + timedelta(seconds=expires_in),
    )


def test_instance_credential_is_consumed_once(store: Store) -> None:
    cred = _credential("hash-1", 600)
    store.put_instance_credential(cred)
    assert store.peek_instance_credential("hash-1") == cred
    consumed = store.consume_instance_credential("hash-1", T0)
    assert consumed == cred.model_copy(update={"used": True})
    assert store.consume_instance_credential("hash-1", T0) is None
    assert store.peek_instance_credential("hash-1") == consumed
    assert store.consume_instance_credential("hash-unknown", T0) is None
    assert store.peek_instance_credential("hash-unknown") is None


def test_expired_instance_credential_is_refused(store: Store) -> None:
    cred = _credential("hash-1", 60)
    store.put_instance_credential(cred)
    assert store.consume_instance_credential("hash-1", cred.expires_at) is None
    assert store.consume_instance_credential("hash-1", T0 + timedelta(hours=1)) is None
    assert store.peek_instance_credential("hash-1") == cred  # still unused
    just_before = cred.expires_at - timedelta(microseconds=1)
    assert store.consume_instance_credential("hash-1", just_before) is not None


def test_concurrent_consumers_of_one_credential_have_one_winner(atomic_store: Store) -> None:
    atomic_store.put_instance_credential(_credential("hash-1", 600))
    got = concurrently(lambda i: atomic_store.consume_instance_credential("hash-1", T0))
    assert len([c for c in got if c is not None]) == 1


# -- SQLite only -------------------------------------------------------------------------


def test_sqlite_file_of_an_older_version_keeps_its_idempotency_keys(tmp_path: Path) -> None:
    """A file whose ``idempotency`` table predates key expiry is migrated when opened;
    its keys count as created at the migration."""
    path = tmp_path / "billow.db"
    first, _ = SqliteStore(path).create_cluster(record(name="a"), "key-1", "hash-1")
    with sqlite3.connect(path) as old:  # the table as older versions wrote it
        old.execute("ALTER TABLE idempotency DROP COLUMN expires_at_epoch")
    now = [1_750_000_000.0]

    def reopen() -> SqliteStore:
        return SqliteStore(path, idempotency_ttl=timedelta(hours=1), clock=lambda: now[0])

    assert reopen().create_cluster(record(name="b"), "key-1", "hash-1") == (first, False)
    store = reopen()  # a migrated file opens as it is
    now[0] += 3599
    assert store.create_cluster(record(name="b"), "key-1", "hash-1") == (first, False)
    with pytest.raises(IdempotencyMismatch):
        store.create_cluster(record(name="b"), "key-1", "hash-2")
    now[0] += 2
    later, created = store.create_cluster(record(name="b"), "key-1", "hash-2")
    assert created is True
    assert store.create_cluster(record(name="c"), "key-1", "hash-2") == (later, False)


def test_sqlite_users_and_tokens_of_an_older_version_land_in_the_default_team(
    tmp_path: Path,
) -> None:
    """Users written before teams read as members of ``default``; tokens written before
    they had metadata read as legacy tokens (no expiry) until revoked."""
    path = tmp_path / "billow.db"
    SqliteStore(path)
    with sqlite3.connect(path) as old:  # the tables as older versions wrote them
        old.execute("ALTER TABLE api_tokens DROP COLUMN doc")
        old.execute("""INSERT INTO users VALUES ('u-old', '{"id":"u-old","name":"old"}')""")
        old.execute("INSERT INTO api_tokens VALUES ('hash-old', 'u-old')")
    store = SqliteStore(path)
    user = store.get_user("u-old")
    assert user is not None and (user.team, user.role, user.disabled) == (
        "default",
        "member",
        False,
    )
    assert store.get_api_token("hash-old") == ApiToken.legacy("hash-old", "u-old")
    assert store.get_api_token("hash-old").expires_at is None  # type: ignore[union-attr]
    store.touch_api_token("hash-old", T0)
    assert store.list_api_tokens("u-old")[0].last_used_at == T0


# -- DynamoDB only -----------------------------------------------------------------------


def test_dynamodb_tokens_of_an_older_version_read_as_legacy(dynamo: DynamoDBStore) -> None:
    dynamo.models.api_token("hash-old", user_id="u-old").save()  # no doc: as older versions
    assert dynamo.get_api_token("hash-old") == ApiToken.legacy("hash-old", "u-old")
    assert [t.id for t in dynamo.list_api_tokens("u-old")] == ["t-hash-old"]


class _Reads:
    """Query and Scan calls seen on the wire: operation, index and ScannedCount."""

    def __init__(self, store: DynamoDBStore) -> None:
        self.calls: list[tuple[str, str | None, int]] = []
        self._index: str | None = None
        events = store.connection.client.meta.events
        events.register("before-parameter-build.dynamodb.Query", self._before)
        events.register("before-parameter-build.dynamodb.Scan", self._before)
        events.register("after-call.dynamodb.Query", self._after)
        events.register("after-call.dynamodb.Scan", self._after)

    def _before(self, params: dict[str, Any], **_: Any) -> None:
        self._index = params.get("IndexName")

    def _after(self, parsed: dict[str, Any], model: Any, **_: Any) -> None:
        self.calls.append((model.name, self._index, parsed["ScannedCount"]))

    def during(self, fn: Callable[[], _T]) -> tuple[_T, list[tuple[str, str | None, int]]]:
        self.calls = []
        return fn(), list(self.calls)


def test_active_listing_reads_only_active_items(dynamo: DynamoDBStore) -> None:
    for i in range(50):
        rec, _ = dynamo.create_cluster(record(name=f"done-{i}", at=i), None, "h")
        finish(dynamo, rec, ClusterStatus.stopped if i % 2 else ClusterStatus.failed)
    active = [
        dynamo.create_cluster(record(name=f"live-{i}", at=100 + i), None, "h")[0] for i in range(5)
    ]
    dynamo.create_cluster(record(owner="u-bob", name="other", at=200), None, "h")
    reads = _Reads(dynamo)

    listed, calls = reads.during(lambda: dynamo.list_clusters("u-alice", active_only=True))
    assert [r.id for r in listed] == [r.id for r in reversed(active)]
    assert [(op, index) for op, index, _ in calls] == [("Query", "active-by-owner")]
    assert sum(scanned for *_, scanned in calls) == 5

    everyone, calls = reads.during(lambda: dynamo.list_clusters(None, active_only=True))
    assert len(everyone) == 6
    assert [(op, index) for op, index, _ in calls] == [("Scan", "active-by-owner")]
    assert sum(scanned for *_, scanned in calls) == 6

    # The same measure sees every finished cluster when they are asked for.
    history, calls = reads.during(lambda: dynamo.list_clusters("u-alice", active_only=False))
    assert len(history) == 55
    assert [(op, index) for op, index, _ in calls] == [("Query", "by-owner")]
    assert sum(scanned for *_, scanned in calls) == 55


def test_stores_with_other_prefixes_do_not_share_tables(
    dynamo: DynamoDBStore, moto_url: str
) -> None:
    rec, _ = dynamo.create_cluster(record(), "key-1", "hash-1")
    with dynamodb_store(moto_url) as other:
        assert other.get_cluster(rec.id) is None
        assert other.list_clusters(None, active_only=False) == []
        assert other.create_cluster(record(), "key-1", "hash-2")[1] is True
    assert dynamo.get_cluster(rec.id) == rec


def test_ttl_attribute_marks_finished_clusters_and_credentials(moto_url: str) -> None:
    now = 1_750_000_000.0
    retention = timedelta(days=7)
    with dynamodb_store(moto_url, finished_retention=retention, clock=lambda: now) as store:
        client = store.connection.client

        def expiry(table: str, key: dict[str, Any]) -> int | None:
            item = client.get_item(TableName=store.table_prefix + table, Key=key)["Item"]
            return int(item["expires_at_epoch"]["N"]) if "expires_at_epoch" in item else None

        live, _ = store.create_cluster(record(), None, "h")
        assert expiry("clusters", {"id": {"S": live.id}}) is None
        finish(store, live, ClusterStatus.failed)
        expected = int(now + retention.total_seconds())
        assert expiry("clusters", {"id": {"S": live.id}}) == expected
        cred = _credential("hash-1", 600)
        store.put_instance_credential(cred)
        expected = int(cred.expires_at.timestamp())
        assert expiry("instance-credentials", {"token_hash": {"S": "hash-1"}}) == expected


def _usage(instance_id: str, ended: datetime | None) -> UsageRecord:
    return UsageRecord(
        instance_id=instance_id,
        cluster_id="c-1",
        owner="u-1",
        team="etl",
        role=InstanceRole.worker,
        vcpus=4,
        started_at=T0,
        ended_at=ended,
        last_seen_at=ended or T0 + timedelta(minutes=5),
        end_source="provider" if ended else None,
    )


def test_usage_records_are_one_per_instance_and_final_once_closed(store: Store) -> None:
    running = _usage("i-1", None)
    assert store.put_usage(running) == running
    assert store.put_usage(running) == running  # idempotent
    seen_later = running.model_copy(update={"last_seen_at": T0 + timedelta(minutes=9)})
    assert store.put_usage(seen_later) == seen_later  # an open record is replaced
    assert store.list_usage() == [seen_later]
    closed = _usage("i-1", T0 + timedelta(hours=1))
    assert store.put_usage(closed) == closed
    # a late pass that still saw it running, or another end, changes nothing
    assert store.put_usage(seen_later) == closed
    assert store.put_usage(_usage("i-1", T0 + timedelta(hours=9))) == closed
    assert store.list_usage() == []  # no open record
    store.put_usage(_usage("i-2", T0 + timedelta(days=40)))
    store.put_usage(_usage("i-3", None))
    listed = store.list_usage(T0 + timedelta(minutes=30))
    assert sorted(r.instance_id for r in listed) == ["i-1", "i-2", "i-3"]
    assert {r.instance_id: r for r in listed}["i-1"] == closed
    later = store.list_usage(T0 + timedelta(days=2))
    assert sorted(r.instance_id for r in later) == ["i-2", "i-3"]


def test_a_month_is_claimed_closed_once(store: Store) -> None:
    assert store.claim_usage_month("2025-02") is True
    assert store.claim_usage_month("2025-02") is False
    assert store.claim_usage_month("2025-03") is True


def test_concurrent_claims_of_a_month_have_one_winner(atomic_store: Store) -> None:
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: atomic_store.claim_usage_month("2025-04"), range(8)))
    assert results.count(True) == 1
