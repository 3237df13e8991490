"""The explorer's HTTP: the overview page, its JSON twin, CSV, and the live stream.

HTML lives under ``/explorer``, data under ``/explorer/api/v1/`` (never under ``/v1/``,
OpenAI's namespace). Every answer is cut from the last snapshot; lists and series take
``?format=csv``. Pages and the stream are left out of the OpenAPI document; the JSON is in.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal, TypeVar

from fastapi import FastAPI, Path, Query
from fastapi.responses import HTMLResponse, PlainTextResponse, Response, StreamingResponse

from tessera.errors import InvalidRequest, NoCapacity, NotFound
from tessera.explorer.badge import network_badge, provider_badge
from tessera.explorer.export import flat_model, flat_provider, to_csv
from tessera.explorer.frame import main_part
from tessera.explorer.rollups import KEEP_REQUESTS, SERIES_METRICS
from tessera.explorer.service import SORTS, Explorer
from tessera.gateway.verification_routes import PROVIDER_ID

Window = Literal["1h", "24h", "7d", "30d", "all"]
Metric = Literal[SERIES_METRICS]  # type: ignore[valid-type]
Format = Literal["json", "csv"]
Sort = Literal[SORTS]  # type: ignore[valid-type]
Status = Literal["routable", "joining", "offline"]
LivePage = Literal["models", "economics", "claims", "audits", "slashes", "epochs"]


def _text() -> Any:
    """A short optional text filter (one Query object per parameter: FastAPI keeps state
    on it)."""
    return Query(None, min_length=1, max_length=100)


T = TypeVar("T")
CACHE_DAY = {"Cache-Control": "public, max-age=86400"}
FAVICON = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16">'
    '<rect width="16" height="16" rx="3" fill="#14213d"/>'
    '<path d="M3 4h10v2H9v7H7V6H3z" fill="#fca311"/></svg>'
)
CACHE = {"Cache-Control": "public, max-age=2"}
CACHE_BADGE = {"Cache-Control": "public, max-age=60"}  # embedded elsewhere: fetched often
SCRIPTS = frozenset({"explorer.js", "receipt.js"})
RequestId = Annotated[str, Path(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$")]
ModelPath = Annotated[str, Path(min_length=1, max_length=200)]


def install_explorer_routes(app: FastAPI, explorer: Explorer) -> None:
    @app.get("/explorer", include_in_schema=False)
    async def explorer_page(window: Window = "24h") -> HTMLResponse:
        return HTMLResponse(explorer.page(window), headers=CACHE)

    def filters_of(
        region: str | None, model: str | None, status: str | None, gpu: str | None, q: str | None
    ) -> dict[str, str]:
        given = {"region": region, "model": model, "status": status, "gpu": gpu, "q": q}
        return {k: v for k, v in given.items() if v}

    @app.get("/explorer/providers", include_in_schema=False)
    async def providers_page(
        region: str | None = _text(),
        model: str | None = _text(),
        status: Annotated[Status | Literal[""] | None, Query()] = None,
        gpu: str | None = _text(),
        q: str | None = _text(),
        sort: Sort = "status",
        offset: Annotated[int, Query(ge=0, le=10**7)] = 0,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> HTMLResponse:
        filters = filters_of(region, model, status or None, gpu, q)
        html = await off_loop(explorer.providers_html, filters, sort, offset, limit)
        return HTMLResponse(html, headers=CACHE)

    @app.get("/explorer/api/v1/providers", tags=["explorer"])
    async def providers(
        region: str | None = _text(),
        model: str | None = _text(),
        status: Status | None = None,
        gpu: str | None = _text(),
        q: str | None = _text(),
        sort: Sort = "status",
        offset: Annotated[int, Query(ge=0, le=10**7)] = 0,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
        format: Format = "json",
    ) -> Any:
        """Every provider seen since this gateway started (one that left is ``offline``),
        filtered by region, model, status, GPU (a substring of a declared GPU's name) and
        ``q`` (a provider id prefix or a substring of its label), sorted and paged: what
        it declared (GPUs, models, prices) apart from what this gateway measured
        (requests, success rate, TTFT p50 with its sample count, uptime over 24 h with
        its check count), with its stake and reputation. ``total`` counts every match."""
        rows = await off_loop(explorer.providers, filters_of(region, model, status, gpu, q), sort)
        page = rows[offset : offset + limit]
        if format == "csv":
            return _csv([flat_provider(r) for r in page], "providers.csv")
        return {
            "object": "list",
            "version": explorer.current()["version"],
            "total": len(rows),
            "data": page,
        }

    async def detail_of(provider_id: str) -> dict[str, Any]:
        if not PROVIDER_ID.fullmatch(provider_id):
            raise InvalidRequest(
                "a provider id is its public key: 64 lowercase hex characters",
                param="provider_id",
            )
        return found(
            await explorer.provider(provider_id),
            f"no provider {provider_id} has been seen by this gateway",
            "provider_id",
        )

    @app.get("/explorer/providers/{provider_id}", include_in_schema=False)
    async def provider_page(provider_id: str) -> HTMLResponse:
        detail = await detail_of(provider_id)
        return HTMLResponse(explorer.provider_html(detail), headers=CACHE)

    @app.get("/explorer/api/v1/providers/{provider_id}", tags=["explorer"])
    async def provider(provider_id: str) -> dict[str, Any]:
        """One provider: its row in the list, its offers (weight hashes, prices, audited or
        not), its measured record (per-model latency and throughput percentiles with sample
        sizes, audits, slashes with evidence, paid per day), its reputation with the
        formula, its ledger account, why it is routed or not, and uptime per epoch."""
        return await detail_of(provider_id)

    @app.get("/explorer/providers/{provider_id}/badge.svg", include_in_schema=False)
    async def provider_badge_svg(provider_id: str) -> Response:
        """A badge for a provider's README: its status now and its uptime over a day."""
        detail = await detail_of(provider_id)
        seen = detail["seen_online"]["24h"]
        svg = provider_badge(detail["provider"]["status"], seen["uptime"], seen["checks"])
        return Response(svg, media_type="image/svg+xml", headers=CACHE_BADGE)

    @app.get("/explorer/badge.svg", include_in_schema=False)
    async def network_badge_svg() -> Response:
        snapshot = explorer.current()
        rate = snapshot["windows"]["24h"]["kpis"]["success_rate"]
        svg = network_badge(snapshot["network"]["providers_online"], rate)
        return Response(svg, media_type="image/svg+xml", headers=CACHE_BADGE)

    @app.get("/explorer/api", tags=["explorer"])
    @app.get("/explorer/api/v1", tags=["explorer"], include_in_schema=False)
    async def api_index() -> dict[str, Any]:
        """Every JSON answer of the explorer, with what it holds and whether it also
        answers CSV (``?format=csv``): the same numbers as the pages."""
        return {"object": "list", "data": _index(app)}

    @app.get("/explorer/receipts", include_in_schema=False)
    async def receipts_page() -> HTMLResponse:
        return HTMLResponse(explorer.receipts_html(), headers=CACHE)

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> Response:
        """Browsers ask every origin for one (JSON answers opened in a tab too)."""
        return Response(FAVICON, media_type="image/svg+xml", headers=CACHE_DAY)

    @app.get("/explorer/static/{name}", include_in_schema=False)
    async def explorer_static(name: str) -> Response:
        if name not in SCRIPTS:
            raise NotFound(f"no explorer asset '{name[:100]}'")
        return Response(explorer.script(name), media_type="text/javascript", headers=CACHE)

    @app.get("/explorer/models", include_in_schema=False)
    async def models_page() -> HTMLResponse:
        return HTMLResponse(await explorer.rendered("models"), headers=CACHE)

    @app.get("/explorer/api/v1/models", tags=["explorer"])
    async def models(format: Format = "json") -> Any:
        """Every model announced by a provider this gateway has seen, each with every
        provider serving it: declared price and region, status, uptime over the last
        5 minutes, 30 minutes and 24 hours (share of checks that found it connected, with
        the number of checks), and measured latency (TTFT) and decode throughput
        p50/p75/p90/p99 with their sample sizes."""
        rows = await off_loop(explorer.models)
        if format == "csv":
            return _csv([line for m in rows for line in flat_model(m)], "models.csv")
        return {"object": "list", "version": explorer.current()["version"], "data": rows}

    @app.get("/explorer/models/{model:path}", include_in_schema=False)
    async def model_page(model: ModelPath, window: Window = "24h") -> HTMLResponse:
        detail = await model_of(model, window)
        return HTMLResponse(explorer.model_html(detail), headers=CACHE)

    @app.get("/explorer/api/v1/models/{model:path}", tags=["explorer"])
    async def model_detail(model: ModelPath, window: Window = "24h") -> dict[str, Any]:
        """One model: every provider serving it (as in the models list) and what this
        gateway measured of its requests over the window — KPIs against the previous
        window, and series of requests, success rate, TTFT p50 and decode tokens/s p50
        (a point without enough samples is null). A name may contain '/'."""
        return await model_of(model, window)

    async def model_of(model: str, window: str) -> dict[str, Any]:
        return found(
            await off_loop(explorer.model, model, window),
            f"no provider this gateway has seen announces a model named '{model[:200]}'; "
            "the served models are listed at /explorer/api/v1/models",
            "model",
        )

    @app.get("/explorer/audits/{request_id}", include_in_schema=False)
    async def audit_case_page(request_id: RequestId) -> HTMLResponse:
        detail = await case_of(request_id)
        return HTMLResponse(explorer.audit_case_html(detail), headers=CACHE)

    @app.get("/explorer/api/v1/audits/{request_id}", tags=["explorer"])
    async def audit_case(request_id: RequestId) -> dict[str, Any]:
        """One audit case as evidence: its outcome and reason, every auditor's answer (the
        rules that failed, at which token, by how much; the numbers behind them), the
        stake taken and the refund, the request if still kept, and the slashes citing it.
        Keep this JSON as the case's evidence bundle."""
        return await case_of(request_id)

    async def case_of(request_id: str) -> dict[str, Any]:
        return found(
            await explorer.audit_case(request_id),
            f"request '{request_id}' has no audit case (it was not audited)",
            "request_id",
        )

    @app.get("/explorer/audits", include_in_schema=False)
    async def audits_page() -> HTMLResponse:
        return HTMLResponse(await explorer.rendered("audits"), headers=CACHE)

    @app.get("/explorer/api/v1/audits", tags=["explorer"])
    async def audits(format: Format = "json") -> Any:
        """The newest closed audit cases (newest first): provider, request, model, outcome,
        stake slashed and refunded; the evidence of each is ``/v1/audit-cases/{request}``."""
        rows = explorer.audits()
        if format == "csv":
            return _csv(rows, "audits.csv")
        return {"object": "list", "version": explorer.current()["version"], "data": rows}

    @app.get("/explorer/slashes", include_in_schema=False)
    async def slashes_page() -> HTMLResponse:
        return HTMLResponse(await explorer.rendered("slashes"), headers=CACHE)

    @app.get("/explorer/api/v1/slashes", tags=["explorer"])
    async def slashes(format: Format = "json") -> Any:
        """Every recent slash (newest first): provider, model, reason (a row of the
        slashing table), stake taken, refunded to consumers, and the evidence reference
        (``audit:<request id>``: that request's audit case)."""
        rows = explorer.slashes()
        if format == "csv":
            return _csv(rows, "slashes.csv")
        return {"object": "list", "version": explorer.current()["version"], "data": rows}

    @app.get("/explorer/epochs", include_in_schema=False)
    async def epochs_page() -> HTMLResponse:
        return HTMLResponse(await explorer.rendered("epochs"), headers=CACHE)

    @app.get("/explorer/api/v1/epochs", tags=["explorer"])
    async def epochs(format: Format = "json") -> Any:
        """Closed uptime epochs (newest first): providers judged, how many met their SLA
        and how many breached it, and the stake taken for downtime."""
        rows = explorer.epochs()
        if format == "csv":
            return _csv(rows, "epochs.csv")
        return {"object": "list", "version": explorer.current()["version"], "data": rows}

    @app.get("/explorer/economics", include_in_schema=False)
    async def economics_page() -> HTMLResponse:
        return HTMLResponse(await explorer.rendered("economics"), headers=CACHE)

    @app.get("/explorer/api/v1/economics", tags=["explorer"])
    async def economics() -> dict[str, Any]:
        """Supply, stake, fees, pools, open escrow and the ledger invariant; the fee
        policy and slashing table in force; and the price index: each served model's
        network median price against a dated list of hyperscaler prices (in dollars only
        at an exchange rate the operator declares)."""
        return await off_loop(explorer.economics)

    @app.get("/explorer/claims", include_in_schema=False)
    async def claims_page() -> HTMLResponse:
        return HTMLResponse(await explorer.rendered("claims"), headers=CACHE)

    @app.get("/explorer/api/v1/claims", tags=["explorer"])
    async def claims(format: Format = "json") -> Any:
        """Each public claim of the network with its live value, formula, window, sample
        size and the JSON it is computed from; "insufficient data" when too few samples."""
        body = await off_loop(explorer.claims)
        if format == "csv":
            flat = [{**c, "simulation": c["simulation"]["command"]} for c in body["data"]]
            return _csv(flat, "claims.csv")
        return body

    @app.get("/explorer/api/v1/network/summary", tags=["explorer"])
    async def network_summary(window: Window = "24h") -> dict[str, Any]:
        """The network now and over the window: providers, requests, tokens, success rate,
        latency and throughput percentiles (with their sample counts), audits, slashes,
        the ledger's totals and its invariant; with the previous window to compare."""
        snapshot = explorer.current()
        return {
            "object": "explorer.network_summary",
            "version": snapshot["version"],
            "as_of": snapshot["as_of"],
            "network": snapshot["network"],
            **snapshot["windows"][window],
            "ledger": snapshot["ledger"],
        }

    @app.get("/explorer/api/v1/network/series", tags=["explorer"])
    async def network_series(
        metric: Metric = Query("requests"),
        window: Window = "1h",
        model: str | None = Query(None, min_length=1, max_length=200),
        format: Format = "json",
    ) -> Any:
        """One metric over the window, oldest point first, at most 300 points; a point
        without enough samples for a percentile is null (no data), never 0. With
        ``model``: that model's requests only."""
        snapshot = explorer.current()
        timeline = explorer.rollups.timeline(model)
        if timeline is None:
            raise NotFound(f"no request for a model named '{model}' was served", param="model")
        series = timeline.series(snapshot["as_of"], window, metric)
        if format == "csv":
            return _csv(series["points"], f"{metric}-{window}.csv")
        return {"object": "explorer.series", "version": snapshot["version"], **series}

    @app.get("/explorer/api/v1/requests/recent", tags=["explorer"])
    async def recent_requests(format: Format = "json") -> Any:
        """The latest finished requests (newest first): ids, model, provider, status, token
        counts, cost, latency and time to first token; never prompt or output text."""
        snapshot = explorer.current()
        if format == "csv":
            return _csv(snapshot["tape"], "requests-recent.csv")
        return {"object": "list", "version": snapshot["version"], "data": snapshot["tape"]}

    async def model_main(model: str, window: str) -> dict[str, str]:
        detail = await off_loop(explorer.model, model, window)
        return {} if detail is None else {"main": main_part(explorer.model_html(detail))}

    async def live_main(page: str) -> dict[str, str]:
        return {"main": main_part(await explorer.rendered(page))}

    @app.get("/explorer/api/v1/stream", include_in_schema=False)
    async def stream(
        window: Window = "24h",
        provider: str | None = Query(None, pattern=r"^[0-9a-f]{64}$"),
        page: LivePage | None = None,
        model: str | None = Query(None, min_length=1, max_length=200),
    ) -> StreamingResponse:
        if explorer.streams >= explorer.max_streams:
            raise NoCapacity(
                "Too many live explorer pages are open; the page still works, reload it "
                "to see newer numbers.",
                code="explorer_full",
            )
        render: Callable[[], Awaitable[dict[str, str]]]
        if provider is not None:
            await detail_of(provider)  # 404 before the stream starts
            render = functools.partial(explorer.provider_fragments, provider)
        elif model is not None:
            await model_of(model, window)  # 404 before the stream starts
            render = functools.partial(model_main, model, window)
        elif page is not None:
            render = functools.partial(live_main, page)
        else:
            render = functools.partial(explorer.overview_fragments, window)

        return StreamingResponse(
            explorer.stream(render),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    # After /requests/recent, which this pattern would otherwise take.
    async def request_of(request_id: str) -> dict[str, Any]:
        return found(
            await explorer.request(request_id),
            f"request '{request_id}' is not among the newest {KEEP_REQUESTS:,} this "
            "gateway keeps; its receipt can still be checked at /explorer/receipts",
            "request_id",
        )

    @app.get("/explorer/requests/{request_id}", include_in_schema=False)
    async def request_page(request_id: RequestId) -> HTMLResponse:
        return HTMLResponse(explorer.request_html(await request_of(request_id)), headers=CACHE)

    @app.get("/explorer/api/v1/requests/{request_id}", tags=["explorer"])
    async def request_detail(request_id: RequestId) -> dict[str, Any]:
        """One of the newest requests: model, provider, status, token counts, the offer's
        price, cost, latency and time to first token, its audit (with a link to the
        evidence) and its escrow entries (consumer accounts shown as ``consumer``)."""
        return await request_of(request_id)


async def off_loop(work: Callable[..., T], *args: Any) -> T:
    """Run a list that grows with the providers (10,000 of them cost ~0.1 s) in a worker
    thread: the event loop keeps serving requests meanwhile instead of stalling."""
    explorer_current = getattr(work, "__self__", None)
    if isinstance(explorer_current, Explorer):
        explorer_current.current()  # the first snapshot is built here, on the loop
    return await asyncio.to_thread(work, *args)


def found(detail: dict[str, Any] | None, missing: str, param: str) -> dict[str, Any]:
    """``detail``, or a 404 that says what is missing and where to look instead."""
    if detail is None:
        raise NotFound(missing, param=param)
    return detail


def _index(app: FastAPI) -> list[dict[str, Any]]:
    """The explorer's JSON routes from the OpenAPI document (built once by FastAPI)."""
    paths = app.openapi().get("paths", {})
    out = []
    for path, item in sorted(paths.items()):
        get = item.get("get")
        if not path.startswith("/explorer/api/v1/") or get is None:
            continue
        params = [p["name"] for p in get.get("parameters", [])]
        out.append(
            {
                "path": path,
                "summary": get.get("summary", ""),
                "description": (get.get("description") or "").split("\n\n")[0],
                "parameters": params,
                "csv": "format" in params,
            }
        )
    return out


def _csv(rows: list[dict[str, Any]], filename: str) -> PlainTextResponse:
    return PlainTextResponse(
        to_csv(rows),
        media_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )
