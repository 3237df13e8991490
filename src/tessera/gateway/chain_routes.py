"""HTTP for the chain: where to deposit, proving an address, and the reconciliation.

``GET /v1/chain`` (public) says which chain and vault this gateway settles on, how far it
has booked, and whether the journal and the vault agree to the unit. ``POST
/v1/account/chain-link`` ties an Ethereum address to the caller's account: the body holds
the address and its EIP-191 signature of :func:`link_message`, which names the account,
the gateway and the chain, so it cannot be replayed elsewhere.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field

from tessera.errors import ChainUnavailable, InvalidRequest, NotFound
from tessera.gateway.request_body import parse_json, validated
from tessera.ledger.accounts import TOKEN

if TYPE_CHECKING:
    from tessera.gateway.chain_watcher import ChainWatcher

_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
_PROVIDER_ID = re.compile(r"[0-9a-f]{64}")


def link_message(address: str, account_id: str, gateway: str, chain_id: int) -> str:
    """The text a consumer signs (EIP-191) to prove ``address`` pays for their account."""
    return (
        f"Tessera: link chain address {address} to account {account_id} at gateway "
        f"{gateway} on chain {chain_id}"
    )


class LinkBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    address: str = Field(min_length=42, max_length=42, description="0x-prefixed address.")
    signature: str = Field(
        min_length=132, max_length=132, description="0x-prefixed 65-byte EIP-191 signature."
    )


def _watcher(gateway: Any) -> ChainWatcher:
    """The chain watcher; 404 on a gateway without a chain (nothing to retry), 503 on one
    whose ledger (and so its watcher) another replica holds right now."""
    watcher = getattr(gateway, "chain", None)
    if watcher is None:
        if gateway.settings.chain_url is None:
            raise NotFound(
                "This gateway does not settle on a chain: its operator starts it with "
                "--chain-url and --deployment to take deposits and pay providers on chain.",
                code="no_chain",
            )
        raise ChainUnavailable(
            "This gateway's chain watcher runs where its ledger is, and that is changing "
            "hands; retry shortly."
        )
    return watcher


def _signer_of(message: str, signature: str) -> str | None:
    from eth_account import Account  # web3's stack is imported only by a chain gateway
    from eth_account.messages import encode_defunct

    try:
        return str(Account.recover_message(encode_defunct(text=message), signature=signature))
    except Exception:  # a malformed or unrecoverable signature is just not a match
        return None


def install_chain_routes(app: FastAPI, gateway_of: Callable[[Request], Any]) -> None:
    @app.get("/v1/chain", tags=["economics"])
    async def chain_status(request: Request) -> dict[str, Any]:
        """The chain and vault this gateway settles on, and whether its journal matches
        the vault at the last booked block (``problems`` is empty when it does)."""
        return await _watcher(gateway_of(request)).status()

    @app.get("/v1/account/chain", tags=["account"])
    async def account_chain(request: Request) -> dict[str, Any]:
        """How this account deposits on chain: the vault, this gateway's address, the
        addresses linked to it, and the message a new address signs to link."""
        gateway = gateway_of(request)
        key = await gateway.auth.authenticate(request.headers.get("authorization"))
        watcher = _watcher(gateway)
        deployment = watcher.client.deployment
        return {
            "object": "account.chain",
            "chain_id": watcher.chain_id,
            "vault": deployment.contracts["vault"],
            "token": deployment.contracts["token"],
            "gateway": watcher.gateway,
            "addresses": watcher.addresses_of(key.account_id),
            "link_message": link_message(
                "<address>", key.account_id, watcher.gateway, watcher.chain_id
            ),
            "unit": f"base units (1 token = {TOKEN})",
        }

    @app.get("/v1/providers/{provider_id}/cheque", tags=["providers"])
    async def provider_cheque(request: Request, provider_id: str) -> dict[str, Any]:
        """The provider's newest cumulative cheque, signed by this gateway: anyone may
        submit it to the vault's ``cash`` (it pays only the provider's bound account), so
        the provider is paid even if this gateway is gone."""
        if not _PROVIDER_ID.fullmatch(provider_id):
            raise InvalidRequest(
                "provider_id is the provider's Ed25519 public key, 64 hex characters",
                param="provider_id",
                code="invalid_value",
            )
        cheque = _watcher(gateway_of(request)).cheque_for(provider_id)
        if cheque is None:
            raise NotFound(
                "No cheque for this provider yet: it needs earnings of at least the payout "
                "minimum and a Registry binding of its key to an account "
                "(`tessera wallet bind`).",
                param="provider_id",
            )
        return {"object": "cheque", "provider_id": provider_id, **cheque.to_json()}

    @app.post("/v1/account/chain-link", tags=["account"])
    async def chain_link(request: Request) -> dict[str, Any]:
        """Link an Ethereum address to this account: its deposits in the vault for this
        gateway are credited here, the earlier ones at once."""
        gateway = gateway_of(request)
        key = await gateway.auth.authenticate(request.headers.get("authorization"))
        watcher = _watcher(gateway)
        body = validated(parse_json(await request.body()), LinkBody)
        if not _ADDRESS.fullmatch(body.address):
            raise InvalidRequest(
                "address must be a 0x-prefixed 20-byte hex address", param="address"
            )
        from eth_utils import to_checksum_address

        address = to_checksum_address(body.address)
        message = link_message(address, key.account_id, watcher.gateway, watcher.chain_id)
        signer = await asyncio.to_thread(_signer_of, message, body.signature)
        if signer != address:
            raise InvalidRequest(
                "the signature is not the address's signature of the link message; sign "
                "the exact text of GET /v1/account/chain's link_message with <address> "
                "replaced (EIP-191 personal_sign)",
                param="signature",
                code="invalid_signature",
            )
        credited = await watcher.link(address, key.account_id)
        return {
            "object": "account.chain_link",
            "address": address,
            "account": key.account_id,
            "credited": credited,
            "addresses": watcher.addresses_of(key.account_id),
        }
