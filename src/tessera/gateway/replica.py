"""This gateway as one replica of a cluster (``--nats-url``): the parts, and the takeover.

Every replica serves the OpenAI API and holds provider sockets; the cluster view
(cluster.py) shows each replica every provider, and jobs for a provider connected
elsewhere are relayed (remote_jobs.py). One replica owns the ledger (the database's
advisory lock): it answers the others' holds and captures (ledger_service.py) and the
requests only it can answer (owner_forwarding.py). The others pay through it
(remote_money.py) and keep trying the lock: when the owner dies, one of them gets it,
replays the journal and takes over in place, without dropping a provider or a request.

Holds made by replicas still alive are kept open through a takeover (their captures are on
the way, retried); holds of the dead owner, and of replicas not heard, are released.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
from collections.abc import Awaitable, Callable

from tessera.config import GatewaySettings
from tessera.gateway.bus import Bus
from tessera.gateway.cluster import ClusterView
from tessera.gateway.hub import ProviderHub
from tessera.gateway.money import Money
from tessera.gateway.payments import Charge, Payer, Payments
from tessera.gateway.remote_jobs import JobDesk, RemoteJobs
from tessera.gateway.remote_money import RemoteMoney
from tessera.ledger.book import ConsumerView
from tessera.ledger.escrow import OpenHold
from tessera.market.policy import Filter
from tessera.market.registry import ProviderRegistry
from tessera.market.routing import RouteRequest
from tessera.protocol.wire import Job, ModelOffer
from tessera.store.ledger_owner import LedgerOwnerLock

log = logging.getLogger("tessera.gateway.replica")


def replica_name(gateway_id: str) -> str:
    """This process's name in the cluster: the gateway id made a NATS subject token, and a
    random suffix, so a replica restarted under the same id is a new replica (the holds its
    previous run left open are that run's, released as a dead replica's)."""
    token = re.sub(r"[^A-Za-z0-9_-]", "_", gateway_id)[:48] or "gw"
    return f"{token}-{secrets.token_hex(3)}"


class ClusterMember:
    """The cluster parts of one replica (see the module docstring)."""

    def __init__(
        self,
        bus: Bus,
        replica: str,
        settings: GatewaySettings,
        registry: ProviderRegistry,
        hub: ProviderHub,
    ) -> None:
        self.bus = bus
        self.replica = replica
        self.settings = settings
        self.hub = hub
        self.view = ClusterView(
            bus,
            self.replica,
            registry,
            hub.announced,
            lambda pid: pid in hub.sessions,
            announce_s=settings.cluster_announce_s,
            dead_after_s=settings.replica_dead_after_s,
        )
        self.desk = JobDesk(bus, self.replica, hub, heartbeat_s=settings.cluster_announce_s)
        self.remote = RemoteJobs(
            bus, self.replica, registry, self.view.replica_of, idle_s=settings.replica_dead_after_s
        )
        hub.attach_remote(self.remote)
        hub.on_sessions_changed = self.view.changed
        self.view.on_replica_gone += [self.remote.replica_gone, self.desk.replica_gone]
        self.view.on_changed.append(hub._slot_freed.notify_all)

    async def start(self) -> None:
        await self.view.start()
        await self.remote.start()
        await self.desk.start()

    async def hear_the_others(self) -> None:
        """Wait long enough to hear every live replica once (before judging its holds)."""
        await asyncio.sleep(self.settings.cluster_announce_s * 1.5)

    def is_connected(self, provider_id: str) -> bool:
        """Connected to some replica of the cluster (uptime counts the cluster's view)."""
        return provider_id in self.hub.sessions or self.view.replica_of(provider_id) is not None

    def keeps(self, hold: OpenHold) -> bool:
        """Whether a hold found open at a takeover belongs to a replica still alive."""
        replica = hold.memo.get("replica")
        return replica is not None and replica in self.view.replicas()

    async def close(self) -> None:
        await self.desk.close()
        await self.remote.close()
        await self.view.close()


async def watch_for_takeover(
    lock: LedgerOwnerLock, take_over: Callable[[], Awaitable[None]], poll_s: float
) -> None:
    """Try the ledger's lock every ``poll_s``; once it is ours, take over and end.

    A takeover that fails (the database went away again while the journal was replayed,
    say: an owner's lock is most often lost to a database restart) gives the lock back and
    keeps watching. Holding the lock without serving the ledger would leave the cluster
    with no owner until this replica restarts."""
    while True:
        await asyncio.sleep(poll_s)
        try:
            acquired = await lock.try_acquire()
        except Exception:
            log.exception("could not try the ledger's ownership lock; trying again")
            continue
        if not acquired:
            continue
        log.warning("the ledger's owner is gone: this replica takes the ledger over")
        try:
            await take_over()
        except Exception:
            log.exception("taking the ledger over failed; the lock is given back, trying again")
            with contextlib.suppress(Exception):
                await lock.release()
            continue
        return


class SwitchedMoney:
    """Money for a replica that may take the ledger over: through the owner over the bus
    until then, the local book after. A charge is settled where it was held."""

    def __init__(self, remote: RemoteMoney) -> None:
        self.remote = remote
        self.local: Payments | None = None

    @property
    def current(self) -> Money:
        return self.remote if self.local is None else self.local

    @property
    def stake(self) -> object:
        return self.current.stake  # type: ignore[attr-defined]

    def staked(self, provider: object, model: str) -> bool:
        return bool(self.current.staked(provider, model))  # type: ignore[attr-defined]

    def _of(self, charge: Charge) -> Money:
        return self.remote if charge.via_bus or self.local is None else self.local

    async def reserve(self, payer: Payer, request_id: str, job: Job, route: RouteRequest) -> Charge:
        if self.local is not None:
            return await self.local.reserve(payer, request_id, job, route)
        charge = await self.remote.reserve(payer, request_id, job, route)
        charge.via_bus = True
        return charge

    async def confirm(self, charge: Charge) -> None:
        await self._of(charge).confirm(charge)

    def capture(
        self,
        charge: Charge,
        offer: ModelOffer,
        provider_id: str,
        prompt_tokens: int,
        completion_tokens: int,
    ) -> int:
        return self._of(charge).capture(
            charge, offer, provider_id, prompt_tokens, completion_tokens
        )

    def release(self, charge: Charge, reason: str) -> None:
        self._of(charge).release(charge, reason)

    async def stored(self, charge: Charge) -> None:
        await self._of(charge).stored(charge)

    def cost_of(
        self, charge: Charge, offer: ModelOffer, prompt_tokens: int, completion_tokens: int
    ) -> int:
        return self.current.cost_of(charge, offer, prompt_tokens, completion_tokens)

    def balance(self, account_id: str) -> ConsumerView:
        return self.current.balance(account_id)

    def admit(self, charge: Charge, job: Job) -> list[Filter]:
        return self.current.admit(charge, job)

    def stake_filter(self, model: str) -> Filter:
        return self.current.stake_filter(model)

    def bonded(self, provider_id: str) -> int:
        return self.current.bonded(provider_id)
