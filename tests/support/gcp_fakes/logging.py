"""A loopback fake of Cloud Logging's ``entries:write`` and ``entries:list`` (v2 REST),
for ``google.cloud.logging.Client(_use_grpc=False)`` through ``api_endpoint``.

Bodies are parsed as ``logging_v2.types.WriteLogEntriesRequest`` and
``ListLogEntriesRequest``; the request's ``logName``, ``resource`` and ``labels`` are
merged into each entry as Logging does. Entries are kept in memory for the fake's life
(they outlive the instance that wrote them, as Logging's retention does).

Not modelled: authentication, quotas, sinks, buckets and retention, ``partialSuccess``,
pagination (one page of at most ``pageSize``), and filters other than ``key="value"``
terms joined by ``AND`` (``logName``, ``resource.type``, ``labels."<key>"``) and
``timestamp>="<RFC 3339>"`` (the client library adds one when a filter has none); ordering
is by ``timestamp`` (then arrival).
"""

from __future__ import annotations

import re
import threading
from datetime import datetime
from typing import Any

from google.cloud.logging_v2 import types as logging_types

from tests.support.gcp_fakes.server import FakeServer, HttpError, parse

_TERM = re.compile(r'^([A-Za-z_.]+(?:"[^"]+")?)\s*(=|>=)\s*"([^"]*)"$')


def _field(entry: dict[str, Any], path: str) -> Any:
    if path.startswith('labels."'):
        return entry.get("labels", {}).get(path[len('labels."') : -1])
    value: Any = entry
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _instant(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def matches(entry: dict[str, Any], expression: str) -> bool:
    for term in (t.strip() for t in expression.split(" AND ") if t.strip()):
        found = _TERM.match(term)
        if found is None:
            raise HttpError(400, f"unsupported filter term {term!r}")
        value, wanted = _field(entry, found.group(1)), found.group(3)
        if found.group(2) == ">=":  # timestamps: compare as instants
            if value is None or _instant(value) < _instant(wanted):
                return False
        elif value != wanted:
            return False
    return True


class LoggingFake:
    """Keeps written entries; see the module docstring."""

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self.server = FakeServer(
            [
                ("POST", "/v2/entries:write", self._write),
                ("POST", "/v2/entries:list", self._list),
            ]
        )
        self.url = self.server.url

    def start(self) -> LoggingFake:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop()

    def _write(self, p: dict[str, str], q: dict[str, str], body: Any) -> tuple[int, Any]:
        parse(logging_types.WriteLogEntriesRequest, body)
        shared = {k: body[k] for k in ("logName", "resource") if k in body}
        with self._lock:
            for entry in body.get("entries", []):
                merged = {**shared, **entry}
                merged["labels"] = {**body.get("labels", {}), **entry.get("labels", {})}
                if not merged.get("logName"):
                    raise HttpError(400, "an entry needs a logName")
                merged["insertId"] = f"{len(self.entries):012d}"
                self.entries.append(merged)
        return 200, {}

    def _list(self, p: dict[str, str], q: dict[str, str], body: Any) -> tuple[int, Any]:
        request = parse(logging_types.ListLogEntriesRequest, body)
        with self._lock:
            found = [e for e in self.entries if matches(e, request.filter)]
        found.sort(key=lambda e: (e.get("timestamp", ""), e["insertId"]))
        if request.order_by.strip().lower() == "timestamp desc":
            found.reverse()
        size = request.page_size or 1000
        return 200, {"entries": found[:size]}
