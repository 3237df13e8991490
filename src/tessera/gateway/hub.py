"""The provider hub: providers' WebSockets, the handshake, and jobs flowing over them.

Providers dial in here (they sit behind NAT); each connection proves its Ed25519 identity
by signing a fresh single-use nonce together with its capabilities. After that the hub
hands jobs to the session and routes the frames that come back to the job's queue.

Invariants: a provider's slot is taken before its job is sent and given back exactly
once (WebSocketJobStream.close); a provider that goes away wakes every job waiting on it with
ProviderGone; nothing a provider sends can raise out of ``serve``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace

from pydantic import ValidationError
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from tessera.config import GatewaySettings
from tessera.errors import NoCapacity
from tessera.gateway.cluster import Announced
from tessera.gateway.metrics import GatewayMetrics
from tessera.gateway.remote_jobs import BUSY, RemoteJobs, RemoteJobStream
from tessera.gateway.routing import no_route_error
from tessera.gateway.transport import JobEvent, JobStream, ProviderGone
from tessera.market.fair_share import RunningJobs, SharePolicy
from tessera.market.health import BreakerPolicy
from tessera.market.refusals import FALSE_REFUSAL, blames_client, refusal_disproved
from tessera.market.regions import CONTRADICTED, FIBRE_KM_PER_MS, region_check
from tessera.market.registry import LiveProvider, ProviderRegistry
from tessera.market.routing import Decision, NoRoute, Router, RouteRequest
from tessera.protocol import signing
from tessera.protocol.receipts import OutputDigest
from tessera.protocol.wire import (
    PROTOCOL_VERSION,
    REGISTER_DOMAIN,
    Audit,
    AuditResult,
    Cancel,
    Capabilities,
    Chunk,
    Done,
    ErrorFrame,
    Frame,
    Goodbye,
    Heartbeat,
    HeartbeatAck,
    Hello,
    Job,
    JobError,
    ModelOffer,
    Register,
    Welcome,
    frames_of,
    provider_frame_adapter,
)

log = logging.getLogger("tessera.gateway.hub")

POLICY_VIOLATION = 1008
LEAVING = "leaving"  # a model status: the provider said goodbye
TOO_MANY_FRAMES = "too_many_frames"  # a job's output overran its max_tokens
AUDITOR_BUSY = "the auditor is busy"


OnProviderSeen = Callable[[str, Capabilities], Awaitable[None]]
OnProviderGone = Callable[[str], None]
OnProviderLeaving = Callable[[str, str], None]
InitialStatus = Callable[[str, Capabilities], dict[str, str]]
AuditAnswer = AuditResult | JobError | ProviderGone


@dataclass(eq=False)
class ProviderSession:
    provider_id: str
    websocket: WebSocket
    last_seen: float
    jobs: dict[str, WebSocketJobStream] = field(default_factory=dict)
    audits: dict[str, asyncio.Future[AuditAnswer]] = field(default_factory=dict)
    bad_frames: int = 0
    leaving: bool = False  # said goodbye: gets no new work
    capabilities_json: str = ""  # as announced, for the other replicas (cluster.py)
    send_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def send(self, frame: Frame) -> None:
        async with self.send_lock:
            await self.websocket.send_text(frame.model_dump_json())


def tenant_tag(account: str, provider_id: str) -> str:
    """The account's tag at one provider (``Job.tenant``): stable, so the provider can
    share its compute fairly between accounts; keyed by the provider, so two providers
    cannot link their tags; one-way, so neither learns the account."""
    key = provider_id.encode()[:64]
    return hashlib.blake2b(account.encode(), key=key, digest_size=8).hexdigest()


def frame_budget(job: Job) -> int:
    """Most frames an honest provider can send for ``job``."""
    if job.kind == "embedding" or job.params is None:
        return 1  # the done frame
    choices = len(job.prompts) if job.prompts is not None else 1
    return choices * (job.params.max_tokens + 1) + 1


class WebSocketJobStream:
    """One job on a provider connected to this hub (a :class:`JobStream`)."""

    def __init__(
        self,
        hub: ProviderHub,
        session: ProviderSession,
        job: Job,
        offer: ModelOffer,
        account: str | None = None,
    ) -> None:
        self.hub = hub
        self.session = session
        self.job = job
        self.account = account  # who pays, counted in the hub's running jobs until closed
        self.queue: asyncio.Queue[JobEvent] = asyncio.Queue()
        self.finished = False
        # An honest provider sends at most one chunk per token plus a finish per choice;
        # anything beyond that budget is a flood, refused before it fills our memory.
        self.frames_left = frame_budget(job)
        self._closed = False
        # The offer (and so the price) the job was sent under, kept even if the provider
        # disconnects before the job is settled.
        self.offer = offer
        # Everything relayed so far, as the receipt must describe it (text jobs).
        self.digest = OutputDigest() if job.kind != "embedding" else None
        self.started_at = time.time()
        self.opened_at = time.monotonic()
        self.first_event_at: float | None = None  # when the first chunk (or done) came
        self.chunks = 0  # chunks received from the provider (not yet necessarily read)
        self.decision: Decision | None = None  # why the router chose this provider

    @property
    def provider_id(self) -> str:
        return self.session.provider_id

    async def next_event(self, timeout_s: float | None = None) -> JobEvent:
        event = await self.poll(timeout_s)
        if event is None:
            return ProviderGone(f"no output from the provider within {timeout_s:.0f}s")
        return event

    async def poll(self, timeout_s: float | None) -> JobEvent | None:
        """The next event, or None if none came within ``timeout_s`` (nothing is lost)."""
        queue = self.queue
        if not queue.empty():  # already here: no timer, no task
            event = queue.get_nowait()
        else:
            try:
                async with asyncio.timeout(timeout_s):
                    event = await queue.get()
            except TimeoutError:
                return None
        if self.first_event_at is None and isinstance(event, Chunk | Done):
            self.first_event_at = time.monotonic()
        if isinstance(event, Done | JobError | ProviderGone):
            self.finished = True
        return event

    async def close(self) -> None:
        """Give the slot back; tell the provider to stop if the job is still running."""
        if self._closed:
            return
        self._closed = True
        self.session.jobs.pop(self.job.job_id, None)
        if self.account is not None:
            self.hub.running.finished(self.account, self.job.model)
        self.hub.release(self.session.provider_id)
        if not self.finished:
            self.hub.note_cancelled(self.job.job_id)
            with contextlib.suppress(Exception):
                await self.session.send(Cancel(job_id=self.job.job_id))


class Wakeup:
    """A broadcast to every coroutine waiting for a slot, which no waiter can break.

    Each wait is on the current generation's Event; ``notify_all`` sets it and starts a
    new one. No lock is taken, so a wait that times out or is cancelled at any point
    (a client leaving) leaves nothing held. An ``asyncio.Condition`` under ``wait_for``
    did: cancelled during its timeout, it raised ``Lock is not acquired`` and left the
    lock held by an orphaned waiter, so nobody was woken again.
    """

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify_all(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, timeout_s: float) -> bool:
        """True once notified, False after ``timeout_s`` without a notification."""
        event = self._event
        try:
            async with asyncio.timeout(timeout_s):
                await event.wait()
        except TimeoutError:
            return False
        return True


class ProviderHub:
    def __init__(
        self,
        settings: GatewaySettings,
        registry: ProviderRegistry,
        metrics: GatewayMetrics,
        on_provider_seen: OnProviderSeen | None = None,
        rng: random.Random | None = None,
        initial_status: InitialStatus | None = None,
        on_provider_gone: OnProviderGone | None = None,
        on_provider_leaving: OnProviderLeaving | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.metrics = metrics
        self.on_provider_seen = on_provider_seen
        self.initial_status = initial_status
        self.on_provider_gone = on_provider_gone
        self.on_provider_leaving = on_provider_leaving
        self.rng = rng or random.Random()
        self.router = Router(self.rng, settings.route_sample)
        self.breaker = BreakerPolicy(
            settings.breaker_failures, settings.breaker_backoff_s, settings.breaker_backoff_max_s
        )
        self.sessions: dict[str, ProviderSession] = {}
        self.shares = SharePolicy(settings.account_slot_headroom_fraction)
        self.running = RunningJobs()
        self._slot_freed = Wakeup()
        self._cancelled: OrderedDict[str, None] = OrderedDict()
        # Providers connected to other replicas, reached over the bus (None: only ours).
        self.remote: RemoteJobs | None = None
        self.on_sessions_changed: Callable[[], None] | None = None

    def attach_remote(self, remote: RemoteJobs) -> None:
        """Route to providers on other replicas too, through ``remote``."""
        self.remote = remote
        remote.on_closed = self._remote_closed

    # ------------------------------------------------------------ jobs

    async def open_job(
        self, job: Job, route: RouteRequest, exclude: set[str]
    ) -> WebSocketJobStream | RemoteJobStream:
        """Take a slot on the provider the router picks for ``job``; send the job.

        ``exclude`` (the providers that failed this request) grows if a send fails.
        Waits up to queue_timeout_s while every allowed provider is busy; raises the
        router's explanation (NoCapacity or InvalidRequest) when nobody can take it.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.queue_timeout_s
        route = replace(route, exclude=exclude)
        account = route.account
        while True:
            now = time.monotonic()
            pool = self.registry.pool(job.model)
            held = 0 if account is None else self.running.count(account, job.model)
            if held and held >= self.shares.most(pool.slots):
                # The account holds its share of the model: the rest stays free for
                # others, so it waits for one of its own jobs to end.
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise NoCapacity(
                        f"your account already runs {held} requests on model '{job.model}', "
                        "its share of the providers serving it; retry when one has finished"
                    )
                await self._slot_freed.wait(min(remaining, 1.0))
                continue
            decision = self.router.choose(pool, route, now)
            if isinstance(decision, NoRoute):
                remaining = deadline - loop.time()
                if not decision.busy or remaining <= 0:
                    raise no_route_error(decision)
                await self._slot_freed.wait(min(remaining, 1.0))
                continue
            chosen = decision.provider
            sent = job
            if account is not None:
                sent = job.model_copy(update={"tenant": tenant_tag(account, chosen.provider_id)})
            if self.remote is not None and chosen.provider_id not in self.sessions:
                remote = await self._open_remote(chosen, sent, account, exclude)
                if remote is None:
                    continue
                remote.decision = decision
                chosen.health.started(now)
                return remote
            stream = self._start(chosen, sent, account)
            if stream is None:
                exclude.add(chosen.provider_id)
                continue
            stream.decision = decision
            chosen.health.started(now)
            try:
                await stream.session.send(sent)
            except Exception:
                await stream.close()
                exclude.add(chosen.provider_id)
                continue
            return stream

    async def _open_remote(
        self, chosen: LiveProvider, job: Job, account: str | None, exclude: set[str]
    ) -> RemoteJobStream | None:
        """Send ``job`` through the replica holding ``chosen``'s socket; None if that
        replica refused it (busy: full until its next announcement; gone: excluded)."""
        assert self.remote is not None
        provider_id = chosen.provider_id
        self.registry.acquire(provider_id)
        if account is not None:
            self.running.started(account, job.model)
        opened = await self.remote.open(chosen, job, account)
        if isinstance(opened, RemoteJobStream):
            return opened
        if account is not None:
            self.running.finished(account, job.model)
        self.release(provider_id)
        if opened == BUSY:
            self.registry.set_load(provider_id, chosen.max_concurrent_jobs)
        else:
            exclude.add(provider_id)
        return None

    def announced(self) -> list[Announced]:
        """The providers connected here, as the other replicas are told of them."""
        out = []
        for provider_id, session in self.sessions.items():
            live = self.registry.get(provider_id)
            if live is None or not session.capabilities_json:
                continue
            out.append(
                Announced(
                    provider_id, session.capabilities_json, dict(live.status), live.active_jobs
                )
            )
        return out

    def _remote_closed(self, stream: RemoteJobStream) -> None:
        if stream.account is not None:
            self.running.finished(stream.account, stream.job.model)
        self.release(stream.provider_id)

    def job_succeeded(self, stream: JobStream, completion_tokens: int) -> None:
        """Fold a finished job's speed into its provider's record; close its breaker."""
        first = stream.first_event_at
        ttft_ms = None if first is None else (first - stream.opened_at) * 1000
        generation_s = 0.0 if first is None else time.monotonic() - first
        self.registry.health(stream.provider_id).succeeded(ttft_ms, completion_tokens, generation_s)

    def job_failed(self, provider_id: str, reason: str) -> None:
        """A job failed by the provider's fault: may open its circuit breaker."""
        health = self.registry.health(provider_id)
        if health.failed(self.breaker, reason, time.monotonic()):
            self.metrics.breaker_opened.inc()
            log.warning(
                "circuit breaker open for provider %s for %.0fs after: %s",
                provider_id[:12],
                health.backoff_s,
                reason,
            )

    async def open_job_on(self, provider_id: str, job: Job) -> WebSocketJobStream:
        """Send ``job`` to one given provider, routed for the model or not (join challenges).

        Raises NoCapacity if that provider is gone or has no free slot.
        """
        live = self.registry.get(provider_id)
        if live is None or live.free_slots <= 0 or job.model not in live.offers:
            raise NoCapacity(f"provider {provider_id[:12]} cannot take a job now")
        stream = self._start(live, job)
        if stream is None:
            raise NoCapacity(f"provider {provider_id[:12]} is not connected")
        try:
            await stream.session.send(job)
        except Exception:
            await stream.close()
            raise NoCapacity(f"provider {provider_id[:12]} went away") from None
        return stream

    async def request_audit(self, provider_id: str, audit: Audit, timeout_s: float) -> AuditAnswer:
        """Ask one provider to audit; its answer, or ProviderGone if it fails to give one.

        The audit takes one of the provider's slots while it runs. A provider connected to
        another replica is asked through that replica.
        """
        if provider_id not in self.sessions and self.remote is not None:
            live = self.registry.get(provider_id)
            if live is None:
                return ProviderGone("the auditor is not connected")
            if live.free_slots <= 0:
                return ProviderGone(AUDITOR_BUSY)
            self.registry.acquire(provider_id)
            try:
                return await self.remote.audit(provider_id, audit, timeout_s)
            finally:
                self.release(provider_id)
        return await self.request_local_audit(provider_id, audit, timeout_s)

    async def request_local_audit(
        self, provider_id: str, audit: Audit, timeout_s: float
    ) -> AuditAnswer:
        """Ask a provider connected here to audit (see :meth:`request_audit`)."""
        session = self.sessions.get(provider_id)
        live = self.registry.get(provider_id)
        if session is None or live is None:
            return ProviderGone("the auditor is not connected")
        if live.free_slots <= 0:
            return ProviderGone(AUDITOR_BUSY)
        self.registry.acquire(provider_id)
        answer: asyncio.Future[AuditAnswer] = asyncio.get_running_loop().create_future()
        session.audits[audit.job_id] = answer
        try:
            await session.send(audit)
            return await asyncio.wait_for(answer, timeout_s)
        except TimeoutError:
            return ProviderGone(f"no audit result within {timeout_s:.0f}s")
        except Exception as exc:
            return ProviderGone(f"could not reach the auditor: {type(exc).__name__}")
        finally:
            session.audits.pop(audit.job_id, None)
            self.release(provider_id)

    def _start(
        self, chosen: LiveProvider, job: Job, account: str | None = None
    ) -> WebSocketJobStream | None:
        session = self.sessions.get(chosen.provider_id)
        if session is None:
            return None
        self.registry.acquire(chosen.provider_id)
        stream = WebSocketJobStream(self, session, job, chosen.offers[job.model], account)
        if account is not None:
            self.running.started(account, job.model)
        session.jobs[job.job_id] = stream
        return stream

    def release(self, provider_id: str) -> None:
        self.registry.release(provider_id)
        self._slot_freed.notify_all()

    async def notify_slot(self) -> None:
        """Wake requests waiting for a provider: a slot freed or a provider became routable."""
        self._slot_freed.notify_all()

    def note_cancelled(self, job_id: str) -> None:
        """Remember a cancelled job so its late frames are dropped, not counted as abuse."""
        self._cancelled[job_id] = None
        while len(self._cancelled) > 10_000:
            self._cancelled.popitem(last=False)

    # ------------------------------------------------------------ connections

    async def serve(self, websocket: WebSocket) -> None:
        """Run one provider connection from handshake to close. Never raises."""
        await websocket.accept()
        session: ProviderSession | None = None
        try:
            session = await self._handshake(websocket)
            if session is None:
                return
            await self._run_session(session)
        except WebSocketDisconnect:
            pass
        except Exception:
            log.exception("provider connection failed")
        finally:
            if session is not None:
                self._drop(session, "provider disconnected")
            if websocket.application_state != WebSocketState.DISCONNECTED:
                with contextlib.suppress(Exception):
                    await websocket.close()

    async def _handshake(self, websocket: WebSocket) -> ProviderSession | None:
        nonce = secrets.token_hex(32)
        hello = Hello(gateway_id=self.settings.gateway_id, nonce=nonce)
        await websocket.send_text(hello.model_dump_json())
        sent_at = time.monotonic()
        try:
            async with asyncio.timeout(self.settings.register_timeout_s):
                message = await websocket.receive()
        except TimeoutError:
            await self._refuse(websocket, "register_timeout", "no register frame in time")
            return None
        if message["type"] == "websocket.disconnect":
            return None
        # One round trip plus the provider's signing: an upper bound on the true round
        # trip, so it can only make a declared country look possible, never impossible.
        rtt_ms = (time.monotonic() - sent_at) * 1000
        raw = message.get("text")
        if raw is None:  # a binary frame: starlette's receive_text would raise KeyError
            await self._refuse(websocket, "binary_frame", "frames are JSON text, not binary")
            return None
        try:
            frame = provider_frame_adapter.validate_json(raw)
        except ValidationError as exc:
            await self._refuse(websocket, "malformed_frame", _brief(exc))
            return None
        if not isinstance(frame, Register):
            await self._refuse(websocket, "expected_register", f"got '{frame.type}' first")
            return None
        if frame.version != PROTOCOL_VERSION:
            await self._refuse(
                websocket,
                "version_mismatch",
                f"gateway speaks protocol {PROTOCOL_VERSION}, provider {frame.version}: upgrade",
            )
            return None
        # A nonce is good only on the connection it was issued to, and only for its one
        # register frame (a second register there is refused as unexpected).
        if frame.nonce != nonce:
            self.metrics.auth_failures.labels(reason="nonce").inc()
            await self._refuse(websocket, "bad_nonce", "nonce is not the one issued (replay?)")
            return None
        caps = frame.capabilities
        try:
            signing.verify(
                caps.public_key, REGISTER_DOMAIN, frame.signed_payload(), frame.signature
            )
        except signing.SignatureInvalid:
            self.metrics.auth_failures.labels(reason="signature").inc()
            await self._refuse(websocket, "bad_signature", "register signature does not verify")
            return None

        provider_id = caps.public_key
        old = self.sessions.get(provider_id)
        if old is not None:
            self._drop(old, "replaced by a newer connection from the same key")
            with contextlib.suppress(Exception):
                await old.websocket.close(code=1000, reason="replaced")
        session = ProviderSession(
            provider_id,
            websocket,
            last_seen=time.monotonic(),
            capabilities_json=caps.model_dump_json(),
        )
        self.sessions[provider_id] = session
        status = self.initial_status(provider_id, caps) if self.initial_status else None
        checked = region_check(
            caps.region, rtt_ms, self.settings.location_lat_deg, self.settings.location_lon_deg
        )
        if checked == CONTRADICTED:
            log.warning(
                "provider %s declares %s, but its %.1f ms round trip puts it within %.0f km "
                "of this gateway",
                provider_id[:12],
                caps.region,
                rtt_ms,
                rtt_ms * FIBRE_KM_PER_MS / 2,
            )
        self.registry.add(
            provider_id, caps, now=time.time(), status=status, rtt_ms=rtt_ms, region_check=checked
        )
        self.metrics.providers_connected.set(len(self.sessions))
        await session.send(
            Welcome(
                provider_id=provider_id, heartbeat_interval_s=self.settings.heartbeat_interval_s
            )
        )
        log.info("provider %s connected (%s, %s)", provider_id[:12], caps.label, caps.region)
        if self.on_provider_seen is not None:
            asyncio.get_running_loop().create_task(self.on_provider_seen(provider_id, caps))
        await self.notify_slot()
        if self.on_sessions_changed is not None:
            self.on_sessions_changed()
        return session

    async def _refuse(self, websocket: WebSocket, code: str, message: str) -> None:
        log.warning("refused provider connection: %s: %s", code, message)
        with contextlib.suppress(Exception):
            await websocket.send_text(ErrorFrame(code=code, message=message).model_dump_json())
            await websocket.close(code=POLICY_VIOLATION, reason=code)

    async def _run_session(self, session: ProviderSession) -> None:
        watchdog = asyncio.create_task(self._watch_heartbeats(session))
        try:
            while True:
                message = await session.websocket.receive()
                if message["type"] == "websocket.disconnect":
                    return
                session.last_seen = time.monotonic()
                raw = message.get("text")
                if raw is None:
                    if not await self._bad_frame(session, "binary_frame", "frames are JSON text"):
                        return
                    continue
                for text in frames_of(raw):
                    if not await self._handle_frame(session, text):
                        return
        finally:
            watchdog.cancel()

    async def _handle_frame(self, session: ProviderSession, raw: str) -> bool:
        """Route one frame; False once the session must end."""
        try:
            frame = provider_frame_adapter.validate_json(raw)
        except ValidationError as exc:
            return await self._bad_frame(session, "malformed_frame", _brief(exc))
        if isinstance(frame, Heartbeat):
            await session.send(HeartbeatAck())
            return True
        if isinstance(frame, Chunk | Done | JobError):
            audit = session.audits.get(frame.job_id) if isinstance(frame, JobError) else None
            if audit is not None:
                if not audit.done():
                    audit.set_result(frame)
                return True
            stream = session.jobs.get(frame.job_id)
            if stream is None:
                if frame.job_id in self._cancelled:
                    return True
                return await self._bad_frame(
                    session, "unknown_job", f"job {frame.job_id} is not yours"
                )
            stream.frames_left -= 1
            if stream.frames_left < 0:
                await self._overran(session, stream)
                return True
            if isinstance(frame, Chunk):
                stream.chunks += 1
                if stream.digest is not None:
                    stream.digest.add(frame)
            elif isinstance(frame, JobError):
                frame = self._judge(stream, frame)
            stream.queue.put_nowait(frame)
            return True
        if isinstance(frame, AuditResult):
            pending = session.audits.get(frame.job_id)
            if pending is None:
                return await self._bad_frame(
                    session, "unknown_audit", f"audit {frame.job_id} was not asked of you"
                )
            if not pending.done():
                pending.set_result(frame)
            return True
        if isinstance(frame, Goodbye):
            self._leaving(session, frame.reason)
            return True
        if isinstance(frame, ErrorFrame):
            log.warning(
                "provider %s reports %s: %s", session.provider_id[:12], frame.code, frame.message
            )
            return True
        return await self._bad_frame(
            session, "unexpected_frame", f"'{frame.type}' not expected now"
        )

    async def _overran(self, session: ProviderSession, stream: WebSocketJobStream) -> None:
        """The provider sent more frames than ``max_tokens`` allows (an upstream server
        that ignores it, say): that job fails as the provider's fault and is cancelled,
        and its later frames are dropped. Its other jobs go on; disconnecting it would
        have failed them all for one job's excess."""
        job_id = stream.job.job_id
        session.jobs.pop(job_id, None)
        self.note_cancelled(job_id)
        self.metrics.frames_rejected.labels(code=TOO_MANY_FRAMES).inc()
        log.warning(
            "provider %s sent more frames than job %s allows; failing that job",
            session.provider_id[:12],
            job_id,
        )
        asked = stream.job.params.max_tokens if stream.job.params is not None else 0
        message = f"the provider sent more output than the {asked} tokens asked for"
        retryable = stream.chunks == 0  # nothing relayed yet: another provider may start over
        stream.queue.put_nowait(
            JobError(job_id=job_id, code=TOO_MANY_FRAMES, message=message, retryable=retryable)
        )
        with contextlib.suppress(Exception):
            await session.send(Cancel(job_id=job_id))

    def _judge(self, stream: WebSocketJobStream, error: JobError) -> JobError:
        """A provider's job error as the gateway holds it (see market/refusals.py).

        A refusal that blames the request is never retried elsewhere, whatever the
        provider says; one that the gateway's own checks contradict becomes the
        provider's failure (``false_refusal``), retried elsewhere if nothing was sent yet.
        """
        if not blames_client(error.code):
            return error
        why = refusal_disproved(
            stream.job, error.code, stream.offer, self.registry.offer(stream.job.model)
        )
        if why is None:
            return error.model_copy(update={"retryable": False})
        log.warning(
            "provider %s refused job %s as %s, but %s",
            stream.provider_id[:12],
            stream.job.job_id,
            error.code,
            why,
        )
        return JobError(
            job_id=error.job_id,
            code=FALSE_REFUSAL,
            message=f"refused as {error.code} a request the gateway checked: {why}"[:2000],
            retryable=stream.chunks == 0,
        )

    async def _bad_frame(self, session: ProviderSession, code: str, message: str) -> bool:
        session.bad_frames += 1
        self.metrics.frames_rejected.labels(code=code).inc()
        with contextlib.suppress(Exception):
            await session.send(ErrorFrame(code=code, message=message))
        if session.bad_frames >= self.settings.max_bad_frames:
            log.warning("disconnecting provider %s: too many bad frames", session.provider_id[:12])
            with contextlib.suppress(Exception):
                await session.websocket.close(code=POLICY_VIOLATION, reason="too many bad frames")
            return False
        return True

    async def _watch_heartbeats(self, session: ProviderSession) -> None:
        interval = self.settings.heartbeat_interval_s
        while True:
            await asyncio.sleep(interval)
            if time.monotonic() - session.last_seen > self.settings.heartbeat_timeout_s:
                log.warning("provider %s missed heartbeats", session.provider_id[:12])
                with contextlib.suppress(Exception):
                    await session.websocket.close(code=1001, reason="heartbeat timeout")
                return

    def _leaving(self, session: ProviderSession, reason: str) -> None:
        """A provider said goodbye: route it nothing new; its running jobs finish."""
        live = self.registry.get(session.provider_id)
        if live is None or session.leaving:
            return
        session.leaving = True
        for model in live.offers:
            self.registry.set_status(session.provider_id, model, LEAVING)
        log.info("provider %s is leaving: %s", session.provider_id[:12], reason or "no reason")
        if self.on_provider_leaving is not None:
            self.on_provider_leaving(session.provider_id, reason)

    def _drop(self, session: ProviderSession, reason: str) -> None:
        if self.sessions.get(session.provider_id) is session:
            del self.sessions[session.provider_id]
            self.registry.remove(session.provider_id)
            self.metrics.providers_connected.set(len(self.sessions))
            if self.on_provider_gone is not None:
                self.on_provider_gone(session.provider_id)
            if self.on_sessions_changed is not None:
                self.on_sessions_changed()
        for stream in session.jobs.values():
            stream.queue.put_nowait(ProviderGone(reason))
        session.jobs.clear()
        for pending in session.audits.values():
            if not pending.done():
                pending.set_result(ProviderGone(reason))


def _brief(exc: ValidationError) -> str:
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": str(exc)}
    where = ".".join(str(p) for p in first.get("loc", ()))
    return f"{where}: {first.get('msg')}"[:500]
