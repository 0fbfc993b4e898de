"""Named software environments on the embedded control plane, as Coiled users use them.

``billow.create_software_environment`` resolves requirements on the client (the client's
Dask core versions and a wheel of this Billow checkout added) and stores revisions of a
name; ``billow.Cluster(software=name)`` runs a revision's spec on every instance, built
by the agent with uv. The server's own environment lacks ``tabulate`` (it has ``six``, a
dependency of moto's, so ``six`` would prove nothing), so a worker importing ``tabulate``
at the pinned version proves it runs the named environment. Environments are
their owner's: another user gets the same 404 as for a missing one. An environment whose
``distributed`` differs from the client's is refused before any record exists.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from typing import Any

import httpx
import pytest
from dask.distributed import Client

import billow
from tests.support.processes import EmbeddedServer

pytestmark = [pytest.mark.e2e]


def billow_cli(
    server: EmbeddedServer, *args: str, token: str | None = None
) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200", "BILLOW_SERVER": server.url}
    env["BILLOW_TOKEN"] = token or server.token
    return subprocess.run(
        [sys.executable, "-m", "billow.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def tabulate_everywhere(client: Client) -> set[str]:
    """``tabulate.__version__`` on every worker and on the scheduler."""
    on_workers = client.run(lambda: __import__("tabulate").__version__)
    on_scheduler = client.run_on_scheduler(lambda: __import__("tabulate").__version__)
    return {*on_workers.values(), on_scheduler}


def pins(env: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {pin["name"]: pin for pin in env["spec"]["packages"]}


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_named_environment_runs_on_the_cluster_and_belongs_to_its_owner(
    embedded_server: EmbeddedServer, api: httpx.Client
) -> None:
    server = dict(server=embedded_server.url, token=embedded_server.token)
    lacking = subprocess.run([sys.executable, "-c", "import tabulate"], capture_output=True)
    assert lacking.returncode != 0, "the server's environment must not have tabulate"

    toolz = metadata.version("toolz")
    wanted = [f"toolz=={toolz}", "tabulate==0.9.0"]
    first = billow.create_software_environment("etl", pip=wanted, show_progress=False, **server)
    assert (first["name"], first["revision"], first["created"]) == ("etl", 1, True)
    pinned = pins(first)
    assert pinned["tabulate"]["version"] == "0.9.0"
    for name in ("dask", "distributed", "cloudpickle", "msgpack", "tornado", "toolz"):
        assert pinned[name]["version"] == metadata.version(name), name
    assert pinned["billow"]["source"] == "wheel"  # this checkout, built and uploaded
    again = billow.create_software_environment("etl", pip=wanted, show_progress=False, **server)
    assert (again["revision"], again["created"]) == (1, False)  # same spec: no new revision

    listed = billow_cli(embedded_server, "env", "list")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    row = next(line for line in listed.stdout.splitlines() if " etl " in f" {line} ")
    assert " 1 " in row and platform.python_version() in row
    shown = billow_cli(embedded_server, "env", "inspect", "etl")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "revision: 1" in shown.stdout
    rows = [[c.strip() for c in line.split("│")[1:-1]] for line in shown.stdout.splitlines()]
    assert ["tabulate", "0.9.0", "index"] in rows
    assert "wheel billow-" in shown.stdout

    with (
        billow.Cluster(n_workers=1, software="etl", show_progress=False, **server) as cluster,
        Client(cluster) as client,
    ):
        assert cluster.record["software_environment"] == "etl:1"
        assert tabulate_everywhere(client) == {"0.9.0"}
        first_id = cluster.cluster_id

    second = billow.create_software_environment(
        "etl", pip=[f"toolz=={toolz}", "tabulate==0.8.10"], show_progress=False, **server
    )
    assert (second["revision"], second["created"]) == (2, True)
    with (
        billow.Cluster(n_workers=1, software="etl", show_progress=False, **server) as cluster,
        Client(cluster) as client,
    ):
        assert cluster.record["software_environment"] == "etl:2"
        assert tabulate_everywhere(client) == {"0.8.10"}
    # The first cluster keeps the revision it started with.
    record = api.get(f"/v1/clusters/{first_id}").json()
    assert record["software_environment"] == "etl:1"
    assert {p["name"]: p["version"] for p in record["request"]["software"]["packages"]}[
        "tabulate"
    ] == "0.9.0"
    older = api.get("/v1/environments/etl", params={"revision": 1}).json()
    assert pins(older)["tabulate"]["version"] == "0.9.0"

    # Another tenant sees nothing: the same 404 as for a name nobody has.
    created = api.post("/v1/users", json={"name": "bob-envs"})
    if embedded_server.multi_tenant:
        another_tenant_sees_nothing(embedded_server, api, created.json()["token"])
    else:  # not root: a second user is refused, see test_single_tenant.py
        assert created.status_code == 409

    deleted = billow_cli(embedded_server, "env", "delete", "etl")
    assert deleted.returncode == 0 and "deleted etl" in deleted.stdout
    assert api.get("/v1/environments/etl").status_code == 404
    gone = billow_cli(embedded_server, "env", "delete", "etl")
    assert gone.returncode == 1 and "no software environment 'etl'" in gone.stdout
    assert api.get(f"/v1/clusters/{first_id}").json()["software_environment"] == "etl:1"


def another_tenant_sees_nothing(
    embedded_server: EmbeddedServer, api: httpx.Client, bob: str
) -> None:
    """The same 404 as for a name nobody has, in the API, the SDK and the CLI."""
    missing = api.get("/v1/environments/nobody-has-this").json()
    with httpx.Client(
        base_url=embedded_server.url, headers={"Authorization": f"Bearer {bob}"}, timeout=30
    ) as other:
        theirs = other.get("/v1/environments/etl")
        assert theirs.status_code == 404
        assert {k: v for k, v in theirs.json().items() if k != "message"} == {
            k: v for k, v in missing.items() if k != "message"
        }
        assert other.get("/v1/environments").json() == {"environments": []}
        assert other.delete("/v1/environments/etl").status_code == 404
        refused = other.post("/v1/clusters", json={"n_workers": 0, "software_environment": "etl"})
        assert refused.status_code == 422 and refused.json()["field"] == "software_environment"
    with pytest.raises(billow.SoftwareEnvironmentNotFound):
        billow.Cluster(
            n_workers=1,
            software="etl",
            server=embedded_server.url,
            token=bob,
            show_progress=False,
        )
    unknown = billow_cli(embedded_server, "env", "inspect", "etl", token=bob)
    assert unknown.returncode == 1 and "no software environment 'etl'" in unknown.stdout
    assert "Traceback" not in unknown.stdout + unknown.stderr


def test_an_environment_skewed_from_the_client_is_refused_before_anything_exists(
    embedded_server: EmbeddedServer, api: httpx.Client
) -> None:
    mine = metadata.version("distributed")
    spec = {
        "python": platform.python_version(),
        "packages": [
            {"name": "billow", "version": "0.1.0"},
            {"name": "dask", "version": metadata.version("dask")},
            {"name": "distributed", "version": "2024.8.0"},
        ],
    }
    assert mine != "2024.8.0"
    made = api.post("/v1/environments/skewed", json={"spec": spec})
    assert made.status_code == 201, made.text
    before = api.get("/v1/clusters").json()
    pids_before = set(embedded_server.instance_pids())

    with pytest.raises(billow.VersionMismatchError) as refusal:
        billow.Cluster(
            n_workers=1,
            software="skewed",
            server=embedded_server.url,
            token=embedded_server.token,
            show_progress=False,
        )
    assert refusal.value.mismatches["distributed"] == (mine, "2024.8.0")
    assert f"distributed: client {mine}, cluster 2024.8.0" in str(refusal.value)
    assert api.get("/v1/clusters").json() == before  # no record
    assert set(embedded_server.instance_pids()) == pids_before  # no process
    assert api.delete("/v1/environments/skewed").status_code == 200


def test_cli_failures_are_one_line(embedded_server: EmbeddedServer, tmp_path: Any) -> None:
    cases = [
        (("env", "inspect", "never-made"), None, "no software environment 'never-made'"),
        (("env", "list"), "bw_not_a_token", "invalid API token"),
        (("env", "create", "Bad_Name", "--pip", "six"), None, "is not an environment name"),
        (("env", "create", "x", "-r", str(tmp_path / "absent.txt")), None, "does not exist"),
    ]
    for args, token, expected in cases:
        proc = billow_cli(embedded_server, *args, token=token)
        out = proc.stdout + proc.stderr
        assert proc.returncode != 0 and expected in " ".join(out.split()), (args, out)
        assert "Traceback" not in out, args
    env = {**os.environ, "COLUMNS": "200", "BILLOW_SERVER": "http://127.0.0.1:9"}
    env["BILLOW_TOKEN"] = "bw_x"
    unreachable = subprocess.run(
        [sys.executable, "-m", "billow.cli", "env", "list"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert unreachable.returncode == 1
    assert "cannot reach the control plane at http://127.0.0.1:9" in unreachable.stdout
    assert "Traceback" not in unreachable.stdout + unreachable.stderr


def test_software_and_package_sync_are_exclusive() -> None:
    with pytest.raises(ValueError, match="software= and package_sync=True are exclusive"):
        billow.Cluster(software="etl", package_sync=True)
