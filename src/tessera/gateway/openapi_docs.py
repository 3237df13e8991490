"""What the OpenAPI document says each operation answers, as the gateway really answers it.

FastAPI documents a 200 and a 422 for every route. The gateway never answers 422 (a bad
parameter is a 400 in OpenAI's error shape), streams Server-Sent Events, serves Prometheus
text, and answers errors from outside any route: 413 for a body over ``max_body_bytes``,
503 when its connections are full, 500 for a bug. :func:`describe` rewrites the generated
document from :data:`OPERATIONS` so that every status and content type is stated:

- every error status with the ``ErrorResponse`` body and the ``x-request-id`` header;
- ``text/event-stream`` beside JSON for the two streaming routes, ``text/plain`` for
  ``/metrics``;
- the bearer API key (or a provider's signed request) on the operations that need one;
- the 64-hex-digit pattern of every ``provider_id`` in a path.

The transport itself may also close a connection with 408 (a head or body too slow) or
431 (a head too large) before any operation is chosen; those are stated once, in
:data:`TRANSPORT_NOTE`. An operation not in :data:`OPERATIONS` gets the statuses its
parameters imply (400 for any parameter or body, 404 for a path parameter).

:func:`install_openapi` makes the app build its document this way, once; the bodies the
routes parse by hand are documented with :func:`body_schema`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from tessera.config import GatewaySettings
from tessera.protocol.provider_api import SIGNATURE_HEADER

HEX_PROVIDER_ID = "^[0-9a-f]{64}$"
PROMETHEUS_TEXT = "text/plain"
TRANSPORT_NOTE = (
    '\n\nErrors are OpenAI\'s shape: `{"error": {message, type, param, code}}`. Before any '
    "operation is chosen the HTTP server may also answer 408 (request head or body too "
    "slow), 431 (request head too large) or 503 (too many open connections), and close."
)

DESCRIPTIONS = {
    400: "Invalid request: the error's `param` names the parameter.",
    401: "Missing or invalid credentials.",
    403: "Not allowed for this caller or in this gateway's mode.",
    404: "No such model, request or provider (or no chain, on a gateway without one).",
    413: "The request body is larger than the gateway accepts.",
    429: "Out of credit (`insufficient_quota`) or over a rate limit (`Retry-After`).",
    500: "The gateway hit an internal error; retry the request.",
    502: "The provider broke the job.",
    503: "No provider can serve now, the ledger cannot be written, or the gateway is full.",
}
EVERY_OPERATION = (413, 500, 503)

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}
REQUEST_ID_HEADER = {
    "description": "This request's id; log lines and receipts carry the same id.",
    "schema": {"type": "string"},
}
# One Server-Sent Event (before OpenAPI 3.2 the schema of an event stream is its events').
SSE_EVENT: dict[str, Any] = {
    "type": "object",
    "description": 'With `"stream": true`: one event per chunk, its `data` a JSON chunk '
    "object, the last one `[DONE]`.",
    "required": ["data"],
    "properties": {
        "data": {"type": "string"},
        "event": {"type": "string"},
        "id": {"type": "string"},
        "retry": {"type": "integer"},
    },
}
SECURITY_SCHEMES = {
    "apiKey": {"type": "http", "scheme": "bearer", "description": "A `tsk_...` API key."},
    "providerSignature": {
        "type": "apiKey",
        "in": "header",
        "name": SIGNATURE_HEADER,
        "description": (
            "The provider's Ed25519 signature of the request, with its id and a timestamp in "
            "X-Tessera-Provider and X-Tessera-Timestamp (see `tessera provider stake`)."
        ),
    },
}


@dataclass(frozen=True)
class Answers:
    """What one operation answers besides 200 and :data:`EVERY_OPERATION`."""

    errors: tuple[int, ...] = ()
    auth: str | None = None  # "apiKey" or "providerSignature"
    stream: bool = False  # 200 may be text/event-stream (``"stream": true``)
    content_type: str | None = None  # 200 is not JSON
    csv: bool = False  # 200 may be text/csv (``?format=csv``)


INFERENCE = Answers((400, 401, 404, 429, 502), auth="apiKey", stream=True)
PROVIDER_MOVE = Answers((400, 401, 403), auth="providerSignature")
OPERATIONS: dict[tuple[str, str], Answers] = {
    ("get", "/health"): Answers(),
    ("get", "/metrics"): Answers(content_type=PROMETHEUS_TEXT),
    ("get", "/v1/models"): Answers(),
    ("post", "/v1/chat/completions"): INFERENCE,
    ("post", "/v1/completions"): INFERENCE,
    ("post", "/v1/embeddings"): Answers((400, 401, 404, 429, 502), auth="apiKey"),
    ("get", "/v1/account"): Answers((401,), auth="apiKey"),
    ("post", "/v1/account/fund"): Answers((400, 401, 403), auth="apiKey"),
    ("get", "/v1/account/usage"): Answers((400, 401), auth="apiKey"),
    ("get", "/v1/requests/{request_id}"): Answers((401, 404), auth="apiKey"),
    ("get", "/v1/receipts/{request_id}"): Answers((401, 404), auth="apiKey"),
    ("get", "/v1/providers/{provider_id}"): Answers((400,)),
    ("post", "/v1/providers/{provider_id}/fund"): PROVIDER_MOVE,
    ("post", "/v1/providers/{provider_id}/stake/bond"): PROVIDER_MOVE,
    ("post", "/v1/providers/{provider_id}/stake/unbond"): PROVIDER_MOVE,
    ("post", "/v1/providers/{provider_id}/stake/withdraw"): PROVIDER_MOVE,
    ("post", "/v1/providers/{provider_id}/earnings/withdraw"): PROVIDER_MOVE,
    ("get", "/v1/providers/{provider_id}/status"): Answers((400, 404)),
    ("get", "/v1/providers/{provider_id}/reputation"): Answers((400,)),
    ("get", "/v1/providers/{provider_id}/uptime"): Answers((400,)),
    ("get", "/v1/slashing"): Answers(),
    ("get", "/v1/ledger"): Answers(),
    ("get", "/v1/gateway"): Answers(),
    ("get", "/v1/catalog"): Answers(),
    ("get", "/v1/audits"): Answers((400,)),
    ("get", "/v1/audit-cases"): Answers((400,)),
    ("get", "/v1/audit-cases/{request_id}"): Answers((404,)),
    # 404 ``no_chain`` on a gateway that does not settle on a chain
    ("get", "/v1/chain"): Answers((404,)),
    ("get", "/v1/account/chain"): Answers((401, 404), auth="apiKey"),
    ("post", "/v1/account/chain-link"): Answers((400, 401, 404), auth="apiKey"),
    ("get", "/v1/providers/{provider_id}/cheque"): Answers((400, 404)),
    ("get", "/explorer/api/v1/network/summary"): Answers((400,)),
    ("get", "/explorer/api/v1/network/series"): Answers((400, 404), csv=True),
    ("get", "/explorer/api/v1/requests/recent"): Answers((400,), csv=True),
    ("get", "/explorer/api/v1/providers"): Answers((400,), csv=True),
    ("get", "/explorer/api/v1/providers/{provider_id}"): Answers((400, 404)),
    ("get", "/explorer/api/v1/requests/{request_id}"): Answers((400, 404)),
    ("get", "/explorer/api"): Answers(),
    ("get", "/explorer/api/v1/models"): Answers((400,), csv=True),
    ("get", "/explorer/api/v1/models/{model}"): Answers((400, 404)),
    ("get", "/explorer/api/v1/audits/{request_id}"): Answers((400, 404)),
    ("get", "/explorer/api/v1/audits"): Answers((400,), csv=True),
    ("get", "/explorer/api/v1/slashes"): Answers((400,), csv=True),
    ("get", "/explorer/api/v1/epochs"): Answers((400,), csv=True),
    ("get", "/explorer/api/v1/economics"): Answers(),
    ("get", "/explorer/api/v1/claims"): Answers((400,), csv=True),
}
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


def describe(schema: dict[str, Any], *, fund_max_units: int | None = None) -> dict[str, Any]:
    """``schema`` (FastAPI's generated document) made true to the server, in place.

    ``fund_max_units`` is the most a dev-mode fund call mints (the body's bound), or None
    where minting is refused (403) whatever the amount.
    """
    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    schemas["ErrorResponse"] = ERROR_SCHEMA
    components["securitySchemes"] = SECURITY_SCHEMES
    info = schema.setdefault("info", {})
    info["description"] = info.get("description", "") + TRANSPORT_NOTE
    for path, item in schema.get("paths", {}).items():
        for method in METHODS:
            operation = item.get(method)
            if operation is not None:
                _describe_operation(path, method, operation)
    if fund_max_units is not None:
        for path in ("/v1/account/fund", "/v1/providers/{provider_id}/fund"):
            _bound_amount(schema, path, fund_max_units)
    return schema


def _bound_amount(schema: dict[str, Any], path: str, most: int) -> None:
    operation = schema.get("paths", {}).get(path, {}).get("post", {})
    body = operation.get("requestBody", {}).get("content", {}).get("application/json", {})
    amount = body.get("schema", {}).get("properties", {}).get("amount")
    if amount is not None:
        amount["maximum"] = most


def _describe_operation(path: str, method: str, operation: dict[str, Any]) -> None:
    params = operation.get("parameters", [])
    for param in params:
        if param.get("in") == "path" and param.get("name") == "provider_id":
            param["schema"] = {**param.get("schema", {}), "pattern": HEX_PROVIDER_ID}
    answers = OPERATIONS.get((method, path)) or _implied(operation)
    responses = operation.setdefault("responses", {})
    responses.pop("422", None)
    ok = responses.setdefault("200", {"description": "Successful Response"})
    json_ok = ok.get("content", {}).get("application/json", {"schema": {"type": "object"}})
    if answers.content_type is not None:
        ok["content"] = {answers.content_type: {"schema": {"type": "string"}}}
    else:
        ok["content"] = {"application/json": json_ok}
    if answers.stream:
        ok["content"]["text/event-stream"] = {"schema": SSE_EVENT}
    if answers.csv:
        ok["content"]["text/csv"] = {"schema": {"type": "string"}}
    ok["headers"] = {"x-request-id": REQUEST_ID_HEADER}
    for status in sorted({*answers.errors, *EVERY_OPERATION}):
        responses[str(status)] = _error_response(status)
    if answers.auth is not None:
        operation["security"] = [{answers.auth: []}]


def _implied(operation: dict[str, Any]) -> Answers:
    params = operation.get("parameters", [])
    errors = {400} if params or "requestBody" in operation else set()
    if any(p.get("in") == "path" for p in params):
        errors.add(404)
    return Answers(tuple(sorted(errors)))


def _error_response(status: int) -> dict[str, Any]:
    headers: dict[str, Any] = {"x-request-id": REQUEST_ID_HEADER}
    if status == 429:
        headers["retry-after"] = {
            "description": "Seconds to wait, on a rate limit (rounded up).",
            "schema": {"type": "string"},
        }
        headers["retry-after-ms"] = {
            "description": "The same wait in milliseconds, spread between clients refused "
            "together so that they do not all come back at once.",
            "schema": {"type": "string"},
        }
    return {
        "description": DESCRIPTIONS[status],
        "headers": headers,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
    }


_SCHEMA_DEFS: dict[str, Any] = {}


def body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """Document a body we parse by hand; its nested types go to components/schemas."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    _SCHEMA_DEFS.update(schema.pop("$defs", {}))
    _SCHEMA_DEFS[model.__name__] = schema
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


def install_openapi(app: FastAPI, settings: GatewaySettings) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            schema.setdefault("components", {}).setdefault("schemas", {}).update(_SCHEMA_DEFS)
            fund_max = settings.dev_fund_max_units if settings.dev_mode else None
            app.openapi_schema = describe(schema, fund_max_units=fund_max)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
