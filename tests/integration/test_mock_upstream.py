"""bench/mock_upstream.py as a real subprocess: what the official client, a keep-alive
HTTP client and our provider agent's OpenAI upstream backend each get from it.

The front-door benchmark measures Tessera and LiteLLM against this mock, so it must speak
the wire they speak: a mock our agent refused would measure nothing.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tessera.config import ProviderSettings
from tessera.protocol.receipts import verify_receipt_signature
from tessera.protocol.signing import new_signing_key
from tessera.protocol.wire import ChatMessage, Chunk, Done, Frame, Job, JobError, SamplingParams
from tessera.provider.agent import ServedModel
from tessera.provider.backends.base import CancelToken, Delta, Finish
from tessera.provider.backends.openai_upstream import OpenAIUpstreamTextBackend
from tessera.provider.jobs import ReceiptSigner, run_text_job
from tessera.provider.loading import UpstreamSpec, load_upstream

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

REPO = Path(__file__).resolve().parents[2]
MOCK = REPO / "bench" / "mock_upstream.py"
WORDS = [" The", " quick", " brown", " fox", " jumps", " over"]
WEIGHTS = "ab" * 32


@dataclass(frozen=True, slots=True)
class Mock:
    base_url: str  # ends in /v1
    process: subprocess.Popen[str]


@contextlib.contextmanager
def running_mock(*options: str) -> Iterator[Mock]:
    """The mock on a free port, ready; always terminated."""
    cmd = [sys.executable, str(MOCK), "--port", "0", *options]
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(x) for x in process.stdout or []])
    reader.start()
    try:
        deadline, port = time.monotonic() + 20, None
        while port is None and time.monotonic() < deadline and process.poll() is None:
            with contextlib.suppress(queue.Empty):
                line = lines.get(timeout=0.2)
                if line.startswith("READY "):
                    port = int(line.split()[1])
        if port is None:
            process.kill()
            raise RuntimeError(f"the mock did not start: {process.communicate()[1][-2000:]}")
        yield Mock(f"http://127.0.0.1:{port}/v1", process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        reader.join(timeout=10)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture(scope="module")
def mock() -> Iterator[Mock]:
    with running_mock("--tokens", "6") as up:
        yield up


def client(mock: Mock) -> openai.OpenAI:
    return openai.OpenAI(base_url=mock.base_url, api_key="unused", max_retries=0, timeout=10)


CHAT = [{"role": "user", "content": "Tell me a story about a fox."}]


# ---------------------------------------------------------------- the official client


def test_the_openai_client_gets_a_whole_answer(mock: Mock) -> None:
    with client(mock) as c:
        answer = c.chat.completions.create(model="m", messages=CHAT, max_tokens=4)  # type: ignore[arg-type]
        text = c.completions.create(model="m", prompt="Once upon a time", max_tokens=100)
    assert answer.choices[0].message.content == "".join(WORDS[:4])
    assert answer.choices[0].finish_reason == "length"
    assert answer.usage is not None and answer.usage.completion_tokens == 4
    assert text.choices[0].text == "".join(WORDS)
    assert text.choices[0].finish_reason == "stop"
    assert text.usage is not None and text.usage.completion_tokens == 6


def test_the_openai_client_gets_a_streamed_answer_with_token_ids(mock: Mock) -> None:
    with client(mock) as c:
        stream = c.chat.completions.create(
            model="m",
            messages=CHAT,  # type: ignore[arg-type]
            max_tokens=5,
            stream=True,
            logprobs=True,
            top_logprobs=2,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    entries = [
        e
        for ch in chunks
        if ch.choices and ch.choices[0].logprobs
        for e in ch.choices[0].logprobs.content or []
    ]
    assert text == "".join(WORDS[:5])
    assert [e.token for e in entries] == [f"token_id:{100 + i}" for i in range(5)]
    assert all(e.logprob < 0 and len(e.top_logprobs) == 2 for e in entries)
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 5


def test_a_bad_body_gets_an_openai_error(mock: Mock) -> None:
    with client(mock) as c, pytest.raises(openai.BadRequestError):
        c.chat.completions.create(model="m", messages="not a list", max_tokens=4)  # type: ignore[arg-type]


# ---------------------------------------------------------------- keep-alive


def test_requests_reuse_one_connection() -> None:
    with running_mock("--chunk-delay-ms", "5") as up, httpx.Client(base_url=up.base_url) as http:
        body = {"model": "m", "messages": CHAT, "max_tokens": 4}
        first = http.post("chat/completions", json=body)
        with http.stream("POST", "chat/completions", json={**body, "stream": True}) as streamed:
            events = [line for line in streamed.iter_lines() if line.startswith("data: ")]
        last = http.get("models")
    assert first.status_code == streamed.status_code == last.status_code == 200
    assert events[-1] == "data: [DONE]"
    connections = {r.headers["x-mock-connection"] for r in (first, streamed, last)}
    assert len(connections) == 1


def test_pipelined_requests_are_answered_in_order(mock: Mock) -> None:
    host, port = mock.base_url.removeprefix("http://").removesuffix("/v1").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(
            b"GET /health HTTP/1.1\r\nHost: x\r\n\r\nGET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        got = b""
        while got.count(b"HTTP/1.1 200") < 2 or not got.endswith(b"}]}"):
            piece = sock.recv(65536)
            if not piece:
                break
            got += piece
    assert got.index(b'{"status":"ok"}') < got.index(b'"object":"list"')


# ---------------------------------------------------------------- our provider agent


def _served(mock: Mock) -> ServedModel:
    """What `tessera provider --upstream URL --upstream-model mock ...` loads."""
    spec = UpstreamSpec(
        base_url=mock.base_url,
        upstream_model="mock",
        served_name="mock-served",
        weights_sha256=WEIGHTS,
        kind="text",
        context_length=4096,
    )
    return load_upstream(spec, ProviderSettings(price_output_per_mtok=1000))


def _upstream_backend(mock: Mock) -> OpenAIUpstreamTextBackend:
    backend = _served(mock).backend
    assert isinstance(backend, OpenAIUpstreamTextBackend)
    return backend


async def test_the_upstream_backend_reads_token_ids_logprobs_and_usage(mock: Mock) -> None:
    backend = _upstream_backend(mock)
    try:
        params = SamplingParams(max_tokens=3, temperature=0.0, logprobs=True, top_logprobs=2)
        prompt = [ChatMessage(role="user", content="Tell me a story.")]
        chat = [e async for e in backend.stream(prompt, params, CancelToken())]
        ids = [
            e
            async for e in backend.stream(
                [5, 6, 7], params.model_copy(update={"max_tokens": 50}), CancelToken()
            )
        ]
    finally:
        await backend.close()
    deltas = [e for e in chat if isinstance(e, Delta)]
    assert "".join(d.text for d in deltas) == "".join(WORDS[:3])
    assert [lp.token_id for d in deltas for lp in d.logprobs] == [100, 101, 102]
    assert all(len(lp.top) == 2 for d in deltas for lp in d.logprobs)
    assert chat[-1] == Finish("length", 4, 3)
    assert [lp.token_id for e in ids if isinstance(e, Delta) for lp in e.logprobs] == list(
        range(100, 106)
    )
    assert ids[-1] == Finish("stop", 3, 6)


async def test_the_provider_agent_serves_a_job_from_the_mock(mock: Mock) -> None:
    served = _served(mock)
    backend = served.backend
    assert isinstance(backend, OpenAIUpstreamTextBackend)
    job = Job(
        job_id="job-1",
        model="mock-served",
        kind="chat",
        messages=[ChatMessage(role="user", content="Tell me a story.")],
        params=SamplingParams(max_tokens=4, temperature=0.0),
    )
    frames: list[Frame] = []

    async def send(frame: Frame) -> None:
        frames.append(frame)

    try:
        await run_text_job(
            job, backend, send, CancelToken(), ReceiptSigner(new_signing_key(), served.offer)
        )
    finally:
        await backend.close()
    assert not [f for f in frames if isinstance(f, JobError)]
    chunks = [f for f in frames if isinstance(f, Chunk)]
    assert "".join(c.text or "" for c in chunks) == "".join(WORDS[:4])
    assert [t for c in chunks for t in c.token_ids] == [100, 101, 102, 103]
    assert chunks[-1].finish_reason == "length"
    done = frames[-1]
    assert isinstance(done, Done) and done.receipt is not None
    assert done.usage.completion_tokens == 4 and done.usage.prompt_tokens == 4
    verify_receipt_signature(done.receipt, done.receipt_signature or "")


async def test_an_overrunning_upstream_sends_more_than_max_tokens() -> None:
    with running_mock("--tokens", "6", "--ignore-max-tokens") as up:
        backend = _upstream_backend(up)
        try:
            params = SamplingParams(max_tokens=2, temperature=0.0, logprobs=True)
            prompt = [ChatMessage(role="user", content="hi")]
            events: list[Any] = [e async for e in backend.stream(prompt, params, CancelToken())]
        finally:
            await backend.close()
    # The mock overran (6 tokens for max_tokens 2); the backend's finish counts only what
    # max_tokens allows, and the job runner cuts the deltas there (tests/provider).
    assert sum(len(e.logprobs) for e in events if isinstance(e, Delta)) == 6
    assert events[-1] == Finish("length", 1, 2)
