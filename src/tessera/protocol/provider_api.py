"""Signed provider HTTP requests: how a provider proves who it is to the gateway's REST API.

A provider signs each call with the same Ed25519 key its agent uses on the websocket; its
public key (64 hex) is its provider id. Three headers carry the proof::

    X-Tessera-Provider:  <provider id, 64 lower-case hex>
    X-Tessera-Timestamp: <unix seconds, integer>
    X-Tessera-Signature: <hex of sign(key, PROVIDER_API_DOMAIN, payload)>

    payload = {"method": "POST", "path": "/v1/providers/<id>/stake/bond",
               "timestamp": <int>, "body_sha256": <sha256 hex of the raw body>}

The path is signed without its query string, and the method upper-cased. The signature
binds method, path, body and time, so none of them can be changed or moved to another
endpoint; the timestamp must be within ``max_skew_s`` of the gateway's clock.

Replays: a captured request can be sent again inside the skew window. That is harmless
because every body that moves money carries a ``reference`` the ledger posts at most once
per kind (its idempotency key), so a replay is answered with the first result and moves
nothing. Callers must keep that property for every signed endpoint they add.

Pure: no clock (``now`` is passed in), no I/O.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

from nacl.signing import SigningKey

from tessera.errors import AuthenticationFailed
from tessera.protocol import signing

PROVIDER_API_DOMAIN = "tessera/provider-api/v1"
PROVIDER_HEADER = "X-Tessera-Provider"
TIMESTAMP_HEADER = "X-Tessera-Timestamp"
SIGNATURE_HEADER = "X-Tessera-Signature"
DEFAULT_MAX_SKEW_S = 60.0

_PROVIDER_ID = re.compile(r"[0-9a-f]{64}")
_SIGNATURE = re.compile(r"[0-9a-fA-F]{128}")
_TIMESTAMP = re.compile(r"[0-9]{1,12}")


class ProviderAuthFailed(AuthenticationFailed):
    """A provider API call is unsigned, badly signed, stale, or signed for someone else."""

    default_code = "invalid_provider_signature"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def request_payload(method: str, path: str, timestamp: int, body: bytes) -> dict[str, Any]:
    """What is signed for one request (see the module docstring)."""
    return {
        "method": method.upper(),
        "path": path.split("?", 1)[0],
        "timestamp": timestamp,
        "body_sha256": sha256_hex(body),
    }


def signed_headers(
    key: SigningKey, method: str, path: str, body: bytes, now: float
) -> dict[str, str]:
    """The three headers that sign this request as ``key``'s provider at time ``now``."""
    timestamp = int(now)
    payload = request_payload(method, path, timestamp, body)
    return {
        PROVIDER_HEADER: signing.public_key_hex(key),
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: signing.sign(key, PROVIDER_API_DOMAIN, payload),
    }


def signed_post(
    key: SigningKey, action: str, body: Mapping[str, Any], now: float, prefix: str = ""
) -> tuple[str, bytes, dict[str, str]]:
    """Path, JSON body and headers of a signed POST to ``/v1/providers/{id}/{action}``.

    ``prefix`` is the path the gateway's URL already has (behind a proxy); it is signed,
    because the gateway verifies the path it receives.
    """
    path = f"/v1/providers/{signing.public_key_hex(key)}/{action}"
    raw = json.dumps(dict(body), separators=(",", ":")).encode()
    headers = {"Content-Type": "application/json"}
    headers.update(signed_headers(key, "POST", prefix.rstrip("/") + path, raw, now))
    return path, raw, headers


def verify_request(
    headers: Mapping[str, str],
    method: str,
    path: str,
    body: bytes,
    now: float,
    max_skew_s: float = DEFAULT_MAX_SKEW_S,
) -> str:
    """The provider id that signed this request, or ProviderAuthFailed saying what is wrong.

    ``headers`` is a starlette ``Headers`` (case-insensitive already) or a plain mapping,
    looked up by lower-case and then canonical name. The caller must still check that the
    id is the provider the path names (:func:`require_same_provider`).
    """
    provider = _header(headers, PROVIDER_HEADER)
    stamp = _header(headers, TIMESTAMP_HEADER)
    signature = _header(headers, SIGNATURE_HEADER)
    if not _PROVIDER_ID.fullmatch(provider):
        raise ProviderAuthFailed(
            f"{PROVIDER_HEADER} must be the provider id: 64 lower-case hex digits"
        )
    if not _TIMESTAMP.fullmatch(stamp):
        raise ProviderAuthFailed(f"{TIMESTAMP_HEADER} must be unix seconds, a whole number")
    if not _SIGNATURE.fullmatch(signature):
        raise ProviderAuthFailed(f"{SIGNATURE_HEADER} must be 128 hex digits")
    timestamp = int(stamp)
    skew = timestamp - now
    if abs(skew) > max_skew_s:
        raise ProviderAuthFailed(
            f"{TIMESTAMP_HEADER} is {abs(skew):.0f} s {'ahead of' if skew > 0 else 'behind'} "
            f"the gateway's clock (at most {max_skew_s:.0f} s allowed); sync your clock "
            "(e.g. enable NTP) and try again"
        )
    payload = request_payload(method, path, timestamp, body)
    try:
        signing.verify(provider, PROVIDER_API_DOMAIN, payload, signature)
    except signing.SignatureInvalid as exc:
        raise ProviderAuthFailed(
            f"the signature does not match this request for provider {provider[:12]}…; "
            "sign method, path and body exactly as sent"
        ) from exc
    return provider


def require_same_provider(claimed: str, path_provider: str) -> None:
    """Refuse a key that signs for a provider other than the one the path names."""
    if claimed != path_provider:
        raise ProviderAuthFailed(
            f"this request is signed by provider {claimed[:12]}… but is about provider "
            f"{path_provider[:12]}…; sign it with that provider's key"
        )


def _header(headers: Mapping[str, str], name: str) -> str:
    value = headers.get(name.lower())
    if value is None:
        value = headers.get(name)
    if value is None:
        raise ProviderAuthFailed(
            f"missing {name} header: provider API calls must be signed "
            f"(tessera.protocol.provider_api.signed_headers)"
        )
    return value.strip()
