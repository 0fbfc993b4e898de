"""The route table in process: who is asked first, and the status of every refusal.

Each request goes through ``build_app`` exactly as Lambda and the embedded server send it
(an API Gateway HTTP API event), over a real SQLite store and in-memory fakes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from billow_control.adapters.clock import ManualClock
from billow_control.adapters.local.fernet_box import FernetSecretBox
from billow_control.adapters.local.sqlite_store import SqliteStore
from billow_control.api.app import build_app
from billow_control.core.ports import Ports
from billow_control.core.service import ControlPlane
from billow_control.core.settings import ControlSettings
from billow_control.runtimes.http_proxy import LambdaContextStub, http_api_event
from tests.unit.fakes import MemoryBus, MemoryProvider, RecordingOrchestrator

pytestmark = pytest.mark.unit

JSON = {"content-type": "application/json"}


class Api:
    """``build_app`` over a fresh control plane, called with API Gateway events."""

    def __init__(self, tmp: Path) -> None:
        clock = ManualClock()
        self.store = SqliteStore(tmp / "db.sqlite")
        self.orchestrator = RecordingOrchestrator()
        self.plane = ControlPlane(
            Ports(
                store=self.store,
                provider=MemoryProvider(clock),
                orchestrator=self.orchestrator,
                secrets=FernetSecretBox.from_key_file(tmp / "key"),
                clock=clock,
                events=MemoryBus(),
                settings=ControlSettings(),
            )
        )
        token = self.plane.bootstrap_admin()
        assert token is not None
        self.token = token
        self.app = build_app(lambda: self.plane)

    def call(
        self,
        method: str,
        path: str,
        body: bytes | str | dict | None = None,
        headers: dict[str, str] | None = None,
        auth: bool = True,
        query: str = "",
    ) -> tuple[int, dict[str, str], Any]:
        hdrs = {k.lower(): v for k, v in (headers or {}).items()}
        if isinstance(body, dict):
            body = json.dumps(body)
            hdrs.setdefault("content-type", "application/json")
        raw = body.encode() if isinstance(body, str) else (body or b"")
        if auth:
            hdrs.setdefault("authorization", f"Bearer {self.token}")
        event = http_api_event(method, path, query, hdrs, raw, "127.0.0.1")
        out = self.app.resolve(event, LambdaContextStub("test"))  # type: ignore[arg-type]
        text = out.get("body") or ""
        return out["statusCode"], out.get("headers", {}), json.loads(text) if text else None

    def clusters(self) -> int:
        return len(self.store.list_clusters(None, active_only=False))

    def admin_id(self) -> str:
        return self.plane.authenticate(self.token).id


@pytest.fixture
def api(tmp_path: Path) -> Api:
    return Api(tmp_path)


def assert_error(body: Any, code: str) -> None:
    """Every error body has the one shape: ``error``, ``message``, maybe ``field``."""
    assert isinstance(body, dict) and body["error"] == code, body
    assert isinstance(body["message"], str) and body["message"]
    assert set(body) <= {"error", "message", "field", "detail", "retry_after"}


# -- authentication comes first -------------------------------------------------------

USER_ROUTES = [
    ("GET", "/v1/whoami"),
    ("POST", "/v1/users"),
    ("POST", "/v1/clusters"),
    ("GET", "/v1/clusters"),
    ("GET", "/v1/clusters/c-0000000000000000"),
    ("POST", "/v1/clusters/c-0000000000000000/scale"),
    ("POST", "/v1/clusters/c-0000000000000000/stop"),
    ("GET", "/v1/clusters/c-0000000000000000/credentials"),
    ("GET", "/v1/clusters/c-0000000000000000/logs"),
    ("POST", "/v1/software/uploads"),
    ("GET", "/v1/environments"),
    ("POST", "/v1/environments/etl"),
    ("GET", "/v1/environments/etl"),
    ("DELETE", "/v1/environments/etl"),
    ("GET", "/v1/tokens"),
    ("POST", "/v1/tokens"),
    ("DELETE", "/v1/tokens/t-0000000000000000"),
    ("POST", "/v1/admin/users"),
    ("GET", "/v1/admin/users"),
    ("POST", "/v1/admin/users/bob/disable"),
    ("POST", "/v1/admin/users/bob/enable"),
    ("POST", "/v1/admin/users/bob/tokens"),
    ("GET", "/v1/admin/teams"),
    ("POST", "/v1/admin/teams"),
    ("GET", "/v1/admin/teams/etl/members"),
    ("PUT", "/v1/admin/users/bob/limits"),
    ("PUT", "/v1/admin/teams/etl/limits"),
    ("GET", "/v1/usage"),
]

BAD_BODIES: list[tuple[str, bytes, dict[str, str]]] = [
    ("invalid fields", b'{"n_workers": -1, "name": 7}', JSON),
    (
        "multipart",
        b"--x\r\nContent-Disposition: form-data; name=a\r\n\r\n1\r\n--x--\r\n",
        {"content-type": "multipart/form-data; boundary=x"},
    ),
    ("text", b"n_workers=1", {"content-type": "text/plain"}),
    ("not utf-8", b'{"name": "\xff"}', JSON),
    ("deep", b"[" * 2000 + b"]" * 2000, JSON),
    ("malformed", b"{not json", JSON),
]


@pytest.mark.parametrize(("method", "path"), USER_ROUTES)
@pytest.mark.parametrize(("label", "body", "headers"), BAD_BODIES, ids=[b[0] for b in BAD_BODIES])
@pytest.mark.parametrize("token", [None, "Bearer bw_wrong"])
def test_anonymous_callers_get_401_whatever_the_body(
    api: Api,
    method: str,
    path: str,
    label: str,
    body: bytes,
    headers: dict[str, str],
    token: str | None,
) -> None:
    headers = dict(headers) | ({"authorization": token} if token else {})
    status, _, error = api.call(method, path, body, headers, auth=False, query="lines=x")
    assert status == 401, (label, error)
    assert_error(error, "unauthorized")
    assert "detail" not in error and "field" not in error  # nothing about the request
    assert api.clusters() == 0


def test_multipart_body_creates_no_cluster(api: Api) -> None:
    """``extra="forbid"`` holds whatever the encoding: a form is not an empty request."""
    body = b"--x\r\nContent-Disposition: form-data; name=n_wokers\r\n\r\n1\r\n--x--\r\n"
    status, _, error = api.call(
        "POST", "/v1/clusters", body, {"content-type": "multipart/form-data; boundary=x"}
    )
    assert status == 415
    assert_error(error, "unsupported-media-type")
    assert api.clusters() == 0


def test_public_routes_need_no_token(api: Api) -> None:
    assert api.call("GET", "/v1/health", auth=False)[0] == 200
    status, _, schema = api.call("GET", "/v1/openapi.json", auth=False)
    assert status == 200 and "/v1/clusters" in schema["paths"]


def test_agent_routes_keep_their_own_tokens(api: Api) -> None:
    for path in ("/v1/agent/kit", "/v1/agent/bootstrap"):
        status, _, error = api.call("POST", path, headers={"authorization": f"Bearer {api.token}"})
        assert status == 401, error  # an API token is not an instance token
        assert "instance token" in error["message"]
    status, _, error = api.call(
        "POST", "/v1/clusters/c-0000000000000000/heartbeat", {"scheduler_address": "tls://x:1"}
    )
    assert status == 401 and "cluster token" in error["message"]


def test_routes_get_the_authenticated_user(api: Api) -> None:
    status, _, me = api.call("GET", "/v1/whoami")
    assert status == 200 and me["name"] == "admin" and me["is_admin"] is True


# -- bodies ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "application/xml",
        "*/*",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "multipart/form-data",
        "application/json; charset=latin-1",
        "application/jsonx",
        "",
    ],
)
def test_a_body_that_is_not_json_is_415(api: Api, content_type: str) -> None:
    headers = {"content-type": content_type} if content_type else {}
    status, _, error = api.call("POST", "/v1/clusters", b'{"n_workers": 0}', headers)
    assert status == 415, error
    assert_error(error, "unsupported-media-type")
    assert "application/json" in error["message"]
    assert api.clusters() == 0


def test_a_body_route_refuses_a_form_even_when_it_is_empty(api: Api) -> None:
    status, _, error = api.call("POST", "/v1/users", b"", {"content-type": "multipart/form-data"})
    assert status == 415, error


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "Application/JSON",
        "application/json; charset=utf-8",
        'application/json;charset="UTF-8"',
    ],
)
def test_json_with_an_optional_utf8_charset_is_accepted(api: Api, content_type: str) -> None:
    status, _, body = api.call(
        "POST", "/v1/users", b'{"name": "bob"}', {"content-type": content_type}
    )
    assert status == 201, body


def test_a_route_without_a_body_ignores_an_empty_form(api: Api) -> None:
    """The instance bootstrap script posts ``b""`` with urllib's form content type."""
    status, _, error = api.call(
        "POST",
        "/v1/agent/kit",
        b"",
        {"content-type": "application/x-www-form-urlencoded", "authorization": "Bearer bwi_x"},
        auth=False,
    )
    assert status == 401 and "instance token" in error["message"]


def test_a_body_that_is_not_utf8_is_400(api: Api) -> None:
    status, _, error = api.call("POST", "/v1/clusters", b'{"name": "\xff\xfe"}', JSON)
    assert status == 400, error
    assert_error(error, "bad-request")
    assert "UTF-8" in error["message"]


@pytest.mark.parametrize("depth", [65, 2000, 100_000])
def test_json_nested_too_deeply_is_400(api: Api, depth: int) -> None:
    for body in ("[" * depth + "]" * depth, '{"tags": ' * depth + "1" + "}" * depth):
        status, _, error = api.call("POST", "/v1/clusters", body, JSON)
        assert status == 400, error
        assert_error(error, "bad-request")
        assert "nested" in error["message"]


def test_json_nested_within_the_limit_reaches_validation(api: Api) -> None:
    body = '{"tags": {"a": ' + "[" * 60 + "]" * 60 + "}}"
    status, _, error = api.call("POST", "/v1/clusters", body, JSON)
    assert status == 422 and error["detail"][0]["field"].startswith("tags"), error


def test_brackets_inside_strings_do_not_count_as_nesting(api: Api) -> None:
    body = json.dumps({"name": "X!", "tags": {"k": "[" * 5000 + '\\"{' * 100}})
    status, _, error = api.call("POST", "/v1/clusters", body, JSON)
    assert status == 422 and "name" in error["message"], error


@pytest.mark.parametrize(
    "body", ["{not json", '{"n_workers": 1', '{"n_workers": NaN}', '{"a": Infinity}', "[1,]"]
)
def test_malformed_json_is_400(api: Api, body: str) -> None:
    status, _, error = api.call("POST", "/v1/clusters", body, JSON)
    assert status == 400, error
    assert_error(error, "bad-request")
    assert "not valid JSON" in error["message"], error


@pytest.mark.parametrize("number", ["1e309", "-1e400", "1" * 5000])
def test_json_numbers_out_of_range_are_422(api: Api, number: str) -> None:
    status, _, error = api.call("POST", "/v1/clusters", f'{{"n_workers": {number}}}', JSON)
    assert status == 422, error
    assert_error(error, "invalid")


@pytest.mark.parametrize("escape", ["\\ud800", "\\udc00x", "a\\ud83d"])
def test_half_a_surrogate_pair_is_400(api: Api, escape: str) -> None:
    status, _, error = api.call("POST", "/v1/clusters", f'{{"tags": {{"k": "{escape}"}}}}', JSON)
    assert status == 400, error
    assert_error(error, "bad-request")


def test_whole_surrogate_pairs_are_text(api: Api) -> None:
    status, _, error = api.call("POST", "/v1/users", '{"name": "\\ud83d\\ude00"}', JSON)
    assert status == 422, error
    assert error["detail"][0]["field"] == "name"  # the pattern refused it: it was read


def test_a_whole_number_with_a_fraction_is_an_integer(api: Api) -> None:
    status, _, cluster = api.call(
        "POST", "/v1/clusters", '{"n_workers": 2.0, "worker_cpu": 1e0}', JSON
    )
    assert status == 201, cluster
    assert cluster["request"]["n_workers"] == 2 and cluster["request"]["worker_cpu"] == 1
    status, _, error = api.call("POST", "/v1/clusters", '{"n_workers": 2.5}', JSON)
    assert status == 422 and "n_workers" in error["message"]


@pytest.mark.parametrize("memory", ["1e309", "inf", "nan", "-inf", "1e30 GiB", "9" * 400])
def test_memory_out_of_range_is_422_naming_the_field(api: Api, memory: str) -> None:
    status, _, error = api.call("POST", "/v1/clusters", {"worker_memory": memory}, JSON)
    assert status == 422, error
    assert_error(error, "invalid")
    assert "worker_memory" in error["message"]
    assert api.clusters() == 0


def test_an_unknown_query_parameter_is_422_naming_it(api: Api) -> None:
    status, _, error = api.call("GET", "/v1/clusters", query="activ=true")
    assert status == 422, error
    assert_error(error, "invalid")
    assert error["field"] == "activ" and "active, name" in error["message"]
    assert api.call("GET", "/v1/clusters", query="active=true&name=x")[0] == 200
    assert api.call("GET", "/v1/whoami", query="x=1")[0] == 422


# -- methods ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("DELETE", "/v1/clusters", "GET, POST"),
        ("PUT", "/v1/clusters/c-0000000000000000", "GET"),
        ("HEAD", "/v1/whoami", "GET"),
        ("GET", "/v1/clusters/c-0000000000000000/stop", "POST"),
        ("PATCH", "/v1/environments/etl", "DELETE, GET, POST"),
        ("POST", "/v1/health", "GET"),
    ],
)
def test_a_known_path_with_another_method_is_405_with_allow(
    api: Api, method: str, path: str, allowed: str
) -> None:
    status, headers, error = api.call(method, path, auth=False)
    assert status == 405, error
    assert headers["Allow"] == allowed
    if method != "HEAD":
        assert_error(error, "method-not-allowed")


def test_an_unknown_path_is_404(api: Api) -> None:
    status, _, error = api.call("GET", "/v1/nope", auth=False)
    assert status == 404
    assert_error(error, "not-found")


# -- users -----------------------------------------------------------------------------


def test_user_names_are_unique(api: Api) -> None:
    assert api.call("POST", "/v1/users", {"name": "carol"})[0] == 201
    status, _, error = api.call("POST", "/v1/users", {"name": "carol"})
    assert status == 409, error
    assert_error(error, "conflict")
    assert error["field"] == "name"
    status, _, error = api.call("POST", "/v1/users", {"name": "admin"})
    assert status == 409 and error["field"] == "name"
    assert api.store.count_users() == 2


@pytest.mark.parametrize("body", ['[{"n_workers": 1, "name": "arr"}]', "[{}]", '"x"', "3", "null"])
@pytest.mark.parametrize("path", ["/v1/clusters", "/v1/tokens"])
def test_a_body_that_is_not_an_object_is_422_and_creates_nothing(
    api: Api, path: str, body: str
) -> None:
    """Every body of the API is a JSON object; an array holding one was taken for it."""
    clusters, tokens = api.clusters(), len(api.store.list_api_tokens(api.admin_id()))
    status, _, error = api.call("POST", path, body, JSON)
    assert status == 422, error
    assert_error(error, "invalid")
    assert error["field"] == "body" or error["detail"][0]["field"] == "body", error
    assert api.clusters() == clusters
    assert len(api.store.list_api_tokens(api.admin_id())) == tokens
