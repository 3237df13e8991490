"""The cluster's providers, seen from every replica: who is connected where, how busy.

Each replica announces the providers whose WebSockets it holds on ``tsr.v1.reg.<replica>``
every ``announce_s``, and at once when one connects, leaves or changes status. Every
replica merges the others' announcements into its own registry, remembering which replica
holds each socket, so its router sees the whole cluster within one period. An announcement
is a full snapshot (in parts when large), so a replica that starts late, or a NATS restart,
heals by itself within a period: nothing is kept in NATS that could go stale. A replica
silent for ``dead_after_s`` is dead: its providers leave every view and
``on_replica_gone`` tells whoever cleans up after it (the ledger owner releases its holds,
the job desk cancels the jobs it relayed for it). A replica that stops cleanly says so.

An announcement carries each provider's capabilities (a kilobyte or so) only when the
replica first announces it or it changed, and in full every ``full_every`` periods; in
between, a digest of them stands in, so a replica holding thousands of providers sends
their load each second, not their whole description. A replica that hears a digest it
does not know (it started late, or missed a message) asks for a full one on
``tsr.v1.reg.want.<replica>``, and a replica heard for the first time gets one at once.

The view of a remote provider's load is at most a period old, so the replica holding the
socket has the final say on admission (remote_jobs.py). A provider announced by two
replicas at once (it moved) belongs to the one heard last; one connected here is local,
whatever others say.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from tessera.gateway.bus import Bus, BusError, BusMessage, Subscription
from tessera.market.registry import ProviderRegistry
from tessera.protocol.wire import Capabilities

log = logging.getLogger("tessera.gateway.cluster")

SUBJECT_PREFIX = "tsr.v1.reg"
MAX_PARTS = 1_000  # an announcement in more parts than this is refused as hostile

OnReplicaGone = Callable[[str], Awaitable[None] | None]
LocalProviders = Callable[[], list["Announced"]]


@dataclass(frozen=True, slots=True)
class Announced:
    """One provider as its replica announces it."""

    provider_id: str
    capabilities_json: str  # as the provider signed it at its handshake
    status: dict[str, str]
    active_jobs: int

    def as_json(self, digest: str, with_caps: bool) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "id": self.provider_id,
            "digest": digest,
            "status": self.status,
            "active": self.active_jobs,
        }
        if with_caps:
            entry["caps"] = self.capabilities_json
        return entry


def caps_digest(capabilities_json: str) -> str:
    return hashlib.blake2b(capabilities_json.encode(), digest_size=16).hexdigest()


@dataclass(slots=True)
class _Remote:
    replica: str
    caps_digest: str
    heard_at: float
    capabilities: Capabilities


@dataclass(slots=True)
class _Assembly:
    generation: int
    parts: int
    received: dict[int, list[dict[str, Any]]] = field(default_factory=dict)


class ClusterView:
    """Announces this replica's providers and merges the other replicas' (see module)."""

    def __init__(
        self,
        bus: Bus,
        replica: str,
        registry: ProviderRegistry,
        local_providers: LocalProviders,
        is_local: Callable[[str], bool],
        *,
        announce_s: float = 1.0,
        dead_after_s: float = 3.0,
        full_every: int = 10,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.bus = bus
        self.replica = replica
        self.registry = registry
        self.local_providers = local_providers
        self.is_local = is_local
        self.announce_s = announce_s
        self.full_every = full_every
        self._sent: dict[str, str] = {}  # provider id -> caps digest last announced
        self._digests: dict[str, tuple[str, str]] = {}  # provider id -> (caps json, digest)
        self._full_next = True
        self._wanted_at: dict[str, float] = {}  # replica -> when we last asked it for a full
        self.dead_after_s = dead_after_s
        self.clock = clock
        self.wall = wall
        self.on_replica_gone: list[OnReplicaGone] = []
        self.on_changed: list[Callable[[], None]] = []  # the remote providers changed
        # A provider connected to another replica joined or left the view (uptime).
        self.on_provider_added: list[Callable[[str, Capabilities], None]] = []
        self.on_provider_removed: list[Callable[[str], None]] = []
        self._remote: dict[str, _Remote] = {}  # provider id -> where its socket is
        self._replicas: dict[str, float] = {}  # replica -> when last heard (clock)
        self._assembling: dict[str, _Assembly] = {}
        self._generation = 0
        self._announce_now = asyncio.Event()
        self._subscription: Subscription | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._tasks_bg: set[asyncio.Task[None]] = set()
        self._want: Subscription | None = None
        self._send_failed = False
        self.announcements_sent = 0
        self.announcements_refused = 0

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._subscription = await self.bus.subscribe(f"{SUBJECT_PREFIX}.*", self._heard)
        self._want = await self.bus.subscribe(f"{SUBJECT_PREFIX}.want.{self.replica}", self._wanted)
        self._tasks = [
            asyncio.create_task(self._announce_loop(), name="cluster-announce"),
            asyncio.create_task(self._reap_loop(), name="cluster-reap"),
        ]

    async def close(self) -> None:
        """Stop, telling the others at once that this replica's providers are gone."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._subscription is not None:
            await self._subscription.unsubscribe()
        if self._want is not None:
            await self._want.unsubscribe()
        with contextlib.suppress(BusError):
            body = {"replica": self.replica, "leaving": True}
            await self.bus.publish(self._subject(), json.dumps(body).encode())

    # ------------------------------------------------------------ queries

    def replica_of(self, provider_id: str) -> str | None:
        """The replica holding a remote provider's socket; None if local or unknown."""
        remote = self._remote.get(provider_id)
        return None if remote is None else remote.replica

    def remote_providers(self) -> list[tuple[str, Capabilities]]:
        """Every provider connected to another replica, with what it announced."""
        return [(pid, remote.capabilities) for pid, remote in self._remote.items()]

    def replicas(self) -> list[str]:
        """The other replicas heard within ``dead_after_s``."""
        return sorted(self._replicas)

    def remote_count(self) -> int:
        return len(self._remote)

    def changed(self) -> None:
        """This replica's providers changed: announce now, not at the next period."""
        self._announce_now.set()

    def forget(self, provider_id: str) -> None:
        """The provider connected here: it is local now, whatever others announced."""
        self._remote.pop(provider_id, None)

    # ------------------------------------------------------------ announcing

    def _subject(self) -> str:
        return f"{SUBJECT_PREFIX}.{self.replica}"

    async def _announce_loop(self) -> None:
        while True:
            try:
                await self.announce()
            except Exception:
                log.exception("announcing this replica's providers failed")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.announce_s):
                    await self._announce_now.wait()
            self._announce_now.clear()

    async def announce(self) -> None:
        """Publish this replica's providers: one snapshot, in parts under the bus's limit."""
        self._generation += 1
        full = self._full_next or self._generation % self.full_every == 1
        self._full_next = False
        digests: dict[str, tuple[str, str]] = {}
        sent: dict[str, str] = {}
        providers = []
        for p in self.local_providers():
            known = self._digests.get(p.provider_id)
            if known is None or known[0] is not p.capabilities_json:
                known = (p.capabilities_json, caps_digest(p.capabilities_json))
            digests[p.provider_id] = known
            sent[p.provider_id] = known[1]
            with_caps = full or self._sent.get(p.provider_id) != known[1]
            providers.append(p.as_json(known[1], with_caps))
        self._digests, self._sent = digests, sent
        budget = max(self.bus.max_payload // 2, 4096)
        parts: list[list[dict[str, Any]]] = [[]]
        size = 0
        for entry in providers:
            cost = len(entry.get("caps", "")) + 96 + 40 * len(entry["status"])
            if parts[-1] and size + cost > budget:
                parts.append([])
                size = 0
            parts[-1].append(entry)
            size += cost
        try:
            for number, chunk in enumerate(parts):
                body = {
                    "replica": self.replica,
                    "generation": self._generation,
                    "part": number,
                    "parts": len(parts),
                    "providers": chunk,
                }
                await self.bus.publish(self._subject(), json.dumps(body).encode())
        except BusError as exc:
            if not self._send_failed:
                log.warning("cannot announce this replica's providers: %s", exc)
            self._send_failed = True
            self._full_next = True  # what was lost may have carried capabilities
            return
        if self._send_failed:
            log.info("announcing this replica's providers again")
        self._send_failed = False
        self.announcements_sent += 1

    # ------------------------------------------------------------ hearing

    async def _heard(self, message: BusMessage) -> None:
        replica = message.subject.rsplit(".", 1)[-1]
        if replica == self.replica:
            return
        try:
            body = json.loads(message.data)
            if not isinstance(body, dict) or body.get("replica") != replica:
                raise ValueError("the announcement names another replica")
            if body.get("leaving") is True:
                log.info("replica %s stopped", replica)
                await self._replica_gone(replica)
                return
            generation, part, parts = body["generation"], body["part"], body["parts"]
            providers = body["providers"]
            if not all(isinstance(n, int) for n in (generation, part, parts)):
                raise ValueError("generation, part and parts are integers")
            if not 0 <= part < parts <= MAX_PARTS or not isinstance(providers, list):
                raise ValueError("part out of range")
        except (ValueError, KeyError, TypeError) as exc:
            self.announcements_refused += 1
            log.warning("refused an announcement from replica %s: %s", replica, exc)
            return
        if replica not in self._replicas:
            self._full_next = True  # a replica new to us: it needs our capabilities
            self._announce_now.set()
        self._replicas[replica] = self.clock()
        assembly = self._assembling.get(replica)
        if assembly is None or assembly.generation != generation:
            assembly = self._assembling[replica] = _Assembly(generation, parts)
        assembly.received[part] = providers
        if len(assembly.received) < assembly.parts:
            return
        del self._assembling[replica]
        entries = [
            entry for number in sorted(assembly.received) for entry in assembly.received[number]
        ]
        self._apply(replica, entries)

    async def _wanted(self, message: BusMessage) -> None:
        """Another replica met a digest it does not know: announce in full now."""
        self._full_next = True
        self._announce_now.set()

    async def _want_full(self, replica: str) -> None:
        now = self.clock()
        if now - self._wanted_at.get(replica, -1e9) < self.announce_s:
            return  # asked this period already
        self._wanted_at[replica] = now
        with contextlib.suppress(BusError):
            await self.bus.publish(f"{SUBJECT_PREFIX}.want.{replica}", b"")

    def _apply(self, replica: str, entries: list[dict[str, Any]]) -> None:
        """Make the registry agree with ``replica``'s snapshot."""
        now = self.clock()
        seen: set[str] = set()
        changed = False
        unknown = False
        for entry in entries:
            try:
                provider_id = entry["id"]
                digest = entry["digest"]
                caps_json = entry.get("caps")
                status = entry["status"]
                active = entry["active"]
                if not (
                    isinstance(provider_id, str)
                    and isinstance(digest, str)
                    and (caps_json is None or isinstance(caps_json, str))
                    and isinstance(status, dict)
                    and isinstance(active, int)
                ):
                    raise TypeError("wrong types")
            except (KeyError, TypeError, AttributeError):
                self.announcements_refused += 1
                continue
            seen.add(provider_id)
            merged = self._merge(replica, provider_id, digest, caps_json, status, active, now)
            if merged is None:
                unknown = True
            else:
                changed |= merged
        for provider_id, remote in list(self._remote.items()):
            if remote.replica == replica and provider_id not in seen:
                self._drop(provider_id)
                changed = True
        if changed:
            for callback in self.on_changed:
                callback()
        if unknown:
            task = asyncio.get_running_loop().create_task(self._want_full(replica))
            self._tasks_bg.add(task)
            task.add_done_callback(self._tasks_bg.discard)

    def _merge(
        self,
        replica: str,
        provider_id: str,
        digest: str,
        caps_json: str | None,
        status: dict[str, Any],
        active: int,
        now: float,
    ) -> bool | None:
        """Take one announced provider: whether the view changed; None when only its
        digest came and it is not one known here (a full announcement is needed)."""
        if self.is_local(provider_id):
            self._remote.pop(provider_id, None)
            return False  # connected here: local wins
        remote = self._remote.get(provider_id)
        live = self.registry.get(provider_id)
        if live is not None and remote is None:
            return False  # being connected here (the handshake is under way)
        statuses = {str(k): str(v) for k, v in status.items()}
        if remote is not None and remote.caps_digest == digest and live is not None:
            remote.replica, remote.heard_at = replica, now
            for model, wanted in statuses.items():
                if live.status.get(model) != wanted:
                    self.registry.set_status(provider_id, model, wanted)
            self.registry.set_load(provider_id, active)
            return False
        if caps_json is None:
            return None
        if caps_digest(caps_json) != digest:
            self.announcements_refused += 1
            return False
        try:
            caps = Capabilities.model_validate_json(caps_json)
        except ValidationError:
            self.announcements_refused += 1
            return False
        if caps.public_key != provider_id:
            self.announcements_refused += 1
            return False
        self.registry.add(provider_id, caps, now=self.wall(), status=statuses)
        self.registry.set_load(provider_id, active)
        self._remote[provider_id] = _Remote(replica, digest, now, caps)
        if remote is None:
            for added in self.on_provider_added:
                added(provider_id, caps)
        return True

    def _drop(self, provider_id: str) -> None:
        del self._remote[provider_id]
        if not self.is_local(provider_id):
            self.registry.remove(provider_id)
            for removed in self.on_provider_removed:
                removed(provider_id)

    # ------------------------------------------------------------ the dead

    async def _reap_loop(self) -> None:
        while True:
            await asyncio.sleep(self.announce_s)
            cutoff = self.clock() - self.dead_after_s
            for replica, heard in list(self._replicas.items()):
                if heard < cutoff:
                    log.warning(
                        "replica %s silent for %.1fs: its providers leave the view",
                        replica,
                        self.clock() - heard,
                    )
                    await self._replica_gone(replica)

    async def _replica_gone(self, replica: str) -> None:
        self._replicas.pop(replica, None)
        self._assembling.pop(replica, None)
        dropped = [pid for pid, r in self._remote.items() if r.replica == replica]
        for provider_id in dropped:
            self._drop(provider_id)
        if dropped:
            for callback in self.on_changed:
                callback()
        for gone in self.on_replica_gone:
            try:
                outcome = gone(replica)
                if outcome is not None:
                    await outcome
            except Exception:
                log.exception("cleaning up after replica %s failed", replica)
