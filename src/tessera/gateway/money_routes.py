"""Accounts, usage, request receipts, deposits (dev mode) and provider stake, over HTTP.

Consumers authenticate with their API key and only ever see their own account. Providers
sign each call with their Ed25519 identity (``protocol.provider_api``); every movement
carries a client-chosen reference, so a retried or replayed call is applied once.

Every client string that ends in a journal column is bounded here, with a 400 that names
it: references (8-100 letters, digits, '-', '_') and the Idempotency-Key header (1-100
visible ASCII characters). The ledger checks the stored widths again before posting.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable
from typing import Annotated, Any, Protocol

from fastapi import FastAPI, Query, Request
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError

from tessera.errors import Forbidden, InvalidRequest, NotFound, TesseraError
from tessera.gateway.payments import Payer
from tessera.gateway.request_body import IsoDateTime, parse_json
from tessera.ledger.accounts import MAX_UNITS, TOKEN
from tessera.ledger.escrow import CAPTURE, HOLD, RELEASE
from tessera.ledger.journal import (
    DuplicateEntry,
    Entry,
    EntryTooLarge,
    InsufficientFunds,
    LedgerError,
)
from tessera.ledger.spend_caps import SpendCaps
from tessera.market.attributes import attributes
from tessera.protocol.provider_api import require_same_provider, verify_request

PROVIDER_ID = re.compile(r"[0-9a-f]{64}")
Units = Annotated[StrictInt, Field(gt=0, le=MAX_UNITS)]
Reference = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{8,100}$")]
# Stripe's keys are UUIDs or like them; 100 leaves the journal's reference room for the
# account id in front ("acct_<16 hex>/<key>" stays within MAX_REFERENCE_CHARS).
IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,100}")


class FundBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    amount: Units


class MoveBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    amount: Units
    reference: Reference


class WithdrawBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reference: Reference


class KeyLike(Protocol):
    id: str
    account_id: str
    spend_cap_total: int | None
    spend_cap_daily: int | None


def payer_of(key: KeyLike) -> Payer:
    return Payer(key.account_id, key.id, SpendCaps(key.spend_cap_total, key.spend_cap_daily))


def _parse(model: type[BaseModel], raw: bytes) -> Any:
    try:
        return model.model_validate(parse_json(raw or b"{}"))  # 8.0 is 8, as in the schema
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "body"
        raise InvalidRequest(
            f"Invalid value for '{where}': {first.get('msg')}. Amounts are integers of base "
            f"units (1 token = {TOKEN}); references are 8-100 letters, digits, '-' or '_'.",
            param=where,
            code="invalid_value",
        ) from exc


def _idempotency_key(request: Request) -> str:
    """The client's Idempotency-Key (a fresh one when absent), bounded for the journal."""
    idem = request.headers.get("idempotency-key")
    if not idem:
        return uuid.uuid4().hex
    if not IDEMPOTENCY_KEY.fullmatch(idem):
        raise InvalidRequest(
            f"Invalid Idempotency-Key header ({len(idem)} characters): it must be 1 to 100 "
            "visible ASCII characters, such as a UUID.",
            param="Idempotency-Key",
            code="invalid_value",
        )
    return idem


def _ledger_error(exc: LedgerError) -> TesseraError:
    if isinstance(exc, EntryTooLarge):
        return InvalidRequest(str(exc), param=exc.field, code="invalid_value")
    if isinstance(exc, InsufficientFunds):
        return InvalidRequest(
            f"not enough funds: {exc.account} holds {exc.balance} base units "
            f"({exc.shortfall} short)",
            code="insufficient_funds",
        )
    return InvalidRequest(str(exc), code="ledger_refused")


def install_money_routes(app: FastAPI, gateway_of: Callable[[Request], Any]) -> None:
    async def consumer(request: Request) -> tuple[Any, KeyLike]:
        gateway = gateway_of(request)
        key = await gateway.auth.authenticate(request.headers.get("authorization"))
        return gateway, key

    def account_view(gateway: Any, key: KeyLike) -> dict[str, Any]:
        book = gateway.bookkeeper.book
        view = book.consumer(key.account_id)
        total, today, held = book.spend.spent(key.id, gateway.bookkeeper.clock())
        caps = payer_of(key).caps
        room = book.spend.headroom(key.id, caps, gateway.bookkeeper.clock())
        return {
            "object": "account",
            "id": key.account_id,
            "balance": view.balance,
            "held": view.held,
            "available": view.balance if room is None else min(view.balance, room),
            "unit": f"base units (1 token = {TOKEN})",
            "key": {
                "id": key.id,
                "spend_cap_total": key.spend_cap_total,
                "spend_cap_daily": key.spend_cap_daily,
                "spent_total": total,
                "spent_today": today,
                "held": held,
            },
        }

    @app.get("/v1/account", tags=["account"])
    async def get_account(request: Request) -> dict[str, Any]:
        """Balance, money held for running requests, and this key's caps and spend."""
        gateway, key = await consumer(request)
        view = account_view(gateway, key)
        record = await gateway.accounts.get(key.account_id)
        view["name"] = record.name if record else None
        return view

    @app.post("/v1/account/fund", tags=["account"], openapi_extra=_body(FundBody))
    async def fund_account(request: Request) -> dict[str, Any]:
        """Mint test tokens into this account (dev mode only). Idempotency-Key is honoured."""
        gateway, key = await consumer(request)
        if not gateway.settings.dev_mode:
            raise Forbidden(
                "Minting is only allowed on a gateway in dev mode. On this network deposits "
                "arrive through its settlement backend."
            )
        body = _parse(FundBody, await request.body())
        if body.amount > gateway.settings.dev_fund_max_units:
            raise InvalidRequest(
                f"dev mode mints at most {gateway.settings.dev_fund_max_units} base units a call",
                param="amount",
            )
        idem = _idempotency_key(request)
        entry, replayed = await _apply(
            gateway.bookkeeper.mint(key.account_id, body.amount, f"{key.account_id}/{idem}")
        )
        view = account_view(gateway, key)
        view.update(object="deposit", amount=body.amount, entry_id=entry, replayed=replayed)
        return view

    @app.get("/v1/account/usage", tags=["account"])
    async def account_usage(
        request: Request,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        before: IsoDateTime | None = None,
    ) -> dict[str, Any]:
        """Recent requests of this account, newest first, with tokens and cost."""
        gateway, key = await consumer(request)
        rows = await gateway.request_reader.for_account(key.account_id, limit + 1, before)
        return {
            "object": "list",
            "data": [_usage_row(r) for r in rows[:limit]],
            "has_more": len(rows) > limit,
        }

    @app.get("/v1/requests/{request_id}", tags=["account"])
    async def get_request(request: Request, request_id: str) -> dict[str, Any]:
        """One request's cost breakdown, provider, tokens and settlement, from the journal."""
        gateway, key = await consumer(request)
        entries = await gateway.ledger_store.entries_for(request_id[:200])
        logged = await gateway.request_reader.get(request_id[:64])
        hold = next((e for e in entries if e.kind == HOLD), None)
        owner = hold.memo_dict().get("consumer") if hold else None
        if owner is None and logged is not None:
            owner = logged.account_id
        if owner != key.account_id:
            raise NotFound(f"no request '{request_id}' on your account", param="request_id")
        return _request_view(request_id, entries, logged)

    # ------------------------------------------------------------ providers

    def provider_view(gateway: Any, provider_id: str) -> dict[str, Any]:
        book = gateway.bookkeeper.book
        view = book.provider(provider_id)
        live = gateway.registry.get(provider_id)
        return {
            "object": "provider",
            "id": provider_id,
            "connected": live is not None,
            "routable": live is not None
            and any(gateway.payments.staked(live, model) for model in live.offers),
            "min_stake": (
                max(gateway.payments.stake.required(live, m) for m in live.offers)
                if live
                else gateway.settings.min_stake_units
            ),
            "earnings": view.earnings,
            "balance": view.balance,
            "bonded": view.bonded,
            "unbonding": [{"amount": t.amount, "release_at": t.release_at} for t in view.unbonding],
            "label": live.capabilities.label if live else None,
            "region": live.capabilities.region if live else None,
            # Which of the provider's announcements are only declared, which were checked.
            "attributes": (
                attributes(live, gateway.registry.label_shared_with(provider_id)) if live else None
            ),
        }

    @app.get("/v1/providers/{provider_id}", tags=["providers"])
    async def get_provider(request: Request, provider_id: str) -> dict[str, Any]:
        """A provider's stake, unbonding tranches and earnings (public)."""
        if not PROVIDER_ID.fullmatch(provider_id):
            raise InvalidRequest(
                "a provider id is its public key: 64 lowercase hex characters",
                param="provider_id",
            )
        return provider_view(gateway_of(request), provider_id)

    async def signed(request: Request, provider_id: str) -> tuple[Any, bytes]:
        gateway = gateway_of(request)
        raw = await request.body()
        claimed = verify_request(
            request.headers, request.method, request.url.path, raw, time.time()
        )
        require_same_provider(claimed, provider_id)
        return gateway, raw

    def provider_move(path: str, summary: str, action: str) -> None:
        body_type = WithdrawBody if action == "withdraw_stake" else MoveBody

        async def handler(request: Request, provider_id: str) -> dict[str, Any]:
            gateway, raw = await signed(request, provider_id)
            keeper = gateway.bookkeeper
            if action == "withdraw_stake":
                body = _parse(WithdrawBody, raw)
                result = await _apply(keeper.withdraw_stake(provider_id, body.reference))
            else:
                body = _parse(MoveBody, raw)
                if action == "fund":
                    if not gateway.settings.dev_mode:
                        raise Forbidden("Minting is only allowed on a gateway in dev mode.")
                    if body.amount > gateway.settings.dev_fund_max_units:
                        raise InvalidRequest("amount above the dev-mode mint limit", param="amount")
                    work = keeper.mint(provider_id, body.amount, f"{provider_id}/{body.reference}")
                elif action == "bond":
                    work = keeper.bond(provider_id, body.amount, body.reference)
                elif action == "unbond":
                    work = keeper.unbond(provider_id, body.amount, body.reference)
                else:
                    work = keeper.withdraw_earnings(provider_id, body.amount, body.reference)
                result = await _apply(work)
            view = provider_view(gateway, provider_id)
            view.update(entry_id=result[0], replayed=result[1])
            return view

        handler.__doc__ = summary
        app.post(path, tags=["providers"], name=action, openapi_extra=_body(body_type))(handler)

    base = "/v1/providers/{provider_id}"
    provider_move(f"{base}/fund", "Mint test tokens to the provider (dev mode).", "fund")
    provider_move(f"{base}/stake/bond", "Bond stake from the provider's balance.", "bond")
    provider_move(f"{base}/stake/unbond", "Start unbonding; slashable until it matures.", "unbond")
    provider_move(f"{base}/stake/withdraw", "Return matured unbonding stake.", "withdraw_stake")
    provider_move(
        f"{base}/earnings/withdraw", "Move earnings to the spendable balance.", "withdraw"
    )

    # ------------------------------------------------------------ public economics

    @app.get("/v1/slashing", tags=["economics"])
    async def slashing_table(request: Request) -> dict[str, Any]:
        """The slashing table in force: what triggers a slash and how much it takes."""
        table = gateway_of(request).bookkeeper.book.policy.slashing
        return {"object": "list", "unit": "stake_bps of exposed stake", "data": table.public()}

    @app.get("/v1/ledger", tags=["economics"])
    async def ledger_totals(request: Request) -> dict[str, Any]:
        """Network totals: minted, protocol fees, verification and insurance pools."""
        gateway = gateway_of(request)
        fees = gateway.bookkeeper.book.policy.fees
        return {
            "object": "ledger",
            **gateway.bookkeeper.book.system(),
            "fee_bps": fees.fee_bps,
            "verification_share_bps": fees.verification_share_bps,
            "min_stake": gateway.settings.min_stake_units,
            "unbonding_delay_s": gateway.settings.unbonding_delay_s,
        }


def _body(model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema()
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


async def _apply(work: Any) -> tuple[int | None, bool]:
    """Run a ledger movement: (entry id, replayed). A repeated reference is not re-applied."""
    try:
        entry: Entry | None = await work
    except DuplicateEntry:
        return None, True
    except LedgerError as exc:
        raise _ledger_error(exc) from exc
    return (entry.entry_id if entry else None), False


def _usage_row(r: Any) -> dict[str, Any]:
    return {
        "request_id": r.request_id,
        "created_at": r.created_at.isoformat(),
        "endpoint": r.endpoint,
        "model": r.model,
        "provider_id": r.provider_id,
        "status": r.status,
        "prompt_tokens": r.prompt_tokens,
        "completion_tokens": r.completion_tokens,
        "cost": r.cost,
        "price_input_per_mtok": r.price_input_per_mtok,
        "price_output_per_mtok": r.price_output_per_mtok,
        "key_id": r.api_key_id,
    }


def _request_view(request_id: str, entries: list[Entry], logged: Any) -> dict[str, Any]:
    by_kind = {e.kind: e for e in entries}
    hold, capture, release = by_kind.get(HOLD), by_kind.get(CAPTURE), by_kind.get(RELEASE)
    settlement = "captured" if capture else "released" if release else "open" if hold else "free"
    breakdown: dict[str, int] = {}
    provider_id = None
    if capture is not None:
        memo = capture.memo_dict()
        provider_id = memo.get("provider")
        for p in capture.postings:
            kind = p.account.kind.value
            if kind in ("earnings", "fees", "verification_pool"):
                breakdown[kind] = p.amount
    held = next((p.amount for p in hold.postings if p.amount > 0), 0) if hold else 0
    cost = int(capture.memo_dict()["cost"]) if capture else 0
    tokens = capture.memo_dict() if capture else {}
    prompt_tokens = int(tokens["prompt_tokens"]) if "prompt_tokens" in tokens else None
    completion_tokens = int(tokens["completion_tokens"]) if "completion_tokens" in tokens else None
    if logged is not None and prompt_tokens is None:
        prompt_tokens, completion_tokens = logged.prompt_tokens, logged.completion_tokens
    return {
        "object": "request",
        "id": request_id,
        "status": logged.status if logged else None,
        "model": logged.model if logged else (hold.memo_dict().get("model") if hold else None),
        "provider_id": provider_id or (logged.provider_id if logged else None),
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "held": held,
        "cost": cost,
        "provider_earned": breakdown.get("earnings", 0),
        "protocol_fee": breakdown.get("fees", 0),
        "verification_pool": breakdown.get("verification_pool", 0),
        "settlement": settlement,
        "release_reason": release.memo_dict().get("reason") if release else None,
        "entries": [
            {
                "entry_id": e.entry_id,
                "kind": e.kind,
                "at": e.at,
                "postings": {str(p.account): p.amount for p in e.postings},
            }
            for e in entries
        ],
    }
