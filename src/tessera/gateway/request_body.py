"""Untrusted bytes to typed requests: bounded JSON, and 400s that name the parameter.

Contract: :func:`parse_json` and :func:`validated` raise only ``InvalidRequest``, never
let a foreign error out, and never put a value the client sent into an error message
(a prompt must not reach a log or an error path that logs): messages name parameters
and constraints only. JSON is refused when it nests deeper than :data:`MAX_JSON_DEPTH`
or holds a number Python will not convert (over 4,300 digits).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, BeforeValidator, ValidationError

from tessera.errors import InvalidRequest
from tessera.protocol.openai_api import UNSUPPORTED

MAX_JSON_DEPTH = 64
T = TypeVar("T", bound=BaseModel)

_NOT_JSON = (
    "We could not parse the JSON body of your request. Send valid JSON with "
    "'Content-Type: application/json'."
)
_CONTAINERS = (dict, list)
_EXACT_FLOAT_INTS = 2**53  # beyond it a float literal no longer names one integer


def parse_json(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object; InvalidRequest (code ``invalid_json``) otherwise."""
    too_deep = InvalidRequest(
        f"The JSON body nests deeper than {MAX_JSON_DEPTH} levels.", code="invalid_json"
    )
    try:
        data = json.loads(raw, parse_float=_number)
    except RecursionError:  # nested beyond even the interpreter's limit
        raise too_deep from None
    except json.JSONDecodeError:
        raise InvalidRequest(_NOT_JSON, code="invalid_json") from None
    except ValueError:  # undecodable bytes, or an integer literal over 4,300 digits
        raise InvalidRequest(
            _NOT_JSON + " Its text must be UTF-8 and its numbers at most 4300 digits long.",
            code="invalid_json",
        ) from None
    if not isinstance(data, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_json")
    if not _within_depth(data, MAX_JSON_DEPTH):
        raise too_deep
    return data


def _number(text: str) -> float | int:
    """A JSON number with a fraction or exponent; ``8.0`` is the integer 8, as JSON Schema
    counts it (``"8"`` and ``true`` stay what they are, and strict fields refuse them)."""
    value = float(text)
    if value.is_integer() and abs(value) <= _EXACT_FLOAT_INTS:
        return int(value)
    return value


def _within_depth(data: Any, limit: int) -> bool:
    """Whether ``data`` nests at most ``limit`` containers deep (iterative, so a deep
    value cannot exhaust the stack; lists of scalars are checked at C speed)."""
    level: list[Any] = [data]
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            return False
        below: list[Any] = []
        for value in level:
            items = value.values() if isinstance(value, dict) else value
            if isinstance(value, list) and not _holds_containers(value):
                continue
            below.extend(v for v in items if isinstance(v, _CONTAINERS))
        level = below
    return True


def _holds_containers(items: list[Any]) -> bool:
    kinds = set(map(type, items))
    return any(issubclass(kind, _CONTAINERS) for kind in kinds)


def validated(data: dict[str, Any], model: type[T]) -> T:
    """``data`` as ``model``; InvalidRequest naming the first bad parameter otherwise."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise invalid(exc) from None


def invalid(exc: ValidationError) -> InvalidRequest:
    """The first error of ``exc`` as a 400: where, what was expected, never the value."""
    first = exc.errors(include_url=False, include_input=False, include_context=False)[0]
    # Drop pydantic's union-branch tags (e.g. 'constrained-str', 'token-ids').
    loc = [str(p) for p in first.get("loc", ()) if isinstance(p, int) or p.isidentifier()]
    where = ".".join(loc)
    param = loc[0] if loc else None
    if param == "provider" and len(loc) > 1:
        param = f"provider.{loc[1]}"
    if first.get("type") == "missing":
        return InvalidRequest(
            f"Missing required parameter: '{where}'.", param=param, code="invalid_value"
        )
    if param in UNSUPPORTED and not str(first.get("type")).endswith("_type"):
        return InvalidRequest(UNSUPPORTED[param], param=param, code="unsupported_parameter")
    code = "invalid_provider_policy" if param and param.startswith("provider") else "invalid_value"
    return InvalidRequest(
        f"Invalid value for '{where}': {first.get('msg')}", param=param, code=code
    )


def invalid_parameter(errors: Sequence[Any]) -> InvalidRequest:
    """FastAPI's errors for query, path or header parameters as one 400 naming the first:
    ``{'loc': ('query', 'limit'), 'msg': ...}`` -> param ``limit``, no value echoed."""
    first = errors[0] if errors else {}
    loc = [str(p) for p in first.get("loc", ())]
    where, name = (loc[0], ".".join(loc[1:])) if len(loc) > 1 else ("request", "".join(loc))
    msg = first.get("msg", "invalid value")
    return InvalidRequest(
        f"Invalid value for {where} parameter '{name}': {msg}",
        param=name or None,
        code="invalid_value",
    )


_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}([Tt ]|$)")


def _iso_only(value: Any) -> Any:
    if isinstance(value, str) and not _ISO_DATE.match(value):
        raise ValueError("must be an ISO 8601 date-time, such as 2026-01-31T12:00:00Z")
    return value


# A query parameter that is a date-time as the schema says (pydantic alone would also
# read "0.5" as Unix seconds).
IsoDateTime = Annotated[datetime, BeforeValidator(_iso_only)]
