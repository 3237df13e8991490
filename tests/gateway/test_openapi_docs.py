"""The OpenAPI document states what the gateway really answers (issue 11, finding 14):
every error status in OpenAI's shape and never 422, SSE beside JSON for streams, Prometheus
text for /metrics, the credentials each operation needs, and the real bounds of requests.
tests/e2e/test_schemathesis.py checks the document against the running server."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tessera.market.policy import MIN_ID_PREFIX

from support.scripted_peers import LiveGateway

pytestmark = pytest.mark.integration

ERROR = {"$ref": "#/components/schemas/ErrorResponse"}


def operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(m, p, op) for p, item in spec["paths"].items() for m, op in item.items()]


async def test_the_document_states_every_status_and_content_type(gateway: LiveGateway) -> None:
    async with httpx.AsyncClient(base_url=gateway.base) as client:
        spec = (await client.get("/openapi.json")).json()
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    for method, path, op in operations(spec):
        responses = op["responses"]
        assert "422" not in responses, (method, path)
        for status in ("413", "500", "503"):
            assert responses[status]["content"]["application/json"]["schema"] == ERROR
        for status, response in responses.items():
            assert "x-request-id" in response["headers"], (method, path, status)
        for param in op.get("parameters", []):
            if param["name"] == "provider_id":
                assert param["schema"]["pattern"] == "^[0-9a-f]{64}$"
    paths = spec["paths"]
    chat = paths["/v1/chat/completions"]["post"]
    assert set(chat["responses"]["200"]["content"]) == {"application/json", "text/event-stream"}
    assert {"400", "401", "404", "429", "502"} <= set(chat["responses"])
    assert chat["security"] == [{"apiKey": []}]
    assert set(paths["/metrics"]["get"]["responses"]["200"]["content"]) == {"text/plain"}
    bond = paths["/v1/providers/{provider_id}/stake/bond"]["post"]
    assert bond["security"] == [{"providerSignature": []}]

    schemas = spec["components"]["schemas"]
    completion = schemas["CompletionRequest"]["properties"]
    assert {"type": "integer", "minimum": 1, "maximum": 1} in completion["best_of"]["anyOf"]
    assert completion["max_tokens"]["anyOf"][0]["maximum"] == 1_000_000
    preferences = schemas["ProviderPreferences"]["properties"]
    pattern = f"^[0-9a-fA-F]{{{MIN_ID_PREFIX},64}}$"  # what the router takes
    assert preferences["only"]["anyOf"][0]["items"]["pattern"] == pattern
    assert "[Ee][Uu]" in preferences["regions_allow"]["anyOf"][0]["items"]["pattern"]
    usage = paths["/v1/account/fund"]["post"]["requestBody"]["content"]["application/json"]
    assert usage["schema"]["properties"]["amount"]["maximum"] == gateway.settings.dev_fund_max_units


async def test_an_unlisted_method_is_405_with_allow(gateway: LiveGateway) -> None:
    async with httpx.AsyncClient(base_url=gateway.base) as client:
        response = await client.delete("/v1/models")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET"
    assert response.json()["error"]["code"] == "method_not_allowed"
