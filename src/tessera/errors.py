"""One exception tree for all of Tessera, and the one map from it to OpenAI error bodies.

    TesseraError                      500 server_error
    ├── InvalidRequest                400 invalid_request_error  (bad field, bad JSON, unsupported option)
    │   └── PayloadTooLarge           413 invalid_request_error
    ├── AuthenticationFailed          401 invalid_request_error  (missing or wrong API key)
    ├── ModelNotFound                 404 invalid_request_error  code=model_not_found
    ├── QuotaExceeded                 429 insufficient_quota     (balance too low or spend cap reached)
    ├── RateLimited                   429 rate_limit_error       (a key's or account's concurrency or rate limit; Retry-After)
    ├── Forbidden                     403 permission_error       (allowed for others, not for this caller/mode)
    ├── NotFound                      404 invalid_request_error  (an account, request or provider)
    ├── NoCapacity                    503 service_unavailable    (no live provider can serve now)
    │   ├── LedgerUnavailable         503                        (the journal cannot be written now)
    │   ├── ChainUnavailable          503 code=chain_unavailable (no chain here, or not the ledger's owner)
    │   ├── Reconnecting              503 code=providers_reconnecting (a gateway just started; Retry-After)
    │   └── Overloaded                503 code=gateway_overloaded (too many requests wait for providers; Retry-After)
    ├── ProviderFailed                502 provider_error         (the provider broke the job)
    ├── ProtocolViolation             —   a peer broke the wire protocol (error frame, not HTTP)
    └── ConfigError                   —   a setting or file is wrong; the message says how to fix it

Foreign errors are translated where they enter (``raise X(...) from exc``); nothing else
reaches a client. Never validate input with ``assert``.
"""

from __future__ import annotations

import math
from typing import Any


class TesseraError(Exception):
    """Base of every error Tessera raises on purpose."""

    status_code: int = 500
    error_type: str = "server_error"
    default_code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code


class InvalidRequest(TesseraError):
    status_code = 400
    error_type = "invalid_request_error"


class PayloadTooLarge(InvalidRequest):
    status_code = 413
    default_code = "payload_too_large"


class AuthenticationFailed(TesseraError):
    status_code = 401
    error_type = "invalid_request_error"
    default_code = "invalid_api_key"


class ModelNotFound(TesseraError):
    status_code = 404
    error_type = "invalid_request_error"
    default_code = "model_not_found"


class QuotaExceeded(TesseraError):
    """OpenAI's shape for running out of credit: 429 with type and code insufficient_quota."""

    status_code = 429
    error_type = "insufficient_quota"
    default_code = "insufficient_quota"


class RateLimited(TesseraError):
    """A key or account is over one of its limits; ``retry_after_s`` goes in Retry-After."""

    status_code = 429
    error_type = "rate_limit_error"
    default_code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after_s: float, code: str | None = None):
        super().__init__(message, code=code)
        self.retry_after_s = retry_after_s


class Forbidden(TesseraError):
    status_code = 403
    error_type = "permission_error"
    default_code = "forbidden"


class NotFound(TesseraError):
    status_code = 404
    error_type = "invalid_request_error"
    default_code = "not_found"


class NoCapacity(TesseraError):
    status_code = 503
    error_type = "service_unavailable"
    default_code = "no_provider_available"


class LedgerUnavailable(NoCapacity):
    default_code = "ledger_unavailable"


class ChainUnavailable(NoCapacity):
    """This gateway settles on no chain, or this replica does not hold the ledger now."""

    default_code = "chain_unavailable"


class Reconnecting(NoCapacity):
    """A known model has no provider yet because this gateway has just started (a restart,
    or a standby taking over): they are reconnecting, so the client should retry soon."""

    default_code = "providers_reconnecting"

    def __init__(self, message: str, *, retry_after_s: float):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Overloaded(NoCapacity):
    """The gateway's queue for provider slots is full; ``retry_after_s`` goes in Retry-After."""

    default_code = "gateway_overloaded"

    def __init__(self, message: str, *, retry_after_s: float):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ProviderFailed(TesseraError):
    status_code = 502
    error_type = "provider_error"
    default_code = "provider_failed"


class ProtocolViolation(TesseraError):
    """A peer sent a frame that breaks the provider protocol."""

    default_code = "protocol_violation"


class ConfigError(TesseraError):
    """A setting, file or flag is wrong; the message says what to do next."""

    default_code = "config_error"


def openai_error_body(error: TesseraError) -> dict[str, Any]:
    """The body OpenAI clients expect: ``{"error": {message, type, param, code}}``."""
    return {
        "error": {
            "message": error.message,
            "type": error.error_type,
            "param": error.param,
            "code": error.code,
        }
    }


def error_headers(error: TesseraError) -> dict[str, str]:
    """HTTP headers that go with an error that has a wait: ``Retry-After`` in whole seconds
    (rounded up) and ``retry-after-ms`` to the millisecond, which OpenAI's SDKs prefer."""
    retry_after_s = getattr(error, "retry_after_s", None)
    if retry_after_s is None:
        return {}
    return {
        "retry-after": str(max(1, math.ceil(retry_after_s))),
        "retry-after-ms": str(max(1, math.ceil(retry_after_s * 1000))),
    }
