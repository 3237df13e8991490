"""The provider agent's connection loop: dial out, prove identity, take jobs, reconnect.

The agent dials OUT to each gateway (providers sit behind NAT) and keeps one WebSocket
per gateway. A lost connection is retried with capped exponential backoff and jitter;
jobs running on a lost connection are cancelled, since nobody can receive their output.
Concurrency is bounded across all gateways by ``max_concurrent_jobs``; audits (re-scoring
another provider's output, see auditing.py) take a slot like any job.

Leaving on purpose (:meth:`ProviderAgent.leave`, on SIGTERM or Ctrl-C from the CLI) says
goodbye to every gateway, so none routes us new work or holds the time away against our
SLA; a job that still arrives is refused as retryable ``busy``; running jobs get up to
``drain_timeout_s`` to finish, then the sockets close and :meth:`run` returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
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
    Goodbye,
    Hardware,
    Heartbeat,
    HeartbeatAck,
    Hello,
    Job,
    JobError,
    ModelOffer,
    Register,
    Welcome,
    frames_of,
    gateway_frame_adapter,
    register_payload,
)
from tessera.provider.auditing import ScoreBatcher, run_audit
from tessera.provider.backends.base import CancelToken, EmbeddingBackend, TextBackend
from tessera.provider.cheques import ChequeKeeper
from tessera.provider.jobs import ReceiptSigner, run_embedding_job, run_text_job
from tessera.provider.outbox import Outbox

log = logging.getLogger("tessera.provider")
CONNECT_PATH = "/v1/providers/connect"
Running = dict[str, tuple[asyncio.Task[None], CancelToken]]
LOOP_EXIT_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class ServedModel:
    offer: ModelOffer
    backend: TextBackend | EmbeddingBackend


@dataclass(frozen=True, slots=True)
class _Link:
    """One welcomed gateway connection: what leaving needs to reach it."""

    ws: ClientConnection
    send: Callable[[Frame], Awaitable[None]]
    running: Running
    flush: Callable[[], Awaitable[None]]  # until every frame sent so far is written


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
            no_retention=settings.no_retention,
            sla_uptime_bps=settings.sla_uptime_bps,
        )
        self.on_status = on_status or (lambda url, status: None)
        self._slots = asyncio.Semaphore(settings.max_concurrent_jobs)
        self._signers = {m.offer.name: ReceiptSigner(key, m.offer) for m in models}
        # What each model's backend can do, judged once: an isinstance against a runtime
        # Protocol inspects every member, a few percent of a short job's cost.
        self._embeds = {
            m.offer.name: m.backend for m in models if isinstance(m.backend, EmbeddingBackend)
        }
        self._generates = {
            m.offer.name: m.backend for m in models if isinstance(m.backend, TextBackend)
        }
        # One batcher per text model, so audits that arrive together share a forward pass.
        self._batchers = {
            m.offer.name: ScoreBatcher(m.backend)
            for m in models
            if isinstance(m.backend, TextBackend)
        }
        self.jobs_done = 0
        self.audits_done = 0
        self._leaving = False
        self._stopping = asyncio.Event()  # set when leaving: ends reconnect waits
        self._hurry = asyncio.Event()  # a second signal: stop waiting for running jobs
        self._links: dict[str, _Link] = {}  # gateway URL -> its live, welcomed connection

    @property
    def provider_id(self) -> str:
        return self.capabilities.public_key

    @property
    def leaving(self) -> bool:
        return self._leaving

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Serve every configured gateway until cancelled, or until ``stop`` is set: then
        leave gracefully (:meth:`leave`) and return. A malformed URL is a ValueError now,
        before anything connects."""
        for url in self.settings.gateway_urls:
            websocket_url(url)
        async with asyncio.TaskGroup() as group:
            loops = [
                group.create_task(self._connection_loop(url)) for url in self.settings.gateway_urls
            ]
            cheques = None
            if self.settings.cheque_poll_s > 0:
                keeper = ChequeKeeper(
                    self.provider_id,
                    self.settings.gateway_urls,
                    self.settings.key_file.parent / "cheques",
                    self.settings.cheque_poll_s,
                )
                cheques = group.create_task(keeper.run())
            if stop is not None:
                await stop.wait()
                if cheques is not None:
                    cheques.cancel()
                await self.leave()
                # Each loop ends once its socket is closed; one stuck dialing is cut short.
                _, stuck = await asyncio.wait(loops, timeout=LOOP_EXIT_TIMEOUT_S)
                for task in stuck:
                    task.cancel()

    def hurry(self) -> None:
        """Stop waiting for running jobs while leaving (they are cancelled)."""
        self._hurry.set()

    async def leave(self, reason: str = "shutting down") -> None:
        """Say goodbye everywhere, refuse new work, let running jobs finish within
        ``drain_timeout_s`` (or until :meth:`hurry`), then close every connection."""
        if self._leaving:
            return
        self._leaving = True
        self._stopping.set()
        links = dict(self._links)

        async def goodbye(link: _Link) -> None:
            with contextlib.suppress(Exception):  # a hung gateway must not hold the others
                await asyncio.wait_for(link.send(Goodbye(reason=reason)), 5)

        await asyncio.gather(*(goodbye(link) for link in links.values()))
        work = [task for link in links.values() for task, _ in link.running.values()]
        for url, link in links.items():
            self.on_status(url, f"said goodbye; finishing {len(link.running)} running job(s)")
        log.info(
            "leaving: goodbye sent to %d gateway(s); draining %d job(s)", len(links), len(work)
        )
        if work:
            all_done = asyncio.ensure_future(asyncio.wait(work))
            hurry = asyncio.ensure_future(self._hurry.wait())
            try:
                await asyncio.wait(
                    [all_done, hurry],
                    timeout=self.settings.drain_timeout_s,
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                all_done.cancel()  # the wait, not the jobs
                hurry.cancel()
            unfinished = sum(1 for task in work if not task.done())
            if unfinished:
                log.warning("leaving with %d job(s) unfinished: they are cancelled", unfinished)

        async def close(link: _Link) -> None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(link.flush(), 5)  # the drained jobs' last frames
                await asyncio.wait_for(link.ws.close(1000, "goodbye"), 5)

        await asyncio.gather(*(close(link) for link in list(self._links.values())))

    async def _connection_loop(self, gateway_url: str) -> None:
        """Keep one gateway connected. Nothing one gateway does may end the others'."""
        delay = self.settings.backoff_initial_s
        while not self._leaving:
            welcomed = False
            try:
                welcomed = await self._session(gateway_url)
                reason = "connection closed"
            except RegistrationRefused as exc:
                reason = f"refused: {exc}"
            except (OSError, TimeoutError, websockets.WebSocketException) as exc:
                reason = f"{type(exc).__name__}: {exc}"
            except ValidationError as exc:
                reason = f"the gateway sent a malformed frame: {exc.errors()[:1]}"
            except Exception as exc:  # a gateway's bug must not take the agent down
                log.exception("gateway %s: unexpected failure", gateway_url)
                reason = f"{type(exc).__name__}: {exc}"
            if self._leaving:
                return
            if welcomed:
                delay = self.settings.backoff_initial_s
            wait = delay * random.uniform(0.5, 1.0)
            self.on_status(gateway_url, f"disconnected ({reason}); retrying in {wait:.1f}s")
            log.warning("gateway %s: %s; reconnecting in %.1fs", gateway_url, reason, wait)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), wait)
            delay = min(delay * 2, self.settings.backoff_max_s)

    async def _session(self, gateway_url: str) -> bool:
        """One connection; returns whether the gateway welcomed us before it ended."""
        url = gateway_url  # statuses and links are keyed by the URL the operator gave
        ws_url = websocket_url(gateway_url)
        # No per-message deflate: frames are small JSON, and compressing each one cost the
        # agent and the gateway more CPU than it saved on any link.
        async with connect(
            ws_url, open_timeout=10, max_size=32 * 1024 * 1024, compression=None
        ) as ws:
            welcome = await self._register(ws)
            self.on_status(url, f"connected as {welcome.provider_id[:12]}")
            log.info("registered with %s as %s", url, welcome.provider_id[:12])
            running: Running = {}
            outbox = Outbox(ws.send)
            send = outbox.send
            beat = asyncio.create_task(self._heartbeat(send, welcome.heartbeat_interval_s, running))
            link = _Link(ws, send, running, outbox.flush)
            self._links[url] = link
            try:
                if self._leaving:  # welcomed while leaving: take nothing, go
                    await send(Goodbye(reason="shutting down"))
                    await asyncio.wait_for(outbox.flush(), 5)
                    await ws.close(1000, "goodbye")
                async for raw in ws:
                    for text in frames_of(raw) if isinstance(raw, str) else (raw,):
                        await self._on_frame(text, send, running)
            except websockets.ConnectionClosed:
                pass
            finally:
                if self._links.get(url) is link:
                    del self._links[url]
                beat.cancel()
                for task, token in running.values():
                    token.cancel()
                    task.cancel()
                await asyncio.gather(*(t for t, _ in running.values()), return_exceptions=True)
                await outbox.close()
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
            if self._leaving:  # sent before the gateway read our goodbye: try elsewhere
                await send(  # type: ignore[misc]
                    JobError(
                        job_id=frame.job_id,
                        code="busy",
                        message="the provider is shutting down",
                        retryable=True,
                    )
                )
                return
            token = CancelToken(frame.tenant or "") if isinstance(frame, Job) else CancelToken()
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
                embeds = self._embeds.get(job.model)
                generates = self._generates.get(job.model)
                if job.kind == "embedding" and embeds is not None:
                    await run_embedding_job(job, embeds, reply, signer)
                elif job.kind != "embedding" and generates is not None:
                    await run_text_job(job, generates, reply, token, signer)
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
