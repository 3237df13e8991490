"""JSON logs: one object per line, and a line written while serving a request carries
that request's id (the one in its x-request-id header), even from code that never saw it."""

from __future__ import annotations

import asyncio
import io
import json
import logging

import pytest

from tessera.gateway.events import RequestFinished
from tessera.log_format import REQUEST_ID, json_handler

from support.scripted_peers import LiveGateway, answer, chat_body, priced

pytestmark = pytest.mark.integration


async def test_a_line_logged_inside_a_request_names_it(gateway: LiveGateway) -> None:
    out = io.StringIO()
    handler = json_handler(out)
    logger = logging.getLogger("tessera")
    logger.addHandler(handler)

    def broken(event: RequestFinished) -> None:
        raise RuntimeError("a subscriber that fails")

    gateway.app.state.gateway.events.subscribe(RequestFinished, broken)
    try:
        peer, beat = await priced(gateway)
        async with gateway.client() as client:
            request = asyncio.create_task(client.post("/v1/chat/completions", json=chat_body()))
            await answer(peer, await peer.recv())
            response = await request
        beat.cancel()
    finally:
        logger.removeHandler(handler)
    assert response.status_code == 200, response.text  # a failing subscriber harms no one
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    failed = [x for x in lines if "subscriber" in x["message"]]
    assert failed, lines
    line = failed[0]
    assert line["request_id"] == response.headers["x-request-id"]
    assert line["level"] == "error" and line["logger"].startswith("tessera")
    assert "RuntimeError: a subscriber that fails" in line["exception"]
    assert line["ts"].endswith("+00:00")


def test_outside_a_request_the_id_is_null_and_tasks_inherit_it() -> None:
    out = io.StringIO()
    log = logging.getLogger("tessera.test_json_logs")
    log.addHandler(json_handler(out))
    log.setLevel(logging.INFO)
    log.propagate = False

    async def serve(request_id: str) -> None:
        REQUEST_ID.set(request_id)
        await asyncio.create_task(asyncio.sleep(0))  # a task started while serving it
        await asyncio.gather(asyncio.to_thread(lambda: None), _log_in_a_task(log))

    async def both() -> None:
        await asyncio.gather(serve("req_a"), serve("req_b"))

    log.info("before any request")
    asyncio.run(both())
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert lines[0]["request_id"] is None and lines[0]["message"] == "before any request"
    assert sorted(x["request_id"] for x in lines[1:]) == ["req_a", "req_b"]
    assert all(x["message"] == "inside a task" for x in lines[1:])


async def _log_in_a_task(log: logging.Logger) -> None:
    log.info("inside a task")
