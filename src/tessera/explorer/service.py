"""The explorer inside the gateway: it listens to the gateway's events, rebuilds one
snapshot every ``interval_s``, and serves pages, JSON, CSV and a live stream from it.

Visitors never touch the request path: they read the last snapshot (built by one task,
not per visitor), rendered fragments are cached per snapshot and window, and each live
page holds one Server-Sent Events stream (capped; past the cap a page still works, it just
stops updating). Events are folded into the rollups in O(1) as they are published.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import asdict, replace
from decimal import Decimal
from importlib import resources
from typing import Any

from tessera.explorer.audit_case_page import audit_case_page
from tessera.explorer.claims import claims as network_claims
from tessera.explorer.gateway_reads import (
    gateway_identity_of,
    ledger_view,
    live_parts,
    offers_of,
    provider_view,
    public_entry,
    same_key,
)
from tessera.explorer.model_page import MODEL_CHARTS, model_page
from tessera.explorer.network_pages import (
    audits_page,
    claims_page,
    economics_page,
    epochs_page,
    models_page,
    slashes_page,
)
from tessera.explorer.pages import CHARTS, live_fragments, overview, providers_page
from tessera.explorer.price_index import load_references, price_index
from tessera.explorer.provider_page import provider_main, provider_page
from tessera.explorer.request_page import receipts_page, request_page
from tessera.explorer.rollups import (
    UNSERVED,
    UPTIME_WINDOWS,
    AuditRow,
    Presence,
    Rollups,
    SlashRow,
    TapeRow,
)
from tessera.explorer.snapshot import ProviderView, snapshot_steps
from tessera.gateway.events import (
    AuditClosed,
    EpochClosed,
    EventBus,
    RequestFinished,
    Slashed,
)
from tessera.gateway.verification_routes import audit_view, case_view
from tessera.ledger.pricing import split_fee

log = logging.getLogger("tessera.explorer")

HEARTBEAT_S = 15.0
SLICE_S = 0.004  # the longest a rebuild holds the loop before letting requests through
ROUTE_CHARS = 500  # of a request's route explanation, kept
ENTRY_READS = 4  # journal reads for request pages at once


class Explorer:
    def __init__(
        self,
        gateway: Callable[[], Any],
        *,
        interval_s: float = 2.0,
        max_streams: int = 200,
        clock: Callable[[], float] = time.time,
        token_usd: Decimal | None = None,
    ) -> None:
        self._gateway = gateway
        self.interval_s = interval_s
        self.max_streams = max_streams
        self.clock = clock
        self.rollups = Rollups()
        self.presence = Presence()
        self.token_usd = token_usd
        self.references = load_references()
        self._models: tuple[int, list[dict[str, Any]]] | None = None
        self._listed: tuple[Any, list[dict[str, Any]]] | None = None
        self._rendered: dict[str, tuple[int, str]] = {}
        self._answers: dict[str, tuple[int, dict[str, Any]]] = {}  # JSON, per snapshot
        self._render_locks: dict[str, asyncio.Lock] = {}
        self.snapshot: dict[str, Any] = {}
        self.version = 0
        self.streams = 0
        self.build_s = 0.0  # how long the last snapshot took to build
        self.longest_slice_s = 0.0  # the longest the loop waited on one slice of it
        self._changed = asyncio.Event()
        self._fragments: dict[tuple[int, str], dict[str, str]] = {}
        self._rows: dict[str, dict[str, Any]] = {}  # provider id -> its row in the snapshot
        self._row_cache: dict[str, tuple[ProviderView, int, dict[str, Any]]] = {}
        self._views: dict[str, tuple[tuple[Any, ...], ProviderView]] = {}
        self._details: dict[tuple[int, str], dict[str, Any]] = {}
        self._request_details: dict[tuple[int, str], dict[str, Any]] = {}
        self._model_details: dict[tuple[int, str, str], dict[str, Any]] = {}
        self._case_details: dict[tuple[int, str], dict[str, Any]] = {}
        self._entry_reads = asyncio.Semaphore(ENTRY_READS)
        # Every provider seen since this gateway started, as last seen: one that left is
        # listed offline rather than vanishing (bounded by providers, not by time).
        self.seen: dict[str, ProviderView] = {}
        self._static = resources.files("tessera.explorer").joinpath("static")
        self._scripts: dict[str, str] = {}

    # ------------------------------------------------------------ events (O(1) each)

    def subscribe_to(self, events: EventBus) -> None:
        events.subscribe(RequestFinished, self._request)
        events.subscribe(AuditClosed, self._audit)
        events.subscribe(Slashed, self._slash)
        events.subscribe(
            EpochClosed,
            lambda e: self.rollups.epoch(
                e.epoch_start, e.epoch_s, e.met, e.breached, e.slashed_units
            ),
        )

    def _request(self, event: RequestFinished) -> None:
        decode_s = event.latency_s - (event.ttft_ms or 0) / 1000
        tps = None
        if event.ttft_ms is not None and event.completion_tokens > 1 and decode_s > 0:
            tps = (event.completion_tokens - 1) / decode_s
        gateway = self._gateway()
        self.rollups.request(
            TapeRow(
                request_id=event.request_id,
                at=event.at.timestamp(),
                model=_public_model(event, gateway),
                provider_id=event.provider_id,
                status=event.status,
                prompt_tokens=event.prompt_tokens,
                completion_tokens=event.completion_tokens,
                cost=event.cost,
                latency_ms=round(event.latency_s * 1000, 1),
                ttft_ms=None if event.ttft_ms is None else round(event.ttft_ms, 1),
                price_input_per_mtok=event.price_input_per_mtok,
                price_output_per_mtok=event.price_output_per_mtok,
                route=None if event.route is None else event.route[:ROUTE_CHARS],
            ),
            tps,
            _earned(event.cost, gateway),
        )

    def _audit(self, event: AuditClosed) -> None:
        self.rollups.audit(
            AuditRow(
                at=self.clock(),
                request_id=event.request_id,
                model=event.model,
                status=event.status,
                slashed_units=event.slashed_units,
                refunded_units=event.refunded_units,
                provider_id=event.provider_id,
            )
        )

    def _slash(self, event: Slashed) -> None:
        self.rollups.slash(
            SlashRow(
                at=self.clock(),
                model=event.model,
                reason=event.reason,
                slashed_units=event.slashed_units,
                refunded_units=event.refunded_units,
                reference=event.reference,
                provider_id=event.provider_id,
            )
        )

    # ------------------------------------------------------------ snapshots

    async def run(self) -> None:
        """Rebuild the snapshot every interval until cancelled, a slice at a time: the
        loop serves requests whenever a slice has run SLICE_S, so no rebuild stalls it
        for long (10,000 providers take tens of milliseconds in all)."""
        while True:
            try:
                steps = self._rebuild_steps()
                done = False
                while not done:
                    started = time.perf_counter()
                    deadline = started + SLICE_S
                    for _ in steps:
                        if time.perf_counter() >= deadline:
                            break
                    else:
                        done = True
                    taken = time.perf_counter() - started
                    self.longest_slice_s = max(self.longest_slice_s, taken)
                    await asyncio.sleep(0)
            except Exception:
                log.exception("the explorer's snapshot failed; the last one stays")
            await asyncio.sleep(self.interval_s)

    def rebuild(self) -> dict[str, Any]:
        """Rebuild the snapshot at once (the first visitor before ``run`` built one)."""
        for _ in self._rebuild_steps():
            pass
        return self.snapshot

    def _rebuild_steps(self) -> Iterator[None]:
        """The rebuild, yielding after each provider: their views, what was seen of them,
        then the snapshot itself (snapshot_steps). An event folded between two steps lands
        in this snapshot or the next; every provider is read once."""
        started = time.perf_counter()
        now = self.clock()
        self.rollups.forget_before(now)
        gateway = self._gateway()
        online: dict[str, ProviderView] = {}
        if gateway is not None:
            for live in gateway.registry.all():
                self._live_view(gateway, live, online)
                yield
            self._forget_views(online)
        seen = self.seen
        for provider_id, view in list(seen.items()):
            if provider_id not in online and view.online:
                seen[provider_id] = replace(view, online=False, active_jobs=0)
            yield
        seen.update(online)
        providers = list(seen.values())
        for view in providers:
            self.presence.observe(view.provider_id, view.online, now)
            yield
        ledger = None if gateway is None else ledger_view(gateway)
        snapshot = yield from snapshot_steps(
            self.rollups, providers, ledger, now, self.version + 1, self._row_cache
        )
        rows = {}
        for row in snapshot["providers"]:
            rows[row["provider_id"]] = row
            yield
        self.version += 1
        self.snapshot = snapshot
        self._rows = rows
        self._fragments.clear()
        self._details.clear()
        self._request_details.clear()
        self._model_details.clear()
        self._case_details.clear()
        self.build_s = time.perf_counter() - started
        self._changed.set()
        self._changed = asyncio.Event()

    def _live_view(self, gateway: Any, live: Any, views: dict[str, ProviderView]) -> None:
        """A connected provider's view into ``views``, reused while nothing it shows
        changed: its card (fixed for a connection), status mapping (replaced, never
        mutated, by the registry), load, stake and reputation. At 10,000 providers most
        are unchanged."""
        pid = live.provider_id
        try:
            bonded = int(gateway.payments.bonded(pid))
        except Exception:  # a replica whose owner is changing hands: shown as 0
            bonded = 0
        key = (live.capabilities, live.status, live.active_jobs, bonded, live.reputation)
        cached = self._views.get(pid)
        if cached is not None and same_key(cached[0], key):
            views[pid] = cached[1]
            return
        view = provider_view(live, bonded)
        self._views[pid] = (key, view)
        views[pid] = view

    def _forget_views(self, views: dict[str, ProviderView]) -> None:
        cache = self._views
        if len(cache) > 2 * len(views) + 1000:  # forget providers long gone
            for pid in [p for p in cache if p not in views]:
                del cache[pid]

    def current(self) -> dict[str, Any]:
        return self.snapshot or self.rebuild()

    def fragments(self, window: str) -> dict[str, str]:
        snapshot = self.current()
        key = (snapshot["version"], window)
        cached = self._fragments.get(key)
        if cached is None:
            series = {
                metric: self.rollups.series(snapshot["as_of"], window, metric)
                for metric, _, _ in CHARTS
            }
            cached = self._fragments[key] = live_fragments(snapshot, window, series)
        return cached

    def page(self, window: str) -> str:
        return overview(self.current(), window, self.fragments(window))

    def providers(self, filters: dict[str, str], sort: str) -> list[dict[str, Any]]:
        """The providers list, filtered and sorted (descending for counts and stake), each
        row with its 24 h uptime as seen; built once per snapshot and query."""
        snapshot = self.current()
        key = (snapshot["version"], sort, tuple(sorted(filters.items())))
        if self._listed is not None and self._listed[0] == key:
            return self._listed[1]
        region, model, status = filters.get("region"), filters.get("model"), filters.get("status")
        gpu = (filters.get("gpu") or "").lower()
        q = (filters.get("q") or "").lower()
        now = snapshot["as_of"]
        day = UPTIME_WINDOWS["24h"]
        rows = []
        for row in snapshot["providers"]:
            if (
                (region is None or row["region"] == region)
                and (status is None or row["status"] == status)
                and (model is None or any(m["model"] == model for m in row["declared"]["models"]))
                and (not gpu or any(gpu in g.lower() for g in row["declared"]["gpus"]))
                and (not q or row["provider_id"].startswith(q) or q in (row["label"] or "").lower())
            ):
                share, checks = self.presence.uptime(row["provider_id"], now, day)
                rows.append({**row, "uptime_24h": {"uptime": share, "checks": checks}})
        rows.sort(key=_SORTS[sort])
        self._listed = (key, rows)
        return rows

    def providers_html(self, filters: dict[str, str], sort: str, offset: int, limit: int) -> str:
        rows = self.providers(filters, sort)
        return providers_page(
            self.current(), rows[offset : offset + limit], len(rows), filters, sort, offset, limit
        )

    async def provider(self, provider_id: str) -> dict[str, Any] | None:
        """One provider's page data, built at most once per snapshot (a crowd on one page
        costs one build); None for a provider this gateway never saw."""
        snapshot = self.current()
        key = (snapshot["version"], provider_id)
        cached = self._details.get(key)
        if cached is not None:
            return cached
        row = self._rows.get(provider_id)
        if row is None:
            return None
        view = self.seen[provider_id]
        gateway = self._gateway()
        totals = self.rollups.providers.get(provider_id)
        if totals is not None:  # measured now, like the record below: one page, one moment
            row = {**row, "measured": totals.as_dict()}
        detail: dict[str, Any] = {
            "object": "explorer.provider",
            "version": snapshot["version"],
            "as_of": snapshot["as_of"],
            "provider": row,
            "offers": offers_of(view, gateway),
            "record": None if totals is None else totals.detail(snapshot["as_of"]),
            "seen_online": self.presence.windows(provider_id, snapshot["as_of"]),
            "reputation": None,
            "ledger": None,
            "routing": None,
            "uptime": None,
        }
        if gateway is not None:
            detail.update(await live_parts(gateway, provider_id))
        self._details[key] = detail
        return detail

    async def request(self, request_id: str) -> dict[str, Any] | None:
        """One of the newest requests: what the tape shows, its audit, and its escrow
        entries (consumer accounts masked); None once it has left the kept window.

        The entries are the one read from the journal (by its index on the reference), at
        most once per request per snapshot and at most ENTRY_READS at a time."""
        snapshot = self.current()
        key = (snapshot["version"], request_id)
        cached = self._request_details.get(key)
        if cached is not None:
            return cached
        row = self.rollups.requests.get(request_id)
        if row is None:
            return None
        audit = self.rollups.request_audits.get(request_id)
        gateway = self._gateway()
        entries = None
        if gateway is not None and getattr(gateway, "ledger_store", None) is not None:
            async with self._entry_reads:
                found = await gateway.ledger_store.entries_for(request_id)
            entries = [public_entry(e, row.provider_id) for e in found]
        detail = {
            "object": "explorer.request",
            "version": snapshot["version"],
            "as_of": snapshot["as_of"],
            "request": asdict(row),
            "audit": None if audit is None else asdict(audit),
            "entries": entries,
            "gateway": None if gateway is None else gateway_identity_of(gateway),
        }
        self._request_details[key] = detail
        return detail

    def model(self, name: str, window: str) -> dict[str, Any] | None:
        """One model: its entry in the models list (every provider serving it) and what
        this gateway measured of it over the window, with charts; built at most once per
        snapshot and window. None for a model no provider this gateway saw announced and
        none of its requests were served."""
        snapshot = self.current()
        key = (snapshot["version"], name, window)
        cached = self._model_details.get(key)
        if cached is not None:
            return cached
        entry = next((m for m in self.models() if m["model"] == name), None)
        timeline = self.rollups.timeline(name)
        if entry is None and timeline is None:
            return None
        if entry is None:  # served once, announced by nobody seen now
            entry = {"model": name, "kind": None, "audited": False, "providers_online": 0,
                     "providers_seen": 0, "median_price_output_per_mtok": None,
                     "providers": []}  # fmt: skip
        now = snapshot["as_of"]
        detail = {
            "object": "explorer.model",
            "version": snapshot["version"],
            "as_of": now,
            "window": window,
            "model": entry,
            "summary": None if timeline is None else timeline.summary(now, window),
            "series": {}
            if timeline is None
            else {metric: timeline.series(now, window, metric) for metric, _, _ in MODEL_CHARTS},
        }
        self._model_details[key] = detail
        return detail

    def model_html(self, detail: dict[str, Any]) -> str:
        return model_page(detail)

    async def audit_case(self, request_id: str) -> dict[str, Any] | None:
        """One audit case, its evidence and what it cost the provider: the case and every
        audit in it (as ``/v1/audit-cases/{id}``), the request if still kept, and the slashes
        that cite it. One indexed read, at most once per case per snapshot and at most
        ENTRY_READS at a time; None for a request that was never audited."""
        snapshot = self.current()
        key = (snapshot["version"], request_id)
        cached = self._case_details.get(key)
        if cached is not None:
            return cached
        gateway = self._gateway()
        if gateway is None:
            return None
        store = gateway.verifier.store
        async with self._entry_reads:
            row = await store.case(request_id)
            audits = [] if row is None else await store.audits(request_id=request_id, limit=10)
        if row is None:
            return None
        reference = f"audit:{request_id}"
        request = self.rollups.requests.get(request_id)
        totals = self.rollups.providers.get(row.provider_id)
        slashes = [] if totals is None else list(totals.slashes)
        detail = {
            "object": "explorer.audit_case",
            "version": snapshot["version"],
            "as_of": snapshot["as_of"],
            "case": {**case_view(row), "audits": [audit_view(a) for a in reversed(audits)]},
            "request": None if request is None else asdict(request),
            "slashes": [asdict(s) for s in slashes if s.reference == reference],
        }
        self._case_details[key] = detail
        return detail

    def audit_case_html(self, detail: dict[str, Any]) -> str:
        return audit_case_page(detail)

    def gateway_identity(self) -> dict[str, str] | None:
        gateway = self._gateway()
        return None if gateway is None else gateway_identity_of(gateway)

    def models(self) -> list[dict[str, Any]]:
        """Every model any provider seen has declared, each with every provider serving it:
        price, region, status, uptime over 5 minutes, 30 minutes and a day, and latency
        and throughput percentiles with their sample sizes. Built once per snapshot."""
        snapshot = self.current()
        if self._models is not None and self._models[0] == snapshot["version"]:
            return self._models[1]
        now = snapshot["as_of"]
        gateway = self._gateway()
        catalog = None if gateway is None else gateway.verifier.catalog
        by_model: dict[str, list[dict[str, Any]]] = {}
        kind_of: dict[str, str] = {}  # a model's kind, as its first provider announced it
        for row in snapshot["providers"]:
            pid = row["provider_id"]
            totals = self.rollups.providers.get(pid)
            for model, kind, _ in self.seen[pid].weights:
                kind_of.setdefault(model, kind)
            for offer in row["declared"]["models"]:
                name = offer["model"]
                stats = None if totals is None else totals.models.get(name)
                by_model.setdefault(name, []).append(
                    {
                        "provider_id": pid,
                        "label": row["label"],
                        "region": row["region"],
                        "status": row["status"],
                        "model_status": row["model_status"].get(name),
                        "price_input_per_mtok": offer["price_input_per_mtok"],
                        "price_output_per_mtok": offer["price_output_per_mtok"],
                        "uptime": self.presence.windows(pid, now),
                        "measured": None if stats is None else stats.as_dict(),
                    }
                )
        models = []
        for name, providers in sorted(by_model.items()):
            live = [p for p in providers if p["status"] != "offline"]
            outputs = sorted(p["price_output_per_mtok"] for p in live)
            pinned = None if catalog is None else catalog.get(name)
            models.append(
                {
                    "model": name,
                    "kind": kind_of.get(name),
                    "audited": pinned is not None,
                    "providers_online": len(live),
                    "providers_seen": len(providers),
                    "median_price_output_per_mtok": outputs[len(outputs) // 2] if outputs else None,
                    "providers": sorted(
                        providers,
                        key=lambda p: (p["status"] == "offline", p["price_output_per_mtok"]),
                    ),
                }
            )
        self._models = (snapshot["version"], models)
        return models

    def economics(self) -> dict[str, Any]:
        """Supply, stake, fees, pools, open escrow, the invariant, the fee policy and the
        slashing table in force, and the price index against the dated references."""
        snapshot = self.current()
        cached = self._answers.get("economics")
        if cached is not None and cached[0] == snapshot["version"]:
            return cached[1]
        gateway = self._gateway()
        policy = None
        if gateway is not None and gateway.bookkeeper is not None:
            book_policy = gateway.bookkeeper.book.policy
            policy = {
                "fee_bps": book_policy.fees.fee_bps,
                "verification_share_bps": book_policy.fees.verification_share_bps,
                "unbonding_delay_s": book_policy.unbonding_delay_s,
                "slashing": book_policy.slashing.public(),
            }
        providers = snapshot["providers"]
        answer = {
            "object": "explorer.economics",
            "version": snapshot["version"],
            "as_of": snapshot["as_of"],
            "ledger": snapshot["ledger"],
            "stake": {
                "bonded": sum(r["bonded"] for r in providers),
                "bonded_online": sum(r["bonded"] for r in providers if r["status"] != "offline"),
                "providers": len(providers),
            },
            "paid_by_consumers": {
                w: snapshot["windows"][w]["kpis"]["cost"] for w in ("24h", "30d", "all")
            },
            "policy": policy,
            "price_index": price_index(self.models(), self.references, self.token_usd),
        }
        self._answers["economics"] = (snapshot["version"], answer)
        return answer

    def claims(self) -> dict[str, Any]:
        snapshot = self.current()
        cached = self._answers.get("claims")
        if cached is not None and cached[0] == snapshot["version"]:
            return cached[1]
        uptime = self.presence.network(snapshot["as_of"], UPTIME_WINDOWS["24h"])
        index = price_index(self.models(), self.references, self.token_usd)
        answer = {
            "object": "list",
            "version": snapshot["version"],
            "as_of": snapshot["as_of"],
            "data": network_claims(snapshot, uptime, index, self.rollups.caught_after()),
        }
        self._answers["claims"] = (snapshot["version"], answer)
        return answer

    def audits(self) -> list[dict[str, Any]]:
        """The newest closed audit cases, network-wide (bounded: LOG_SIZE)."""
        return [asdict(row) for row in self.rollups.audit_log]

    def slashes(self) -> list[dict[str, Any]]:
        return [asdict(row) for row in self.rollups.slash_log]

    def epochs(self) -> list[dict[str, Any]]:
        """Closed uptime epochs, newest first, with the share of providers that met their
        SLA (None when none was judged)."""
        return [
            {
                **asdict(row),
                "met_share": None if row.providers == 0 else round(row.met / row.providers, 4),
            }
            for row in reversed(self.rollups.epochs.values())
        ]

    def epochs_html(self) -> str:
        return epochs_page(self.current(), self.epochs())

    def audits_html(self) -> str:
        return audits_page(self.current(), self.audits())

    def slashes_html(self) -> str:
        return slashes_page(self.current(), self.slashes())

    def economics_html(self) -> str:
        return economics_page(self.economics())

    def claims_html(self) -> str:
        return claims_page(self.claims())

    async def rendered(self, name: str) -> str:
        """One of LIVE_PAGES as HTML, rendered at most once per snapshot whoever asks (a
        crowd of visitors or live pages costs one render), in a worker thread."""
        version = self.current()["version"]
        cached = self._rendered.get(name)
        if cached is not None and cached[0] == version:
            return cached[1]
        lock = self._render_locks.setdefault(name, asyncio.Lock())
        async with lock:
            cached = self._rendered.get(name)
            if cached is not None and cached[0] == version:
                return cached[1]
            html = await asyncio.to_thread(self.live_page, name)
            self._rendered[name] = (version, html)
            return html

    def live_page(self, name: str) -> str:
        """One of LIVE_PAGES, rendered now (the stream sends its <main>)."""
        builders: dict[str, Callable[[], str]] = {
            "models": self.models_html,
            "economics": self.economics_html,
            "claims": self.claims_html,
            "audits": self.audits_html,
            "slashes": self.slashes_html,
            "epochs": self.epochs_html,
        }
        return builders[name]()

    def models_html(self) -> str:
        return models_page(self.current(), self.models())

    def provider_html(self, detail: dict[str, Any]) -> str:
        return provider_page(detail)

    def request_html(self, detail: dict[str, Any]) -> str:
        return request_page(detail)

    def receipts_html(self) -> str:
        return receipts_page(self.gateway_identity())

    def script(self, name: str = "explorer.js") -> str:
        cached = self._scripts.get(name)
        if cached is None:
            cached = self._scripts[name] = self._static.joinpath(name).read_text()
        return cached

    # ------------------------------------------------------------ live stream

    async def overview_fragments(self, window: str) -> dict[str, str]:
        return self.fragments(window)

    async def provider_fragments(self, provider_id: str) -> dict[str, str]:
        detail = await self.provider(provider_id)
        return {} if detail is None else {"main": provider_main(detail)}

    async def stream(self, render: Callable[[], Awaitable[dict[str, str]]]) -> AsyncIterator[str]:
        """Server-Sent Events: the page's fragments (from ``render``) now and at every new
        snapshot, and a comment every HEARTBEAT_S so proxies keep the connection."""
        self.streams += 1
        try:
            yield "retry: 5000\n\n"
            sent = -1
            while True:
                snapshot = self.current()
                if snapshot["version"] != sent:
                    sent = snapshot["version"]
                    body = json.dumps({"version": sent, "html": await render()})
                    yield f"id: {sent}\nevent: snapshot\ndata: {body}\n\n"
                changed = self._changed
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), HEARTBEAT_S)
                    continue
                yield ": keep-alive\n\n"
        finally:
            self.streams -= 1


_SORTS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "status": lambda r: (r["status"] != "routable", r["status"], r["provider_id"]),
    "requests": lambda r: (-(r["measured"] or {}).get("requests", 0), r["provider_id"]),
    "stake": lambda r: (-r["bonded"], r["provider_id"]),
    "reputation": lambda r: (-(r["reputation"] or 0), r["provider_id"]),
    "region": lambda r: (r["region"], r["provider_id"]),
    "price": lambda r: (
        min((m["price_output_per_mtok"] for m in r["declared"]["models"]), default=0),
        r["provider_id"],
    ),
}
SORTS = tuple(_SORTS)


def _public_model(event: RequestFinished, gateway: Any) -> str:
    """The model as the public tape shows it: a name some provider serves, else a
    placeholder, so nobody can write text of their choosing on the explorer by asking
    for a model that does not exist."""
    if event.provider_id is not None:
        return event.model
    if gateway is not None and gateway.registry.offer(event.model) is not None:
        return event.model
    return UNSERVED


def _earned(cost: int, gateway: Any) -> int:
    """The provider's share of ``cost`` by the ledger's own split (0 on a replica,
    whose owner keeps the ledger)."""
    keeper = None if gateway is None or not cost else gateway.bookkeeper
    if keeper is None:
        return 0
    fees = keeper.book.policy.fees
    return split_fee(cost, fees.fee_bps, fees.verification_share_bps)[0]
