"""``python -m billow.agent``: the one bootstrap every provider runs on an instance.

Reads ``BILLOW_CONTROL_URL`` and ``BILLOW_ROLE`` from the environment and the one-time
instance token from the pipe named by ``BILLOW_INSTANCE_TOKEN_FD`` (local processes: the
token never appears in ``/proc/<pid>/environ``) or from ``BILLOW_INSTANCE_TOKEN`` (EC2
user data, on the tenant's own machine), removing both variables before anything else
runs; exchanges the token for the instance's certificates and config, then runs a
TLS-only Dask scheduler (with the Billow plugin) or worker until it closes.

When the cluster has software of its own (package sync, a named environment), the agent
first builds or reuses that environment (``billow.software.environment``, keyed by the
spec's hash under ``BILLOW_ENV_CACHE``), then execs ``python -m billow.agent --config
FILE`` from it: the second stage reads the config from a 0600 file it deletes at once, so
certificates never appear on a command line or in the environment. Exits non-zero with
a message on stderr when bootstrap is refused or the environment cannot be built (the
message, with the resolver's own words, becomes the cluster's failure logs).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import logging
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from .instance_http import Answer, request

log = logging.getLogger("billow.agent")
BOOTSTRAP_DEADLINE = 900.0
TOKEN_VARIABLE = "BILLOW_INSTANCE_TOKEN"
TOKEN_FD_VARIABLE = "BILLOW_INSTANCE_TOKEN_FD"


def take_instance_token(environ: Any = os.environ) -> str | None:
    """The one-time instance token, with ``BILLOW_INSTANCE_TOKEN_FD`` and
    ``BILLOW_INSTANCE_TOKEN`` removed from ``environ`` (so from every child's too).

    Read to its end (and closed) from the descriptor the first names if set, else the
    value of the second; ``None`` if neither is set. Raises ``OSError`` if the descriptor
    cannot be read, ``ValueError`` if it is not a number.
    """
    fd_text = environ.pop(TOKEN_FD_VARIABLE, None)
    value = environ.pop(TOKEN_VARIABLE, None)
    if fd_text:
        fd = int(fd_text)
        chunks = []
        try:
            while chunk := os.read(fd, 4096):
                chunks.append(chunk)
        finally:
            os.close(fd)
        value = b"".join(chunks).decode()
    return value.strip() if value and value.strip() else None


def await_assignment(stream: Any = None) -> str | None:
    """A pooled agent (``--pooled``, started by the embedded server's warm pool): import
    what any role runs, say so on ``BILLOW_POOL_READY_FD``, then wait for one line of
    JSON on standard input and become that instance: its working directory, its OS user
    (the server runs as root when it isolates tenants: the agent drops to the user
    before it reads anything of the cluster), its environment, and its one-time token,
    which it returns. ``None``: the pool closed this agent's input (exit quietly)."""
    import distributed  # noqa: F401
    from distributed import Scheduler, Worker  # noqa: F401

    from .plugin import BillowSchedulerPlugin  # noqa: F401

    with contextlib.suppress(ImportError):  # the scheduler's dashboard, when installed
        import distributed.dashboard.scheduler  # noqa: F401
    preload_in_background().join()  # and what a first task imports
    ready = os.environ.pop("BILLOW_POOL_READY_FD", None)
    if ready:
        os.write(int(ready), b"warm\n")
        os.close(int(ready))
    log.info("pooled agent warm; waiting for an instance")
    line = (stream or sys.stdin.buffer).readline()
    if not line:
        return None
    assignment = json.loads(line)
    os.chdir(assignment["workdir"])
    if assignment.get("uid") is not None:
        os.setgroups([])
        os.setgid(assignment["gid"])
        os.setuid(assignment["uid"])
        _dumpable_again()
    os.environ.clear()
    os.environ.update(assignment["environ"])
    tempfile.tempdir = None  # TMPDIR is the instance's now
    return assignment.get("token")


def _dumpable_again() -> None:
    """After ``setuid`` Linux makes a process undumpable: its ``/proc/<pid>`` entries stay
    root's, and Dask's system monitor could not count its own open files. A process
    started as the user is dumpable; make this one the same."""
    import ctypes

    pr_set_dumpable = 4
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_dumpable, 1, 0, 0, 0)


def bootstrap(control_url: str, token: str, deadline: float = BOOTSTRAP_DEADLINE) -> dict[str, Any]:
    """POST the instance token; retry while the control plane is unreachable or says
    "not ready" (a worker waiting for its scheduler: as often as its ``retry_after``
    says) or answers 429/5xx, up to ``deadline`` seconds. Raises ``SystemExit`` with the
    control plane's message when it refuses."""
    url = control_url.rstrip("/") + "/v1/agent/bootstrap"
    give_up = time.monotonic() + deadline
    delay, cap = 0.05, 1.0
    while True:
        try:
            answer = request("POST", url, headers={"Authorization": f"Bearer {token}"})
        except OSError as e:  # refused, reset, timed out
            log.warning("control plane unreachable (%s); retrying", e)
        else:
            body = _json_object(answer)
            if answer.status == 200:
                return body
            if answer.status == 429 or answer.status >= 500:  # a gateway's bad moment
                log.warning("control plane answered HTTP %d; retrying", answer.status)
            elif body.get("error") != "not-ready":
                message = body.get("message") or f"HTTP {answer.status}"
                raise SystemExit(f"billow agent: bootstrap refused: {message}")
            else:  # back off from a quarter of what the control plane asks, up to it
                cap = float(body.get("retry_after") or 1.0)
                delay = max(delay, cap / 4)
        if time.monotonic() > give_up:
            raise SystemExit("billow agent: gave up waiting for the control plane")
        time.sleep(delay)
        delay = min(delay * 1.5, cap)


def _json_object(answer: Answer) -> dict[str, Any]:
    """An answer's JSON object; empty when it has none (a proxy's HTML page)."""
    try:
        body = answer.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


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

    from .imds import instance_addresses
    from .plugin import BillowSchedulerPlugin

    # On EC2 the scheduler binds every interface; workers reach it at the private
    # address and clients outside the VPC at the public one (both from IMDSv2).
    addresses = instance_addresses(os.environ.get("BILLOW_IMDS_ENDPOINT"))
    dashboard_token = config.get("dashboard_token")
    if dashboard_token:  # HTTPS with the cluster's certificate, and the link's token
        import dask.config

        from .dashboard import serve_over_tls

        dask.config.set(serve_over_tls(config["cert"], config["key"]))

    plugin = BillowSchedulerPlugin(
        os.environ["BILLOW_CONTROL_URL"],
        config["cluster_id"],
        config["cluster_token"],
        interval=float(config["heartbeat_interval"]),
        analytics=config.get("analytics", "minimal"),
        gpu_threshold=float(config.get("gpu_threshold", 0.1)),
        private_host=addresses.private,
        public_host=addresses.public,
    )
    from .dashboard import skip_bokeh_route_dump

    skip_bokeh_route_dump()
    scheduler = Scheduler(
        host=host,
        port=int(os.environ.get("BILLOW_SCHEDULER_PORT", "0")),
        protocol="tls",
        security=security_for(config),
        dashboard_address=f"{host}:{os.environ.get('BILLOW_DASHBOARD_PORT', '0')}",
        idle_timeout=None,
    )
    if dashboard_token:
        from .dashboard import require_token

        require_token(scheduler, dashboard_token, config["cluster_id"])
    _close_on_signals(scheduler)
    async with scheduler:
        await scheduler.register_scheduler_plugin(plugin, idempotent=True)
        log.info("scheduler listening at %s", scheduler.address)
        await scheduler.finished()


async def run_worker(config: dict[str, Any], host: str) -> None:
    from distributed import Worker
    from distributed.worker import DEFAULT_METRICS

    from .gpu import worker_metrics

    preload_in_background(PRELOAD_FIRST).join()
    # Told its scheduler's address before the scheduler listens (a pooled one, see
    # ``port_reservations``), the worker starts at once and Dask retries until it does.
    worker = Worker(
        config["scheduler_address"],
        security=security_for(config),
        name=config["name"],
        nthreads=int(config["nthreads"]),
        memory_limit=config["memory_limit"],
        host=host,
        dashboard=False,
        # This machine's GPUs (nvidia-ml-py), reported to the scheduler plugin.
        metrics={**DEFAULT_METRICS, **worker_metrics()},
    )
    _close_on_signals(worker)
    async with worker:
        log.info("worker %s connected to %s", config["name"], config["scheduler_address"])
        preload_in_background(PRELOAD_LATER)
        endpoint = os.environ.get("BILLOW_IMDS_ENDPOINT")
        watch = None
        if endpoint:  # on EC2: a spot interruption notice retires this worker gracefully
            from .spot import watch_for_interruption

            interval = float(os.environ.get("BILLOW_SPOT_POLL_INTERVAL", "5"))
            watch = asyncio.create_task(watch_for_interruption(worker, endpoint, interval))
        await worker.finished()
        if watch is not None:
            watch.cancel()


# What a first task usually imports: numpy, and Dask's collections. LocalCluster's workers
# have numpy and dask.array already (multiprocessing's spawn re-imports the client's
# __main__ module and with it the client's imports): a worker imports those before it
# connects, as they do, and the rest in the background once it runs (an import there
# holds the GIL against a first task, so only what array work does not need). Only what
# the environment has.
PRELOAD_FIRST = ("numpy", "dask.array")
PRELOAD_LATER = ("pandas", "dask.dataframe")
PRELOAD = PRELOAD_FIRST + PRELOAD_LATER


def preload_in_background(modules: tuple[str, ...] = PRELOAD) -> threading.Thread:
    """Import ``modules`` (those whose top-level package is installed) in a daemon
    thread. A task that imports one meanwhile waits for the same import, never redoes it."""
    import importlib
    import importlib.util

    def run() -> None:
        started = time.monotonic()
        done = []
        for name in modules:
            if importlib.util.find_spec(name.split(".")[0]) is None:
                continue
            try:
                importlib.import_module(name)
                done.append(name)
            except Exception as e:  # a broken optional package must not stop the agent
                log.warning("preloading %s failed: %s", name, e)
        log.info("preloaded %s in %.2f s", ", ".join(done) or "nothing", time.monotonic() - started)

    thread = threading.Thread(target=run, name="billow-preload", daemon=True)
    thread.start()
    return thread


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


# Variables that would make the cluster's environment import another one's packages.
FOREIGN_PYTHON_ENV = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")


def read_config(path: str) -> dict[str, Any]:
    """The config a first stage handed over, deleting its file before anything else."""
    try:
        with open(path) as f:
            return dict(json.load(f))
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def exec_in_environment(config: dict[str, Any]) -> None:
    """Build or reuse the cluster's environment, then replace this process with the agent
    running from it. Returns only by raising ``EnvironmentBuildError``."""
    from billow_control.core.software import SoftwareSpec

    from .software.environment import ensure_environment, environment_python_for

    spec = SoftwareSpec.model_validate(config["software"])
    cache = Path(os.environ.get("BILLOW_ENV_CACHE") or Path.home() / ".cache" / "billow" / "envs")
    started = time.monotonic()
    cached = environment_python_for(spec, cache) is not None
    python = ensure_environment(spec, config.get("wheel_urls", {}), cache, log=log.info)
    log.info(
        "environment %s ready in %.2f s (%s)",
        spec.key[:12],
        time.monotonic() - started,
        "cached" if cached else "built",
    )
    directory = os.environ.get("BILLOW_INSTANCE_DIR") or tempfile.gettempdir()
    fd, path = tempfile.mkstemp(dir=directory, prefix=".agent-config-", suffix=".json")
    with os.fdopen(fd, "w") as f:  # mkstemp: mode 0600
        json.dump(config, f)
    env = {k: v for k, v in os.environ.items() if k not in FOREIGN_PYTHON_ENV}
    log.info("starting the agent from environment %s", spec.key[:12])
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(str(python), [str(python), "-m", "billow.agent", "--config", path], env)


def _version() -> str:
    from . import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    argv = sys.argv[1:] if argv is None else argv
    log.info("billow agent %s running on %s", _version(), sys.executable)
    exit_code = 1
    atexit.register(lambda: _record_exit_code(exit_code))
    if argv[:1] == ["--config"] and len(argv) == 2:
        config = read_config(argv[1])  # second stage: already in the cluster's environment
    else:
        if argv == ["--pooled"]:
            token = await_assignment()
            if token is None:
                exit_code = 0
                return 0
            log.info("pooled agent assigned to %s", os.environ.get("BILLOW_INSTANCE_NAME"))
        else:
            try:
                token = take_instance_token(os.environ)  # one-time: kept out of user code
            except (OSError, ValueError) as e:
                print(f"billow agent: cannot read the instance token: {e}", file=sys.stderr)
                return 2
        url = os.environ.get("BILLOW_CONTROL_URL")
        if not url or not token:
            missing = "BILLOW_CONTROL_URL" if not url else f"{TOKEN_VARIABLE} (or _FD)"
            print(f"billow agent: missing environment variable {missing}", file=sys.stderr)
            return 2
        if not os.environ.get("BILLOW_SOFTWARE_KEY"):
            # The cluster runs this interpreter's packages: import distributed while
            # waiting for the control plane, it is the slow part.
            with contextlib.suppress(ImportError):
                import distributed  # noqa: F401
        config = bootstrap(url, token)
        log.info("bootstrapped: %s %s of %s", config["role"], config["name"], config["cluster_id"])
        if config.get("software"):
            from .errors import EnvironmentBuildError

            try:
                exec_in_environment(config)
            except EnvironmentBuildError as e:
                print(f"billow agent: {e}", file=sys.stderr)
                return 3
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
