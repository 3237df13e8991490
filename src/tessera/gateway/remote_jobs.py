"""Jobs for providers whose sockets are on another replica, relayed over the bus.

A request on replica A routed to a provider connected to replica B goes like this:

1. A asks B on ``tsr.v1.rep.<B>.job`` (headers ``Tsr-From``, ``Tsr-Provider``,
   ``Tsr-Account``; body: the job frame). B has the final say: it answers ``accepted``
   once the job is on the provider's WebSocket, ``busy`` when the provider has no free
   slot (A's view was stale: it asks the router again), ``gone`` when the provider is no
   longer there. Nobody answering means B is gone: A routes elsewhere.
2. B relays each frame the provider sends to ``tsr.v1.rep.<A>.resp`` (headers ``Tsr-Job``,
   ``Tsr-Seq`` 1, 2, ..., ``Tsr-Kind`` ``chunk | done | error | gone``), and a heartbeat
   (``hb``) each ``heartbeat_s`` while the provider is quiet.
3. A checks the sequence (a gap ends the job as lost, never a silently corrupt answer) and
   acknowledges on ``tsr.v1.rep.<B>.ctl`` every half window of frames it has passed on.
   Core NATS has no flow control, so B stops relaying while ``window`` frames are
   unacknowledged (a slow client); the provider's frames wait in B's per-job queue, which
   the job's frame budget bounds. A cancels there too (``Tsr-Kind: cancel``).

Failures: B silent for ``idle_s`` (no frame, no heartbeat) ends A's job with ProviderGone,
so the dispatcher retries or continues it like any provider that dropped. A dead (the
cluster view stops hearing it) or silent for ``stall_s`` with frames unacknowledged: B
cancels the job on the provider and frees its slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from tessera.gateway.bus import Bus, BusError, BusMessage, NoResponders, Subscription
from tessera.gateway.transport import JobEvent, ProviderGone
from tessera.market.registry import ROUTABLE, LiveProvider, ProviderRegistry
from tessera.market.routing import Decision
from tessera.protocol.receipts import OutputDigest
from tessera.protocol.wire import (
    Audit,
    AuditResult,
    Chunk,
    Done,
    Job,
    JobError,
    ModelOffer,
    provider_frame_adapter,
)

log = logging.getLogger("tessera.gateway.remote_jobs")

PREFIX = "tsr.v1.rep"
ACCEPTED, BUSY, GONE = "accepted", "busy", "gone"
KIND_OF: dict[type, str] = {Chunk: "chunk", Done: "done", JobError: "error", ProviderGone: "gone"}


def job_subject(replica: str) -> str:
    return f"{PREFIX}.{replica}.job"


def resp_subject(replica: str) -> str:
    return f"{PREFIX}.{replica}.resp"


def ctl_subject(replica: str) -> str:
    return f"{PREFIX}.{replica}.ctl"


def audit_subject(replica: str) -> str:
    return f"{PREFIX}.{replica}.audit"


AuditAnswer = AuditResult | JobError | ProviderGone
AUDIT_MARGIN_S = 1.0  # the asking side waits this much longer than the audit may take


# ---------------------------------------------------------------- A: the asking side


class RemoteJobStream:
    """A job on a provider connected to another replica (a :class:`JobStream`)."""

    def __init__(
        self,
        owner: RemoteJobs,
        replica: str,
        live: LiveProvider,
        job: Job,
        account: str | None,
    ) -> None:
        self.owner = owner
        self.replica = replica
        self.job = job
        self.account = account
        self.offer: ModelOffer = live.offers[job.model]
        self._provider_id = live.provider_id
        self.digest = OutputDigest() if job.kind != "embedding" else None
        self.decision: Decision | None = None
        self.started_at = time.time()
        self.opened_at = time.monotonic()
        self.first_event_at: float | None = None
        self.queue: asyncio.Queue[JobEvent] = asyncio.Queue()
        self.finished = False
        self.chunks = 0
        self.expected_seq = 1
        self.passed_on = 0  # frames handed to the caller (acknowledged every half window)
        self.last_heard = asyncio.get_running_loop().time()
        self._closed = False

    @property
    def provider_id(self) -> str:
        return self._provider_id

    def receive(self, seq: int, kind: str, data: bytes) -> None:
        """One message from the relaying replica, in order (checked here)."""
        self.last_heard = asyncio.get_running_loop().time()
        if kind == "hb" or self.expected_seq < 0:
            return
        if seq != self.expected_seq:
            self._lost(f"the relay from replica {self.replica} skipped frames")
            return
        self.expected_seq += 1
        event: JobEvent
        if kind == "gone":
            event = ProviderGone(data.decode(errors="replace")[:500])
        else:
            try:
                frame = provider_frame_adapter.validate_json(data)
            except ValidationError:
                self._lost(f"replica {self.replica} relayed a malformed frame")
                return
            if not isinstance(frame, Chunk | Done | JobError):
                self._lost(f"replica {self.replica} relayed a '{frame.type}' frame")
                return
            event = frame
            if isinstance(frame, Chunk):
                self.chunks += 1
                if self.digest is not None:
                    self.digest.add(frame)
        self.queue.put_nowait(event)

    def _lost(self, reason: str) -> None:
        self.expected_seq = -1  # nothing more is taken from this relay
        self.queue.put_nowait(ProviderGone(reason))

    async def next_event(self, timeout_s: float | None = None) -> JobEvent:
        event = await self.poll(timeout_s)
        if event is None:
            return ProviderGone(f"no output from the provider within {timeout_s:.0f}s")
        return event

    async def poll(self, timeout_s: float | None) -> JobEvent | None:
        """The next event, or None if none came within ``timeout_s``; ProviderGone once
        the relaying replica has been silent for ``idle_s``."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else loop.time() + timeout_s
        queue = self.queue
        event: JobEvent
        while True:
            if not queue.empty():
                event = queue.get_nowait()
                break
            now = loop.time()
            idle_left = self.last_heard + self.owner.idle_s - now
            if idle_left <= 0:
                event = ProviderGone(
                    f"replica {self.replica}, which holds the provider's connection, "
                    f"stopped answering for {self.owner.idle_s:g}s"
                )
                break
            wait = idle_left if deadline is None else min(idle_left, deadline - now)
            if wait <= 0:
                return None
            try:
                async with asyncio.timeout(wait):
                    event = await queue.get()
                break
            except TimeoutError:
                continue
        if self.first_event_at is None and isinstance(event, Chunk | Done):
            self.first_event_at = time.monotonic()
        if isinstance(event, Done | JobError | ProviderGone):
            self.finished = True
        else:
            self.passed_on += 1
            if self.passed_on % max(self.owner.window // 2, 1) == 0:
                await self.owner.control(self, "ack", self.passed_on)
        return event

    async def close(self) -> None:
        """Give the slot back; tell the relaying replica to stop the job if it runs."""
        if self._closed:
            return
        self._closed = True
        self.owner.closed(self)
        if not self.finished:
            await self.owner.control(self, "cancel", self.passed_on)


class RemoteJobs:
    """This replica's jobs on providers connected elsewhere (the A side)."""

    def __init__(
        self,
        bus: Bus,
        replica: str,
        registry: ProviderRegistry,
        replica_of: Callable[[str], str | None],
        *,
        open_timeout_s: float = 2.0,
        idle_s: float = 3.0,
        window: int = 64,
    ) -> None:
        self.bus = bus
        self.replica = replica
        self.registry = registry
        self.replica_of = replica_of
        self.open_timeout_s = open_timeout_s
        self.idle_s = idle_s
        self.window = window
        self.on_closed: Callable[[RemoteJobStream], None] | None = None
        self._streams: dict[str, RemoteJobStream] = {}
        self._subscription: Subscription | None = None

    async def start(self) -> None:
        self._subscription = await self.bus.subscribe(resp_subject(self.replica), self._frame)

    async def close(self) -> None:
        if self._subscription is not None:
            await self._subscription.unsubscribe()
        for stream in list(self._streams.values()):
            stream.queue.put_nowait(ProviderGone("this gateway replica is stopping"))

    def running(self) -> int:
        return len(self._streams)

    async def open(
        self, live: LiveProvider, job: Job, account: str | None
    ) -> RemoteJobStream | str:
        """Send ``job`` to ``live`` through the replica holding its socket: the running
        stream, or why not (``busy``: no free slot there now; ``gone``: not there)."""
        replica = self.replica_of(live.provider_id)
        if replica is None:
            return GONE
        stream = RemoteJobStream(self, replica, live, job, account)
        self._streams[job.job_id] = stream  # before asking: the first frame may beat the answer
        headers = {
            "Tsr-From": self.replica,
            "Tsr-Provider": live.provider_id,
            "Tsr-Account": account or "",
        }
        try:
            answer = await self.bus.request(
                job_subject(replica), job.model_dump_json().encode(), self.open_timeout_s, headers
            )
            status = answer.data.decode(errors="replace")
        except NoResponders:
            status = GONE
        except BusError as exc:
            log.warning("replica %s did not take job %s: %s", replica, job.job_id, exc)
            status = GONE
            # It may have taken it after all: tell it to stop.
            with contextlib.suppress(BusError):
                await self._send_control(replica, job.job_id, "cancel", 0)
        if status != ACCEPTED:
            self._streams.pop(job.job_id, None)
            return status if status in (BUSY, GONE) else GONE
        return stream

    async def audit(self, provider_id: str, audit: Audit, timeout_s: float) -> AuditAnswer:
        """Ask a provider connected to another replica to audit: its answer, or
        ProviderGone (its replica gone, or no answer in time)."""
        replica = self.replica_of(provider_id)
        if replica is None:
            return ProviderGone("the auditor is not connected")
        headers = {
            "Tsr-From": self.replica,
            "Tsr-Provider": provider_id,
            "Tsr-Timeout": f"{timeout_s:.3f}",
        }
        try:
            answer = await self.bus.request(
                audit_subject(replica),
                audit.model_dump_json().encode(),
                timeout_s + AUDIT_MARGIN_S,
                headers,
            )
        except NoResponders:
            return ProviderGone(f"replica {replica}, which holds the auditor, is gone")
        except BusError as exc:
            return ProviderGone(f"no audit result through replica {replica}: {exc}")
        kind = answer.headers.get("Tsr-Kind", "")
        if kind == "gone":
            return ProviderGone(answer.data.decode(errors="replace")[:500])
        try:
            frame = provider_frame_adapter.validate_json(answer.data)
        except ValidationError:
            return ProviderGone(f"replica {replica} relayed a malformed audit answer")
        if isinstance(frame, AuditResult | JobError) and frame.job_id == audit.job_id:
            return frame
        return ProviderGone(f"replica {replica} relayed another job's audit answer")

    def closed(self, stream: RemoteJobStream) -> None:
        if self._streams.get(stream.job.job_id) is stream:
            del self._streams[stream.job.job_id]
        if self.on_closed is not None:
            self.on_closed(stream)

    async def control(self, stream: RemoteJobStream, kind: str, seq: int) -> None:
        try:
            await self._send_control(stream.replica, stream.job.job_id, kind, seq)
        except BusError as exc:
            log.debug("could not send %s for job %s: %s", kind, stream.job.job_id, exc)

    async def _send_control(self, replica: str, job_id: str, kind: str, seq: int) -> None:
        headers = {
            "Tsr-Job": job_id,
            "Tsr-Kind": kind,
            "Tsr-Seq": str(seq),
            "Tsr-From": self.replica,
        }
        await self.bus.publish(ctl_subject(replica), b"", headers)

    async def _frame(self, message: BusMessage) -> None:
        headers = message.headers
        stream = self._streams.get(headers.get("Tsr-Job", ""))
        if stream is None:
            return  # a job already closed here: its late frames are dropped
        try:
            seq = int(headers.get("Tsr-Seq", ""))
        except ValueError:
            seq = -2
        stream.receive(seq, headers.get("Tsr-Kind", ""), message.data)

    def replica_gone(self, replica: str) -> None:
        """The replica holding these jobs' providers died: each ends as a dropped provider."""
        for stream in list(self._streams.values()):
            if stream.replica == replica and not stream.finished:
                stream.queue.put_nowait(
                    ProviderGone(f"replica {replica}, which held the provider's connection, died")
                )


# ---------------------------------------------------------------- B: the relaying side


@dataclass(eq=False)
class _Relay:
    job_id: str
    to_replica: str
    stream: Any
    sent: int = 0
    acked: int = 0
    credit: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class JobDesk:
    """Jobs other replicas send to providers connected here (the B side)."""

    def __init__(
        self,
        bus: Bus,
        replica: str,
        hub: Any,
        *,
        heartbeat_s: float = 1.0,
        stall_s: float = 60.0,
        window: int = 64,
    ) -> None:
        self.bus = bus
        self.replica = replica
        self.hub = hub
        self.heartbeat_s = heartbeat_s
        self.stall_s = stall_s
        self.window = window
        self._relays: dict[str, _Relay] = {}
        self._subscriptions: list[Subscription] = []
        self._audits: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._subscriptions = [
            await self.bus.subscribe(job_subject(self.replica), self._job),
            await self.bus.subscribe(ctl_subject(self.replica), self._control),
            await self.bus.subscribe(audit_subject(self.replica), self._audit),
        ]

    async def close(self) -> None:
        for sub in self._subscriptions:
            await sub.unsubscribe()
        for relay in list(self._relays.values()):
            if relay.task is not None:
                relay.task.cancel()
        for relay in list(self._relays.values()):
            await relay.stream.close()
        self._relays.clear()
        for task in list(self._audits):
            task.cancel()

    def relaying(self) -> int:
        return len(self._relays)

    async def _job(self, message: BusMessage) -> None:
        headers = message.headers
        asker = headers.get("Tsr-From", "")
        provider_id = headers.get("Tsr-Provider", "")
        account = headers.get("Tsr-Account") or None
        try:
            job = Job.model_validate_json(message.data)
        except ValidationError:
            await self.bus.respond(message, b"malformed")
            return
        if not asker or job.job_id in self._relays:
            await self.bus.respond(message, b"malformed")
            return
        status, stream = self._admit(provider_id, job, account)
        if stream is None:
            await self.bus.respond(message, status.encode())
            return
        relay = _Relay(job.job_id, asker, stream)
        self._relays[job.job_id] = relay
        try:
            await stream.session.send(job)
        except Exception:
            del self._relays[job.job_id]
            await stream.close()
            await self.bus.respond(message, GONE.encode())
            return
        relay.task = asyncio.create_task(self._pump(relay), name=f"relay-{job.job_id}")
        await self.bus.respond(message, ACCEPTED.encode())

    async def _audit(self, message: BusMessage) -> None:
        """An audit for a provider connected here: run apart, so that audits, which take
        seconds, never hold up the jobs behind them on this subscription."""
        task = asyncio.create_task(self._run_audit(message))
        self._audits.add(task)
        task.add_done_callback(self._audits.discard)

    async def _run_audit(self, message: BusMessage) -> None:
        headers = message.headers
        provider_id = headers.get("Tsr-Provider", "")
        try:
            timeout_s = min(max(float(headers.get("Tsr-Timeout", "")), 0.1), 600.0)
            audit = Audit.model_validate_json(message.data)
        except (ValueError, ValidationError):
            await self.bus.respond(message, b"malformed audit request", {"Tsr-Kind": "gone"})
            return
        answer = await self.hub.request_local_audit(provider_id, audit, timeout_s)
        if isinstance(answer, ProviderGone):
            reply, kind = answer.reason.encode(), "gone"
        else:
            reply, kind = answer.model_dump_json().encode(), "answer"
        await self.bus.respond(message, reply, {"Tsr-Kind": kind})

    def _admit(self, provider_id: str, job: Job, account: str | None) -> tuple[str, Any]:
        """The final say on a job routed here from another replica's view."""
        session = self.hub.sessions.get(provider_id)
        live = self.hub.registry.get(provider_id)
        if session is None or live is None or session.leaving:
            return GONE, None
        if live.status.get(job.model) != ROUTABLE:
            return GONE, None
        if live.free_slots <= 0:
            return BUSY, None
        stream = self.hub._start(live, job, account)
        return (ACCEPTED, stream) if stream is not None else (GONE, None)

    async def _pump(self, relay: _Relay) -> None:
        stream = relay.stream
        subject = resp_subject(relay.to_replica)
        try:
            while True:
                if relay.sent - relay.acked >= self.window:
                    if not await self._wait_for_credit(relay, subject):
                        log.warning(
                            "replica %s took no frames of job %s for %.0fs: cancelling it",
                            relay.to_replica,
                            relay.job_id,
                            self.stall_s,
                        )
                        return
                    continue
                event = await stream.poll(self.heartbeat_s)
                if event is None:
                    await self._publish(subject, relay, "hb", 0, b"")
                    continue
                relay.sent += 1
                kind = KIND_OF[type(event)]
                data = (
                    event.reason.encode()
                    if isinstance(event, ProviderGone)
                    else (event.model_dump_json().encode())
                )
                await self._publish(subject, relay, kind, relay.sent, data)
                if kind != "chunk":
                    return
        except BusError as exc:
            log.warning(
                "relaying job %s to replica %s failed: %s", relay.job_id, relay.to_replica, exc
            )
        finally:
            self._relays.pop(relay.job_id, None)
            await stream.close()

    async def _wait_for_credit(self, relay: _Relay, subject: str) -> bool:
        """Wait for the asking replica to take frames (heartbeating meanwhile, so it knows
        this side lives); False after ``stall_s`` without any."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.stall_s
        relay.credit.clear()
        while relay.sent - relay.acked >= self.window:
            left = give_up - loop.time()
            if left <= 0:
                return False
            try:
                async with asyncio.timeout(min(left, self.heartbeat_s)):
                    await relay.credit.wait()
            except TimeoutError:
                await self._publish(subject, relay, "hb", 0, b"")
            relay.credit.clear()
        return True

    async def _publish(self, subject: str, relay: _Relay, kind: str, seq: int, data: bytes) -> None:
        headers = {"Tsr-Job": relay.job_id, "Tsr-Kind": kind, "Tsr-Seq": str(seq)}
        await self.bus.publish(subject, data, headers)

    async def _control(self, message: BusMessage) -> None:
        headers = message.headers
        relay = self._relays.get(headers.get("Tsr-Job", ""))
        if relay is None or headers.get("Tsr-From") != relay.to_replica:
            return
        kind = headers.get("Tsr-Kind")
        if kind == "cancel":
            self._stop(relay)
        elif kind == "ack":
            try:
                acked = int(headers.get("Tsr-Seq", ""))
            except ValueError:
                return
            if relay.acked < acked <= relay.sent:
                relay.acked = acked
                relay.credit.set()

    def _stop(self, relay: _Relay) -> None:
        if relay.task is not None:
            relay.task.cancel()  # its finally closes the stream: the provider is told to stop

    def replica_gone(self, replica: str) -> None:
        """The replica these jobs answer to died: nobody reads them, stop them."""
        for relay in list(self._relays.values()):
            if relay.to_replica == replica:
                self._stop(relay)
