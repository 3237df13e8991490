"""Dev-mode funding over the gateway's HTTP API: what `tessera demo` and the tests use.

On a dev-mode gateway accounts and providers may mint test tokens; a provider then bonds
stake with calls signed by its own key, exactly as `tessera stake` does.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from tessera.ledger.accounts import TOKEN
from tessera.protocol.provider_api import signed_post
from tessera.protocol.signing import public_key_hex
from tessera.provider.identity import load_or_create_key

DEFAULT_FUNDS = 100 * TOKEN
DEFAULT_STAKE = 10 * TOKEN


def fund_account(
    base: str, api_key: str, units: int = DEFAULT_FUNDS, idempotency_key: str | None = None
) -> dict[str, Any]:
    """Mint ``units`` into the API key's account; returns the account view. A caller that
    retries after an error passes the same ``idempotency_key`` each time: an error answer
    does not prove the deposit was not made (a replica may time out waiting for the
    ledger's owner that made it), and the same key is never applied twice."""
    response = httpx.post(
        f"{base}/v1/account/fund",
        json={"amount": units},
        headers={
            "Authorization": f"Bearer {api_key}",
            "Idempotency-Key": idempotency_key or uuid.uuid4().hex,
        },
        timeout=30,
    )
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    return body


def provider_call(base: str, key_file: Path, action: str, body: dict[str, Any]) -> httpx.Response:
    """A provider call signed with the key in ``key_file`` (created if missing)."""
    path, raw, headers = signed_post(load_or_create_key(key_file), action, body, time.time())
    return httpx.post(f"{base}{path}", content=raw, headers=headers, timeout=30)


def stake_provider(base: str, key_file: Path, units: int = DEFAULT_STAKE) -> str:
    """Mint ``units`` to the provider and bond them; returns its id."""
    for action in ("fund", "stake/bond"):
        body = {"amount": units, "reference": uuid.uuid4().hex}
        provider_call(base, key_file, action, body).raise_for_status()
    return public_key_hex(load_or_create_key(key_file))
