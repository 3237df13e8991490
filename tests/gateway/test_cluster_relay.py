"""Two replicas' hubs on one in-process bus: the cluster view and jobs relayed between them.

Replica B holds a provider's connection (a recorder stands in for its WebSocket; frames it
"sends" go through B's real frame handling); replica A has no provider of its own and
reaches B's through the bus. The same code runs over NATS in the multi-replica tests.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from tessera.config import GatewaySettings
from tessera.errors import NoCapacity
from tessera.gateway.bus import BusMessage, LocalBus
from tessera.gateway.cluster import ClusterView
from tessera.gateway.hub import AUDITOR_BUSY, ProviderHub, ProviderSession
from tessera.gateway.metrics import GatewayMetrics
from tessera.gateway.remote_jobs import JobDesk, RemoteJobs, RemoteJobStream
from tessera.gateway.transport import ProviderGone
from tessera.market.registry import ProviderRegistry
from tessera.market.routing import RouteRequest
from tessera.protocol.wire import Audit, AuditResult, Chunk, Done, Job, SamplingParams, Usage

from support.scripted_peers import caps_for


class Recorder:
    """Stands in for a provider's WebSocket: keeps what the hub sends."""

    def __init__(self) -> None:
        self.sent: list[dict[str, object]] = []
        self.arrived = asyncio.Event()

    async def send_text(self, text: str) -> None:
        self.sent.append(json.loads(text))
        self.arrived.set()

    async def next(self, kind: str) -> dict[str, object]:
        while True:
            for frame in self.sent:
                if frame["type"] == kind:
                    self.sent.remove(frame)
                    return frame
            self.arrived.clear()
            await asyncio.wait_for(self.arrived.wait(), 2)


@dataclass
class Replica:
    name: str
    hub: ProviderHub
    view: ClusterView
    desk: JobDesk
    remote: RemoteJobs


@dataclass
class Pair:
    bus: LocalBus
    a: Replica
    b: Replica
    provider_id: str
    socket: Recorder
    session: ProviderSession


async def replica(bus: LocalBus, name: str, tmp_path: Path, window: int) -> Replica:
    settings = GatewaySettings(data_dir=tmp_path / name, dev_mode=True, queue_timeout_s=0.3)
    registry = ProviderRegistry()
    hub = ProviderHub(settings, registry, GatewayMetrics(), rng=random.Random(1))
    view = ClusterView(
        bus, name, registry, hub.announced, lambda pid: pid in hub.sessions, announce_s=60
    )
    desk = JobDesk(bus, name, hub, heartbeat_s=0.1, window=window)
    remote = RemoteJobs(bus, name, registry, view.replica_of, idle_s=0.5, window=window)
    hub.attach_remote(remote)
    view.on_replica_gone += [remote.replica_gone, desk.replica_gone]
    for part in (view, desk, remote):
        await part.start()
    return Replica(name, hub, view, desk, remote)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0.01)


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[Pair]:
    bus = LocalBus()
    a = await replica(bus, "a", tmp_path, window=4)
    b = await replica(bus, "b", tmp_path, window=4)
    caps = caps_for(SigningKey.generate(), slots=2, model="m")
    socket = Recorder()
    session = ProviderSession(
        caps.public_key,
        socket,  # type: ignore[arg-type]
        last_seen=0.0,
        capabilities_json=caps.model_dump_json(),
    )
    b.hub.sessions[caps.public_key] = session
    b.hub.registry.add(caps.public_key, caps, now=0.0)
    await b.view.announce()
    await settle()
    yield Pair(bus, a, b, caps.public_key, socket, session)
    for r in (a, b):
        await r.remote.close()
        await r.desk.close()
        await r.view.close()
    await bus.close()


def job(n: int, max_tokens: int = 16) -> Job:
    return Job(
        job_id=f"req{n}.0", model="m", kind="completion", prompts=["x"],
        params=SamplingParams(max_tokens=max_tokens),
    )  # fmt: skip


async def provider_says(pair: Pair, frame: dict[str, object]) -> None:
    """The provider on B sends ``frame`` (through B's real frame handling)."""
    assert await pair.b.hub._handle_frame(pair.session, json.dumps(frame))


def chunk(job_id: str, n: int) -> dict[str, object]:
    return {"type": "chunk", "job_id": job_id, "index": 0, "text": f"t{n} ", "tokens": 1}


def done(job_id: str) -> dict[str, object]:
    usage = {"prompt_tokens": 1, "completion_tokens": 3}
    return {"type": "done", "job_id": job_id, "usage": usage}


async def test_a_replica_sees_the_other_replicas_providers(pair: Pair) -> None:
    live = pair.a.hub.registry.get(pair.provider_id)
    assert live is not None and "m" in live.offers
    assert pair.a.view.replica_of(pair.provider_id) == "b"
    assert pair.b.view.replica_of(pair.provider_id) is None  # local there
    assert pair.a.view.replicas() == ["b"]


async def test_a_job_on_a_is_served_by_the_provider_on_b(pair: Pair) -> None:
    stream = await pair.a.hub.open_job(job(1), RouteRequest("m", account="alice"), set())
    assert isinstance(stream, RemoteJobStream)
    sent = await pair.socket.next("job")
    assert sent["job_id"] == "req1.0" and sent["tenant"]  # the account's tag, made on A
    for n in range(3):
        await provider_says(pair, chunk("req1.0", n))
    await provider_says(pair, done("req1.0"))
    events = [await stream.next_event(2) for _ in range(4)]
    assert [type(e) for e in events] == [Chunk, Chunk, Chunk, Done], events[-1]
    assert "".join(e.text for e in events if isinstance(e, Chunk)) == "t0 t1 t2 "
    assert stream.digest is not None
    assert [c.text for c in stream.digest.ordered()] == ["t0 t1 t2 "]
    assert isinstance(events[-1], Done) and events[-1].usage == Usage(
        prompt_tokens=1, completion_tokens=3
    )
    await stream.close()
    await settle()
    assert pair.b.hub.registry.get(pair.provider_id).active_jobs == 0  # type: ignore[union-attr]
    assert pair.a.hub.registry.get(pair.provider_id).active_jobs == 0  # type: ignore[union-attr]
    assert pair.a.hub.running.count("alice", "m") == 0
    assert pair.b.desk.relaying() == 0 and pair.a.remote.running() == 0
    assert not any(f["type"] == "cancel" for f in pair.socket.sent)


async def test_closing_early_on_a_cancels_the_job_on_the_provider(pair: Pair) -> None:
    stream = await pair.a.hub.open_job(job(2), RouteRequest("m"), set())
    await pair.socket.next("job")
    await provider_says(pair, chunk("req2.0", 0))
    assert isinstance(await stream.next_event(2), Chunk)
    await stream.close()
    cancel = await pair.socket.next("cancel")
    assert cancel["job_id"] == "req2.0"
    await settle()
    assert pair.b.desk.relaying() == 0
    assert pair.b.hub.registry.get(pair.provider_id).active_jobs == 0  # type: ignore[union-attr]


async def test_a_slow_reader_pauses_the_relay_within_its_window(pair: Pair) -> None:
    stream = await pair.a.hub.open_job(job(3), RouteRequest("m"), set())
    await pair.socket.next("job")
    for n in range(10):
        await provider_says(pair, chunk("req3.0", n))
    await provider_says(pair, done("req3.0"))
    await settle()
    assert isinstance(stream, RemoteJobStream)
    assert stream.queue.qsize() == 4  # the window: the rest waits on B
    texts = []
    for _ in range(11):
        event = await stream.next_event(2)
        if isinstance(event, Chunk):
            texts.append(event.text)
    assert isinstance(event, Done)
    assert texts == [f"t{n} " for n in range(10)]
    await stream.close()


async def test_the_holding_replica_refuses_a_full_provider(pair: Pair) -> None:
    for _ in range(2):  # B's own jobs fill both slots; A's view is a period old
        pair.b.hub.registry.acquire(pair.provider_id)
    with pytest.raises(NoCapacity):
        await pair.a.hub.open_job(job(4), RouteRequest("m"), set())
    assert pair.socket.sent == []  # nothing reached the provider
    live = pair.a.hub.registry.get(pair.provider_id)
    assert live is not None and live.free_slots == 0  # marked full until B says otherwise


async def test_a_silent_replica_ends_the_job_as_a_dropped_provider(pair: Pair) -> None:
    stream = await pair.a.hub.open_job(job(5), RouteRequest("m"), set())
    await pair.socket.next("job")
    await pair.b.desk.close()  # B stops relaying without a word (as if killed)
    event = await stream.next_event(5)
    assert isinstance(event, ProviderGone) and "stopped answering" in event.reason
    await stream.close()


async def test_a_replica_that_stops_takes_its_providers_out_of_the_view(pair: Pair) -> None:
    await pair.b.view.close()
    await settle()
    assert pair.a.hub.registry.get(pair.provider_id) is None
    assert pair.a.view.replicas() == []


async def test_a_provider_gone_from_b_leaves_a_at_the_next_announcement(pair: Pair) -> None:
    pair.b.hub._drop(pair.session, "test")
    await pair.b.view.announce()
    await settle()
    assert pair.a.hub.registry.get(pair.provider_id) is None


async def test_a_gap_in_the_relay_ends_the_job_rather_than_corrupt_it(pair: Pair) -> None:
    stream = await pair.a.hub.open_job(job(6), RouteRequest("m"), set())
    assert isinstance(stream, RemoteJobStream)
    stream.receive(7, "chunk", json.dumps(chunk("req6.0", 0)).encode())
    event = await stream.next_event(1)
    assert isinstance(event, ProviderGone) and "skipped" in event.reason
    await stream.close()


async def test_hostile_announcements_change_nothing(pair: Pair) -> None:
    impostor = caps_for(SigningKey.generate(), slots=2, model="m")
    bad = [
        b"not json",
        b"[1, 2]",
        json.dumps({"replica": "x", "generation": 1, "part": 0, "parts": 1}).encode(),
        json.dumps(
            {"replica": "c", "generation": "1", "part": 0, "parts": 1, "providers": []}
        ).encode(),
        json.dumps(
            {
                "replica": "c",
                "generation": 1,
                "part": 0,
                "parts": 1,
                "providers": [
                    {"id": "f" * 64, "caps": impostor.model_dump_json(), "status": {}, "active": 0},
                    {"id": impostor.public_key, "caps": "{", "status": {}, "active": 0},
                ],
            }
        ).encode(),
    ]
    before = len(pair.a.hub.registry)
    for body in bad:
        await pair.bus.publish("tsr.v1.reg.c", body)
    await settle()
    assert len(pair.a.hub.registry) == before
    assert pair.a.view.announcements_refused >= len(bad)


def audit_of(n: int) -> Audit:
    return Audit(job_id=f"audit-{n}", weights_sha256="ab" * 32, job=job(100 + n), choices=[])


def audit_result(job_id: str, auditor: str) -> dict[str, object]:
    return {
        "type": "audit_result",
        "job_id": job_id,
        "auditor_id": auditor,
        "weights_sha256": "ab" * 32,
        "audit_sha256": "cd" * 32,
        "choices": [],
        "signature": "ef" * 64,
    }


async def test_an_auditor_on_another_replica_is_asked_through_it(pair: Pair) -> None:
    asked = asyncio.create_task(pair.a.hub.request_audit(pair.provider_id, audit_of(1), 5))
    frame = await pair.socket.next("audit")
    assert frame["job_id"] == "audit-1"
    live_b = pair.b.hub.registry.get(pair.provider_id)
    assert live_b is not None and live_b.active_jobs == 1  # the audit holds a slot on B
    await provider_says(pair, audit_result("audit-1", pair.provider_id))
    answer = await asked
    assert isinstance(answer, AuditResult) and answer.job_id == "audit-1"
    await settle()
    assert live_b.active_jobs == 0
    assert pair.a.hub.registry.get(pair.provider_id).active_jobs == 0  # type: ignore[union-attr]


async def test_a_busy_or_vanished_remote_auditor_is_told_as_such(pair: Pair) -> None:
    for _ in range(2):
        pair.b.hub.registry.acquire(pair.provider_id)
    busy = await pair.a.hub.request_audit(pair.provider_id, audit_of(2), 5)
    assert isinstance(busy, ProviderGone) and busy.reason == AUDITOR_BUSY
    for _ in range(2):
        pair.b.hub.registry.release(pair.provider_id)
    pair.b.hub._drop(pair.session, "test")
    gone = await pair.a.hub.request_audit(pair.provider_id, audit_of(3), 5)
    assert isinstance(gone, ProviderGone) and "not connected" in gone.reason
    assert pair.socket.sent == []


async def test_a_large_cluster_view_arrives_in_parts_and_whole(tmp_path: Path) -> None:
    bus = LocalBus(max_payload=8 * 1024)  # a few providers per part
    a = await replica(bus, "a", tmp_path, window=4)
    b = await replica(bus, "b", tmp_path, window=4)
    ids = []
    for _ in range(40):
        caps = caps_for(SigningKey.generate(), slots=2, model="m")
        b.hub.sessions[caps.public_key] = ProviderSession(
            caps.public_key,
            Recorder(),  # type: ignore[arg-type]
            last_seen=0.0,
            capabilities_json=caps.model_dump_json(),
        )
        b.hub.registry.add(caps.public_key, caps, now=0.0)
        ids.append(caps.public_key)
    sent: list[int] = []

    async def count(message: object) -> None:
        sent.append(1)

    await bus.subscribe("tsr.v1.reg.b", count)
    await b.view.announce()
    await settle()
    assert len(sent) > 5  # in parts under the bus's limit
    assert all(a.view.replica_of(pid) == "b" for pid in ids)
    for part in (b, a):
        await part.remote.close()
        await part.desk.close()
        await part.view.close()
    await bus.close()


async def test_announcements_carry_capabilities_only_when_someone_needs_them(
    pair: Pair,
) -> None:
    bodies: list[dict[str, object]] = []

    async def keep(message: BusMessage) -> None:
        bodies.append(json.loads(message.data))

    await pair.bus.subscribe("tsr.v1.reg.b", keep)
    await pair.b.view.announce()  # A has heard B before: a digest is enough
    await settle()
    (entry,) = bodies[-1]["providers"]  # type: ignore[misc]
    assert "caps" not in entry and entry["digest"]
    assert pair.a.view.replica_of(pair.provider_id) == "b"  # still in A's view
    # A replica that starts now knows no digest: it asks, and B sends them in full.
    late = await replica(pair.bus, "c", Path(pair.b.hub.settings.data_dir).parent, window=4)
    await pair.b.view.announce()
    for _ in range(20):
        await settle()
        if late.view.replica_of(pair.provider_id) == "b":
            break
    assert late.view.replica_of(pair.provider_id) == "b"
    assert any("caps" in e for b in bodies for e in b.get("providers", []))  # type: ignore[union-attr]
    await late.remote.close()
    await late.desk.close()
    await late.view.close()
