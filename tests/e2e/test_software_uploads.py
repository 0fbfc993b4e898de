"""Wheels of local code reach the embedded object store through pre-signed URLs, and a
cluster that names wheels (or lacks the agent's packages) is refused before anything
starts."""

from __future__ import annotations

import hashlib
import platform

import httpx
import pytest

from tests.support.processes import EmbeddedServer, wait_until

pytestmark = pytest.mark.e2e

WHEEL = b"PK\x03\x04 not really a wheel, but bytes are bytes" * 100


def software(*wheels: tuple[str, bytes]) -> dict:
    packages = [
        {"name": "billow", "version": "0.1.0"},
        {"name": "distributed", "version": "2025.1.0"},
    ]
    for filename, data in wheels:
        name, version = filename.split("-")[:2]
        sha = hashlib.sha256(data).hexdigest()
        packages.append(
            {
                "name": name,
                "version": version,
                "source": "wheel",
                "sha256": sha,
                "filename": filename,
            }
        )
    return {"python": platform.python_version(), "packages": packages}


def test_upload_through_a_signed_url_once(api: httpx.Client) -> None:
    sha = hashlib.sha256(WHEEL).hexdigest()
    files = [{"sha256": sha, "size": len(WHEEL), "filename": "mycode-0.1-py3-none-any.whl"}]
    [first] = api.post("/v1/software/uploads", json={"files": files}).json()["uploads"]
    assert first["present"] is False and first["url"].startswith(f"{api.base_url}/objects/{sha}?")
    url = first["url"]

    assert httpx.put(url, content=WHEEL[:-1] + b"!").status_code == 400  # other bytes
    assert httpx.put(url.replace("signature=", "signature=0"), content=WHEEL).status_code == 403
    assert httpx.put(url.replace("size=", "size=1"), content=WHEEL).status_code == 403
    assert httpx.get(url).status_code == 403  # an upload URL does not read
    assert httpx.put(url, content=WHEEL).status_code == 201

    [again] = api.post("/v1/software/uploads", json={"files": files}).json()["uploads"]
    assert again == {"sha256": sha, "present": True}
    anonymous = httpx.post(f"{api.base_url}/v1/software/uploads", json={"files": files})
    assert anonymous.status_code == 401


def test_a_cluster_naming_a_missing_wheel_is_refused_before_anything_starts(
    api: httpx.Client, embedded_server: EmbeddedServer
) -> None:
    before = api.get("/v1/clusters").json()["clusters"]
    spec = software(("notuploaded-1.0-py3-none-any.whl", b"never sent"))
    answer = api.post("/v1/clusters", json={"n_workers": 1, "software": spec})
    assert answer.status_code == 422
    body = answer.json()
    assert (
        body["field"] == "software"
        and "notuploaded (notuploaded-1.0-py3-none-any.whl)" in (body["message"])
    )
    lacking = {
        "python": platform.python_version(),
        "packages": [{"name": "pandas", "version": "2"}],
    }
    refused = api.post("/v1/clusters", json={"n_workers": 1, "software": lacking}).json()
    assert refused["field"] == "software" and "lacks billow and distributed" in refused["message"]
    assert api.get("/v1/clusters").json()["clusters"] == before  # no record was written


@pytest.mark.parametrize(
    ("packages", "field"),
    [
        ([{"name": "x", "version": "1", "source": "wheel"}], "software.packages.0"),
        ([{"name": "x", "version": "1"}, {"name": "X", "version": "2"}], "software.packages"),
        ([{"name": "bad name!", "version": "1"}], "software.packages.0.name"),
    ],
)
def test_malformed_specs_name_the_field(api: httpx.Client, packages: list, field: str) -> None:
    spec = {"python": platform.python_version(), "packages": packages}
    answer = api.post("/v1/clusters", json={"n_workers": 1, "software": spec})
    assert answer.status_code == 422, answer.text
    assert field in answer.json()["message"], answer.json()


def test_a_failed_environment_build_fails_the_cluster_with_uvs_words(
    api: httpx.Client,
) -> None:
    """The agent builds the spec with uv; a package no index has (billow itself is not on
    PyPI) fails the cluster (never a hang), and the failure carries uv's own message
    naming the package."""
    import distributed

    spec = {
        "python": platform.python_version(),
        "packages": [
            {"name": "billow", "version": "0.1.0"},
            {"name": "distributed", "version": distributed.__version__},
        ],
    }
    created = api.post("/v1/clusters", json={"n_workers": 1, "software": spec})
    assert created.status_code == 201, created.text
    url = f"/v1/clusters/{created.json()['id']}"
    wait_until(lambda: api.get(url).json()["status"] == "failed", 120, "the cluster to fail")
    record = api.get(url).json()
    logs = "\n".join(record["error_logs"])
    assert "could not build the cluster's environment" in logs, logs
    assert "billow==0.1.0" in logs and "not found in the package registry" in logs
