"""SIGTERM makes a real `tessera provider` process leave gracefully.

One real provider process (the tiny model on one CPU thread) dials a gateway played by
this test over a real WebSocket, speaking the wire protocol, so the test can see every
frame the provider sends and send it a job after its goodbye, which a real gateway never
routes. On SIGTERM the provider must say goodbye, refuse new work as retryable ``busy``,
finish and sign the job it is running, close the socket and exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import sys
import weakref
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from tessera.protocol import signing
from tessera.protocol.receipts import verify_receipt_signature
from tessera.protocol.wire import (
    REGISTER_DOMAIN,
    ChatMessage,
    Done,
    Hello,
    Job,
    Register,
    SamplingParams,
    Welcome,
    frames_of,
    provider_frame_adapter,
)

from support.scripted_peers import free_port

pytestmark = pytest.mark.integration

MODEL = "tessera-tiny"
TOKENS = 60  # long enough to be mid-answer when SIGTERM lands (~20 ms a token here)
START_TIMEOUT_S = 180.0


class ScriptedGateway:
    """Accepts provider connections, checks their signed register, hands them over."""

    def __init__(self) -> None:
        self.connections: asyncio.Queue[tuple[ServerConnection, Register]] = asyncio.Queue()

    async def handler(self, ws: ServerConnection) -> None:
        nonce = secrets.token_hex(32)
        await ws.send(Hello(gateway_id="scripted", nonce=nonce).model_dump_json())
        register = provider_frame_adapter.validate_json(await ws.recv())
        assert isinstance(register, Register) and register.nonce == nonce
        caps = register.capabilities
        signing.verify(
            caps.public_key, REGISTER_DOMAIN, register.signed_payload(), register.signature
        )
        welcome = Welcome(provider_id=caps.public_key, heartbeat_interval_s=0.5)
        await ws.send(welcome.model_dump_json())
        await self.connections.put((ws, register))
        await ws.wait_closed()


_unread: weakref.WeakKeyDictionary[ServerConnection, list[str]] = weakref.WeakKeyDictionary()


async def next_frame(ws: ServerConnection, timeout_s: float = 60.0) -> dict[str, Any]:
    """The provider's next frame that is not a heartbeat (a message may carry several)."""
    unread = _unread.setdefault(ws, [])
    async with asyncio.timeout(timeout_s):
        while True:
            if not unread:
                unread.extend(frames_of(str(await ws.recv())))
            frame: dict[str, Any] = json.loads(unread.pop(0))
            if frame["type"] != "heartbeat":
                return frame


def story(job_id: str, seed: int) -> Job:
    return Job(
        job_id=job_id,
        model=MODEL,
        kind="chat",
        messages=[ChatMessage(role="user", content="Tell me a story about a fox.")],
        params=SamplingParams(max_tokens=TOKENS, temperature=1.0, seed=seed),
    )


async def run_job(ws: ServerConnection, job: Job) -> Done:
    await ws.send(job.model_dump_json())
    while True:
        frame = await next_frame(ws)
        if frame["type"] == "done":
            return Done.model_validate(frame)
        assert frame["type"] == "chunk", frame


@contextlib.asynccontextmanager
async def provider_process(
    tmp_path: Path, model_dir: Path, port: int
) -> AsyncIterator[asyncio.subprocess.Process]:
    log = (tmp_path / "provider.log").open("wb")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tessera.cli", "provider",
        "--gateway", f"http://127.0.0.1:{port}",
        "--model", str(model_dir),
        "--key-file", str(tmp_path / "provider.key"),
        "--threads", "1",
        "--max-concurrent-jobs", "2",
        "--sla-uptime", "99.5",
        "--no-retention",
        "--drain-timeout-s", "120",
        stdout=log,
        stderr=log,
        env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        log.close()


async def test_sigterm_says_goodbye_finishes_the_running_job_and_exits_0(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    gateway = ScriptedGateway()
    port = free_port()
    async with (
        serve(gateway.handler, "127.0.0.1", port),
        provider_process(tmp_path, tiny_model_dir, port) as process,
    ):
        ws, register = await asyncio.wait_for(gateway.connections.get(), START_TIMEOUT_S)
        caps = register.capabilities
        assert (caps.sla_uptime_bps, caps.no_retention) == (9_950, True)

        # A seed whose answer runs the full length (sampling with a seed is reproducible),
        # so the job below is surely still running when the signal lands.
        for seed in range(20):
            probe = await run_job(ws, story(f"probe-{seed}", seed))
            if probe.usage.completion_tokens == TOKENS:
                break
        else:
            pytest.fail("no seed kept the tiny model talking")

        await ws.send(story("running", seed).model_dump_json())
        first = await next_frame(ws)
        assert (first["type"], first["job_id"]) == ("chunk", "running")
        process.send_signal(signal.SIGTERM)

        frames = [await next_frame(ws)]
        while frames[-1]["type"] == "chunk":
            frames.append(await next_frame(ws))
        assert frames[-1]["type"] == "goodbye", frames[-1]

        # Work that still arrives is refused, retryably: the gateway sends it elsewhere.
        await ws.send(story("late", seed).model_dump_json())
        while True:
            frame = await next_frame(ws)
            frames.append(frame)
            if frame["type"] == "done":
                break
            assert frame["type"] in ("chunk", "job_error"), frame
        refusals = [f for f in frames if f["type"] == "job_error"]
        assert [(f["job_id"], f["code"], f["retryable"]) for f in refusals] == [
            ("late", "busy", True)
        ]

        # The running job finished in full, with the same output as before and a receipt.
        done = Done.model_validate(frames[-1])
        assert done.job_id == "running"
        assert done.usage.completion_tokens == TOKENS
        assert done.receipt is not None and done.receipt_signature is not None
        assert done.receipt.output_sha256 == (probe.receipt.output_sha256 if probe.receipt else "")
        verify_receipt_signature(done.receipt, done.receipt_signature)

        with pytest.raises(ConnectionClosed) as closed:
            await next_frame(ws, timeout_s=30)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000
        assert await asyncio.wait_for(process.wait(), 30) == 0
    # It left for good: no reconnection came after the goodbye.
    assert gateway.connections.empty()
