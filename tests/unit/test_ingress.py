"""Who may reach a cluster (``allow_ingress_from``) and which scheduler address a client
uses: the request model, the route that resolves "me", and the SDK's choice."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import dask.config
import pytest
from pydantic import ValidationError

from billow.cluster import reachable_address
from billow_control.core import ingress
from billow_control.core.errors import Invalid
from billow_control.core.models import ClusterRequest
from billow_control.runtimes.http_proxy import LambdaContextStub, http_api_event
from tests.unit.test_api_guard import Api

pytestmark = pytest.mark.unit


def create(api: Api, body: dict[str, Any], source_ip: str) -> tuple[int, Any]:
    headers = {"authorization": f"Bearer {api.token}", "content-type": "application/json"}
    event = http_api_event(
        "POST", "/v1/clusters", "", headers, json.dumps(body).encode(), source_ip
    )
    out = api.app.resolve(event, LambdaContextStub("test"))  # type: ignore[arg-type]
    return out["statusCode"], json.loads(out["body"])


@pytest.mark.parametrize(
    ("asked", "source", "stored"),
    [
        (None, "198.51.100.7", ["198.51.100.7/32"]),  # the default is "me"
        ("me", "2001:db8::5", ["2001:db8::5/128"]),
        (["me", "203.0.113.0/24"], "198.51.100.7", ["198.51.100.7/32", "203.0.113.0/24"]),
        (["10.1.2.3/8"], "198.51.100.7", ["10.0.0.0/8"]),  # normalised, "me" not added
        (["0.0.0.0/0"], "198.51.100.7", ["0.0.0.0/0"]),  # open only when asked
    ],
)
def test_the_record_holds_the_requested_blocks_with_me_resolved(
    tmp_path: Path, asked: Any, source: str, stored: list[str]
) -> None:
    api = Api(tmp_path)
    body: dict[str, Any] = {"n_workers": 1}
    if asked is not None:
        body["allow_ingress_from"] = asked
    status, cluster = create(api, body, source)
    assert status == 201, cluster
    assert cluster["request"]["allow_ingress_from"] == stored
    record = api.store.get_cluster(cluster["id"])
    assert record is not None and ingress.cidrs(record.request) == stored


@pytest.mark.parametrize(
    "asked",
    [
        ["10.0.0.0/33"],
        ["everyone"],
        [],
        ["10.0.0.1/32"] * 2 + [f"10.0.{i}.0/24" for i in range(20)],
    ],
)
def test_a_bad_block_is_a_422_naming_the_field_and_creates_nothing(
    tmp_path: Path, asked: list[str]
) -> None:
    api = Api(tmp_path)
    status, body = create(api, {"n_workers": 1, "allow_ingress_from": asked}, "198.51.100.7")
    assert status == 422, body
    assert body["detail"][0]["field"].startswith("allow_ingress_from")
    assert api.clusters() == 0


def test_me_without_a_known_source_is_refused() -> None:
    with pytest.raises(Invalid) as refused:
        ingress.with_requester(ClusterRequest(), None)
    assert refused.value.field == "allow_ingress_from"
    given = ClusterRequest(allow_ingress_from=["203.0.113.0/24"])
    assert ingress.with_requester(given, None) is given  # no "me": nothing to resolve
    with pytest.raises(ValidationError, match="neither a CIDR block"):
        ClusterRequest(allow_ingress_from=["203.0.113.0/24", "nope"])
    # A record written before "me" was resolved opens nothing of its own.
    assert ingress.cidrs(ClusterRequest()) == []


def test_clients_use_the_public_address_unless_private_only() -> None:
    found = {
        "scheduler_address": "tls://10.0.0.5:8786",
        "scheduler_public_address": "tls://198.51.100.9:8786",
        "dashboard_address": "10.0.0.5:8787",
    }
    assert reachable_address(found, "scheduler") == "tls://198.51.100.9:8786"
    assert reachable_address(found, "dashboard") == "10.0.0.5:8787"  # no public one
    with dask.config.set({"billow.network.private-only": True}):
        assert reachable_address(found, "scheduler") == "tls://10.0.0.5:8786"
    assert reachable_address({}, "scheduler") is None
