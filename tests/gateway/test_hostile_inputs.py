"""A stranger's malformed requests are 400s that name the parameter, cost no traceback and
put none of their content in the gateway's log (issue 11, findings 4 and 12).

Each of these inputs used to be an unhandled 500 whose traceback (rendered on the event
loop, 34 kB of log each) quoted the prompt.
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from tessera.gateway.http_limits import RequestIdAndBodyLimit

from support.scripted_peers import MODEL, LiveGateway, Peer

pytestmark = pytest.mark.integration

SECRET = "SECRET-PROMPT-TEXT"
PART = SECRET + "x" * 2_500_000  # each part fits a message; two of them do not


@pytest.fixture
def gateway_log() -> Iterator[io.StringIO]:
    """Everything the gateway process logs (ours and uvicorn's), tracebacks rendered."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setLevel(logging.DEBUG)
    loggers = [logging.getLogger(name) for name in ("", "uvicorn", "uvicorn.error")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield out
    finally:
        for logger in loggers:
            logger.removeHandler(handler)


@pytest.fixture
async def served(gateway: LiveGateway) -> AsyncIterator[LiveGateway]:
    """The gateway with one provider serving MODEL, so requests get past the model lookup."""
    peer = await Peer.open(gateway.ws_url)
    assert (await peer.register(slots=2))["type"] == "welcome"
    beat = asyncio.create_task(peer.beat_forever())
    try:
        yield gateway
    finally:
        beat.cancel()
        await peer.close()


def nested(depth: int) -> bytes:
    return b'{"model": "%s", "prompt": "%s", "x": ' % (MODEL.encode(), SECRET.encode()) + (
        b"[" * depth + b"]" * depth + b"}"
    )


BODIES: list[tuple[str, bytes, str | None, str]] = [
    (
        "/v1/completions",
        b'{"model": "%s", "prompt": [10000001]}' % MODEL.encode(),
        "prompt",
        "invalid_value",
    ),
    (
        "/v1/completions",
        b'{"model": "%s", "prompt": [[1, 2], [99999999999]]}' % MODEL.encode(),
        "prompt",
        "invalid_value",
    ),
    (
        "/v1/embeddings",
        b'{"model": "%s", "input": [10000001]}' % MODEL.encode(),
        "input",
        "invalid_value",
    ),
    ("/v1/completions", nested(100_000), None, "invalid_json"),
    ("/v1/completions", nested(65), None, "invalid_json"),
    (
        "/v1/completions",
        b'{"model": "%s", "prompt": "%s", "seed": %s}'
        % (MODEL.encode(), SECRET.encode(), b"9" * 4301),
        None,
        "invalid_json",
    ),
    (
        "/v1/chat/completions",
        b'{"model": "%s", "messages": [{"role": "user", "content": [%s, %s]}]}'
        % ((MODEL.encode(),) + (b'{"type": "text", "text": "%s"}' % PART.encode(),) * 2),
        "messages",
        "invalid_value",
    ),
    (
        "/v1/chat/completions",
        b'{"model": "%s", "messages": [{"role": "user", "content": "%s"}], "max_tokens": 1000001}'
        % (MODEL.encode(), SECRET.encode()),
        "max_tokens",
        "invalid_value",
    ),
    (
        "/v1/chat/completions",
        b'{"model": "%s", "messages": [{"role": "wizard", "content": "%s"}]}'
        % (MODEL.encode(), SECRET.encode()),
        "messages",
        "invalid_value",
    ),
]


@pytest.mark.parametrize(("path", "body", "param", "code"), BODIES)
async def test_hostile_bodies_are_400s_without_traceback_or_content_in_the_log(
    served: LiveGateway,
    gateway_log: io.StringIO,
    path: str,
    body: bytes,
    param: str | None,
    code: str,
) -> None:
    async with served.client() as client:
        response = await client.post(
            path, content=body, headers={"content-type": "application/json"}
        )
        assert response.status_code == 400, response.text[:500]
        error = response.json()["error"]
        assert (error["param"], error["code"], error["type"]) == (
            param,
            code,
            "invalid_request_error",
        )
        assert SECRET not in response.text
        # The gateway still answers at once.
        assert (await client.get("/health")).status_code == 200
    logged = gateway_log.getvalue()
    assert "Traceback" not in logged
    assert SECRET not in logged


@pytest.mark.parametrize(
    ("url", "param"),
    [
        ("/v1/providers/%3Ax/status", "provider_id"),
        ("/v1/providers/%3Ax/reputation", "provider_id"),
        ("/v1/audits?limit=abc", "limit"),
        ("/v1/audits?before=99999999999999999999999", "before"),
        ("/v1/audits?provider=nope", "provider"),
        ("/v1/audit-cases?status=weird", "status"),
        ("/v1/account/usage?limit=0", "limit"),
    ],
)
async def test_bad_path_and_query_parameters_are_named_cleanly(
    gateway: LiveGateway, gateway_log: io.StringIO, url: str, param: str
) -> None:
    async with gateway.client() as client:
        response = await client.get(url)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param
    assert error["code"] == "invalid_value"
    assert "{'type'" not in error["message"] and "'loc'" not in error["message"]
    assert "Traceback" not in gateway_log.getvalue()


async def test_an_unexpected_error_is_one_log_line_and_an_openai_500(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def broken(scope: Any, receive: Any, send: Any) -> None:
        raise ValueError(f"something quoted the client: {SECRET}")

    app = RequestIdAndBodyLimit(broken, max_body_bytes=1024)
    transport = httpx.ASGITransport(app=app)
    caplog.set_level(logging.DEBUG)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        first = await client.post("/v1/completions", content=b"{}")
        caplog.clear()
        second = await client.post("/v1/completions", content=b"{}")
    for response in (first, second):
        assert response.status_code == 500
        assert response.json() == {
            "error": {
                "message": "The gateway hit an internal error; retry the request.",
                "type": "server_error",
                "param": None,
                "code": None,
            }
        }
    request_id = second.headers["x-request-id"]
    # The stack was logged once for the first error; the second is one line.
    (line,) = [r.getMessage() for r in caplog.records if r.name.startswith("tessera")]
    assert "ValueError" in line and request_id in line and "test_hostile_inputs.py" in line
    assert SECRET not in line
    assert all(r.exc_info is None for r in caplog.records)
