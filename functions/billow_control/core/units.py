"""Durations and byte sizes as users write them (``"20m"``, ``"4 GiB"``), parsed without
dask so the control plane (and its Lambda functions) never imports it. Every error names
what it could not read."""

from __future__ import annotations

import functools
import math
import re

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]+)?\s*$")
_DURATION_UNITS: dict[str | None, float] = {
    None: 1.0,
    **dict.fromkeys(("ms", "millisecond", "milliseconds"), 0.001),
    **dict.fromkeys(("s", "sec", "secs", "second", "seconds"), 1.0),
    **dict.fromkeys(("m", "min", "mins", "minute", "minutes"), 60.0),
    **dict.fromkeys(("h", "hr", "hrs", "hour", "hours"), 3600.0),
    **dict.fromkeys(("d", "day", "days"), 86400.0),
    **dict.fromkeys(("w", "week", "weeks"), 604800.0),
}


@functools.lru_cache(maxsize=512, typed=True)  # every stored record re-validates its sizes
def parse_duration(value: str | float | int | None) -> float | None:
    """Seconds from ``"20m"``, ``"30s"``, ``"1.5h"`` or a number of seconds.

    Raises ``ValueError`` naming the accepted forms; ``None`` stays ``None``.
    """
    if value is None or isinstance(value, int | float):
        return None if value is None else float(value)
    match = _DURATION.match(value.lower())
    if not match or match.group(2) not in _DURATION_UNITS:
        raise ValueError(
            f"{value!r} is not a duration; use seconds or a number with a unit "
            "(ms, s, m, h, d), for example '30s' or '20m'"
        )
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


_BYTE_UNITS = {
    **{u: 10**p for u, p in (("k", 3), ("m", 6), ("g", 9), ("t", 12), ("p", 15))},
    **{u + "b": 10**p for u, p in (("k", 3), ("m", 6), ("g", 9), ("t", 12), ("p", 15))},
    **{u + "i": 2**p for u, p in (("k", 10), ("m", 20), ("g", 30), ("t", 40), ("p", 50))},
    **{u + "ib": 2**p for u, p in (("k", 10), ("m", 20), ("g", 30), ("t", 40), ("p", 50))},
    "b": 1,
    "": 1,
}


MAX_BYTES = 2**63 - 1  # what a signed 64-bit integer (SQLite, DynamoDB, Dask) can hold
MAX_MEMORY = 2**50  # 1 PiB: more than any machine a cluster can ask for


@functools.lru_cache(maxsize=512, typed=True)  # every stored record re-validates its sizes
def parse_bytes(value: str | int | float) -> int:
    """Bytes from ``"4 GiB"``, ``"500MB"``, ``"1e9"`` or a number: the rules of
    ``dask.utils.parse_bytes``, here so the control plane (and its Lambda functions) never
    imports dask. Raises ``ValueError`` naming the part it could not read, and for a
    number that is not finite (``"1e309"``, ``"nan"``) or more than ``MAX_BYTES``."""
    if isinstance(value, int | float):
        return _whole_bytes(value, str(value))
    text = value.replace(" ", "")
    if not any(c.isdigit() for c in text):
        text = "1" + text
    split = len(text)
    while split > 0 and text[split - 1].isalpha():
        split -= 1
    number, unit = text[:split], text[split:]
    try:
        n = float(number)
    except ValueError as e:
        raise ValueError(f"Could not interpret '{number}' as a number") from e
    try:
        multiplier = _BYTE_UNITS[unit.lower()]
    except KeyError as e:
        raise ValueError(f"Could not interpret '{unit}' as a byte unit") from e
    return _whole_bytes(n * multiplier, value)


def _whole_bytes(n: float, shown: str) -> int:
    if not math.isfinite(n):
        raise ValueError("not a finite number")
    if abs(n) > MAX_BYTES:
        raise ValueError(f"more than {MAX_BYTES} bytes")
    return int(n)
