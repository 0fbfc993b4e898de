"""How much of instances' logs one answer carries."""

from __future__ import annotations

import json

# Lambda answers at most 6 MB through API Gateway; the rest of an answer is small.
LOG_RESPONSE_BYTES = 4 * 1024 * 1024


def newest_within(lines: list[str], budget: int) -> list[str]:
    """The newest of ``lines`` whose JSON encoding fits in ``budget`` bytes, oldest first."""
    used = 0
    for index in range(len(lines) - 1, -1, -1):
        used += len(json.dumps(lines[index])) + 2  # quotes and escapes, a comma and a space
        if used > budget:
            return lines[index + 1 :]
    return lines
