"""JSON responses and the mapping of errors to HTTP status codes."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.event_handler import Response, content_types


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        status_code=status,
        content_type=content_types.APPLICATION_JSON,
        body=body,
        headers=headers,
    )


def describe_validation_errors(errors: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """One readable sentence naming every bad field, plus the structured details.

    The offending input is never echoed back (it may be huge or secret).
    """
    details = []
    for e in errors:
        loc = [str(p) for p in e.get("loc", ()) if p not in ("body",)]
        # Union members (int | list[int]) add type names to the path: keep the field.
        field = ".".join(p for p in loc if p not in ("int", "list[constrained-int]", "list[int]"))
        details.append(
            {"field": field or "body", "message": e.get("msg", ""), "type": e.get("type")}
        )
    seen: dict[str, list[str]] = {}
    for d in details:
        seen.setdefault(d["field"], [])
        if d["message"] not in seen[d["field"]]:
            seen[d["field"]].append(d["message"])
    message = "; ".join(f"{field}: {' or '.join(msgs)}" for field, msgs in seen.items())
    return message, details
