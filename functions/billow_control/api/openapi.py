"""The OpenAPI document of ``/v1/openapi.json``: powertools' schema plus what it cannot
know of this API: the bearer tokens of each route and the one shape of every error.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver
from aws_lambda_powertools.event_handler.openapi.types import OpenAPIResponse

from .body import OWN_BODIES
from .guard import API_TOKEN, USER

API_TITLE = "Billow control plane"


def security_schemes() -> dict[str, Any]:
    """The bearer tokens routes take. Built when the document is: powertools' OpenAPI
    models cost ~120 ms to import, which no other request needs (a Lambda cold start)."""
    from aws_lambda_powertools.event_handler.openapi.models import HTTPBearer

    return {
        API_TOKEN: HTTPBearer(description="A user's API token (bw_...)."),
        "instanceToken": HTTPBearer(
            description="An instance's one-time bootstrap token (bwi_...)."
        ),
        "clusterToken": HTTPBearer(description="The cluster's heartbeat token (bwc_...)."),
    }


ERROR_SCHEMA: dict[str, Any] = {
    "title": "Error",
    "type": "object",
    "required": ["error", "message"],
    "properties": {
        "error": {"type": "string", "description": "Stable name of the error, e.g. 'invalid'."},
        "message": {"type": "string", "description": "What was wrong, for people."},
        "field": {"type": "string", "description": "The offending field, when there is one."},
        "detail": {
            "type": "array",
            "description": "Each invalid field (422 only).",
            "items": {
                "type": "object",
                "required": ["field", "message"],
                "properties": {
                    "field": {"type": "string"},
                    "message": {"type": "string"},
                    "type": {"type": ["string", "null"]},
                },
            },
        },
        "retry_after": {"type": "number", "description": "Seconds to wait before a retry."},
    },
}

ERRORS = {
    "400": "The request cannot be read (not UTF-8, not JSON, nested too deeply).",
    "401": "Missing or invalid token.",
    "403": "The token's user may not do this.",
    "404": "No such resource (or not yours).",
    "405": "The path exists, without this method; Allow lists its methods.",
    "409": "Conflicts with the current state (a name in use, a cluster stopping...).",
    "413": "The request body is larger than 1 MiB.",
    "415": "The request body is not application/json.",
    "422": "A field is invalid: the message and detail name it.",
}

_UNUSED = ("HTTPValidationError", "ResponseValidationError", "ValidationError")


def created(also_ok: str | None = None) -> dict[int, OpenAPIResponse]:
    """``responses=`` of a route that answers 201 (and 200, described by ``also_ok``)."""

    def body() -> Any:
        return {"application/json": {"schema": {"type": "object", "additionalProperties": True}}}

    responses: dict[int, OpenAPIResponse] = {201: {"description": "Created", "content": body()}}
    if also_ok:
        responses[200] = {"description": also_ok, "content": body()}
    return responses


def openapi_document(app: APIGatewayHttpResolver) -> dict[str, Any]:
    """The API's OpenAPI document: every operation lists its error responses (one
    ``Error`` schema) and, unless it says otherwise, needs an API token."""
    schema: dict[str, Any] = json.loads(
        app.get_openapi_json_schema(
            title=API_TITLE, version="1", security_schemes=security_schemes(), security=USER
        )
    )
    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas["Error"] = ERROR_SCHEMA
    for (method, path), model in OWN_BODIES.items():
        operation = schema.get("paths", {}).get(path, {}).get(method)
        if operation is not None:
            add_body(operation, schemas, model)
    ref = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            for status, description in ERRORS.items():
                responses[status] = {"description": description, "content": copy.deepcopy(ref)}
    for name in _UNUSED:  # powertools' own 422 shape, which this API never answers
        if f"#/components/schemas/{name}" not in json.dumps(schema):
            schemas.pop(name, None)
    return schema


def add_body(operation: dict[str, Any], schemas: dict[str, Any], model: Any) -> None:
    """Describe a required JSON body of ``model`` (a pydantic model) as powertools would."""
    body = model.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(body.pop("$defs", {}))
    schemas[model.__name__] = body
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    operation["requestBody"] = {"content": {"application/json": {"schema": ref}}, "required": True}
