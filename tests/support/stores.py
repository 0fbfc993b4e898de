"""Store factories so one test suite runs against every Store adapter."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from billow_control.adapters.aws.dynamodb import DynamoDBStore, create_tables, delete_tables
from billow_control.adapters.local.sqlite_store import SqliteStore
from billow_control.core.ports import Store
from tests.support.gcp import clear_firestore, new_project

STORE_KINDS = ["sqlite", "dynamodb", "firestore"]


@contextmanager
def dynamodb_store(url: str, **options: Any) -> Iterator[DynamoDBStore]:
    """Fresh DynamoDB tables under a new prefix on the moto server at ``url``, deleted after."""
    store = DynamoDBStore(f"t-{uuid.uuid4().hex[:10]}-", host=url, **options)
    create_tables(store)
    try:
        yield store
    finally:
        delete_tables(store)


@contextmanager
def firestore_store(host: str, **options: Any) -> Iterator[Any]:
    """A ``FirestoreStore`` of a fresh project on the emulator at ``host``, cleared after."""
    from billow_control.adapters.gcp.firestore import FirestoreStore

    project = new_project()
    try:
        yield FirestoreStore(project, "t-", **options)
    finally:
        clear_firestore(host, project)


@contextmanager
def store_of_kind(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest, **options: Any
) -> Iterator[Store]:
    """A fresh store: a SQLite file, DynamoDB tables on the session's moto server, or a
    fresh project on the session's Firestore emulator.

    ``options`` (e.g. ``idempotency_ttl``, ``clock``) go to the store's constructor.
    """
    if kind == "sqlite":
        yield SqliteStore(tmp_path / "billow.db", **options)
    elif kind == "dynamodb":
        with dynamodb_store(request.getfixturevalue("moto_url"), **options) as store:
            yield store
    elif kind == "firestore":
        with firestore_store(request.getfixturevalue("firestore_host"), **options) as store:
            yield store
    else:
        raise ValueError(f"unknown store kind {kind!r}")
