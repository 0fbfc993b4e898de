"""A tenant's code cannot reach the control plane's secrets or another tenant's instances.

``billow server`` runs as root, with secrets planted where an operator's shell would have
them: ``BILLOW_TOKEN``, ``BILLOW_SERVER``, ``AWS_SECRET_ACCESS_KEY`` and a ``DASK_*``
variable in its environment, and the admin login (``billow.token``) in the default dask
config of its ``HOME``. The admin starts a cluster; the admin creates a second user, bob,
through ``POST /v1/users``; bob starts a cluster and runs a probe on his scheduler
(``client.run_on_scheduler``) and on his worker (``client.run``). The probe tries to find:

- the admin token or any planted secret in ``dask.config`` and in its environment, and
  any server variable there (``BILLOW_TOKEN``, ``BILLOW_SERVER``, ``AWS_*``, ``HOME``);
- readable contents of the admin's login file, the data dir (listing), ``secret.key``,
  ``objects.key``, ``billow.db``, the provider's ``instances.db``, ``events.jsonl``;
- readable contents of the admin's instance directories (listing, home, scratch), of the
  admin's environment cache, of the instances' workspace (listing), and of the instance
  logs the server keeps;
- any Billow token (``bw_``, ``bwc_``, ``bwi_``) or planted secret in ``/proc/*/environ``
  and ``/proc/*/cmdline`` of every process on the machine.

It must find none, run as a user that is neither root nor the admin's instance user, and
have a ``HOME`` and working directory of its own. The server's root directory (data dir,
operator home) is one every user can traverse, so that only Billow's own file modes
(data dir 0700, login file 0600, instance directories 0700) stand in the way.

Needs root (as in CI): without it the server is single-tenant and refuses bob (tested in
tests/integration/test_single_tenant.py).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import httpx
import pytest
from dask.distributed import Client

import billow
from tests.support.processes import EmbeddedServer
from tests.support.tenants import shared_python

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CANARIES = {
    "BILLOW_TOKEN": "bw_canary-token-of-the-operators-shell-0000000000000000000",
    "BILLOW_SERVER": "http://canary-server.invalid",
    "AWS_SECRET_ACCESS_KEY": "canary-aws-secret-access-key-00000",
    "DASK_BILLOW__CANARY": "canary-dask-variable-of-the-server",
}
SERVER_VARIABLES = ("BILLOW_TOKEN", "BILLOW_SERVER", "BILLOW_INSTANCE_TOKEN", "DASK_BILLOW__CANARY")


def look_for_secrets(needles: list[str], paths: list[str]) -> dict[str, Any]:
    """Runs on bob's instances: everything it could reach that it must not."""
    import json
    import os
    import re

    import dask.config

    found: list[str] = []
    token = re.compile(r"bw[ci]?_[A-Za-z0-9_-]{43}")

    def leaks(text: str) -> list[str]:
        return [n[:12] for n in needles if n in text] + token.findall(text)

    config = json.dumps(dask.config.config, default=str)
    if leaks(config) or dask.config.get("billow.token", None):
        found.append(
            f"dask.config: {leaks(config)} billow.token={dask.config.get('billow.token', None)}"
        )
    for key, value in os.environ.items():
        if leaks(value) or key in SERVER_VARIABLES or key.startswith("AWS_"):
            found.append(f"environment variable {key}")
    for path in paths:
        try:
            if os.path.isdir(path):
                os.listdir(path)
            else:
                with open(path, "rb") as f:
                    f.read(1)
            found.append(f"readable: {path}")
        except OSError:
            pass
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        for name in ("environ", "cmdline"):
            try:
                with open(f"/proc/{pid}/{name}", "rb") as f:
                    text = f.read().decode(errors="replace")
            except OSError:
                continue
            if leaks(text):
                found.append(f"/proc/{pid}/{name}: {leaks(text)}")
    return {
        "found": found,
        "uid": os.getuid(),
        "home": os.environ.get("HOME"),
        "cwd": os.getcwd(),
        "environ": sorted(os.environ),
    }


cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture
def server() -> Iterator[EmbeddedServer]:
    """A root server whose data dir and operator home any user could reach (pytest's
    ``tmp_path`` is 0700 root, which would hide them whatever Billow does)."""
    if os.geteuid() != 0:
        pytest.skip("tenant isolation needs `billow server` to run as root (as in CI)")
    if shared_python() is None:
        pytest.skip("no interpreter of this Python that unprivileged users can run")
    root = Path(tempfile.mkdtemp(prefix="billow-isolation-"))
    root.chmod(0o755)
    home = root / "operator-home"
    home.mkdir(mode=0o755)
    login = home / ".config" / "dask" / "billow-login.yaml"
    srv = EmbeddedServer(root, env={"HOME": str(home), **CANARIES}, login_file=login)
    srv.env.pop("DASK_CONFIG", None)  # the login file is in the default dask config dir
    srv.start()
    try:
        assert srv.multi_tenant, srv.log_path.read_text()[-3000:]
        yield srv
    finally:
        srv.stop()
        srv.kill_instances()
        shutil.rmtree(root, ignore_errors=True)


def uid_of(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(x for x in status.splitlines() if x.startswith("Uid:")).split()[1])


def test_a_tenant_finds_no_secret_of_the_server_or_of_another_tenant(
    server: EmbeddedServer,
) -> None:
    admin = server.token
    with httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {admin}"}, timeout=30
    ) as api:
        made = api.post("/v1/users", json={"name": "bob"})
        assert made.status_code == 201, made.text
        bob = made.json()["token"]
    # credentials=None: what each client forwards of its own cloud identity (moto's keys
    # here) is theirs to see on their workers; this looks for the server's secrets.
    kwargs = dict(server=server.url, n_workers=1, show_progress=False, credentials=None)
    with billow.Cluster(name="admins", token=admin, **kwargs) as theirs:
        admin_uids = {uid_of(p) for p in server.live_instance_pids(theirs.cluster_id)}
        with (
            Client(theirs) as admin_client,
            billow.Cluster(name="bobs", token=bob, **kwargs) as mine,
            Client(mine) as client,
        ):
            # Something of the admin's in its scratch directory, as a working cluster has.
            admin_client.run(lambda: None)
            data = server.data_dir
            assert server.instance_dir is not None
            paths = [
                str(server.login_file),
                str(data),
                *(str(data / n) for n in ("secret.key", "objects.key", "billow.db")),
                str(data / "events.jsonl"),
                str(data / "instances"),
                str(data / "instances" / "instances.db"),
            ]
            for directory in server.instance_dirs(theirs.cluster_id):
                paths += [str(directory), str(directory / "scratch"), str(directory / "home")]
            for log in server.instance_logs(theirs.cluster_id):
                paths.append(str(log))
            # The instances' workspace (0711: no listing) and the admin's env cache.
            paths += [str(server.instance_dir), str(server.instance_dir / "users")]
            for name in server.instance_users(theirs.cluster_id):
                paths.append(str(server.instance_dir / "users" / name))
            missing = [p for p in paths if not Path(p).exists()]
            needles = [admin, *CANARIES.values()]
            on_scheduler = client.run_on_scheduler(look_for_secrets, needles, paths)
            on_workers = list(client.run(look_for_secrets, needles, paths).values())
            bob_uids = {uid_of(p) for p in server.live_instance_pids(mine.cluster_id)}

    for report in [on_scheduler, *on_workers]:
        assert report["found"] == [], report
        assert report["uid"] != 0
        assert report["home"] and report["home"].startswith(report["cwd"]), report
        assert "HOME" in report["environ"]
    assert len(admin_uids) == 1 and 0 not in admin_uids, admin_uids
    assert bob_uids == {r["uid"] for r in [on_scheduler, *on_workers]}
    assert bob_uids.isdisjoint(admin_uids)
    assert not missing, f"the probe looked for paths that do not exist: {missing}"
