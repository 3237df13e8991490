"""Receipts, audits, dispute cases, the model catalog and provider reputation over HTTP.

A consumer reads only its own receipts. Everything else is public, for the explorer:
audits carry their evidence (per-token numbers and the auditor's result with its output
text replaced by a hash: verify/evidence.py), never a prompt or an output (receipts commit
to those by hash).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Query, Request

from tessera.errors import InvalidRequest, NotFound
from tessera.store.verification import AuditRow, CaseRow
from tessera.verify.evidence import public_evidence

PROVIDER_ID = re.compile(r"[0-9a-f]{64}")
ProviderQuery = Annotated[
    str | None,
    Query(pattern=f"^{PROVIDER_ID.pattern}$", description="A provider id: 64 hex digits."),
]


def provider_id_param(value: str | None, param: str = "provider") -> str | None:
    """``value`` if it is a provider id (or None); a 400 naming ``param`` otherwise."""
    if value is not None and not PROVIDER_ID.fullmatch(value):
        raise InvalidRequest(
            "a provider id is its public key: 64 lowercase hex characters",
            param=param,
            code="invalid_value",
        )
    return value


def audit_view(row: AuditRow) -> dict[str, Any]:
    return {
        "object": "audit",
        "id": row.id,
        "request_id": row.request_id,
        "round": row.round,
        "provider_id": row.provider_id,
        "auditor_id": row.auditor_id,
        "model": row.model,
        "outcome": row.outcome,
        "reason": row.reason,
        "evidence": public_evidence(json.loads(row.evidence_json)),
        "created_at": row.created_at.isoformat(),
    }


def case_view(row: CaseRow) -> dict[str, Any]:
    return {
        "object": "audit_case",
        "request_id": row.request_id,
        "provider_id": row.provider_id,
        "model": row.model,
        "status": row.status,
        "reason": row.reason,
        "slashed": row.slashed_units,
        "refunded": row.refunded_units,
        "opened_at": row.opened_at.isoformat(),
        "closed_at": row.closed_at.isoformat() if row.closed_at else None,
    }


def install_verification_routes(app: FastAPI, gateway_of: Callable[[Request], Any]) -> None:
    @app.get("/v1/receipts/{request_id}", tags=["verification"])
    async def get_receipt(request: Request, request_id: str) -> dict[str, Any]:
        """The provider-signed, gateway-countersigned receipt of one of your requests.

        Save it as a file and check it offline with ``tessera receipt verify FILE``.
        """
        gateway = gateway_of(request)
        key = await gateway.auth.authenticate(request.headers.get("authorization"))
        signed = await gateway.verifier.receipt_for(request_id, key.account_id)
        if signed is None:
            raise NotFound(
                f"no receipt for request '{request_id}' in your account (requests that "
                "failed or were cancelled have none)"
            )
        return {"object": "receipt", **signed.model_dump(mode="json")}

    @app.get("/v1/gateway", tags=["verification"])
    async def get_gateway(request: Request) -> dict[str, Any]:
        """This gateway's identity: the key that countersigns receipts."""
        gateway = gateway_of(request)
        return {
            "object": "gateway",
            "id": gateway.settings.gateway_id,
            "public_key": gateway.verifier.public_key,
        }

    @app.get("/v1/catalog", tags=["verification"])
    async def get_catalog(request: Request) -> dict[str, Any]:
        """The models this network pins: weight hash, audit tolerances and calibration."""
        catalog = gateway_of(request).verifier.catalog
        return {
            "object": "list",
            "data": [
                {
                    "object": "catalog_model",
                    "name": m.name,
                    "kind": m.kind,
                    "weights_sha256": m.weights_sha256,
                    "tolerances": m.tolerances.model_dump(),
                    "calibration": m.calibration.model_dump(),
                    "challenges": len(m.challenges),
                }
                for m in catalog.models()
            ],
        }

    @app.get("/v1/audits", tags=["verification"])
    async def list_audits(
        request: Request,
        provider: ProviderQuery = None,
        request_id: Annotated[str | None, Query(min_length=1, max_length=100)] = None,
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
        before: Annotated[int | None, Query(ge=1, le=2**63 - 1)] = None,
    ) -> dict[str, Any]:
        """Audits, newest first, with their evidence; page with ``before`` = the last id."""
        store = gateway_of(request).verifier.store
        rows = await store.audits(
            provider_id=provider,
            request_id=request_id,
            limit=limit,
            before_id=before,
        )
        return {"object": "list", "data": [audit_view(r) for r in rows]}

    @app.get("/v1/audit-cases", tags=["verification"])
    async def list_cases(
        request: Request,
        provider: ProviderQuery = None,
        status: Literal["passed", "open", "upheld", "cleared", "inconclusive"] | None = None,
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
    ) -> dict[str, Any]:
        """Audit cases (one per audited request) and how they ended: passed, cleared, upheld."""
        store = gateway_of(request).verifier.store
        rows = await store.cases(provider_id=provider, status=status, limit=limit)
        return {"object": "list", "data": [case_view(r) for r in rows]}

    @app.get("/v1/audit-cases/{request_id}", tags=["verification"])
    async def get_case(request: Request, request_id: str) -> dict[str, Any]:
        """One audit case with every audit in it."""
        store = gateway_of(request).verifier.store
        row = await store.case(request_id)
        if row is None:
            raise NotFound(f"request '{request_id}' has no audit case (it was not audited)")
        audits = await store.audits(request_id=request_id, limit=10)
        return {**case_view(row), "audits": [audit_view(a) for a in reversed(audits)]}

    @app.get("/v1/providers/{provider_id}/reputation", tags=["providers"])
    async def get_reputation(request: Request, provider_id: str) -> dict[str, Any]:
        """A provider's record: audits, completion rate, uptime, score, bans and violations."""
        provider_id_param(provider_id, "provider_id")
        gateway = gateway_of(request)
        verifier = gateway.verifier
        live = gateway.registry.get(provider_id)
        bans = await verifier.store.bans(provider_id)
        violations = await verifier.store.violations(provider_id, limit=20)
        return {
            "object": "provider_reputation",
            "provider_id": provider_id,
            "connected": live is not None,
            "models": dict(live.status) if live else {},
            **verifier.reputation.get(provider_id).public(),
            "score": verifier.reputation.get(provider_id).score(),
            "bans": [
                {"model": model, "reason": reason, "at": at.isoformat()}
                for _, model, reason, at in bans
            ],
            "violations": [
                {
                    "kind": v.kind,
                    "request_id": v.request_id,
                    "detail": v.detail,
                    "at": v.created_at.isoformat(),
                }
                for v in violations
            ],
        }
