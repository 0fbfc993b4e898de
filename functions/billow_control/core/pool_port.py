"""An optional part of the ``Provider`` port: a pool of instances kept ready ahead of
launches (the EC2 warm pool of stopped instances). Not in ``Provider`` itself because
only a provider with something to keep warm can implement it; the watchdog calls it
when the provider has it (``isinstance(provider, PoolKeeper)``)."""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class PoolKeeper(Protocol):
    def refill_pool(self) -> list[str]:
        """Bring the pool to its configured size (a bounded batch per call) and retire
        what it should not keep. Returns the ids of the instances launched; ``[]`` when
        the pool is off. Raises on infrastructure errors (the next pass retries)."""
        ...
