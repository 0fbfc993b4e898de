"""Package sync on the embedded control plane: the cluster runs the client's software.

A client virtualenv gets pandas and an editable package that exists on no index; the
server's own environment has neither. ``billow.Cluster(package_sync=True)`` from that
client must give workers the editable package's code and pandas, built by the agent with
uv from the scanned spec (the wheel of the local package travels through the object
store). A second cluster with the same spec reuses the cached environment. A sync that
leaves out ``distributed`` is refused before any record or instance exists. The client
has no bokeh: the sync adds it, and the dashboard link serves Dask's dashboard.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest

from tests.support.processes import ROOT, EmbeddedServer

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CLIENT_SCRIPT = """
import json, sys, time
import billow, dask.dataframe as dd, httpx, pandas as pd
from dask.distributed import Client
import billowtestpkg

results = {}
for round in ("cold", "warm"):
    start = time.monotonic()
    with billow.Cluster(n_workers=2, package_sync=True, show_progress=False) as cluster:
        ready = time.monotonic() - start
        with Client(cluster) as client:
            if round == "cold":  # a worker added later runs the identical environment
                cluster.scale(3)
                client.wait_for_workers(3, timeout=120)
            answers = client.run(billowtestpkg.where_am_i)
            frame = pd.DataFrame({"key": list("abcabcabca"), "value": range(10)})
            grouped = dd.from_pandas(frame, npartitions=3).groupby("key").value.sum()
            results[round] = {
                "ready_seconds": ready,
                "answers": sorted(answers.values()),
                "answer": client.submit(billowtestpkg.answer).result(),
                "groupby": grouped.compute().sort_index().to_dict(),
                "pandas": client.run(lambda: __import__("pandas").__version__),
                "cluster_id": cluster.cluster_id,
                "dashboard": httpx.get(
                    cluster.dashboard_link,
                    verify=cluster.dashboard_ssl_context(),
                    follow_redirects=True,
                    timeout=30,
                ).text,
            }
print("RESULTS " + json.dumps(results))
"""

PACKAGE = {
    "pyproject.toml": """
        [build-system]
        requires = ["setuptools>=64"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "billowtestpkg"
        version = "0.3.1"
    """,
    "billowtestpkg/__init__.py": """
        import sys

        def answer():
            return 42

        def where_am_i():
            return "billowtestpkg on " + sys.prefix.rsplit("/", 2)[-2]
    """,
}


def uv(*args: str, **kwargs: object) -> subprocess.CompletedProcess:
    from uv import find_uv_bin

    return subprocess.run(
        [find_uv_bin(), *args], check=True, capture_output=True, text=True, **kwargs
    )


@pytest.fixture(scope="module")
def client_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A client virtualenv: billow (editable, this checkout), dask.dataframe (pandas and
    pyarrow), and an editable
    package that exists only in a temporary folder."""
    root = tmp_path_factory.mktemp("client")
    package = root / "billowtestpkg"
    for name, text in PACKAGE.items():
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text(textwrap.dedent(text).lstrip())
    venv = root / "venv"
    uv("venv", "--python", sys.executable, str(venv))
    python = venv / "bin" / "python"
    uv(
        "pip",
        "install",
        "--python",
        str(python),
        "-e",
        str(ROOT),
        "dask[dataframe]",
        "-e",
        str(package),
    )
    return python


def run_client(python: Path, server: EmbeddedServer, script: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")} | {
        "BILLOW_SERVER": server.url,
        "BILLOW_TOKEN": server.token,
    }
    return subprocess.run(
        [str(python), "-c", script],
        capture_output=True,
        text=True,
        env=env,
        cwd=python.parent,
        timeout=600,
    )


def test_workers_run_the_clients_editable_package_and_pandas(
    client_python: Path, embedded_server: EmbeddedServer
) -> None:
    server_python = sys.executable
    for module in ("pandas", "billowtestpkg"):
        missing = subprocess.run([server_python, "-c", f"import {module}"], capture_output=True)
        assert missing.returncode != 0, f"the server's environment must not have {module}"

    proc = run_client(client_python, embedded_server, CLIENT_SCRIPT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULTS "))
    results = json.loads(line.removeprefix("RESULTS "))
    for round in ("cold", "warm"):
        got = results[round]
        assert got["answer"] == 42
        assert got["groupby"] == {"a": 18, "b": 12, "c": 15}
        workers = 3 if round == "cold" else 2  # the cold cluster was scaled to 3
        assert len(got["answers"]) == workers
        assert all("billowtestpkg on envs" in a for a in got["answers"])
        assert len(set(got["pandas"].values())) == 1
        assert "Dask" in got["dashboard"] and "bokeh" in got["dashboard"].lower()
    # The second cluster used the cached environment: the same spec, the same directory
    # (in the shared cache, or in the admin's own when the server isolates tenants).
    [envs] = embedded_server.env_caches()
    built = [p for p in envs.iterdir() if (p / ".complete").exists()]
    assert len(built) == 1, sorted(p.name for p in envs.iterdir())


def test_a_sync_without_distributed_is_refused_before_launch(
    client_python: Path, embedded_server: EmbeddedServer
) -> None:
    headers = {"Authorization": f"Bearer {embedded_server.token}"}
    before = httpx.get(f"{embedded_server.url}/v1/clusters", headers=headers).json()
    pids_before = set(embedded_server.instance_pids())
    script = textwrap.dedent(
        """
        import billow
        try:
            billow.Cluster(n_workers=1, package_sync=True, package_sync_ignore=["distributed"],
                           show_progress=False)
        except billow.VersionMismatchError as e:
            print("REFUSED", e)
        """
    )
    proc = run_client(client_python, embedded_server, script)
    assert "REFUSED" in proc.stdout, proc.stdout + proc.stderr
    refusal = proc.stdout.split("REFUSED", 1)[1]
    assert "distributed" in refusal and "absent" in refusal
    after = httpx.get(f"{embedded_server.url}/v1/clusters", headers=headers).json()
    assert after == before  # no record
    assert set(embedded_server.instance_pids()) == pids_before  # no process
