"""A cluster's ``secrets``: validated like ``environ``, sealed by the secret box before the
record exists, handed to instances only by the bootstrap exchange, never in a record, an
event, an answer or an Idempotency-Key's hash.

On a real SQLite store and Fernet box, an in-memory provider, and both event buses'
real serializations (JSON lines, EventBridge detail).
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from billow_control.adapters.aws.eventbridge_bus import event_detail
from billow_control.adapters.clock import ManualClock
from billow_control.adapters.local.event_log import JsonLinesEventBus
from billow_control.adapters.local.fernet_box import FernetSecretBox
from billow_control.adapters.local.sqlite_store import SqliteStore
from billow_control.core.agents import ENVIRON_SECRETS
from billow_control.core.errors import Conflict, describe_validation_errors
from billow_control.core.idempotency import request_hash
from billow_control.core.models import (
    MAX_SECRETS,
    ClusterRecord,
    ClusterRequest,
    InstanceRole,
    User,
)
from billow_control.core.ports import Ports
from billow_control.core.service import ControlPlane
from billow_control.core.settings import ControlSettings
from tests.unit.fakes import MemoryProvider, RecordingOrchestrator

pytestmark = pytest.mark.unit


class RecordingBus:
    """Writes events as the embedded bus does and keeps what each bus would carry."""

    def __init__(self, path: Path) -> None:
        self.lines = JsonLinesEventBus(path)
        self.carried: list[str] = []

    def publish(self, kind: str, cluster: ClusterRecord, detail: dict | None = None) -> None:
        self.lines.publish(kind, cluster, detail)
        self.carried.append(cluster.model_dump_json())
        self.carried.append(json.dumps(event_detail("test", kind, cluster, detail), default=str))


class World:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.clock = ManualClock()
        self.store = SqliteStore(tmp / "billow.db")
        self.provider = MemoryProvider(self.clock)
        self.bus = RecordingBus(tmp / "events.jsonl")
        self.box = FernetSecretBox.from_key_file(tmp / "secret.key")
        self.plane = ControlPlane(
            Ports(
                store=self.store,
                provider=self.provider,
                orchestrator=RecordingOrchestrator(),
                secrets=self.box,
                clock=self.clock,
                events=self.bus,
                settings=ControlSettings(start_timeout=600),
            )
        )
        self.user = User(id="u-1", name="ann")
        self.store.put_user(self.user)

    def token_of(self, cluster_id: str, role: InstanceRole) -> str:
        spec = next(
            s for s in self.provider.specs.values() if s.cluster_id == cluster_id and s.role == role
        )
        return spec.environment["BILLOW_INSTANCE_TOKEN"]

    def files(self) -> bytes:
        """Every byte the control plane wrote under its directory (database, WAL, events)."""
        return b"".join(p.read_bytes() for p in sorted(self.tmp.rglob("*")) if p.is_file())


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


def canary() -> str:
    return "canary-" + secrets.token_hex(16)


def test_values_reach_the_bootstrap_exchange_and_nothing_else(world: World) -> None:
    value, plain = canary(), canary()
    request = ClusterRequest(
        n_workers=1, environ={"PLAIN": plain}, secrets={"TOKEN": value, "API_KEY": "k"}
    )
    cluster, created = world.plane.create_cluster(world.user, request, "key-1")
    assert created
    assert cluster["secrets"] == ["API_KEY", "TOKEN"]  # names only, sorted
    assert cluster["request"]["environ"] == {"PLAIN": plain} and "secrets" not in cluster["request"]
    record = world.store.get_cluster(cluster["id"])
    assert record is not None and record.secrets == ["API_KEY", "TOKEN"]
    assert record.request.secrets == {} and value not in repr(record)

    sealed = world.store.get_secret(cluster["id"], ENVIRON_SECRETS)
    assert sealed is not None and value.encode() not in sealed
    assert json.loads(world.box.decrypt(sealed)) == {"TOKEN": value, "API_KEY": "k"}

    world.plane.lifecycle.reconcile(cluster["id"])  # launches: provisioning event
    spec_envs = [json.dumps(s.environment) for s in world.provider.specs.values()]
    assert spec_envs and not any(value in e for e in spec_envs)  # not in instance launch data
    config = world.plane.agents.bootstrap(world.token_of(cluster["id"], InstanceRole.scheduler))
    assert config["environ"] == {"PLAIN": plain, "TOKEN": value, "API_KEY": "k"}

    world.plane.stop_cluster(world.user, cluster["id"])
    for _ in range(3):
        world.plane.lifecycle.reconcile(cluster["id"])
    answers = [
        world.plane.get_cluster(world.user, cluster["id"]),
        world.plane.list_clusters(world.user, active_only=False),
    ]
    assert world.bus.carried and not any(value in c for c in world.bus.carried)
    assert value not in json.dumps(answers)
    assert value.encode() not in world.files()
    assert plain.encode() in world.files()  # the check above would see a plain value


def test_a_cluster_without_secrets_reads_no_sealed_blob(world: World) -> None:
    cluster, _ = world.plane.create_cluster(world.user, ClusterRequest(n_workers=0), None)
    assert cluster["secrets"] == []
    assert world.store.get_secret(cluster["id"], ENVIRON_SECRETS) is None
    world.plane.lifecycle.reconcile(cluster["id"])
    config = world.plane.agents.bootstrap(world.token_of(cluster["id"], InstanceRole.scheduler))
    assert config["environ"] == {}


def test_a_repeat_with_other_secret_values_is_another_request(world: World) -> None:
    first = ClusterRequest(n_workers=1, secrets={"TOKEN": "one"})
    cluster, created = world.plane.create_cluster(world.user, first, "same-key")
    again, created_again = world.plane.create_cluster(
        world.user, ClusterRequest(n_workers=1, secrets={"TOKEN": "one"}), "same-key"
    )
    assert created and not created_again and again["id"] == cluster["id"]
    with pytest.raises(Conflict, match="Idempotency-Key"):
        world.plane.create_cluster(
            world.user, ClusterRequest(n_workers=1, secrets={"TOKEN": "two"}), "same-key"
        )


def test_the_request_hash_counts_secret_values_without_holding_them() -> None:
    request = ClusterRequest(secrets={"PASSWORD": "hunter2"})
    digest = request_hash(request, salt="u-1\0key")
    assert digest == request_hash(ClusterRequest(secrets={"PASSWORD": "hunter2"}), "u-1\0key")
    assert digest != request_hash(ClusterRequest(secrets={"PASSWORD": "hunter3"}), "u-1\0key")
    # Salted by owner and key: the same secret under another key hashes differently.
    assert digest != request_hash(request, salt="u-2\0key")
    # Requests without secrets hash as before secrets existed.
    assert request_hash(ClusterRequest(), "a") == request_hash(ClusterRequest(), "b")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"environ": {"A": "1"}, "secrets": {"A": "2"}}, "'A' in both environ and secrets"),
        ({"secrets": {"": "x"}}, "not a variable name"),
        ({"secrets": {"A=B": "x"}}, "not a variable name"),
        ({"environ": {"A=B": "x"}}, "not a variable name"),
        ({"secrets": {"A": "x\0y"}}, "NUL"),
        ({"secrets": {f"K{i}": "x" for i in range(MAX_SECRETS + 1)}}, "at most 64 items"),
        ({"secrets": {"BIG": "x" * (64 * 1024)}}, "at most 65536"),
        ({"secrets": {"A": 5}}, "valid string"),
    ],
)
def test_invalid_secrets_name_the_field_and_never_the_value(
    fields: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError) as e:
        ClusterRequest(**fields)
    text, details = describe_validation_errors(list(e.value.errors()))
    field = "environ" if "secrets" not in fields else "secrets"
    assert text.startswith(field) and message in text
    assert "x\0y" not in text and "xxxx" not in text and "x\0y" not in str(e.value)
    assert all(d["field"].split(".")[0] == field for d in details)


def test_secrets_are_never_serialized_or_shown() -> None:
    request = ClusterRequest(secrets={"TOKEN": "hunter2"})
    assert request.secrets == {"TOKEN": "hunter2"}
    assert "hunter2" not in request.model_dump_json() + repr(request) + str(request.model_dump())
    schema = ClusterRequest.model_json_schema()["properties"]["secrets"]
    assert schema["maxProperties"] == MAX_SECRETS  # the API accepts it as input
