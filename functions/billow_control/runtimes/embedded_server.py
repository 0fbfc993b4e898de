"""``billow server``: run the embedded control plane until SIGINT/SIGTERM."""

from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path

import uvicorn

from ..adapters.local.object_store import ObjectStoreApp
from ..api.app import build_app
from ..core.settings import ControlSettings
from .embedded import EmbeddedRuntime, InstanceOptions, write_login
from .http_proxy import LimitedHttpToolsProtocol, ProxyASGIApp, ServerLimits

log = logging.getLogger("billow.server")


def serve(
    data_dir: Path,
    host: str,
    port: int,
    login_file: Path | None,
    settings: ControlSettings,
    instance_dir: Path | None = None,
    limits: ServerLimits | None = None,
    instances: InstanceOptions | None = None,
) -> None:
    """Bind, start the runtime, write the admin login on first start, serve until stopped.

    ``port=0`` picks a free port; the URL and PID are written to ``<data_dir>/server.json``.
    ``instance_dir``: where instances work (``EmbeddedRuntime.create``).
    ``limits`` bound the size of request heads and the time to read a request;
    ``instances``: the log limit and warm pool of local instances.
    """
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets that declare it, and
    # without it every response waits ~40 ms on the client's delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(512)
    url = f"http://{host}:{sock.getsockname()[1]}"
    settings = settings.model_copy(update={"control_url": url})
    runtime = EmbeddedRuntime.create(data_dir, settings, instance_dir, instances)
    token = runtime.plane.bootstrap_admin()
    if token is not None and login_file is not None:
        write_login(login_file, url, token)
        log.info("created admin token; saved login for %s in %s", url, login_file)
    elif login_file is not None:
        _update_server_url(login_file, url)
    (Path(data_dir) / "server.json").write_text(json.dumps({"url": url, "pid": os.getpid()}))
    app = ObjectStoreApp(runtime.objects, ProxyASGIApp(build_app(lambda: runtime.plane)))
    runtime.start()
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            http=LimitedHttpToolsProtocol.with_limits(limits or ServerLimits()),
            ws="none",  # no WebSocket routes: an upgrade request is a plain request
            log_level="warning",
            lifespan="on",
            timeout_graceful_shutdown=5,
            access_log=False,
        )
    )
    log.info("billow control plane listening on %s (data in %s)", url, data_dir)
    try:
        server.run(sockets=[sock])
    finally:
        runtime.stop()
        (Path(data_dir) / "server.json").unlink(missing_ok=True)


def _update_server_url(login_file: Path, url: str) -> None:
    """Keep the saved login pointing at this server when only its port changed."""
    import yaml

    if not login_file.exists():
        return
    saved = yaml.safe_load(login_file.read_text()) or {}
    billow = saved.get("billow", {})
    if billow.get("token") and billow.get("server") != url:
        write_login(login_file, url, billow["token"])
