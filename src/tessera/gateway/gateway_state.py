"""What one gateway process holds, apart from the app that serves it.

Its own module so that the app (which builds a :class:`Gateway` in its lifespan) and the
route modules (which find it on each request with :func:`gateway_of`) both import it
without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from fastapi import Request, WebSocket

from tessera.config import GatewaySettings
from tessera.gateway.admission import RequestAdmission
from tessera.gateway.auth import ApiKeyAuth
from tessera.gateway.bookkeeper import Bookkeeper
from tessera.gateway.events import EventBus
from tessera.gateway.hub import ProviderHub
from tessera.gateway.liveness import Liveness
from tessera.gateway.metrics import GatewayMetrics
from tessera.gateway.money import Money
from tessera.gateway.replica import ClusterMember
from tessera.gateway.serving import Serving
from tessera.gateway.verification import Verifier
from tessera.market.load_shedding import LoadGauge
from tessera.market.registry import ProviderRegistry
from tessera.store.accounts import AccountStore
from tessera.store.api_keys import ApiKeyStore
from tessera.store.ledger import LedgerStore
from tessera.store.requests_log import RequestLog, RequestLogWriter

if TYPE_CHECKING:
    from tessera.gateway.chain_watcher import ChainWatcher


@dataclass
class Gateway:
    """Everything one gateway process holds, built in the lifespan."""

    settings: GatewaySettings
    metrics: GatewayMetrics
    registry: ProviderRegistry
    hub: ProviderHub
    serving: Serving
    auth: ApiKeyAuth
    keys: ApiKeyStore
    request_log: RequestLogWriter
    request_reader: RequestLog
    # None on a replica that does not own the ledger: the owner answers what needs them
    # (gateway/owner_forwarding.py); it gets them if it takes the ledger over.
    bookkeeper: Bookkeeper | None
    payments: Money
    ledger_store: LedgerStore
    accounts: AccountStore
    verifier: Verifier
    liveness: Liveness | None
    admission: RequestAdmission
    load: LoadGauge
    events: EventBus
    cluster: ClusterMember | None = None
    chain: ChainWatcher | None = None  # on the ledger's owner, when it settles on a chain


def gateway_of(request: Request | WebSocket) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway
