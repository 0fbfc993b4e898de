"""Store factories so one test suite runs against every Store adapter."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from billow_control.adapters.aws.dynamodb_store import DynamoDBStore
from billow_control.adapters.local.sqlite_store import SqliteStore
from billow_control.core.ports import Store

STORE_KINDS = ["sqlite", "dynamodb"]


@contextmanager
def dynamodb_store(url: str, **options: Any) -> Iterator[DynamoDBStore]:
    """Fresh DynamoDB tables under a new prefix on the moto server at ``url``, deleted after."""
    store = DynamoDBStore(f"t-{uuid.uuid4().hex[:10]}-", host=url, **options)
    store.create_tables()
    try:
        yield store
    finally:
        store.delete_tables()


@contextmanager
def store_of_kind(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Store]:
    """A fresh store: a SQLite file, or DynamoDB tables on the session's moto server."""
    if kind == "sqlite":
        yield SqliteStore(tmp_path / "billow.db")
    elif kind == "dynamodb":
        with dynamodb_store(request.getfixturevalue("moto_url")) as store:
            yield store
    else:
        raise ValueError(f"unknown store kind {kind!r}")
