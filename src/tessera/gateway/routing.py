"""Routing glue: the policy layers of a request, and an empty pool as an OpenAI error.

The policy itself is pure (market/policy.py, market/routing.py); this module turns the
request's ``provider`` object and the API key's stored default into policy layers, and a
``NoRoute`` into the error the client sees.
"""

from __future__ import annotations

import json
from functools import lru_cache

from pydantic import ValidationError

from tessera.errors import InvalidRequest, NoCapacity, TesseraError
from tessera.market.policy import EffectivePolicy, Policy, PolicyError, effective
from tessera.market.routing import NoRoute
from tessera.protocol.openai_api import ProviderPreferences

KEY_SOURCE = "API key"


def request_layer(prefs: ProviderPreferences | None) -> Policy | None:
    if prefs is None:
        return None
    try:
        return Policy.parse(prefs.model_dump(exclude_none=True), source="request")
    except PolicyError as exc:
        raise InvalidRequest(str(exc), param=exc.param, code="invalid_provider_policy") from None


@lru_cache(maxsize=4096)
def key_layer(policy_json: str | None) -> Policy | None:
    """The key's stored default policy (validated when it was set)."""
    if not policy_json:
        return None
    return parse_key_policy(policy_json)


def parse_key_policy(policy_json: str) -> Policy:
    """Check a key policy as given by an operator; InvalidRequest says what is wrong."""
    try:
        prefs = ProviderPreferences.model_validate(json.loads(policy_json))
    except (json.JSONDecodeError, ValidationError, TypeError) as exc:
        raise InvalidRequest(
            f"a key policy is a JSON object shaped like a request's 'provider' field: {exc}",
            param="policy",
        ) from None
    try:
        return Policy.parse(prefs.model_dump(exclude_none=True), source=KEY_SOURCE)
    except PolicyError as exc:
        raise InvalidRequest(str(exc), param="policy") from None


def policy_for(key_policy_json: str | None, prefs: ProviderPreferences | None) -> EffectivePolicy:
    return effective([key_layer(key_policy_json), request_layer(prefs)])


def no_route_error(no_route: NoRoute) -> TesseraError:
    """Policy constraints are the request's (or key's) doing: 400. The rest: 503."""
    name = no_route.constraint
    if no_route.busy or name in (None, "stake", "hold", "exclude"):
        return NoCapacity(no_route.message)
    if name == "max_price":
        return InvalidRequest(
            no_route.message, param="provider.max_price", code="no_provider_within_max_price"
        )
    code = "no_provider_matches_key_policy" if no_route.source == KEY_SOURCE else None
    return InvalidRequest(
        no_route.message,
        param=f"provider.{name}",
        code=code or "no_provider_matches_policy",
    )
