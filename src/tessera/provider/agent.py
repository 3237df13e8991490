"""The provider agent's connection loop: dial out, prove identity, take jobs, reconnect.

The agent dials OUT to each gateway (providers sit behind NAT) and keeps one WebSocket
per gateway. A lost connection is retried with capped exponential backoff and jitter;
jobs running on a lost connection are cancelled, since nobody can receive their output.
Concurrency is bounded across all gateways by ``max_concurrent_jobs``; audits (re-scoring
another provider's output, see auditing.py) take a slot like any job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import websockets
from nacl.signing import SigningKey
from pydantic import ValidationError
from websockets.asyncio.client import ClientConnection, connect

from tessera import __version__
from tessera.config import ProviderSettings
from tessera.protocol import signing
from tessera.protocol.wire import (
    PROTOCOL_VERSION,
    REGISTER_DOMAIN,
    Audit,
    AuditResult,
    Cancel,
    Capabilities,
    ErrorFrame,
    Frame,
    Hardware,
    Heartbeat,
    HeartbeatAck,
    Hello,
    Job,
    JobError,
    ModelOffer,
    Register,
    Welcome,
    gateway_frame_adapter,
    register_payload,
)
from tessera.provider.auditing import ScoreBatcher, run_audit
from tessera.provider.backends.base import CancelToken, EmbeddingBackend, TextBackend
from tessera.provider.jobs import ReceiptSigner, run_embedding_job, run_text_job

log = logging.getLogger("tessera.provider")
CONNECT_PATH = "/v1/providers/connect"


@dataclass(frozen=True, slots=True)
class ServedModel:
    offer: ModelOffer
    backend: TextBackend | EmbeddingBackend


class RegistrationRefused(Exception):
    """The gateway said no to our register frame; the message says why."""


def websocket_url(gateway_url: str) -> str:
    """``http://host:port`` -> ``ws://host:port/v1/providers/connect`` (https -> wss)."""
    parts = urlsplit(gateway_url)
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme)
    if scheme is None or not parts.netloc:
        raise ValueError(f"gateway URL {gateway_url!r} must look like http://host:port")
    path = parts.path.rstrip("/")
    if not path.endswith(CONNECT_PATH):
        path += CONNECT_PATH
    return urlunsplit((scheme, parts.netloc, path, "", ""))


class ProviderAgent:
    def __init__(
        self,
        settings: ProviderSettings,
        key: SigningKey,
        models: list[ServedModel],
        hardware: Hardware,
        on_status: Callable[[str, str], None] | None = None,
    ) -> None:
        self.settings = settings
        self.key = key
        self.models = {m.offer.name: m for m in models}
        self.capabilities = Capabilities(
            public_key=signing.public_key_hex(key),
            agent_version=__version__,
            models=[m.offer for m in models],
            hardware=hardware,
            region=settings.region,
            max_concurrent_jobs=settings.max_concurrent_jobs,
            label=settings.label,
        )
        self.on_status = on_status or (lambda url, status: None)
        self._slots = asyncio.Semaphore(settings.max_concurrent_jobs)
        self._signers = {m.offer.name: ReceiptSigner(key, m.offer) for m in models}
        # One batcher per text model, so audits that arrive together share a forward pass.
        self._batchers = {
            m.offer.name: ScoreBatcher(m.backend)
            for m in models
            if isinstance(m.backend, TextBackend)
        }
        self.jobs_done = 0
        self.audits_done = 0

    @property
    def provider_id(self) -> str:
        return self.capabilities.public_key

    async def run(self) -> None:
        """Serve every configured gateway until cancelled."""
        async with asyncio.TaskGroup() as group:
            for url in self.settings.gateway_urls:
                group.create_task(self._connection_loop(url))

    async def _connection_loop(self, gateway_url: str) -> None:
        url = websocket_url(gateway_url)
        delay = self.settings.backoff_initial_s
        while True:
            welcomed = False
            try:
                welcomed = await self._session(url)
                reason = "connection closed"
            except RegistrationRefused as exc:
                reason = f"refused: {exc}"
            except (OSError, TimeoutError, websockets.WebSocketException) as exc:
                reason = f"{type(exc).__name__}: {exc}"
            if welcomed:
                delay = self.settings.backoff_initial_s
            wait = delay * random.uniform(0.5, 1.0)
            self.on_status(gateway_url, f"disconnected ({reason}); retrying in {wait:.1f}s")
            log.warning("gateway %s: %s; reconnecting in %.1fs", gateway_url, reason, wait)
            await asyncio.sleep(wait)
            delay = min(delay * 2, self.settings.backoff_max_s)

    async def _session(self, url: str) -> bool:
        """One connection; returns whether the gateway welcomed us before it ended."""
        async with connect(url, open_timeout=10, max_size=32 * 1024 * 1024) as ws:
            welcome = await self._register(ws)
            self.on_status(url, f"connected as {welcome.provider_id[:12]}")
            log.info("registered with %s as %s", url, welcome.provider_id[:12])
            running: dict[str, tuple[asyncio.Task[None], CancelToken]] = {}
            send_lock = asyncio.Lock()

            async def send(frame: Frame) -> None:
                async with send_lock:
                    await ws.send(frame.model_dump_json())

            beat = asyncio.create_task(self._heartbeat(send, welcome.heartbeat_interval_s, running))
            try:
                async for raw in ws:
                    await self._on_frame(raw, send, running)
            except websockets.ConnectionClosed:
                pass
            finally:
                beat.cancel()
                for task, token in running.values():
                    token.cancel()
                    task.cancel()
                await asyncio.gather(*(t for t, _ in running.values()), return_exceptions=True)
            return True

    async def _register(self, ws: ClientConnection) -> Welcome:
        hello = gateway_frame_adapter.validate_json(await asyncio.wait_for(ws.recv(), 10))
        if not isinstance(hello, Hello):
            raise RegistrationRefused(f"expected hello, got {hello.type}")
        payload = register_payload(hello.nonce, self.capabilities)
        register = Register(
            version=PROTOCOL_VERSION,
            nonce=hello.nonce,
            capabilities=self.capabilities,
            signature=signing.sign(self.key, REGISTER_DOMAIN, payload),
        )
        await ws.send(register.model_dump_json())
        answer = gateway_frame_adapter.validate_json(await asyncio.wait_for(ws.recv(), 10))
        if isinstance(answer, ErrorFrame):
            raise RegistrationRefused(f"{answer.code}: {answer.message}")
        if not isinstance(answer, Welcome):
            raise RegistrationRefused(f"expected welcome, got {answer.type}")
        return answer

    async def _heartbeat(
        self,
        send: Callable[[Frame], object],
        interval_s: float,
        running: dict[str, tuple[asyncio.Task[None], CancelToken]],
    ) -> None:
        while True:
            await send(Heartbeat(active_jobs=len(running)))  # type: ignore[misc]
            await asyncio.sleep(interval_s)

    async def _on_frame(
        self,
        raw: str | bytes,
        send: Callable[[Frame], object],
        running: dict[str, tuple[asyncio.Task[None], CancelToken]],
    ) -> None:
        try:
            frame = gateway_frame_adapter.validate_json(raw)
        except ValidationError as exc:
            log.warning("ignoring malformed frame from gateway: %s", exc.errors()[:1])
            return
        if isinstance(frame, Job | Audit):
            if frame.job_id in running:
                return
            token = CancelToken()
            work = (
                self._run_job(frame, send, token)  # type: ignore[arg-type]
                if isinstance(frame, Job)
                else self._run_audit(frame, send)  # type: ignore[arg-type]
            )
            task = asyncio.create_task(work)
            running[frame.job_id] = (task, token)
            task.add_done_callback(lambda _t, jid=frame.job_id: running.pop(jid, None))
        elif isinstance(frame, Cancel):
            entry = running.get(frame.job_id)
            if entry is not None:
                entry[1].cancel()
        elif isinstance(frame, ErrorFrame):
            log.warning("gateway says %s: %s", frame.code, frame.message)
        elif not isinstance(frame, HeartbeatAck):
            log.warning("ignoring unexpected %s frame", frame.type)

    async def _run_job(self, job: Job, send: Callable[[Frame], object], token: CancelToken) -> None:
        async def reply(frame: Frame) -> None:
            await send(frame)  # type: ignore[misc]

        served = self.models.get(job.model)
        if served is None:
            await reply(
                JobError(
                    job_id=job.job_id, code="model_not_served", message=job.model, retryable=True
                )
            )
            return
        if self._slots.locked():
            await reply(
                JobError(job_id=job.job_id, code="busy", message="at capacity", retryable=True)
            )
            return
        signer = self._signers[job.model]
        async with self._slots:
            try:
                if job.kind == "embedding" and isinstance(served.backend, EmbeddingBackend):
                    await run_embedding_job(job, served.backend, reply, signer)
                elif job.kind != "embedding" and isinstance(served.backend, TextBackend):
                    await run_text_job(job, served.backend, reply, token, signer)
                else:
                    await reply(
                        JobError(
                            job_id=job.job_id,
                            code="invalid_request",
                            message=f"{job.model} cannot do {job.kind} jobs",
                        )
                    )
                self.jobs_done += 1
            except (asyncio.CancelledError, websockets.ConnectionClosed):
                token.cancel()
                raise
            except Exception as exc:  # a backend bug must not take the agent down
                log.exception("job %s failed", job.job_id)
                with contextlib.suppress(Exception):
                    await reply(
                        JobError(
                            job_id=job.job_id,
                            code="backend_crashed",
                            message=f"{type(exc).__name__}: {exc}"[:2000],
                            retryable=False,
                        )
                    )

    async def _run_audit(self, audit: Audit, send: Callable[[Frame], object]) -> None:
        """Re-score another provider's output for the gateway (see auditing.py)."""

        async def reply(frame: Frame) -> None:
            await send(frame)  # type: ignore[misc]

        def refuse(code: str, message: str, retryable: bool = False) -> JobError:
            return JobError(
                job_id=audit.job_id, code=code, message=message[:2000], retryable=retryable
            )

        served = self.models.get(audit.job.model)
        if served is None:
            await reply(refuse("model_not_served", f"{audit.job.model} is not served here"))
            return
        if audit.weights_sha256 != served.offer.weights_sha256:
            await reply(
                refuse(
                    "weights_mismatch",
                    f"{audit.job.model} here has weights {served.offer.weights_sha256[:16]}…, "
                    f"the audit names {audit.weights_sha256[:16]}…",
                )
            )
            return
        if self._slots.locked():
            await reply(refuse("busy", "at capacity", retryable=True))
            return
        async with self._slots:
            try:
                answer = await run_audit(
                    audit, served.backend, self._batchers.get(audit.job.model), self.key, reply
                )
                if isinstance(answer, AuditResult):
                    self.audits_done += 1
            except (asyncio.CancelledError, websockets.ConnectionClosed):
                raise
            except Exception as exc:  # a backend bug must not take the agent down
                log.exception("audit %s failed", audit.job_id)
                with contextlib.suppress(Exception):
                    await reply(
                        refuse("backend_crashed", f"{type(exc).__name__}: {exc}", retryable=True)
                    )
