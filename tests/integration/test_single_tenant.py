"""A server that cannot isolate tenants from one another refuses a second user.

The policy is the core's (``ControlSettings.multi_tenant``, checked by
``ControlPlane.add_user``); the embedded runtime turns it off when its provider cannot run
instances as one unprivileged OS user per owner (the server is not root).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

import httpx
import pytest

from billow_control.adapters.clock import ManualClock
from billow_control.adapters.local.fernet_box import FernetSecretBox
from billow_control.adapters.local.sqlite_store import SqliteStore
from billow_control.adapters.local.tenant_users import isolation_problem
from billow_control.api.app import build_app
from billow_control.core.errors import Conflict
from billow_control.core.ports import Ports
from billow_control.core.service import ControlPlane
from billow_control.core.settings import ControlSettings
from billow_control.runtimes import embedded
from billow_control.runtimes.embedded import EmbeddedRuntime
from billow_control.runtimes.http_proxy import ProxyASGIApp
from tests.unit.fakes import MemoryBus, MemoryProvider, RecordingOrchestrator

pytestmark = pytest.mark.integration


def post_user(runtime: EmbeddedRuntime, token: str, name: str) -> httpx.Response:
    app = ProxyASGIApp(build_app(lambda: runtime.plane))

    async def post() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://billow") as http:
            return await http.post(
                "/v1/users", json={"name": name}, headers={"Authorization": f"Bearer {token}"}
            )

    return asyncio.run(post())


def test_a_server_that_cannot_isolate_refuses_a_second_user(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)  # what the provider sees when not root
    runtime = EmbeddedRuntime.create(tmp_path / "data", ControlSettings())
    assert not runtime.provider.isolates_tenants
    assert runtime.ports.settings.multi_tenant is False
    token = runtime.plane.bootstrap_admin()
    assert token is not None

    refused = post_user(runtime, token, "bob")
    assert refused.status_code == 409, refused.text
    body = refused.json()
    assert body["error"] == "conflict"
    assert "single-tenant" in body["message"]
    assert "as root" in body["message"] and "one server per user" in body["message"]
    assert runtime.ports.store.count_users() == 1


def plane_over(tmp: Path, settings: ControlSettings) -> ControlPlane:
    clock = ManualClock()
    return ControlPlane(
        Ports(
            store=SqliteStore(tmp / "billow.db"),
            provider=MemoryProvider(clock),
            orchestrator=RecordingOrchestrator(),
            secrets=FernetSecretBox.from_key_file(tmp / "secret.key"),
            clock=clock,
            events=MemoryBus(),
            settings=settings,
        )
    )


@pytest.mark.parametrize("multi_tenant", [False, True])
def test_the_core_refuses_a_second_user_only_when_single_tenant(
    tmp_path: Path, multi_tenant: bool
) -> None:
    plane = plane_over(tmp_path, ControlSettings(multi_tenant=multi_tenant))
    token = plane.bootstrap_admin()
    assert token is not None
    admin = plane.authenticate(token)
    if multi_tenant:
        assert plane.add_user(admin, "bob")["token"].startswith("bw_")
        assert plane.ports.store.count_users() == 2
    else:
        with pytest.raises(Conflict, match="single-tenant"):
            plane.add_user(admin, "bob")
        assert plane.ports.store.count_users() == 1


@pytest.mark.skipif(os.geteuid() != 0, reason="only root could isolate")
def test_a_root_server_whose_agent_others_cannot_run_is_single_tenant(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    hidden = tmp_path / "private"  # like a pyenv under /root: 0700 root
    hidden.mkdir(mode=0o700)
    python = hidden / "python"
    python.symlink_to(sys.executable)
    workspace = Path(tempfile.mkdtemp(prefix="billow-test-instances-"))
    try:
        problem = isolation_problem(str(python), {"PATH": "/usr/bin:/bin"}, workspace)
        assert problem is not None and "cannot run" in problem and str(python) in problem

        monkeypatch.setattr(sys, "executable", str(python))
        with caplog.at_level(logging.WARNING):
            runtime = EmbeddedRuntime.create(tmp_path / "data", ControlSettings(), workspace)
        assert not runtime.provider.isolates_tenants
        assert runtime.ports.settings.multi_tenant is False
        assert runtime.provider.workspace == workspace  # as asked, run as the server
        assert "single-tenant" in caplog.text and str(python) in caplog.text

        # The default instance dir is not left behind, empty, when isolation fails.
        default = workspace / "default"
        monkeypatch.setattr(embedded, "ISOLATED_INSTANCE_DIR", default)
        again = EmbeddedRuntime.create(tmp_path / "data2", ControlSettings())
        assert not default.exists()
        assert again.provider.workspace == tmp_path / "data2" / "instances"
    finally:
        shutil.rmtree(workspace, ignore_errors=True)
