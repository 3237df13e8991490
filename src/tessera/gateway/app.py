"""The gateway's ASGI app: the process's parts built and wired, and its routes installed.

``create_app(settings)`` builds everything a gateway process needs; the lifespan opens
the store (running migrations), the request-log writer and the provider hub. The routes,
error handlers and response plumbing live in their own modules.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

from fastapi import FastAPI

from tessera import __version__
from tessera.config import GatewaySettings
from tessera.errors import ConfigError, TesseraError
from tessera.explorer.routes import install_explorer_routes
from tessera.explorer.service import Explorer
from tessera.gateway.admission import RequestAdmission
from tessera.gateway.auth import ApiKeyAuth, KeyChangeWatcher
from tessera.gateway.bookkeeper import Bookkeeper
from tessera.gateway.bus import Bus
from tessera.gateway.chain_routes import install_chain_routes
from tessera.gateway.cluster_audits import AuditIntake, AuditSender, BanShare
from tessera.gateway.cluster_reputation import CompletionsIntake, follow_stored_reputation
from tessera.gateway.cluster_requests import RunningDesk, sweep_left_in_flight
from tessera.gateway.dispatch import Dispatcher
from tessera.gateway.error_handlers import install_error_handlers, tessera_error_response
from tessera.gateway.event_feed import EventFeed
from tessera.gateway.events import EventBus, ProviderJoined, ProviderLeft, RequestFinished
from tessera.gateway.fast_routes import FrontDoorApp, InferenceRoutes
from tessera.gateway.gateway_state import Gateway, gateway_of
from tessera.gateway.http_limits import RequestIdAndBodyLimit
from tessera.gateway.hub import ProviderHub
from tessera.gateway.inference_routes import install_inference_routes
from tessera.gateway.ledger_ownership import RESTART_IT, own_ledger, watch_ownership
from tessera.gateway.ledger_service import LedgerService
from tessera.gateway.liveness import Liveness
from tessera.gateway.liveness_routes import install_liveness_routes
from tessera.gateway.load_shedding import LagMonitor, ShedOverload
from tessera.gateway.metrics import GatewayMetrics
from tessera.gateway.money import Money
from tessera.gateway.money_routes import install_money_routes
from tessera.gateway.nats_bus import NatsBus
from tessera.gateway.openapi_docs import install_openapi
from tessera.gateway.owner_forwarding import ForwardToOwner, OwnerDoor
from tessera.gateway.payments import Payments
from tessera.gateway.remote_money import RemoteMoney
from tessera.gateway.replica import (
    ClusterMember,
    SwitchedMoney,
    replica_name,
    watch_for_takeover,
)
from tessera.gateway.serving import Serving
from tessera.gateway.status_routes import install_status_routes
from tessera.gateway.sticky_share import StickyShare
from tessera.gateway.verification import Verifier
from tessera.gateway.verification_routes import install_verification_routes
from tessera.gateway.wiring import Runtime
from tessera.key_file import load_or_create_key
from tessera.ledger.book import BookPolicy
from tessera.ledger.escrow import FeePolicy, OpenHold
from tessera.ledger.slashing_table import SlashingTable
from tessera.market.load_shedding import LoadGauge
from tessera.market.refusals import job_event
from tessera.market.registry import ProviderRegistry
from tessera.market.stake_policy import StakePolicy
from tessera.protocol.wire import Capabilities
from tessera.store.accounts import AccountStore
from tessera.store.api_keys import ApiKeyStore, hash_api_key
from tessera.store.chain import ChainStore
from tessera.store.engine import create_engine, database_url_for
from tessera.store.ledger import LedgerStore
from tessera.store.ledger_owner import ledger_owner_lock
from tessera.store.migrate import upgrade_to_head
from tessera.store.providers import ProviderStore
from tessera.store.requests_log import RequestLog, RequestLogWriter, RequestRecord
from tessera.store.uptime import UptimeStore
from tessera.store.verification import ReceiptWriter, VerificationStore
from tessera.verify.catalog import Catalog
from tessera.verify.reputation import ReputationBook

log = logging.getLogger("tessera.gateway")
PAY_THROUGH_NEW_OWNER = (
    "this replica stops moving money itself and goes on serving, paying through the new "
    "owner; it takes the ledger back if that one stops"
)


def create_app(settings: GatewaySettings, runtime: Runtime | None = None) -> FastAPI:
    """The gateway app; ``runtime`` (default: the real clocks, an unseeded random source)
    is the one clock and random source every part is given."""
    runtime = runtime or Runtime()
    metrics = GatewayMetrics()
    registry = ProviderRegistry()
    events = EventBus()
    metrics.subscribe_to(events)
    explorer = Explorer(
        lambda: getattr(app.state, "gateway", None),
        interval_s=settings.explorer_interval_s,
        max_streams=settings.explorer_max_streams,
        token_usd=settings.explorer_token_usd,
    )
    explorer.subscribe_to(events)

    catalog = load_catalog(settings)
    load = LoadGauge(
        None if settings.overload_loop_lag_ms is None else settings.overload_loop_lag_ms / 1000,
        settings.max_in_flight_requests,
        retry_after_s=settings.overload_retry_after_s,
        queue_s=settings.overload_queue_s,
        min_queue=settings.overload_min_queue,
    )
    lag_monitor = LagMonitor(load, metrics, settings.overload_sample_ms / 1000)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        # First, so a wrong --nats-url fails the start before anything else is opened.
        feed: EventFeed | None = None
        bus: Bus | None = None
        replica = replica_name(settings.gateway_id)  # this process, in the cluster
        if settings.nats_url:
            bus = await NatsBus.connect(settings.nats_url, f"tessera gateway {settings.gateway_id}")
            feed = EventFeed(bus, replica)
        gateway_key = load_or_create_key(settings.data_dir / "gateway.key", what="gateway")
        url = settings.database_url or database_url_for(settings.data_dir)
        await upgrade_to_head(url)
        engine = create_engine(url)
        # Before anything reads or repairs the ledger or the request log: a second
        # gateway would release the first one's running holds as crash-left. In a
        # cluster, a replica that does not get the lock pays through the one that did.
        owner = ledger_owner_lock(engine, settings.gateway_id)
        try:
            if bus is None:
                await own_ledger(owner, standby=settings.standby, poll_s=settings.standby_poll_s)
                owns = True
            else:
                if settings.standby:
                    log.info(
                        "--standby is implied with --nats-url: this replica serves now and "
                        "takes the ledger over if its owner stops"
                    )
                owns = await owner.try_acquire()
        except BaseException:
            await engine.dispose()
            raise
        keys = ApiKeyStore(engine)
        providers = ProviderStore(engine)
        registry.remember_models(await providers.recent_models())
        request_reader = RequestLog(engine)
        request_log = RequestLogWriter(request_reader)
        await request_log.start()
        # Fenced by the lock: an owner whose lock's session ended cannot append beside
        # the next owner before it notices (store/ledger.py).
        ledger_store = LedgerStore(engine, fence=owner.write_fence())
        stake = StakePolicy(
            settings.min_stake_units, settings.min_stake_per_model, settings.min_stake_per_gpu
        )
        bookkeeper: Bookkeeper | None = None
        liveness: Liveness | None = None
        ledger_service: LedgerService | None = None
        door: OwnerDoor | None = None
        remote_money: RemoteMoney | None = None
        owner_tasks: list[asyncio.Task[None]] = []
        takeover: asyncio.Task[None] | None = None

        async def provider_seen(provider_id: str, caps: Capabilities) -> None:
            if liveness is not None:
                liveness.connected(provider_id, caps)
            verifier.on_connect(provider_id, caps)
            events.publish(
                ProviderJoined(
                    provider_id, caps.label, caps.region, tuple(m.name for m in caps.models)
                )
            )
            try:
                await providers.upsert_seen(
                    provider_id=provider_id,
                    label=caps.label,
                    region=caps.region,
                    agent_version=caps.agent_version,
                    capabilities_json=caps.model_dump_json(),
                    now=datetime.now(UTC),
                )
            except TesseraError:
                log.exception("could not record provider %s", provider_id[:12])

        hub = ProviderHub(
            settings, registry, metrics, on_provider_seen=provider_seen, rng=runtime.rng
        )
        member: ClusterMember | None = None
        if bus is not None:
            member = ClusterMember(bus, replica, settings, registry, hub)
            await member.start()

        async def open_ledger() -> tuple[Bookkeeper, tuple[OpenHold, ...]]:
            """Replay the journal; with replicas, keep the holds of those still alive."""
            keep = None
            if member is not None:
                await member.hear_the_others()  # their open holds stay open
                keep = member.keeps
            await ledger_store.wait_for_writers()  # a lost owner's last append, if any
            keeper, recovery = await Bookkeeper.open(
                ledger_store,
                book_policy(settings),
                durable_timeout_s=settings.ledger_write_timeout_s,
                clock=runtime.wall,
                keep=keep,
            )
            log.info(
                "ledger: %d entries replayed, %d crash-left hold(s) released, %d kept",
                recovery.entries,
                len(recovery.released),
                len(recovery.kept),
            )
            return keeper, recovery.kept

        def new_liveness(keeper: Bookkeeper) -> Liveness:
            connected = member.is_connected if member is not None else hub.sessions.__contains__
            return Liveness(
                settings, keeper, UptimeStore(engine), connected, clock=runtime.wall, events=events
            )

        payments: Money
        switched: SwitchedMoney | None = None
        kept: tuple[OpenHold, ...] = ()
        if owns:
            bookkeeper, kept = await open_ledger()
        if bus is None:
            assert bookkeeper is not None
            payments = Payments(bookkeeper, registry, stake)
        else:
            # A replica pays through the owner until it owns the ledger itself, and again
            # if it ever loses the lock.
            remote_money = RemoteMoney(bus, registry, stake, replica_id=replica)
            payments = switched = SwitchedMoney(remote_money)
            if bookkeeper is not None:
                switched.local = Payments(bookkeeper, registry, stake)
            else:
                holder = await owner.holder() or "another replica"
                log.warning("%s owns the ledger: this replica pays through it", holder)

        verification_store = VerificationStore(engine)
        receipt_writer = ReceiptWriter(verification_store)
        await receipt_writer.start()
        verifier = Verifier(
            settings,
            catalog,
            gateway_key,
            registry,
            hub,
            bookkeeper,
            verification_store,
            receipt_writer,
            ReputationBook.restore(await verification_store.load_reputation()),
            {(pid, model) for pid, model, _, _ in await verification_store.bans()},
            events,
            clock=runtime.wall,
        )
        hub.initial_status = verifier.initial_status
        audit_intake: AuditIntake | None = None
        completions: CompletionsIntake | None = None
        following: asyncio.Task[None] | None = None  # the stored reputation, off the owner
        ban_share: BanShare | None = None
        if bus is not None:
            verifier.forward_audit = AuditSender(bus)  # used while another owns the ledger
            ban_share = BanShare(bus, verifier)
            await ban_share.start()

        def provider_gone(provider_id: str) -> None:
            verifier.on_disconnect(provider_id)
            if liveness is not None:
                liveness.gone(provider_id)
            events.publish(ProviderLeft(provider_id))

        def provider_leaving(provider_id: str, reason: str) -> None:
            if liveness is not None:
                liveness.leaving(provider_id, reason)

        hub.on_provider_gone = provider_gone
        hub.on_provider_leaving = provider_leaving
        if member is not None:
            # Providers on other replicas count for uptime where the ledger is.
            def remote_added(provider_id: str, caps: Capabilities) -> None:
                if liveness is not None:
                    liveness.connected(provider_id, caps)

            def remote_removed(provider_id: str) -> None:
                if liveness is not None:
                    liveness.gone(provider_id)

            member.view.on_provider_added.append(remote_added)
            member.view.on_provider_removed.append(remote_removed)

        def request_finished(event: RequestFinished) -> None:
            if event.provider_id is not None and event.status == "error":
                failed = job_event(event.status, event.error_code)
                if failed is not None:
                    verifier.reputation.record(event.provider_id, failed)
            request_log.submit(
                RequestRecord(
                    account_id=event.account_id,
                    cost=event.cost,
                    price_input_per_mtok=event.price_input_per_mtok,
                    price_output_per_mtok=event.price_output_per_mtok,
                    request_id=event.request_id,
                    api_key_id=event.api_key_id,
                    endpoint=event.endpoint,
                    model=event.model,
                    provider_id=event.provider_id,
                    status=event.status,
                    error_code=event.error_code,
                    prompt_tokens=event.prompt_tokens,
                    completion_tokens=event.completion_tokens,
                    latency_ms=round(event.latency_s * 1000),
                    ttft_ms=None if event.ttft_ms is None else round(event.ttft_ms),
                    created_at=event.at,
                )
            )

        events.subscribe(RequestFinished, request_finished)

        admission = RequestAdmission(settings, clock=runtime.monotonic, rng=runtime.rng)
        serving = Serving(
            registry,
            Dispatcher(hub, settings, metrics, admission.hedge_slot),
            settings,
            metrics,
            events,
            payments,
            verifier,
            clock=runtime.monotonic,
        )
        sticky_share: StickyShare | None = None
        if bus is not None:
            sticky_share = StickyShare(bus, replica, serving.sticky)
            serving.on_remember = sticky_share.remembered
            await sticky_share.start()
        auth = ApiKeyAuth(keys.find_by_hash, hash_api_key, settings.api_key_cache_ttl_s)
        key_watcher = KeyChangeWatcher(keys, auth, settings.key_change_poll_s)
        await key_watcher.start()
        gateway = app.state.gateway = Gateway(
            settings,
            metrics,
            registry,
            hub,
            serving,
            auth,
            keys,
            request_log,
            request_reader,
            bookkeeper,
            payments,
            ledger_store,
            AccountStore(engine),
            verifier,
            liveness,
            admission,
            load,
            events,
            member,
        )

        sweeps: set[asyncio.Task[None]] = set()

        def orphans_of(replica: str) -> None:
            """A replica died: the owner releases its holds and marks its requests (in the
            background: the cluster view's handlers must not wait on other replicas)."""
            if ledger_service is None or member is None or bus is None:
                return
            ledger_service.release_orphans(replica)
            task = asyncio.create_task(sweep(member.view.replicas()))
            sweeps.add(task)
            task.add_done_callback(sweeps.discard)

        async def sweep(live: list[str]) -> None:
            assert bus is not None
            try:
                await sweep_left_in_flight(bus, live, request_log, request_reader)
            except TesseraError as exc:
                log.warning("could not mark a dead replica's requests: %s", exc)

        running_desk: RunningDesk | None = None
        if member is not None and bus is not None:
            member.view.on_replica_gone.append(orphans_of)
            running_desk = RunningDesk(bus, replica, request_log)
            await running_desk.start()

        async def hold_ledger(keeper: Bookkeeper, adopted: tuple[OpenHold, ...]) -> None:
            """Run what only the ledger's owner runs: the ledger service and door for the
            other replicas, audits' upkeep, uptime and the lock's watch."""
            nonlocal ledger_service, door, liveness, bookkeeper, audit_intake, completions
            nonlocal following
            bookkeeper = gateway.bookkeeper = verifier.bookkeeper = keeper
            if switched is not None:
                switched.local = Payments(keeper, registry, stake)
            if liveness is None:
                liveness = gateway.liveness = new_liveness(keeper)
                for provider_id, session in list(hub.sessions.items()):
                    if session.capabilities_json:
                        caps = Capabilities.model_validate_json(session.capabilities_json)
                        liveness.connected(provider_id, caps)
                if member is not None:
                    for provider_id, caps in member.view.remote_providers():
                        liveness.connected(provider_id, caps)
            if bus is not None:
                ledger_service = LedgerService(bus, keeper, replica)
                ledger_service.adopt(adopted)
                await ledger_service.start()
                door = OwnerDoor(bus, app)
                await door.start()
                audit_intake = AuditIntake(bus, verifier)
                await audit_intake.start()
                completions = CompletionsIntake(bus, replica, verifier)
                await completions.start()
                if following is not None:
                    following.cancel()
                    following = None
            app.state.owns_ledger = True
            owner_tasks.append(asyncio.create_task(verifier.run_housekeeping()))
            # A stopped journal (its write fence refused an append) checks the lock at once.
            check_now = asyncio.Event()
            keeper.writer.stopped.append(lambda why: check_now.set())
            owner_tasks.append(
                asyncio.create_task(
                    watch_ownership(
                        owner,
                        lambda why: lost_ledger(keeper, why),
                        interval,
                        RESTART_IT if bus is None else PAY_THROUGH_NEW_OWNER,
                        check_now,
                    )
                )
            )
            liveness.start()
            if settings.chain_url is not None:
                from tessera.gateway.chain_watcher import open_chain_watcher  # web3: lazily

                watcher = await open_chain_watcher(settings, keeper, ChainStore(engine))
                gateway.chain = watcher
                owner_tasks.append(asyncio.create_task(watcher.run()))

        interval = settings.ledger_owner_check_s

        def lost_ledger(keeper: Bookkeeper, why: str) -> None:
            keeper.writer.stop_writing(why)
            if bus is not None:  # a replica: pay through the new owner, and watch the lock
                asyncio.get_running_loop().create_task(give_up_ledger(keeper))

        async def give_up_ledger(keeper: Bookkeeper) -> None:
            """The lock is gone (its database session ended): another replica may own the
            ledger now. Stop answering for it at once; pay through whoever owns it."""
            nonlocal ledger_service, door, liveness, bookkeeper, takeover, audit_intake
            nonlocal completions, following
            app.state.owns_ledger = False
            if switched is not None:
                switched.local = None
            bookkeeper = gateway.bookkeeper = verifier.bookkeeper = None
            gateway.chain = None
            for task in owner_tasks:
                task.cancel()
            owner_tasks.clear()
            service, ledger_service = ledger_service, None
            if service is not None:
                await service.close()
            front, door = door, None
            if front is not None:
                await front.close()
            intake, audit_intake = audit_intake, None
            if intake is not None:
                await intake.close()
            counting, completions = completions, None
            if counting is not None:
                await counting.close()
            following = asyncio.create_task(follow_stored_reputation(verifier))
            watcher, liveness = liveness, None
            gateway.liveness = None
            if watcher is not None:
                await watcher.close()
            await keeper.close()
            takeover = asyncio.create_task(
                watch_for_takeover(owner, take_over, settings.standby_poll_s)
            )

        async def take_over() -> None:
            """The owner died and this replica got the lock: the ledger moves here. If the
            replay fails, nothing has started (the watcher gives the lock back and tries
            again); if starting the owner's parts fails, what started stops, a new watch
            begins and the lock is given back."""
            keeper, adopted = await open_ledger()
            try:
                await hold_ledger(keeper, adopted)
            except Exception:
                log.exception("could not take the ledger over; giving it up and watching again")
                await give_up_ledger(keeper)  # stops what started; a new watch waits poll_s
                await owner.release()

        if feed is not None:
            feed.attach(events)
            feed.start()
        app.state.cluster_bus = bus
        app.state.owns_ledger = owns
        if bookkeeper is not None:
            await hold_ledger(bookkeeper, kept)
        else:
            takeover = asyncio.create_task(
                watch_for_takeover(owner, take_over, settings.standby_poll_s)
            )
            following = asyncio.create_task(follow_stored_reputation(verifier))
        if remote_money is not None:  # once the owner's service answers, if this is it
            await remote_money.start()
        lag_monitor.start()
        explorer_task = asyncio.create_task(explorer.run())
        try:
            yield
        finally:
            explorer_task.cancel()
            await lag_monitor.close()
            if takeover is not None:
                takeover.cancel()
            if following is not None:
                following.cancel()
            if completions is not None:
                await completions.close()
            for task in owner_tasks:
                task.cancel()
            if member is not None:
                await member.close()  # tell the others first: they stop routing here
            if door is not None:
                await door.close()
            if audit_intake is not None:
                await audit_intake.close()
            if sticky_share is not None:
                await sticky_share.close()
            if ban_share is not None:
                await ban_share.close()
            if running_desk is not None:
                await running_desk.close()
            if feed is not None:
                await feed.close()
            await key_watcher.close()
            if liveness is not None:
                await liveness.close()
            await verifier.close()
            await receipt_writer.close()
            if remote_money is not None:
                await remote_money.close()
            if ledger_service is not None:
                await ledger_service.close()
            if bookkeeper is not None:
                await bookkeeper.close()
            if bus is not None:
                await bus.close()
            await request_log.close()
            await owner.release()
            await engine.dispose()

    app = FrontDoorApp(
        title="Tessera gateway",
        version=__version__,
        description="OpenAI-compatible API of the Tessera inference network.",
        lifespan=lifespan,
    )
    # The inference POSTs: shedding inside the request id, so refusals carry one. Every
    # other request gets its id and body limit inside the framework's stack.
    routes = InferenceRoutes()
    app.inference = routes
    app.front = RequestIdAndBodyLimit(
        ShedOverload(app, gauge=load, metrics=metrics, routes=routes),
        max_body_bytes=settings.max_body_bytes,
    )
    # Inside the request id: requests only the ledger's owner can answer go there.
    app.add_middleware(
        ForwardToOwner,
        bus=lambda: getattr(app.state, "cluster_bus", None),
        is_owner=lambda: getattr(app.state, "owns_ledger", True),
        max_body_bytes=settings.max_body_bytes,
    )
    app.add_middleware(RequestIdAndBodyLimit, max_body_bytes=settings.max_body_bytes)
    install_error_handlers(app, metrics)
    install_inference_routes(app, metrics, registry, routes)
    routes.bind(app, functools.partial(tessera_error_response, metrics))
    install_money_routes(app, gateway_of)
    install_verification_routes(app, gateway_of)
    install_status_routes(app, gateway_of)
    install_liveness_routes(app, gateway_of)
    install_chain_routes(app, gateway_of)
    install_explorer_routes(app, explorer)
    app.state.explorer = explorer
    install_openapi(app, settings)
    return app


def book_policy(settings: GatewaySettings) -> BookPolicy:
    table = SlashingTable()
    if settings.slashing_table_file is not None:
        try:
            table = SlashingTable.from_json(settings.slashing_table_file.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"cannot use slashing table {settings.slashing_table_file}: {exc}"
            ) from exc
    return BookPolicy(
        fees=FeePolicy(settings.fee_bps, settings.verification_share_bps),
        unbonding_delay_s=settings.unbonding_delay_s,
        slashing=table,
    )


def load_catalog(settings: GatewaySettings) -> Catalog:
    """The operator's model catalog (empty when none is configured); ConfigError if bad."""
    if settings.catalog_file is None:
        return Catalog()
    try:
        return Catalog.load(settings.catalog_file)
    except ValueError as exc:
        raise ConfigError(
            f"{exc}; write one with `tessera catalog calibrate MODEL_DIR --catalog FILE`"
        ) from exc
