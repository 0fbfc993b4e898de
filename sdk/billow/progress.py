"""Progress display while a cluster starts: rich in a terminal and in Jupyter."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.text import Text


class StartProgress:
    """Context manager showing status, joined workers and elapsed time; no-op if disabled.

    A live line in a terminal or Jupyter; elsewhere (a log, a pipe) one line at the end,
    as a live display there leaves its last frame without a line break."""

    def __init__(self, name: str, cluster_id: str, enabled: bool = True) -> None:
        self.name = name
        self.cluster_id = cluster_id
        self.enabled = enabled
        self.started = time.monotonic()
        self._console = Console(stderr=True)
        self._live: Live | None = None
        self._last: dict[str, Any] = {}

    def __enter__(self) -> StartProgress:
        if self.enabled and (self._console.is_terminal or self._console.is_jupyter):
            self._live = Live(
                self._render({}),
                console=self._console,
                refresh_per_second=8,
                transient=False,
            )
            self._live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)
        elif self.enabled:
            self._console.print(self._render(self._last))

    def update(self, record: dict[str, Any]) -> None:
        self._last = record
        if self._live is not None:
            self._live.update(self._render(record))

    def _render(self, record: dict[str, Any]) -> Text:
        status = record.get("status", "requesting")
        desired = record.get("desired_workers", "?")
        style = {"ready": "green", "failed": "red", "stopping": "yellow"}.get(status, "cyan")
        text = Text()
        text.append(f"billow cluster {self.name} ", style="bold")
        text.append(f"({self.cluster_id}) ")
        text.append(status, style=style)
        text.append(f"  workers {record.get('workers', 0)}/{desired}")
        text.append(f"  {time.monotonic() - self.started:5.1f}s", style="dim")
        return text
