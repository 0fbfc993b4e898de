"""Store factories so one test suite runs against every Store adapter."""

from __future__ import annotations

from pathlib import Path

import pytest

from billow_control.adapters.sqlite_store import SqliteStore

STORE_KINDS = ["sqlite"]


def make_store(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> object:
    if kind == "sqlite":
        return SqliteStore(tmp_path / "store.db")
    raise ValueError(kind)
