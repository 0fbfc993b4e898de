"""A hostile tenant against a real ``billow server``: replays of what once answered 500,
the server's own limits, and schemathesis generating requests for every route.

The server here is the ``embedded_server`` kind (``EmbeddedServer``), one of its own for
this module: what the fuzz creates (users, environments) stays out of the session's
server, and its read timeout is short enough to test (``request-read-timeout``).

The fuzz never starts a cluster. One cluster is created first, with the Idempotency-Key
``HELD_KEY``, and stopped at once; every fuzzed create whose key is valid (or absent) is
sent with that key, so a create that passes authentication, validation and the software
checks meets the key's other request: 409, nothing written, nothing launched.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import hypothesis
import pytest
import schemathesis
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.support.processes import EmbeddedServer

pytestmark = [pytest.mark.e2e]

READ_TIMEOUT = 3.0
HELD = "fuzz-held"
HELD_KEY = "fuzz-held-key"
MIN_FUZZ_CASES = 1000
FUZZ_EXAMPLES = int(os.environ.get("BILLOW_FUZZ_EXAMPLES", "20"))  # per route and mode


@pytest.fixture(scope="module")
def hostile_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    env = {"DASK_BILLOW__REQUEST_READ_TIMEOUT": f"{READ_TIMEOUT}s"}
    server = EmbeddedServer(tmp_path_factory.mktemp("hostile"), env=env).start()
    try:
        yield server
    finally:
        server.stop()
        server.kill_instances()


@pytest.fixture(scope="module")
def admin(hostile_server: EmbeddedServer) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=hostile_server.url,
        headers={"Authorization": f"Bearer {hostile_server.token}"},
        timeout=30,
    ) as client:
        yield client


def clusters(admin: httpx.Client) -> int:
    return len(admin.get("/v1/clusters").json()["clusters"])


def raw_request(server: EmbeddedServer, data: bytes, timeout: float = 10.0) -> bytes:
    """Send ``data`` on a fresh connection; what came back before the server closed it."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as s:
        with contextlib.suppress(OSError):  # the server may refuse (close) before the end
            s.sendall(data)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except (ConnectionResetError, TimeoutError):
            pass
        return out


def status_of(raw: bytes) -> tuple[int, dict]:
    """Status and JSON body of a raw ``Connection: close`` HTTP/1.1 response."""
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if b"transfer-encoding: chunked" in head.lower():
        size, _, rest = body.partition(b"\r\n")
        body = rest[: int(size, 16)]
    return status, json.loads(body) if body else {}


# -- replays of the 500s the fuzzing tenant found ----------------------------------------


def test_replay_non_utf8_body_is_400(hostile_server: EmbeddedServer, admin: httpx.Client) -> None:
    before = clusters(admin)
    r = admin.post(
        "/v1/clusters",
        content=b'{"name": "\xff\xfe"}',
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "bad-request"
    assert clusters(admin) == before


@pytest.mark.parametrize("content_type", ["text/plain", "application/xml", "*/*"])
def test_replay_content_types_are_415(admin: httpx.Client, content_type: str) -> None:
    before = clusters(admin)
    r = admin.post(
        "/v1/clusters", content=b'{"n_workers": 0}', headers={"content-type": content_type}
    )
    assert r.status_code == 415, r.text
    assert r.json()["error"] == "unsupported-media-type"
    assert clusters(admin) == before


def test_replay_json_2000_levels_deep_is_400(admin: httpx.Client) -> None:
    for deep in ("[" * 2000 + "]" * 2000, '{"tags": ' * 2000 + "0" + "}" * 2000):
        r = admin.post("/v1/clusters", content=deep, headers={"content-type": "application/json"})
        assert r.status_code == 400, r.text
        assert r.json()["error"] == "bad-request" and "nested" in r.json()["message"]


def test_replay_worker_memory_1e309_is_422_naming_the_field(admin: httpx.Client) -> None:
    before = clusters(admin)
    r = admin.post("/v1/clusters", json={"worker_memory": "1e309", "n_workers": 0})
    assert r.status_code == 422, r.text
    error = r.json()
    assert error["error"] == "invalid" and "worker_memory" in error["message"]
    assert [d["field"] for d in error["detail"]] == ["worker_memory"]
    assert clusters(admin) == before


MALFORMED = {
    "request line": b"GET /v1/he alth HTTP/1.1\r\nHost: x\r\n\r\n",
    "non-ASCII path": b"GET /v1/\xff HTTP/1.1\r\nHost: x\r\n\r\n",
    "bad chunk": b"POST /v1/clusters HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"zz\r\n",
    "two lengths": b"POST /v1/users HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n"
    b"Content-Length: 2\r\n\r\n{}",
    "header without colon": b"GET /v1/health HTTP/1.1\r\nHost x\r\n\r\n",
    "TLS hello": b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03",
}


@pytest.mark.parametrize("data", MALFORMED.values(), ids=MALFORMED.keys())
def test_replay_malformed_http_is_a_json_400(hostile_server: EmbeddedServer, data: bytes) -> None:
    status, body = status_of(raw_request(hostile_server, data))
    assert status == 400
    assert body["error"] == "bad-request"


def test_replay_malformed_object_url_is_403_not_500(hostile_server: EmbeddedServer) -> None:
    """A signed URL whose signature is not ASCII (hmac.compare_digest raised in the app)."""
    sha = "a" * 64
    r = httpx.get(f"{hostile_server.url}/objects/{sha}?expires=1&signature=%C3%A9")
    assert r.status_code == 403, r.text
    r = httpx.put(
        f"{hostile_server.url}/objects/{sha}?expires=1&size=1&signature=\u00e9", content=b"x"
    )
    assert r.status_code == 403, r.text


def test_replay_websocket_upgrade_is_a_plain_request(hostile_server: EmbeddedServer) -> None:
    headers = {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    }
    r = httpx.get(f"{hostile_server.url}/v1/health", headers=headers)
    assert r.status_code == 200


# -- what else the tenant found ----------------------------------------------------------


def test_anonymous_multipart_is_401_and_creates_nothing(
    hostile_server: EmbeddedServer, admin: httpx.Client
) -> None:
    before = clusters(admin)
    form = {"files": {"n_workers": (None, "1")}}
    r = httpx.post(f"{hostile_server.url}/v1/clusters", **form)  # type: ignore[arg-type]
    assert r.status_code == 401 and r.json()["error"] == "unauthorized"
    r = admin.post("/v1/clusters", **form)  # type: ignore[arg-type]
    assert r.status_code == 415 and r.json()["error"] == "unsupported-media-type"
    assert clusters(admin) == before


def test_anonymous_invalid_body_is_401_naming_no_field(hostile_server: EmbeddedServer) -> None:
    r = httpx.post(f"{hostile_server.url}/v1/clusters", json={"n_workers": -1, "bogus": 1})
    assert r.status_code == 401
    assert set(r.json()) == {"error", "message"} and "n_workers" not in r.text


def test_wrong_method_is_405_with_allow(hostile_server: EmbeddedServer) -> None:
    r = httpx.delete(f"{hostile_server.url}/v1/clusters")
    assert r.status_code == 405 and r.headers["allow"] == "GET, POST"
    assert r.json()["error"] == "method-not-allowed"


def test_duplicate_user_name_is_409(admin: httpx.Client) -> None:
    assert admin.post("/v1/users", json={"name": "twin"}).status_code == 201
    r = admin.post("/v1/users", json={"name": "twin"})
    assert r.status_code == 409 and r.json()["field"] == "name"


def test_headers_under_64_kib_are_served(hostile_server: EmbeddedServer) -> None:
    r = httpx.get(f"{hostile_server.url}/v1/health", headers={"X-Big": "a" * 60_000})
    assert r.status_code == 200


def test_headers_over_64_kib_are_431(hostile_server: EmbeddedServer) -> None:
    big = b"GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n"
    status, body = status_of(raw_request(hostile_server, big))
    assert status == 431 and body["error"] == "headers-too-large"


def test_a_head_over_64_kib_in_many_reads_is_431(hostile_server: EmbeddedServer) -> None:
    """Each read far below the limit, all of them above it."""
    with socket.create_connection(("127.0.0.1", hostile_server.port), timeout=10) as s:
        with contextlib.suppress(OSError):  # refused (and closed) before the last header
            s.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n")
            for i in range(20):
                s.sendall(f"X-H{i}: ".encode() + b"a" * 4000 + b"\r\n")
                time.sleep(0.01)
            s.sendall(b"\r\n")
        answer = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := s.recv(65536):
                answer += chunk
    status, body = status_of(answer)
    assert status == 431 and body["error"] == "headers-too-large"


def test_a_16_mib_header_is_never_served(hostile_server: EmbeddedServer) -> None:
    huge = b"GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (16 << 20) + b"\r\n\r\n"
    answer = raw_request(hostile_server, huge)
    assert not answer or status_of(answer)[0] == 431  # or reset before the client read it
    assert httpx.get(f"{hostile_server.url}/v1/health").status_code == 200


@pytest.mark.parametrize(
    "partial",
    [
        b"GET /v1/health HTTP/1.1\r\nHost: x\r\n",  # headers never finished
        b"POST /v1/users HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100\r\n\r\n{",  # body never finished
    ],
    ids=["slow headers", "slow body"],
)
def test_a_slow_client_gets_408_after_the_read_timeout(
    hostile_server: EmbeddedServer, partial: bytes
) -> None:
    started = time.monotonic()
    status, body = status_of(raw_request(hostile_server, partial, timeout=READ_TIMEOUT * 4))
    waited = time.monotonic() - started
    assert status == 408 and body["error"] == "request-timeout"
    assert READ_TIMEOUT - 0.5 < waited < READ_TIMEOUT + 2


def test_a_silent_connection_is_closed_after_the_read_timeout(
    hostile_server: EmbeddedServer,
) -> None:
    started = time.monotonic()
    assert raw_request(hostile_server, b"", timeout=READ_TIMEOUT * 4) == b""
    assert time.monotonic() - started < READ_TIMEOUT + 2


def test_the_server_survived(hostile_server: EmbeddedServer) -> None:
    assert httpx.get(f"{hostile_server.url}/v1/health").status_code == 200
    log = Path(hostile_server.log_path).read_text()
    assert "Exception in ASGI application" not in log
    assert "unhandled error" not in log


# -- schemathesis over every route -------------------------------------------------------

# Robustness and conformance of responses, and refusal of what the schema forbids. Not
# positive_data_acceptance: a request the schema allows may still break a rule no JSON
# Schema can state (memory sizes, durations, packages an environment must have): 422.
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
STATUSES: Counter[int] = Counter()
CASES: Counter[str] = Counter()


@pytest.fixture(scope="module")
def held_key(admin: httpx.Client) -> str:
    """``HELD_KEY``, used by a cluster that is stopped at once (see the module's doc)."""
    headers = {"Idempotency-Key": HELD_KEY}
    cluster = admin.post("/v1/clusters", json={"name": HELD, "n_workers": 0}, headers=headers)
    assert cluster.status_code == 201, cluster.text
    assert admin.post(f"/v1/clusters/{cluster.json()['id']}/stop").status_code == 200
    return HELD_KEY


def fuzz_route(server: EmbeddedServer, operation: Any, mode: GenerationMode, examples: int) -> None:
    """``examples`` cases of ``mode`` for one operation: each sent with the admin's token,
    counted, and validated against the schema (all of schemathesis' checks)."""

    @hypothesis.settings(
        max_examples=examples,
        derandomize=True,  # the same cases on every run: `make test` stays reproducible
        deadline=None,
        database=None,
        suppress_health_check=list(hypothesis.HealthCheck),
    )
    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    def run(case: schemathesis.Case) -> None:
        label = f"{case.operation.method.upper()} {case.operation.path}"
        if label == "POST /v1/clusters":
            key = (case.headers or {}).get("idempotency-key")
            if key is None or (isinstance(key, str) and 0 < len(key) <= 128):
                # A create that passes every check meets the held key: 409, no launch.
                case.headers = {**(case.headers or {}), "idempotency-key": HELD_KEY}
        response = case.call(headers={"Authorization": f"Bearer {server.token}"}, timeout=30)
        CASES[label] += 1
        STATUSES[response.status_code] += 1
        assert not (label == "POST /v1/clusters" and response.status_code == 201), case.body
        case.validate_response(response, checks=CHECKS)

    run()


def test_fuzz_every_route(
    hostile_server: EmbeddedServer, admin: httpx.Client, held_key: str
) -> None:
    """Schemathesis, from the server's own /v1/openapi.json, on every route: positive and
    negative cases; no 5xx, and every response as the schema says."""
    schema = schemathesis.openapi.from_url(f"{hostile_server.url}/v1/openapi.json")
    # The token is the admin's, sent with every case: never generated, never mutated.
    schema.config.generation.update(with_security_parameters=False)
    failures, routes = [], set()
    for result in schema.get_all_operations():
        operation = result.ok()
        routes.add(operation.label)
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                fuzz_route(hostile_server, operation, mode, FUZZ_EXAMPLES)
            except hypothesis.errors.Unsatisfiable:
                if mode is GenerationMode.POSITIVE:
                    raise
                # The schema leaves nothing to get wrong (no parameters, or only free text):
                # no negative case exists.
            except (Exception, BaseExceptionGroup) as e:  # every route runs; all are reported
                failures.append(f"{operation.label} ({mode.value}): {e}")
    print(f"\nfuzz: {sum(CASES.values())} cases; statuses {dict(sorted(STATUSES.items()))}")
    print("fuzz cases per route: " + ", ".join(f"{k} {v}" for k, v in sorted(CASES.items())))
    assert not failures, "\n\n".join(failures)
    assert sum(CASES.values()) >= MIN_FUZZ_CASES
    assert set(CASES) == routes
    assert not [status for status in STATUSES if status >= 500]
    assert [c["name"] for c in admin.get("/v1/clusters").json()["clusters"]] == [HELD]
