"""Signed provider HTTP requests: a round trip, and every way a request is refused."""

from __future__ import annotations

import json

import pytest
from nacl.signing import SigningKey
from starlette.datastructures import Headers

from tessera.errors import AuthenticationFailed
from tessera.protocol import signing
from tessera.protocol.provider_api import (
    PROVIDER_API_DOMAIN,
    PROVIDER_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    ProviderAuthFailed,
    request_payload,
    require_same_provider,
    signed_headers,
    verify_request,
)

NOW = 1_700_000_000.25
KEY = SigningKey(bytes(range(32)))
OTHER = SigningKey(bytes(range(1, 33)))
PROVIDER = signing.public_key_hex(KEY)
PATH = f"/v1/providers/{PROVIDER}/stake/bond"
BODY = json.dumps({"amount": 5_000_000_000, "reference": "0123456789abcdef"}).encode()


def headers_for(key: SigningKey = KEY, path: str = PATH, body: bytes = BODY) -> dict[str, str]:
    return signed_headers(key, "POST", path, body, NOW)


def verify(headers: dict[str, str], **changes: object) -> str:
    args: dict[str, object] = {"method": "POST", "path": PATH, "body": BODY, "now": NOW}
    args.update(changes)
    return verify_request(headers, **args)  # type: ignore[arg-type]


def test_round_trip_returns_the_provider_id() -> None:
    headers = headers_for()
    assert headers[PROVIDER_HEADER] == PROVIDER
    assert headers[TIMESTAMP_HEADER] == str(int(NOW))
    assert verify(headers) == PROVIDER


def test_starlette_headers_and_lower_case_dicts_both_work() -> None:
    headers = headers_for()
    raw = [(name.lower().encode(), value.encode()) for name, value in headers.items()]
    assert verify_request(Headers(raw=raw), "POST", PATH, BODY, NOW) == PROVIDER
    lower = {name.lower(): value for name, value in headers.items()}
    assert verify(lower) == PROVIDER


def test_method_case_and_query_string_are_not_part_of_the_proof() -> None:
    assert verify(headers_for(), method="post", path=PATH + "?dry=1") == PROVIDER


def test_the_payload_is_what_the_docs_say() -> None:
    payload = request_payload("post", PATH + "?x=1", 17, b"")
    assert payload == {
        "method": "POST",
        "path": PATH,
        "timestamp": 17,
        "body_sha256": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    }
    headers = headers_for(body=b"")
    assert (
        signing.sign(KEY, PROVIDER_API_DOMAIN, request_payload("POST", PATH, int(NOW), b""))
        == (headers[SIGNATURE_HEADER])
    )


@pytest.mark.parametrize("missing", [PROVIDER_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER])
def test_a_missing_header_is_named(missing: str) -> None:
    headers = headers_for()
    del headers[missing]
    with pytest.raises(ProviderAuthFailed, match=f"missing {missing} header") as caught:
        verify(headers)
    assert isinstance(caught.value, AuthenticationFailed)
    assert caught.value.status_code == 401


@pytest.mark.parametrize(
    ("header", "value", "says"),
    [
        (PROVIDER_HEADER, PROVIDER.upper(), "64 lower-case hex"),
        (PROVIDER_HEADER, PROVIDER[:-2], "64 lower-case hex"),
        (PROVIDER_HEADER, "zz" * 32, "64 lower-case hex"),
        (TIMESTAMP_HEADER, "1700000000.5", "whole number"),
        (TIMESTAMP_HEADER, "-1700000000", "whole number"),
        (TIMESTAMP_HEADER, "soon", "whole number"),
        (TIMESTAMP_HEADER, "1" * 13, "whole number"),
        (SIGNATURE_HEADER, "ab" * 63, "128 hex"),
        (SIGNATURE_HEADER, "zz" * 64, "128 hex"),
    ],
)
def test_malformed_headers_are_refused(header: str, value: str, says: str) -> None:
    headers = headers_for()
    headers[header] = value
    with pytest.raises(ProviderAuthFailed, match=says):
        verify(headers)


@pytest.mark.parametrize("offset", [61.0, -61.0, 3_600.0])
def test_a_timestamp_outside_the_window_says_to_sync_the_clock(offset: float) -> None:
    with pytest.raises(ProviderAuthFailed, match="sync your clock"):
        verify(headers_for(), now=NOW + offset)


def test_a_timestamp_inside_the_window_passes_and_the_window_is_configurable() -> None:
    assert verify(headers_for(), now=NOW + 59) == PROVIDER
    assert verify(headers_for(), now=NOW - 59) == PROVIDER
    with pytest.raises(ProviderAuthFailed, match="at most 5 s"):
        verify(headers_for(), now=NOW + 10, max_skew_s=5.0)


@pytest.mark.parametrize(
    "change",
    [
        {"body": BODY.replace(b"5000000000", b"9000000000")},
        {"body": b""},
        {"path": PATH.replace("bond", "unbond")},
        {"path": f"/v1/providers/{signing.public_key_hex(OTHER)}/stake/bond"},
        {"method": "PUT"},
    ],
)
def test_a_tampered_request_fails_the_signature(change: dict[str, object]) -> None:
    with pytest.raises(ProviderAuthFailed, match="signature does not match"):
        verify(headers_for(), **change)


def test_a_changed_timestamp_fails_the_signature() -> None:
    headers = headers_for()
    headers[TIMESTAMP_HEADER] = str(int(NOW) + 1)
    with pytest.raises(ProviderAuthFailed, match="signature does not match"):
        verify(headers)


def test_another_key_cannot_sign_as_this_provider() -> None:
    forged = headers_for(key=OTHER)
    forged[PROVIDER_HEADER] = PROVIDER
    with pytest.raises(ProviderAuthFailed, match="signature does not match"):
        verify(forged)


def test_a_signature_for_another_domain_is_refused() -> None:
    headers = headers_for()
    payload = request_payload("POST", PATH, int(NOW), BODY)
    headers[SIGNATURE_HEADER] = signing.sign(KEY, "tessera/some-other-purpose", payload)
    with pytest.raises(ProviderAuthFailed, match="signature does not match"):
        verify(headers)


def test_a_key_signing_for_another_provider_is_refused_by_the_path_check() -> None:
    other = signing.public_key_hex(OTHER)
    other_path = f"/v1/providers/{PROVIDER}/stake/bond"
    claimed = verify_request(headers_for(key=OTHER, path=other_path), "POST", other_path, BODY, NOW)
    assert claimed == other
    with pytest.raises(ProviderAuthFailed, match="signed by provider"):
        require_same_provider(claimed, PROVIDER)
    require_same_provider(PROVIDER, PROVIDER)


def test_signed_post_verifies_at_the_path_the_gateway_sees() -> None:
    from tessera.protocol.provider_api import signed_post

    key = SigningKey.generate()
    path, raw, headers = signed_post(key, "stake/bond", {"amount": 5}, 1_000.0, prefix="/gw/")
    assert path == f"/v1/providers/{signing.public_key_hex(key)}/stake/bond"
    lower = {k.lower(): v for k, v in headers.items()}
    assert verify_request(lower, "POST", "/gw" + path, raw, 1_000.0) == signing.public_key_hex(key)
    with pytest.raises(ProviderAuthFailed):
        verify_request(lower, "POST", path, raw, 1_000.0)  # signed for the prefixed path
