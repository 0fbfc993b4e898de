"""Reading a request body: only JSON, only UTF-8, never nested deeper than ``MAX_DEPTH``.

The API reads bodies here, before powertools validates them, so that no body can make
the parser itself fail: every refusal is an ``ApiError`` with its own status.

* 415: a body (or a route that takes one) with a content type other than
  ``application/json`` (an optional ``charset`` must be UTF-8).
* 400: bytes that are not UTF-8, a string escaping half a surrogate pair (not Unicode
  either), JSON nested deeper than ``MAX_DEPTH``, or text that is not JSON at all (a
  syntax error, ``NaN``/``Infinity``): nothing could be read, so no field is named.
* 422: well-formed JSON holding a number that no float or int of the API can hold
  (``1e309``, an integer of thousands of digits): a value out of range.

A route may validate its body itself (``validated_body``, registered with ``own_body`` so
that the OpenAPI document still describes it), with the same answers powertools gives:
the heartbeat does, as the route every scheduler calls all day (powertools' parameter
machinery cost more than the route's own work).

JSON has one number type: ``3.0`` is the integer 3 (as JSON Schema's ``integer`` says),
so a whole number written with a fraction or exponent parses as an ``int``.
"""

from __future__ import annotations

import json
import math
import re
from itertools import accumulate
from typing import Any, TypeVar

from aws_lambda_powertools.event_handler.openapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from ..core.errors import BadRequest, Invalid, UnsupportedMediaType

Model = TypeVar("Model", bound=BaseModel)

# (method, OpenAPI path) -> the body model of a route that validates its body itself
OWN_BODIES: dict[tuple[str, str], type[BaseModel]] = {}

MAX_DEPTH = 64
JSON_MEDIA_TYPE = "application/json"

# A JSON string, or what is left of an unterminated one. Possessive loops: linear time on
# any input (an unterminated string simply runs to the end of the text).
_STRING = re.compile(r'"[^"\\]*+(?:\\.[^"\\]*+)*+"?', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]++")
_DEPTH_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


def check_content_type(header: str | None) -> None:
    """Accept ``application/json`` with at most a UTF-8 ``charset``; else 415."""
    media_type, *params = (header or "").split(";")
    ok = media_type.strip().lower() == JSON_MEDIA_TYPE
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() != "charset" or value.strip().strip('"').lower() not in (
            "utf-8",
            "utf8",
        ):
            ok = False
    if not ok:
        shown = f"'{header[:100]}'" if header else "none"
        raise UnsupportedMediaType(
            f"the request body must be JSON sent as Content-Type: {JSON_MEDIA_TYPE} (got {shown})"
        )


def decode_utf8(raw: bytes) -> str:
    """The body as text; 400 when it is not UTF-8."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadRequest(f"the request body is not UTF-8 (byte {e.start} is not)") from None


def nesting_depth(text: str) -> int:
    """How deeply arrays and objects nest in ``text``, brackets inside strings aside.

    Linear in ``len(text)`` and done in C (regular expressions, ``accumulate``), so it is
    safe to run on any body before parsing it.
    """
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    return max(accumulate(map(_DEPTH_STEP.__getitem__, brackets)), default=0)


def _reject_constant(name: str) -> Any:
    raise json.JSONDecodeError(f"{name} is not a JSON number", name, 0)


def _number(text: str) -> float | int:
    """A JSON number with a fraction or exponent: finite, and an ``int`` when whole."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} is out of range")
    return int(value) if value.is_integer() else value


def parse_json(text: str) -> Any:
    """Parse a request body, refusing depth over ``MAX_DEPTH`` and anything that is not
    strict JSON (400), and numbers out of range (422, on the field ``body``)."""
    if nesting_depth(text) > MAX_DEPTH:
        raise BadRequest(f"the request body is nested more than {MAX_DEPTH} levels deep")
    try:
        value = json.loads(text, parse_constant=_reject_constant, parse_float=_number)
    except json.JSONDecodeError as e:  # a syntax error, NaN, Infinity
        where = f" (line {e.lineno}, column {e.colno})" if e.doc is text else ""
        raise BadRequest(f"the request body is not valid JSON: {e.msg}{where}") from None
    except ValueError as e:  # 1e309, integers over Python's digit limit
        message = str(e).split(";")[0]
        raise Invalid(f"body: a number is out of range: {message}", field="body") from None
    if "\\u" in text:  # only an escape can make a lone surrogate of UTF-8 text
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise BadRequest("the request body escapes half a surrogate pair") from None
    return value


def json_object(body: Any) -> dict[str, Any]:
    """``body`` when it is a JSON object, as every body of this API is; else 422 on
    ``body`` (powertools would take the first element of ``[{...}]`` for the object)."""
    if not isinstance(body, dict):
        raise Invalid("body: must be a JSON object", field="body")
    return body


def own_body(method: str, path: str, model: type[BaseModel]) -> None:
    """Declare that the route ``method path`` (OpenAPI form, ``{name}`` parameters) takes a
    required JSON body of ``model`` it validates with ``validated_body``."""
    OWN_BODIES[(method.lower(), path)] = model


def validated_body(event: Any, model: type[Model]) -> Model:
    """The request body as ``model``, answering as powertools' validation would: no body
    is a 422 "body: Field required", a body that is not an object a 422 on ``body``, a bad
    field a 422 naming it (``RequestValidationError``). The guard has already refused
    what cannot be read (400, 415) and parsed the body (``event.json_body``, cached)."""
    if not event.body:
        missing = {"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}
        raise RequestValidationError([missing])
    try:
        return model.model_validate(json_object(event.json_body))
    except ValidationError as e:
        errors = [{**err, "loc": ("body", *err["loc"])} for err in e.errors(include_url=False)]
        raise RequestValidationError(errors) from None
