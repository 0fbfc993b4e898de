"""``python -m billow.agent``: the one bootstrap every provider runs on an instance.

Reads ``BILLOW_CONTROL_URL``, ``BILLOW_INSTANCE_TOKEN`` and ``BILLOW_ROLE`` from the
environment, exchanges the one-time token for the instance's certificates and config,
then runs a TLS-only Dask scheduler (with the Billow plugin) or worker until it closes.
Exits non-zero with a message on stderr when bootstrap is refused.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import signal
import sys
import time
from typing import Any

import httpx

log = logging.getLogger("billow.agent")
BOOTSTRAP_DEADLINE = 900.0


def bootstrap(control_url: str, token: str, deadline: float = BOOTSTRAP_DEADLINE) -> dict[str, Any]:
    """POST the instance token; retry while the control plane is unreachable or says
    "not ready" (a worker waiting for its scheduler), up to ``deadline`` seconds."""
    url = control_url.rstrip("/") + "/v1/agent/bootstrap"
    give_up = time.monotonic() + deadline
    delay = 0.05
    with httpx.Client(timeout=10) as http:
        while True:
            try:
                response = http.post(url, headers={"Authorization": f"Bearer {token}"})
                if response.status_code == 200:
                    return response.json()
                body = response.json()
                if body.get("error") != "not-ready":
                    raise SystemExit(f"billow agent: bootstrap refused: {body.get('message')}")
            except httpx.TransportError as e:
                log.warning("control plane unreachable (%s); retrying", e)
            if time.monotonic() > give_up:
                raise SystemExit("billow agent: gave up waiting for the control plane")
            time.sleep(delay)
            delay = min(delay * 1.5, 1.0)


def security_for(config: dict[str, Any]) -> Any:
    from distributed.security import Security

    role = config["role"]
    return Security(
        require_encryption=True,
        tls_ca_file=config["ca_cert"],
        **{f"tls_{role}_cert": config["cert"], f"tls_{role}_key": config["key"]},
    )


async def run_scheduler(config: dict[str, Any], host: str) -> None:
    from distributed import Scheduler

    from .plugin import BillowSchedulerPlugin

    plugin = BillowSchedulerPlugin(
        os.environ["BILLOW_CONTROL_URL"],
        config["cluster_id"],
        config["cluster_token"],
        interval=float(config["heartbeat_interval"]),
        analytics=config.get("analytics", "minimal"),
        gpu_threshold=float(config.get("gpu_threshold", 0.1)),
    )
    scheduler = Scheduler(
        host=host,
        port=int(os.environ.get("BILLOW_SCHEDULER_PORT", "0")),
        protocol="tls",
        security=security_for(config),
        dashboard_address=f"{host}:{os.environ.get('BILLOW_DASHBOARD_PORT', '0')}",
        idle_timeout=None,
    )
    _close_on_signals(scheduler)
    async with scheduler:
        await scheduler.register_scheduler_plugin(plugin, idempotent=True)
        log.info("scheduler listening at %s", scheduler.address)
        await scheduler.finished()


async def run_worker(config: dict[str, Any], host: str) -> None:
    from distributed import Worker

    worker = Worker(
        config["scheduler_address"],
        security=security_for(config),
        name=config["name"],
        nthreads=int(config["nthreads"]),
        memory_limit=config["memory_limit"],
        host=host,
        dashboard=False,
    )
    _close_on_signals(worker)
    async with worker:
        log.info("worker %s connected to %s", config["name"], config["scheduler_address"])
        await worker.finished()


def _close_on_signals(server: Any) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: asyncio.ensure_future(server.close()))


def _record_exit_code(code: int) -> None:
    directory = os.environ.get("BILLOW_INSTANCE_DIR")
    if directory:
        try:
            with open(os.path.join(directory, "exit_code"), "w") as f:
                f.write(str(code))
        except OSError:
            pass


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    exit_code = 1
    atexit.register(lambda: _record_exit_code(exit_code))
    try:
        url = os.environ["BILLOW_CONTROL_URL"]
        token = os.environ["BILLOW_INSTANCE_TOKEN"]
    except KeyError as e:
        print(f"billow agent: missing environment variable {e.args[0]}", file=sys.stderr)
        return 2
    # Import distributed while waiting for the control plane: it is the slow part.
    import distributed  # noqa: F401

    config = bootstrap(url, token)
    os.environ.pop("BILLOW_INSTANCE_TOKEN", None)  # one-time: keep it out of user code
    os.environ.update(config.get("environ", {}))
    import dask.config

    dask.config.refresh()  # the cluster's DASK_* environ configures Dask on the instance
    host = os.environ.get("BILLOW_HOST", "127.0.0.1")
    runner = run_scheduler if config["role"] == "scheduler" else run_worker
    asyncio.run(runner(config, host))
    exit_code = 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
