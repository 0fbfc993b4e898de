"""Shared fixtures: real servers on 127.0.0.1, each stopped by PID at the end."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.gcp import emulator
from tests.support.processes import EmbeddedServer, moto_server


@pytest.fixture(scope="session")
def moto_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ``moto_server`` (AWS APIs) on a free loopback port."""
    with moto_server(tmp_path_factory.mktemp("moto")) as url:
        yield url


@pytest.fixture(scope="session")
def serial_moto_url(moto_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A moto server that serves one request at a time (see tests/support/processes.py)."""
    with moto_server(tmp_path_factory.mktemp("moto-serial"), serial=True) as url:
        yield url


@pytest.fixture(scope="session")
def embedded_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    """One ``billow server`` subprocess shared by the e2e tests of a session."""
    server = EmbeddedServer(tmp_path_factory.mktemp("billow-server")).start()
    try:
        yield server
    finally:
        server.stop()
        server.kill_instances()


@pytest.fixture(scope="session")
def firestore_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Google's Firestore emulator (``host:port``); sets ``FIRESTORE_EMULATOR_HOST``."""
    with emulator("firestore", tmp_path_factory.mktemp("firestore")) as host:
        yield host


@pytest.fixture(scope="session")
def pubsub_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Google's Pub/Sub emulator (``host:port``); sets ``PUBSUB_EMULATOR_HOST``."""
    with emulator("pubsub", tmp_path_factory.mktemp("pubsub")) as host:
        yield host
