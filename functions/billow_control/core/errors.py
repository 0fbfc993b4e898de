"""Errors the core raises for callers; the API maps each to an HTTP status and JSON body."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """Base of errors a user sees: ``status`` for HTTP, ``code`` stable for programs."""

    status = 400
    code = "bad-request"

    def __init__(self, message: str, *, field: str | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.message = message
        self.field = field
        self.retry_after = retry_after

    def to_json(self) -> dict:
        body: dict = {"error": self.code, "message": self.message}
        if self.field:
            body["field"] = self.field
        if self.retry_after is not None:
            body["retry_after"] = self.retry_after
        return body


class BadRequest(ApiError):
    """The request cannot be read at all (not UTF-8, nested too deeply)."""

    status = 400
    code = "bad-request"


class Unauthorized(ApiError):
    status = 401
    code = "unauthorized"


class Forbidden(ApiError):
    status = 403
    code = "forbidden"


class NotFound(ApiError):
    status = 404
    code = "not-found"


class MethodNotAllowed(ApiError):
    """A known path asked with a method it does not have; ``allow`` lists those it has."""

    status = 405
    code = "method-not-allowed"

    def __init__(self, message: str, *, allow: list[str]):
        super().__init__(message)
        self.allow = allow


class Conflict(ApiError):
    status = 409
    code = "conflict"


class NotReady(ApiError):
    """The request is valid but must be retried later (for example a worker bootstrapping
    before its scheduler reported an address)."""

    status = 409
    code = "not-ready"


class Invalid(ApiError):
    status = 422
    code = "invalid"


class PayloadTooLarge(ApiError):
    status = 413
    code = "payload-too-large"


class UnsupportedMediaType(ApiError):
    status = 415
    code = "unsupported-media-type"


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
