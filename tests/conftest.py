"""Shared fixtures: real servers on 127.0.0.1, each stopped by PID at the end."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.processes import EmbeddedServer, free_port, http_ok, stop_process, wait_until


@pytest.fixture(scope="session")
def moto_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ``moto_server`` (AWS APIs) on a free loopback port."""
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    exe = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or "moto_server"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [exe, "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # Step Functions tasks call other services (SQS) on localhost:$MOTO_PORT.
            env={**os.environ, "MOTO_PORT": str(port)},
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: http_ok(url + "/moto-api/"), 60, "moto_server")
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
        os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
        yield url
    finally:
        stop_process(proc)


# moto_server with one request at a time. The threaded moto_server applies a
# TransactWriteItems as a sequence of writes rolled back by restoring a copy of the table, so
# concurrent transactions interleave (seen: a cancelled create left its cluster item behind).
# DynamoDB makes each conditional write and each transaction atomic and isolated; one request
# at a time is the faithful stand-in for that.
_SERIAL_MOTO = """
import sys
from werkzeug.serving import run_simple
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication, MotoRequestHandler, create_backend_app,
)
run_simple("127.0.0.1", int(sys.argv[1]), DomainDispatcherApplication(create_backend_app),
           threaded=False, request_handler=MotoRequestHandler)
"""


@pytest.fixture(scope="session")
def serial_moto_url(moto_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A moto server that serves one request at a time (``moto_url`` sets credentials)."""
    port = free_port()
    log = tmp_path_factory.mktemp("moto-serial") / "moto.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", _SERIAL_MOTO, str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "MOTO_PORT": str(port)},
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: http_ok(url + "/moto-api/"), 60, "serial moto_server")
        yield url
    finally:
        stop_process(proc)


@pytest.fixture(scope="session")
def embedded_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    """One ``billow server`` subprocess shared by the e2e tests of a session."""
    server = EmbeddedServer(tmp_path_factory.mktemp("billow-server")).start()
    try:
        yield server
    finally:
        server.stop()
        server.kill_instances()
