"""Bad input against the real network: every error in OpenAI's shape with the right status."""

from __future__ import annotations

import httpx
import openai
import pytest
from openai import OpenAI

from support.live_network import EMBED_MODEL, TEXT_MODEL, LiveNetwork

pytestmark = pytest.mark.e2e

MSG = [{"role": "user", "content": "hi"}]


def test_missing_and_wrong_api_key_are_401(live_network: LiveNetwork) -> None:
    with (
        OpenAI(base_url=f"{live_network.base}/v1", api_key="tsk_wrong", max_retries=0) as wrong,
        pytest.raises(openai.AuthenticationError) as info,
    ):
        wrong.chat.completions.create(model=TEXT_MODEL, messages=MSG)
    assert info.value.code == "invalid_api_key"
    response = httpx.post(
        f"{live_network.base}/v1/embeddings", json={"model": EMBED_MODEL, "input": "x"}
    )
    assert response.status_code == 401
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_unknown_model_is_404_model_not_found(client: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-99", messages=MSG)
    assert info.value.code == "model_not_found"
    assert info.value.body["param"] == "model"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="nope", input="x")


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"n": 2}, "n"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"max_tokens": 10**7}, "max_tokens"),
        ({"temperature": 7}, "temperature"),
        ({"top_logprobs": 3}, "top_logprobs"),
    ],
)
def test_what_cannot_be_honoured_is_a_400_naming_it(
    client: OpenAI, kwargs: dict[str, object], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=TEXT_MODEL, messages=MSG, **kwargs)  # type: ignore[call-overload]
    assert info.value.body["param"] == param  # type: ignore[index]


def test_unknown_fields_are_ignored(client: OpenAI) -> None:
    reply = client.chat.completions.create(
        model=TEXT_MODEL, messages=MSG, max_tokens=2, extra_body={"brand_new_field": {"x": 1}}
    )
    assert reply.choices


def test_embedding_model_on_chat_route_is_400(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=EMBED_MODEL, messages=MSG)
    assert info.value.code == "wrong_model_kind"


def test_prompt_longer_than_context_is_400(client: OpenAI) -> None:
    long_prompt = "the fox and the crow " * 2000
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model=TEXT_MODEL, messages=[{"role": "user", "content": long_prompt}], max_tokens=4
        )
    assert info.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model=EMBED_MODEL, input=long_prompt)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b'{"model": "tessera-tiny", "messages": [', None),
        (b"[1, 2, 3]", None),
        (b'{"model": "tessera-tiny", "messages": "hello"}', "messages"),
        (
            b'{"model": "tessera-tiny", "messages": [{"role": "user", "content": "x"}], "max_tokens": "lots"}',
            "max_tokens",
        ),
        (
            b'{"model": "tessera-tiny", "messages": [{"role": "wizard", "content": "x"}]}',
            "messages",
        ),
        (b'{"messages": [{"role": "user", "content": "x"}]}', "model"),
        (
            b'{"model": "tessera-tiny", "messages": [{"role": "user", "content": "x"}], "temperature": NaN}',
            "temperature",
        ),
        (b"\xff\xfe not utf8", None),
    ],
)
def test_malformed_bodies_are_400(
    live_network: LiveNetwork, body: bytes, param: str | None
) -> None:
    response = httpx.post(
        f"{live_network.base}/v1/chat/completions",
        content=body,
        headers={
            "Authorization": f"Bearer {live_network.api_key}",
            "Content-Type": "application/json",
        },
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param


def test_oversized_body_is_413(client: OpenAI, live_network: LiveNetwork) -> None:
    huge = "x" * (9 * 1024 * 1024)
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(
            model=TEXT_MODEL, messages=[{"role": "user", "content": huge}]
        )
    assert info.value.status_code == 413

    # Chunked upload with no Content-Length is cut off too.
    def chunks():  # type: ignore[no-untyped-def]
        for _ in range(10):
            yield b"x" * (1024 * 1024)

    response = httpx.post(
        f"{live_network.base}/v1/chat/completions",
        content=chunks(),
        headers={"Authorization": f"Bearer {live_network.api_key}"},
    )
    assert response.status_code == 413


def test_gateway_still_serves_after_abuse(client: OpenAI) -> None:
    assert client.chat.completions.create(model=TEXT_MODEL, messages=MSG, max_tokens=2).choices


def test_health_metrics_and_openapi(live_network: LiveNetwork) -> None:
    health = httpx.get(f"{live_network.base}/health").json()
    assert health["status"] == "ok" and health["providers"] == 2
    metrics = httpx.get(f"{live_network.base}/metrics").text
    assert "tessera_requests_total" in metrics
    assert "tessera_providers_connected 2.0" in metrics
    spec = httpx.get(f"{live_network.base}/openapi.json").json()
    assert "/v1/chat/completions" in spec["paths"]
    assert "ChatCompletionRequest" in spec["components"]["schemas"]
